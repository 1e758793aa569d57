"""Drift between what metersync sent and what Stripe's meter event summaries hold, and the
repair that removes it. Pure: plain values in, verdicts and repair plans out, no I/O.

- :func:`summary_range`: the minute-aligned range both sides are compared over;
- :func:`expected_value`: what Stripe should hold, from the events we count;
- :func:`compare`: one (customer, meter, period) pair's verdict and repair plan;
- :func:`exact_cover`: which uncounted events to cancel so an excess disappears exactly;
- :func:`correction_identifier`: the deterministic identifier of a correction event.

Why the comparison looks the way it does:

- Stripe's summaries take whole minutes, while billing periods are whole seconds. Both
  sides are compared over ``[floor_minute(period_start), ceil_minute(period_end))``, our
  side by the timestamp each event was *sent* with, so both count exactly the same
  events even when a neighbour period's event falls in an edge minute.
- ``aggregated_value`` is eventually consistent: a pair whose newest send is younger than
  the settle delay (or that has a push in flight) is ``settling`` and not compared.
- The *expectation* is what the sent reports add up to: on a ``sum`` meter the sum of
  their values, on a ``last`` meter (local ``max`` and ``last``) the value of the report
  with the newest sent timestamp (ties: the later row). That is the value metersync
  recorded, which Stripe must bill.
- Corrections reconcile sent earlier are *not* added to the expectation: they are deltas
  that bring Stripe to it. Counting them too would make a repaired pair look short by
  the correction forever, and the next repair would bill it twice. They are
  :class:`Candidate` s instead: an excess (say a lost event that turned up after all)
  cancels them, and a ``last`` correction must come after them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from adapter.domain.reporting import send_timestamp
from config import defaults

Formula = Literal["sum", "last"]
Verdict = Literal[
    "match", "missing", "excess", "wrong_value", "settling", "unknown_meter", "skipped", "error"
]
#: Verdicts that are drift: Stripe holds something other than what we sent.
DRIFT: tuple[Verdict, ...] = ("missing", "excess", "wrong_value")
#: Stripe cancels an event only within 24 hours of receiving it; a cancel is planned
#: only for events received at least this much more recently, so it lands in time.
CANCEL_WINDOW = timedelta(hours=24)
CANCEL_MARGIN = timedelta(hours=1)
#: A summary this close to a whole number is that number (it is a float at Stripe).
WHOLE_TOLERANCE = 1e-6
#: Most partial sums :func:`exact_cover` keeps; beyond, it gives up (operator).
COVER_STATES = 20_000
#: Hashed into every correction identifier; never change it (see ``reporting._SCHEME``).
_SCHEME = "metersync.correction.v1"
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Counted:
    """A sent report: part of what Stripe must hold."""

    timestamp: datetime
    value: int
    #: Breaks a timestamp tie on a ``last`` meter: the greater one was sent later.
    order: int = 0


@dataclass(frozen=True, slots=True)
class Candidate:
    """An event Stripe may hold that the expectation does not count: a ``failed`` or
    ``expired`` report whose send may have landed, or a correction we sent."""

    identifier: str
    value: int
    timestamp: datetime
    #: About when Stripe received it (the last send attempt); cancels need < 24 h.
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Pair:
    """Everything known about one (customer, meter, period) before comparing."""

    formula: Formula
    period_start: datetime
    period_end: datetime
    #: Sent reports whose sent timestamp lies in :func:`summary_range`.
    counted: Sequence[Counted]
    #: Uncounted events in the range Stripe may hold (cancellable within 24 h).
    candidates: Sequence[Candidate] = ()
    #: When we last sent anything for the pair (reports or corrections).
    newest_send: datetime | None = None
    #: A push for the pair is in flight (a report ``sending``): Stripe may take it yet.
    in_flight: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """A repair: one correction event to send, or events to cancel, or nothing (with
    ``note`` saying why, for the operator)."""

    send_value: int | None = None
    send_timestamp: datetime | None = None
    cancel: tuple[Candidate, ...] = ()
    note: str = ""

    @property
    def empty(self) -> bool:
        """True when the plan writes nothing to Stripe."""
        return self.send_value is None and not self.cancel


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict on one pair, and the repair that would remove its drift."""

    expected: int
    stripe: float | None
    verdict: Verdict
    plan: Plan = Plan()
    note: str = ""

    @property
    def difference(self) -> float | None:
        """Expected minus what Stripe holds (positive: Stripe is missing some)."""
        return None if self.stripe is None else self.expected - self.stripe


