"""Reporting schedules: ``every 30s|15m|1h|1d`` or a 5-field cron expression. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from adapter.errors import ConfigurationError

_EVERY = re.compile(r"^every\s+(\d+)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Shortest interval accepted: shorter ones only multiply Stripe calls.
MIN_INTERVAL = timedelta(seconds=30)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A parsed schedule: either a fixed interval aligned to the epoch, or a cron."""

    expression: str
    interval: timedelta | None = None
    cron: str | None = None

    def window(self, at: datetime) -> tuple[datetime, datetime]:
        """The tick-to-tick window ``[start, end)`` that contains ``at``."""
        if self.interval is not None:
            # timedelta // timedelta is exact integer floor division: no float rounding
            # far from the epoch, and instants before 1970 round down, not toward zero.
            start = _EPOCH + (at - _EPOCH) // self.interval * self.interval
            return start, start + self.interval
        assert self.cron is not None
        # Cron ticks fall on whole minutes and croniter's get_prev excludes its start (and
        # drops sub-second parts), so step back from the minute after the one holding `at`.
        after = at.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        start = croniter(self.cron, after).get_prev(datetime).astimezone(UTC).replace(fold=0)
        end = croniter(self.cron, start).get_next(datetime).astimezone(UTC).replace(fold=0)
        return start, end

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after ``after``."""
        return self.window(after)[1]  # a window always ends strictly after what it holds


def parse(expression: str) -> Schedule:
    """Parse a schedule expression, with an error that shows the accepted forms."""
    text = " ".join(expression.strip().lower().split())
    match = _EVERY.match(text)
    if match:
        interval = timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
        if interval < MIN_INTERVAL:
            raise ConfigurationError(f"schedule {expression!r} is shorter than every 30s")
        if timedelta(days=1) % interval and interval < timedelta(days=1):
            raise ConfigurationError(
                f"schedule {expression!r} does not divide a day evenly; "
                "use e.g. every 15m, every 2h, or a cron expression"
            )
        return Schedule(expression=text, interval=interval)
    if len(text.split()) == 5 and croniter.is_valid(text):
        return Schedule(expression=text, cron=text)
    raise ConfigurationError(
        f"schedule {expression!r} is not understood; use 'every 30s', 'every 15m', "
        "'every 1h', 'every 1d' or a 5-field cron expression such as '*/10 * * * *'"
    )
