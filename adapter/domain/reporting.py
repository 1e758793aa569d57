"""What a closed report sends to Stripe. Pure: plain values in, plain values out, no I/O.

- :func:`stripe_formula`: the Stripe meter formula a local aggregation needs;
- :func:`identifier`: the meter event identifier, the same on every resend, so Stripe's
  duplicate rejection proves an earlier, ambiguous send was delivered;
- :func:`value_to_send` and :func:`carry_from_history`: the whole number to send,
  carrying fractions from report to report inside a billing period;
- :func:`send_timestamp`: a whole second inside the report window, the billing period
  and Stripe's window of 35 days back to 5 minutes ahead.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from adapter.domain.aggregation import AGGREGATIONS, EXACT, ZERO
from config import defaults

StripeFormula = Literal["sum", "last"]
Rounding = Literal["down", "up", "nearest"]
#: Fraction rounding rules; the same names as ``adapter.store.catalog.ROUNDINGS``, repeated
#: here because the catalog imports database code.
ROUNDINGS: tuple[Rounding, ...] = ("down", "up", "nearest")
#: Local aggregation → Stripe formula. Count goes to a ``sum`` meter as a total: a Stripe
#: ``count`` meter counts events and ignores their value. Max goes to a ``last`` meter as
#: the running maximum, since Stripe has no ``max``.
_FORMULAS: dict[str, StripeFormula] = {"sum": "sum", "count": "sum", "max": "last", "last": "last"}
#: Whole numbers below this have at most 15 digits, the most Stripe takes.
_VALUE_LIMIT = 10**defaults.MAX_SIGNIFICANT_DIGITS
_HALF = Decimal("0.5")
_SECOND = timedelta(seconds=1)
#: Stripe checks an event's age when it processes the event, asynchronously and a little
#: after it accepts it: timestamps keep this far inside the 35 days, so an accepted event
#: cannot fail that check later, out of sight.
PAST_MARGIN = timedelta(minutes=5)
#: A timestamp ahead of our clock keeps this far inside Stripe's 5 minutes, for clock skew.
FUTURE_MARGIN = timedelta(minutes=1)
#: Hex digits of the hash in an identifier (80 bits).
HASH_LENGTH = 20
#: Hashed into every identifier. Changing the scheme changes the identifier of a report
#: whose send was ambiguous, and a resend would then bill it twice: never change it.
_SCHEME = "metersync.meter_event.v1"


@dataclass(frozen=True, slots=True)
class Decision:
    """The whole number to send for a report, and the exact remainder it leaves."""

    #: The meter event value: a non-negative whole number of at most 15 digits.
    value: int
    #: Counted but not sent (sum and count meters; always 0 for max and last). In
    #: [0, 1) before the period's closing report; after it, what rounding left over,
    #: negative when rounding up sent a unit for a fraction.
    carry_out: Decimal


def stripe_formula(aggregation: str) -> StripeFormula:
    """The formula of the Stripe meter that a local ``aggregation`` reports to."""
    try:
        return _FORMULAS[aggregation]
    except KeyError:
        raise ValueError(
            f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}"
        ) from None


def identifier(  # noqa: PLR0913  keyword-only inputs of one pure rule, each its own fact
    *,
    namespace: str,
    account_id: int,
    meter_id: int,
    report_id: int,
    window_start: datetime,
    attempt_generation: int = 0,
) -> str:
    """The meter event identifier of a report: at most 100 characters of ``[A-Za-z0-9-]``.

    The same inputs always give the same identifier, so resending after an ambiguous
    failure repeats it and Stripe's "already exists" rejection proves delivery. The
    readable part names the report; the hash covers every input, including
    ``namespace`` (one per installation, so two databases never collide), and keeps the
    identifier unique when a long readable part has to be cut. Raise
    ``attempt_generation`` only to send a report again as a new event on purpose (for
    instance after Stripe reported the first one invalid): the old identifier would be
    rejected as a duplicate and the report wrongly counted as delivered.
    """
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("namespace must be a non-empty string, e.g. an installation id")
    ids = {"account_id": account_id, "meter_id": meter_id, "report_id": report_id}
    for name, value in (*ids.items(), ("attempt_generation", attempt_generation)):
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    start = _utc("window_start", window_start)
    canonical = json.dumps(
        [
            _SCHEME,
            namespace,
            account_id,
            meter_id,
            report_id,
            start.isoformat(),
            attempt_generation,
        ],
        separators=(",", ":"),
    )
    digest = hashlib.sha256(canonical.encode("ascii")).hexdigest()[:HASH_LENGTH]
    readable = f"ms-a{account_id}-m{meter_id}-r{report_id}-w{start:%Y%m%dT%H%M%SZ}"
    if attempt_generation:
        readable += f"-g{attempt_generation}"
    room = defaults.MAX_STRIPE_NAME - HASH_LENGTH - 1
    return f"{readable[:room]}-{digest}"


def round_whole(value: Decimal, rounding: str) -> int:
    """``value`` as a whole number by a meter's rule: ``down`` (floor), ``up`` (ceiling)
    or ``nearest`` (halves go up, towards +infinity, also for negative values)."""
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"value must be a finite Decimal, got {value!r}")
    if rounding == "down":
        whole = value.to_integral_value(rounding=decimal.ROUND_FLOOR)
    elif rounding == "up":
        whole = value.to_integral_value(rounding=decimal.ROUND_CEILING)
    elif rounding == "nearest":
        whole = EXACT.add(value, _HALF).to_integral_value(rounding=decimal.ROUND_FLOOR)
    else:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    return int(whole)


def value_to_send(  # noqa: PLR0913  keyword-only inputs of one pure rule, each its own fact
    *,
    aggregation: str,
    report_value: Decimal,
    carried_in: Decimal,
    previous_sent_in_period: Decimal | int | None,
    closes_period: bool,
    rounding: str,
) -> Decision:
    """The whole number to send for one report, and what it carries to the next one.

    ``report_value`` is the report's aggregate by the meter's rule (``total``,
    ``events``, ``max_value``; for ``last``, the period's latest value so far, which is
    the report's own when reports are pushed in window order).

    - sum, count: send the whole part of ``report_value + carried_in`` and carry the
      fraction; the report that closes the period (and any late one after it) rounds by
      the rule instead. Over a period the values sent add up to the period total rounded
      by the rule, and nothing is sent twice.
    - max: send the running maximum, rounded by the rule on every report (rounding is
      monotonic, so this is the rounded period maximum so far), never less than
      ``previous_sent_in_period`` (the largest value sent in the period).
    - last: send the value rounded by the rule.

    A Stripe ``last`` meter keeps only the latest value, so max and last cannot carry a
    fraction: ``carried_in`` must be 0 for them and ``closes_period`` does not matter.
    Raise ``ValueError`` when the value has more than 15 digits: Stripe refuses it.
    """
    stripe_formula(aggregation)  # refuses an unknown aggregation
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    _check_quantity("report_value", report_value)
    _check_carry(carried_in)
    if aggregation in ("sum", "count"):
        total = EXACT.add(report_value, carried_in)
        whole = max(round_whole(total, rounding if closes_period else "down"), 0)
        return Decision(_check_size(whole), EXACT.plus(EXACT.subtract(total, Decimal(whole))))
    if carried_in:
        raise ValueError(f"a {aggregation} meter carries nothing, got carried_in={carried_in}")
    value = round_whole(report_value, rounding)
    if aggregation == "max" and previous_sent_in_period is not None:
        value = max(value, _whole_sent(previous_sent_in_period))
    return Decision(_check_size(value), ZERO)


def carry_from_history(reported: Iterable[Decimal], sent: Iterable[Decimal | int]) -> Decimal:
    """The carry into a period's next report on a sum or count meter: what the period's
    reports already sent counted (``total`` or ``events``) minus the values sent for
    them. The push worker can resume the carry from stored report columns alone."""
    counted = ZERO
    for quantity in reported:
        _check_quantity("a reported value", quantity)
        counted = EXACT.add(counted, quantity)
    for whole in sent:
        counted = EXACT.subtract(counted, Decimal(_whole_sent(whole)))
    carry = EXACT.plus(counted)
    if not -1 < carry < 1:
        raise ValueError(
            f"reports and values sent differ by {carry}, but a carry lies between -1 and 1; "
            "the period's history is incomplete or belongs to another meter"
        )
    return carry


def send_timestamp(
    *,
    window_start: datetime,
    window_end: datetime,
    period_start: datetime | None,
    period_end: datetime | None,
    now: datetime,
) -> datetime | None:
    """The timestamp to send a report with: the latest whole second before
    ``window_end`` and not after ``now`` that lies in the report window
    ``[window_start, window_end)``, in the billing period ``[period_start, period_end)``
    when known, and in Stripe's window (at most 35 days old, less :data:`PAST_MARGIN`).
    A window that starts after ``now`` gets its first second, if that is at most
    5 minutes ahead (less :data:`FUTURE_MARGIN`).

    None when no second qualifies: the report is too old for Stripe to bill (or, with
    ``window_start`` far after ``now``, the clocks disagree: reports hold no event more
    than 5 minutes ahead). Raise ``ValueError`` for an empty window or one outside the
    period, which no report should have.
    """
    start, end = _utc("window_start", window_start), _utc("window_end", window_end)
    now = _utc("now", now)
    if end <= start:
        raise ValueError(f"empty report window [{start.isoformat()}, {end.isoformat()})")
    if period_start is not None:
        start = max(start, _utc("period_start", period_start))
    if period_end is not None:
        end = min(end, _utc("period_end", period_end))
    if end <= start:
        raise ValueError(
            f"report window [{window_start.isoformat()}, {window_end.isoformat()}) lies "
            "outside its billing period"
        )
    oldest = now - defaults.STRIPE_MAX_EVENT_AGE + PAST_MARGIN
    earliest = _ceil_second(max(start, oldest))
    latest = _ceil_second(end) - _SECOND  # the last whole second strictly before ``end``
    if latest < earliest:
        return None
    chosen = min(latest, now.replace(microsecond=0))
    if chosen >= earliest:
        return chosen
    if earliest <= now + defaults.MAX_FUTURE_SKEW - FUTURE_MARGIN:
        return earliest
    return None


def _utc(name: str, value: datetime) -> datetime:
    """``value`` in UTC; refuse naive datetimes, whose instant is unknown."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _ceil_second(at: datetime) -> datetime:
    """The first whole second at or after ``at``."""
    whole = at.replace(microsecond=0)
    return whole if whole == at else whole + _SECOND


def _check_quantity(name: str, value: Decimal) -> None:
    """Refuse what no report holds: a quantity that is not a finite Decimal ≥ 0."""
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a finite Decimal ≥ 0, got {value!r}")


def _check_carry(carried_in: Decimal) -> None:
    """Refuse a carry that no sequence of decisions produces."""
    if not isinstance(carried_in, Decimal) or not carried_in.is_finite():
        raise ValueError(f"carried_in must be a finite Decimal, got {carried_in!r}")
    if not -1 < carried_in < 1:
        raise ValueError(f"carried_in must lie between -1 and 1, got {carried_in}")


def _whole_sent(value: Decimal | int) -> int:
    """A value sent earlier, which is a non-negative whole number."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"a value sent must be a whole number, got {value!r}")
    if isinstance(value, Decimal) and (not value.is_finite() or value != value.to_integral()):
        raise ValueError(f"a value sent must be a whole number, got {value!r}")
    if value < 0:
        raise ValueError(f"a value sent must not be negative, got {value!r}")
    return int(value)


def _check_size(value: int) -> int:
    """``value``, unless it has more digits than Stripe takes."""
    if value >= _VALUE_LIMIT:
        raise ValueError(
            f"value {value} has {len(str(value))} digits; Stripe takes whole numbers of at "
            f"most {defaults.MAX_SIGNIFICANT_DIGITS} digits, so this report cannot be sent "
            "as one meter event"
        )
    return value