def summary_range(
    period_start: datetime, period_end: datetime, *, now: datetime
) -> tuple[datetime, datetime]:
    """``[floor_minute(period_start), ceil_minute(end))`` where ``end`` is the period's
    end, or (for a period still running) the latest instant Stripe accepts an event for,
    five minutes ahead of ``now``: no event can lie beyond it, and Stripe is never asked
    about the far future."""
    start = _utc("period_start", period_start)
    end = min(_utc("period_end", period_end), _utc("now", now) + defaults.MAX_FUTURE_SKEW)
    floor = start.replace(second=0, microsecond=0)
    ceil = end.replace(second=0, microsecond=0)
    if ceil < end:
        ceil += _MINUTE
    return floor, max(ceil, floor + _MINUTE)


def expected_value(formula: Formula, counted: Sequence[Counted]) -> int:
    """What Stripe should hold: the sum of the values (``sum``), or the value of the
    newest event, ties to the greater ``order`` (``last``; 0 with no event)."""
    if formula == "sum":
        return sum(event.value for event in counted)
    if not counted:
        return 0
    return max(counted, key=lambda event: (event.timestamp, event.order)).value


def compare(pair: Pair, stripe: float | None, *, now: datetime, settle: timedelta) -> Comparison:
    """The verdict on ``pair`` given Stripe's summary (``None``: not read, because the
    pair is settling, which :func:`is_settling` tells before any call)."""
    expected = expected_value(pair.formula, pair.counted)
    if stripe is None or is_settling(pair, now=now, settle=settle):
        return Comparison(expected, stripe, "settling", note=_settling_note(pair, settle))
    if not math.isfinite(stripe):
        return Comparison(expected, stripe, "error", note="Stripe's summary is not a number")
    whole = round(stripe)
    if abs(stripe - whole) > WHOLE_TOLERANCE:
        verdict: Verdict = "missing" if stripe < expected else "excess"
        if pair.formula == "last":
            verdict = "wrong_value"
        note = f"Stripe holds {stripe!r}, not a whole number: check the meter by hand"
        return Comparison(expected, stripe, verdict, Plan(note=note), note)
    if whole == expected:
        return Comparison(expected, stripe, "match")
    if pair.formula == "last":
        plan = _last_plan(pair, expected, now=now)
        return Comparison(expected, stripe, "wrong_value", plan, plan.note)
    if whole < expected:
        plan = _missing_plan(pair, expected - whole, now=now)
        return Comparison(expected, stripe, "missing", plan, plan.note)
    plan = _excess_plan(pair, whole - expected, now=now)
    return Comparison(expected, stripe, "excess", plan, plan.note)


def is_settling(pair: Pair, *, now: datetime, settle: timedelta) -> bool:
    """Whether Stripe may not have processed the pair's latest sends yet."""
    if pair.in_flight:
        return True
    return pair.newest_send is not None and pair.newest_send > now - settle


def _settling_note(pair: Pair, settle: timedelta) -> str:
    if pair.in_flight:
        return "a push for this pair is in flight"
    return f"sent less than {int(settle.total_seconds())}s ago; Stripe may still be processing"


def _latest_second(pair: Pair, *, now: datetime) -> datetime | None:
    """The latest second of the pair's period that Stripe still accepts an event at."""
    return send_timestamp(
        window_start=pair.period_start,
        window_end=pair.period_end,
        period_start=None,
        period_end=None,
        now=now,
    )


