"""Checks on usage input. Pure: plain values in, plain values out, no I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from adapter.errors import InvalidPeriod, InvalidQuantity, InvalidTimestamp, InvalidUsage
from config import defaults

#: Whole numbers below this have at most 15 significant digits.
_INT_LIMIT = 10**defaults.MAX_SIGNIFICANT_DIGITS


def to_quantity(value: object) -> Decimal:
    """Return ``value`` as a finite, non-negative Decimal of at most 15 significant digits."""
    if type(value) is int and 0 <= value < _INT_LIMIT:
        return Decimal(value)  # the common case, decided without the general checks
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise InvalidQuantity(f"quantity must be a number, got {type(value).__name__} {value!r}")
    try:
        # str() first so that 0.1 stays 0.1 rather than its binary expansion.
        quantity = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise InvalidQuantity(f"quantity {value!r} is not a number") from None
    if not quantity.is_finite():
        raise InvalidQuantity(f"quantity must be finite, got {value!r}")
    _check_size(quantity, value)
    if quantity < 0:
        raise InvalidQuantity(
            f"quantity must not be negative, got {value!r}; "
            "record corrections as new usage or adjust in Stripe"
        )
    return quantity + 0  # normalises -0 to 0


def _check_size(quantity: Decimal, value: object) -> None:
    """Refuse what Stripe cannot take or exact sums cannot hold, before any arithmetic
    (which could overflow on an exponent like 1E+1000000)."""
    limit = defaults.MAX_SIGNIFICANT_DIGITS
    _sign, digits, exponent = quantity.as_tuple()
    while len(digits) > 1 and digits[-1] == 0:  # trailing zeros are not significant
        digits, exponent = digits[:-1], int(exponent) + 1
    if len(digits) > limit:
        raise InvalidQuantity(
            f"quantity {value!r} has {len(digits)} significant digits; "
            f"Stripe accepts at most {limit}"
        )
    if quantity and quantity.adjusted() >= limit:
        raise InvalidQuantity(
            f"quantity {value!r} is 10^{limit} or more; Stripe accepts whole numbers "
            f"of at most {limit} digits"
        )
    if any(digits) and int(exponent) < -defaults.MAX_DECIMAL_PLACES:
        raise InvalidQuantity(
            f"quantity {value!r} has more than {defaults.MAX_DECIMAL_PLACES} decimal places"
        )


def to_utc(value: object, *, field: str = "timestamp") -> datetime:
    """Parse an aware datetime, a date (midnight UTC), an ISO string or unix seconds."""
    if isinstance(value, bool):
        raise InvalidTimestamp(f"{field} must be a datetime, date, ISO string or unix seconds")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidTimestamp(f"{field} {value!r} is not a valid unix time") from None
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:  # a plain date, YYYY-MM-DD: midnight UTC
                return to_utc(date.fromisoformat(text), field=field)
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidTimestamp(
                f"{field} {value!r} is not an ISO 8601 date or datetime"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidTimestamp(
                f"{field} {value.isoformat()} has no time zone; pass an aware datetime, "
                "or a string ending in Z or +00:00 (UTC)"
            )
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise InvalidTimestamp(f"{field} must be a datetime, date, ISO string or unix seconds")


def event_time(value: object | None, *, now: datetime) -> datetime:
    """The event time to record: ``now`` when None, else a billable time near ``now``."""
    if value is None:
        return now
    at = value if type(value) is datetime and value.tzinfo is UTC else to_utc(value)
    if at > now + defaults.MAX_FUTURE_SKEW:
        raise InvalidTimestamp(
            f"timestamp {at.isoformat()} is more than 5 minutes in the future "
            f"(now {now.isoformat()}); Stripe refuses such events"
        )
    oldest = now - (defaults.STRIPE_MAX_EVENT_AGE - defaults.PUSH_MARGIN)
    if at < oldest:
        raise InvalidTimestamp(
            f"timestamp {at.isoformat()} is older than {oldest.isoformat()}: Stripe bills "
            "usage up to 35 days old and metersync keeps one hour to push it"
        )
    return at


def idempotency_key(value: object | None) -> str | None:
    """Return a usable idempotency key or None; refuse empty and overlong keys."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidUsage("idempotency_key must be a non-empty string without NUL characters")
    if len(value) > defaults.MAX_IDEMPOTENCY_KEY:
        raise InvalidUsage(
            f"idempotency_key is {len(value)} characters; at most "
            f"{defaults.MAX_IDEMPOTENCY_KEY} are allowed"
        )
    return value


def period(start: object, end: object) -> tuple[datetime, datetime]:
    """Parse a half-open query period ``[start, end)`` and refuse an empty one."""
    try:
        begin, finish = to_utc(start, field="period_start"), to_utc(end, field="period_end")
    except InvalidTimestamp as exc:
        raise InvalidPeriod(str(exc)) from None
    if finish <= begin:
        raise InvalidPeriod(
            f"period_end {finish.isoformat()} must be after period_start {begin.isoformat()}"
        )
    return begin, finish


def default_period(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month containing ``now``, used when no billing period is known."""
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    nxt = (start + timedelta(days=32)).replace(day=1)
    return start, nxt
