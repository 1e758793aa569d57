"""What a report on a Stripe ``last`` meter sends (local ``max`` and ``last`` meters). Pure.

A Stripe ``last`` meter keeps, per billing period, the value of the meter event with the
newest *timestamp*, whatever the order the events arrived in. Reports of a period reach
Stripe in any order: late events open a second report for a window already sent, and an
older window can be pushed after a newer one. So a report does not send its own value.
It sends the period's value as the whole period's history says now (the newest event's
value for ``last``, the running maximum for ``max``), and it sends it at a second after
every second the period has used, so that Stripe keeps it:

- when Stripe already holds that value (an older event arriving late), nothing is sent;
- else the value goes out at the newest event's second (``last``) or the report's window
  end (``max``), moved to just after the newest second already used in the period;
- when the period has no later second left (its last second is taken, or the clock
  forbids one), the value goes out at that same second and the earlier events there are
  cancelled first (``replaces``): Stripe's choice between two events of one second is
  not documented, so two of them must never both count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from adapter.domain.reporting import FUTURE_MARGIN, PAST_MARGIN
from config import defaults

_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Earlier:
    """An earlier decision of the same (account, meter, billing period)."""

    report_id: int
    value: int
    #: The second it was (or will be) sent at; None when it needed no call.
    timestamp: datetime | None
    #: Delivered, being delivered or recorded as a dry run: Stripe holds (or will hold)
    #: it. False for a report Stripe refused (``failed``) or that expired.
    held: bool


@dataclass(frozen=True, slots=True)
class LatestDecision:
    """The value to send and when; ``timestamp=None`` means Stripe holds it already."""

    value: int
    timestamp: datetime | None
    #: Reports already sent at ``timestamp``, to cancel before sending.
    replaces: tuple[int, ...] = ()


def held_value(earlier: Sequence[Earlier]) -> Earlier | None:
    """The decision whose value Stripe keeps: the newest timestamp among those it holds
    (on one second, the later report; decisions never leave two there, see ``replaces``)."""
    timed = [e for e in earlier if e.held and e.timestamp is not None]
    if not timed:
        return None
    return max(timed, key=lambda e: (e.timestamp, e.report_id))


def decide(  # noqa: PLR0913  keyword-only inputs of one pure rule, each its own fact
    *,
    target: int,
    preferred: datetime,
    earlier: Sequence[Earlier],
    period_start: datetime | None,
    period_end: datetime | None,
    now: datetime,
) -> LatestDecision | None:
    """What to send so that Stripe's ``last`` meter ends at ``target``.

    ``preferred`` is the second to send at when nothing earlier is in the way. Returns
    None when no second of the period is within Stripe's window any more (the report is
    too old to bill).
    """
    held = held_value(earlier)
    if held is not None and held.value == target:
        return LatestDecision(target, None)
    oldest = _ceil(now - defaults.STRIPE_MAX_EVENT_AGE + PAST_MARGIN)
    floor_ = oldest if period_start is None else max(oldest, _ceil(period_start))
    upper = _floor(now + defaults.MAX_FUTURE_SKEW - FUTURE_MARGIN)
    if period_end is not None:
        upper = min(upper, _ceil(period_end) - _SECOND)
    if upper < floor_:
        return None
    used = max((e.timestamp for e in earlier if e.timestamp is not None), default=None)
    lower = floor_ if used is None else max(floor_, used + _SECOND)
    if lower <= upper:
        return LatestDecision(target, min(max(_floor(preferred), lower), upper))
    assert used is not None  # lower > upper ≥ floor_ only because of ``used``
    at = min(used, upper)
    replaces = tuple(
        sorted(
            e.report_id for e in earlier if e.held and e.timestamp is not None and e.timestamp >= at
        )
    )
    return LatestDecision(target, at, replaces)


def _floor(at: datetime) -> datetime:
    return at.replace(microsecond=0)


def _ceil(at: datetime) -> datetime:
    whole = at.replace(microsecond=0)
    return whole if whole == at else whole + _SECOND