def _missing_plan(pair: Pair, missing: int, *, now: datetime) -> Plan:
    """A sum meter short of ``missing``: one correction event of that value, at the
    latest second of the period that Stripe still accepts."""
    at = _latest_second(pair, now=now)
    if at is None:
        return Plan(note="the period is older than Stripe accepts events for: fix it by hand")
    return Plan(send_value=missing, send_timestamp=at, note=f"send a correction of +{missing}")


def _excess_plan(pair: Pair, excess: int, *, now: datetime) -> Plan:
    """A sum meter over by ``excess``: cancel uncounted events Stripe may hold whose
    values add up to exactly the excess, while Stripe still allows cancelling them."""
    cancellable = [
        c for c in pair.candidates if c.received_at > now - CANCEL_WINDOW + CANCEL_MARGIN
    ]
    chosen = exact_cover(cancellable, excess)
    if chosen is None:
        why = (
            "no uncounted events we sent can explain it"
            if not pair.candidates
            else "no set of uncounted events received in the last 23 h adds up to it"
        )
        return Plan(note=f"Stripe holds {excess} more than sent; {why}: fix it by hand")
    ids = ", ".join(c.identifier for c in chosen)
    return Plan(cancel=chosen, note=f"cancel {len(chosen)} uncounted event(s): {ids}")


def _last_plan(pair: Pair, expected: int, *, now: datetime) -> Plan:
    """A last meter with another value: send the expected value at the latest second that
    lies in the period, is not after ``now`` and is strictly after every event we know
    Stripe may hold in the range (the latest, not the first such second, to also beat an
    event we do not know of)."""
    newest = max(
        [e.timestamp for e in pair.counted] + [c.timestamp for c in pair.candidates],
        default=None,
    )
    at = _latest_second(pair, now=now)
    if at is None or at > now or (newest is not None and at <= newest):
        return Plan(
            note="no second is left after the newest event in the period (or Stripe no "
            "longer accepts events for it): set the value by hand"
        )
    return Plan(send_value=expected, send_timestamp=at, note=f"send {expected} as newest value")


def exact_cover(candidates: Sequence[Candidate], amount: int) -> tuple[Candidate, ...] | None:
    """The fewest candidates, earliest first, whose values add up to exactly ``amount``
    (a subset-sum search over partial sums up to ``amount``); ``None`` when none do."""
    if amount <= 0:
        return None
    ordered = sorted(candidates, key=lambda c: (c.timestamp, c.identifier))
    reach: dict[int, tuple[int, ...]] = {0: ()}
    for index, candidate in enumerate(ordered):
        if candidate.value <= 0:
            continue
        for total, picked in list(reach.items()):
            new = total + candidate.value
            if new > amount:
                continue
            if new not in reach or len(reach[new]) > len(picked) + 1:
                reach[new] = (*picked, index)
            if len(reach) > COVER_STATES:
                return None
    found = reach.get(amount)
    return None if found is None else tuple(ordered[i] for i in found)


def correction_identifier(
    *, namespace: str, account_id: int, meter_id: int, period_start: datetime, sequence: int
) -> str:
    """The identifier of the ``sequence``-th correction of one (account, meter, period):
    at most 100 characters, the same for the same inputs, so re-running an interrupted
    repair repeats it and Stripe's duplicate rejection keeps it from counting twice."""
    if not namespace:
        raise ValueError("namespace must be a non-empty string, e.g. an installation id")
    for name, value in (("account_id", account_id), ("meter_id", meter_id), ("sequence", sequence)):
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    start = _utc("period_start", period_start)
    canonical = json.dumps(
        [_SCHEME, namespace, account_id, meter_id, start.isoformat(), sequence],
        separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode("ascii")).hexdigest()[:20]
    readable = f"ms-fix-a{account_id}-m{meter_id}-p{start:%Y%m%dT%H%M%SZ}-s{sequence}"
    return f"{readable[: defaults.MAX_STRIPE_NAME - 21]}-{digest}"


def _utc(name: str, value: datetime) -> datetime:
    """``value`` in UTC; refuse naive datetimes."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {value!r}")
    return value.astimezone(UTC)
