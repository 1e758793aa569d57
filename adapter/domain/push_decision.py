"""What a closed report sends to Stripe, decided from its billing period's history. Pure:
typed values in, a :class:`Decision` out, no I/O.

:func:`decide` is the whole push decision. The pusher reads the report and every other
report of its (account, meter, period) under the pair's lock, calls it, stores what it
returns, and only then calls Stripe; a retry resends the stored decision unchanged.

- ``sum`` and ``count`` meters (Stripe ``sum``): the report's own aggregate plus the
  fraction the period carries, rounded by the meter's rule (:mod:`adapter.domain.reporting`),
  sent at a second inside the report's window.
- ``max`` and ``last`` meters (Stripe ``last``): the period's value by its whole history
  (the largest value, or the value of the newest event by event time), sent so that
  Stripe's ``last`` meter keeps it (:mod:`adapter.domain.latest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from adapter.domain import latest, reporting
from adapter.domain.aggregation import Aggregate
from adapter.domain.statuses import HELD


@dataclass(frozen=True, slots=True)
class Report:
    """The report being decided: its meter's rule, its window and period, its events'
    aggregate."""

    id: int
    aggregation: str
    rounding: str
    window_start: datetime
    window_end: datetime
    period_start: datetime | None
    period_end: datetime | None
    stats: Aggregate


@dataclass(frozen=True, slots=True)
class Past:
    """Another report of the same (account, meter, billing period), decided or not."""

    id: int
    status: str
    identifier: str | None
    stats: Aggregate
    sent_value: Decimal | None
    sent_timestamp: datetime | None

    @property
    def decided(self) -> bool:
        """Whether a decision was stored for it."""
        return self.identifier is not None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to store and send: the whole value, the second it is sent at (``None``: Stripe
    holds it already, no call), and the reports sent at that second to cancel first."""

    value: int
    timestamp: datetime | None
    replaces: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Tie:
    """Reports whose newest events share one time: which of those events was recorded
    last is in the events table, so the caller looks it up (one indexed read)."""

    report_ids: tuple[int, ...]
    at: datetime


def tie(report: Report, history: Sequence[Past]) -> Tie | None:
    """On a ``last`` meter, the reports sharing the period's newest event time, when more
    than one does; then :func:`decide` needs that newest event's value."""
    if report.aggregation != "last":
        return None
    reports = _with_events(report, history)
    newest = max(at for _, stats in reports if (at := stats.last_at) is not None)
    tied = tuple(rid for rid, stats in reports if stats.last_at == newest)
    return Tie(tied, newest) if len(tied) > 1 else None


def decide(
    report: Report,
    history: Sequence[Past],
    now: datetime,
    *,
    tie_value: Decimal | None = None,
) -> Decision | None:
    """The decision for ``report`` given the rest of its period (see the module
    docstring); ``None`` when no second Stripe accepts is left (too old to bill).
    ``tie_value`` is the newest event's value when :func:`tie` found one."""
    if reporting.stripe_formula(report.aggregation) == "last":
        return _latest(report, history, now, tie_value)
    return _sum(report, [h for h in history if h.decided], now)


def _with_events(report: Report, history: Sequence[Past]) -> list[tuple[int, Aggregate]]:
    return [(h.id, h.stats) for h in history if h.stats.events] + [(report.id, report.stats)]


def _sum(report: Report, decided: Sequence[Past], now: datetime) -> Decision | None:
    """A sum or count report: its own value plus the fraction the period carries."""
    closes = report.period_end is not None and (
        report.window_end >= report.period_end or report.period_end <= now
    )
    value = reporting.value_to_send(
        aggregation=report.aggregation,
        report_value=report.stats.value(report.aggregation),
        carried_in=reporting.carry_from_history(
            [h.stats.value(report.aggregation) for h in decided],
            [h.sent_value if h.sent_value is not None else Decimal(0) for h in decided],
        ),
        previous_sent_in_period=None,
        closes_period=closes,
        rounding=report.rounding,
    ).value
    at = window_second(report, now)
    return None if at is None else Decision(value, at)


def _latest(
    report: Report, history: Sequence[Past], now: datetime, tie_value: Decimal | None
) -> Decision | None:
    """A max or last report: the period's value, sent so that Stripe's ``last`` keeps it."""
    stats = [s for _, s in _with_events(report, history)]
    if report.aggregation == "max":
        value = max(s.max_value for s in stats if s.max_value is not None)
        preferred = window_second(report, now) or report.window_start
    else:
        preferred = max(s.last_at for s in stats if s.last_at is not None)
        newest = [s for s in stats if s.last_at == preferred]
        if len(newest) > 1 and tie_value is None:
            raise ValueError("reports tie on their newest event time: pass tie_value")
        found = newest[0].last_value if len(newest) == 1 else tie_value
        assert found is not None  # a report with events has a last value
        value = found
    target = reporting.value_to_send(
        aggregation=report.aggregation,
        report_value=value,
        carried_in=Decimal(0),
        previous_sent_in_period=None,
        closes_period=False,
        rounding=report.rounding,
    ).value
    earlier = [
        latest.Earlier(h.id, int(h.sent_value), h.sent_timestamp, h.status in HELD)
        for h in history
        if h.decided and h.sent_value is not None
    ]
    decided = latest.decide(
        target=target,
        preferred=preferred,
        earlier=earlier,
        period_start=report.period_start,
        period_end=report.period_end,
        now=now,
    )
    return None if decided is None else Decision(decided.value, decided.timestamp, decided.replaces)


def window_second(report: Report, now: datetime) -> datetime | None:
    """The report's send timestamp inside its window (see ``reporting.send_timestamp``)."""
    return reporting.send_timestamp(
        window_start=report.window_start,
        window_end=report.window_end,
        period_start=report.period_start,
        period_end=report.period_end,
        now=now,
    )
