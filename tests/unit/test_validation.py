"""Checks on usage input: quantities, timestamps, idempotency keys and query periods."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from adapter.domain import validation
from adapter.errors import (
    InvalidPeriod,
    InvalidQuantity,
    InvalidTimestamp,
    InvalidUsage,
    MetersyncError,
)

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


# --- quantities ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, Decimal(7)),
        (0, Decimal(0)),
        (0.1, Decimal("0.1")),
        (2.5, Decimal("2.5")),
        ("3.25", Decimal("3.25")),
        ("0", Decimal(0)),
        (Decimal("1.000001"), Decimal("1.000001")),
        (10**14, Decimal(10**14)),
    ],
)
def test_to_quantity_accepts_numbers(value: object, expected: Decimal) -> None:
    """Ints, floats, numeric strings and Decimals become the Decimal they spell."""
    result = validation.to_quantity(value)
    assert isinstance(result, Decimal)
    assert result == expected


def test_to_quantity_keeps_float_tenth_exact() -> None:
    """A float 0.1 becomes exactly Decimal('0.1'), not its binary expansion."""
    result = validation.to_quantity(0.1)
    assert result.as_tuple() == Decimal("0.1").as_tuple()
    assert result != Decimal.from_float(0.1)


def test_to_quantity_normalises_negative_zero() -> None:
    """-0 is accepted and comes back as a positive zero."""
    result = validation.to_quantity(Decimal("-0"))
    assert result == 0
    assert not result.is_signed()


@pytest.mark.parametrize(
    "value",
    ["123456789012345", Decimal("1234567890.12345"), 123456789012345, "0.123456789012345"],
)
def test_to_quantity_accepts_exactly_fifteen_significant_digits(value: object) -> None:
    """Fifteen significant digits is the most Stripe takes, and is accepted."""
    assert validation.to_quantity(value) == Decimal(str(value))


@pytest.mark.parametrize(
    "value",
    ["1234567890123456", Decimal("1234567890.123456"), 1234567890123456, "0.1234567890123456"],
)
def test_to_quantity_rejects_sixteen_significant_digits(value: object) -> None:
    """Sixteen significant digits are refused with a message naming the limit."""
    with pytest.raises(InvalidQuantity, match=r"16 significant digits.*at most 15"):
        validation.to_quantity(value)


def test_to_quantity_ignores_trailing_zeros_when_counting_digits() -> None:
    """Trailing zeros are not significant: 1.000000000000000000 is one digit."""
    assert validation.to_quantity("1.000000000000000000") == 1


@pytest.mark.parametrize("value", [True, False])
def test_to_quantity_rejects_booleans(value: bool) -> None:
    """Booleans are not quantities, although bool is a subclass of int."""
    with pytest.raises(InvalidQuantity, match="must be a number, got bool"):
        validation.to_quantity(value)


@pytest.mark.parametrize("value", [None, [1], {"q": 1}, b"1"])
def test_to_quantity_rejects_non_numbers(value: object) -> None:
    """Objects that are not numbers or strings are refused, naming their type."""
    with pytest.raises(InvalidQuantity, match=f"got {type(value).__name__}"):
        validation.to_quantity(value)


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), float("-inf"), "NaN", "Infinity", "-inf", Decimal("sNaN")],
)
def test_to_quantity_rejects_non_finite(value: object) -> None:
    """NaN and infinities are refused as not finite."""
    with pytest.raises(InvalidQuantity, match="finite"):
        validation.to_quantity(value)


@pytest.mark.parametrize("value", [-1, -0.5, "-3", Decimal("-0.000001")])
def test_to_quantity_rejects_negative(value: object) -> None:
    """Negative quantities are refused, telling the caller how to correct usage instead."""
    with pytest.raises(InvalidQuantity, match="must not be negative"):
        validation.to_quantity(value)


@pytest.mark.parametrize("value", ["", "abc", "1,5", "1.2.3", "ten"])
def test_to_quantity_rejects_non_numeric_strings(value: str) -> None:
    """Strings that do not spell a number are refused as not a number."""
    with pytest.raises(InvalidQuantity, match="is not a number"):
        validation.to_quantity(value)


@pytest.mark.parametrize("value", ["1E+1000000", "-1E+1000000", Decimal("9E+999999")])
def test_to_quantity_rejects_huge_exponents_cleanly(value: object) -> None:
    """An exponent beyond Decimal's range is an InvalidQuantity, not a decimal.Overflow."""
    with pytest.raises(InvalidQuantity):
        validation.to_quantity(value)


@pytest.mark.parametrize("value", [10**15, "1E+15", "1000000000000000.0", 1e20])
def test_to_quantity_rejects_ten_to_the_fifteen_or_more(value: object) -> None:
    """A quantity of 10^15 or more is refused, whatever its digits, as Stripe would."""
    with pytest.raises(InvalidQuantity, match=r"10\^15 or more"):
        validation.to_quantity(value)


def test_to_quantity_accepts_largest_fifteen_digit_number() -> None:
    """999999999999999 (15 nines) is just below the limit and accepted."""
    assert validation.to_quantity(999_999_999_999_999) == Decimal("999999999999999")


def test_to_quantity_accepts_thirty_decimal_places() -> None:
    """A quantity with 30 decimal places is accepted exactly."""
    assert validation.to_quantity("1E-30") == Decimal("1E-30")
    assert validation.to_quantity("0.000000000000000000000000000123") == Decimal("1.23E-28")


@pytest.mark.parametrize("value", ["1E-31", "0.0000000000000000000000000000001", "1E-1000000"])
def test_to_quantity_rejects_more_than_thirty_decimal_places(value: str) -> None:
    """More than 30 decimal places are refused, so that sums stay exact."""
    with pytest.raises(InvalidQuantity, match="more than 30 decimal places"):
        validation.to_quantity(value)


def test_to_quantity_zero_with_many_decimal_places_is_zero() -> None:
    """A zero written with many decimal places is just zero, not too precise."""
    assert validation.to_quantity("0E-40") == 0


def test_quantity_errors_are_invalid_usage() -> None:
    """Quantity errors are InvalidUsage, hence MetersyncError, as the contract says."""
    with pytest.raises(InvalidUsage) as info:
        validation.to_quantity(-1)
    assert isinstance(info.value, MetersyncError)


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC),
        ),
        (date(2026, 1, 2), datetime(2026, 1, 2, tzinfo=UTC)),
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05+02:00", datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05-05:30", datetime(2026, 1, 2, 8, 34, 5, tzinfo=UTC)),
        (" 2026-01-02T03:04:05.250000Z ", datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1767225600, datetime(2026, 1, 1, tzinfo=UTC)),
        (1767225600.5, datetime(2026, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_to_utc_accepts_supported_forms(value: object, expected: datetime) -> None:
    """Aware datetimes, dates, ISO strings with Z or offsets and unix seconds become UTC."""
    result = validation.to_utc(value)
    assert result == expected
    assert result.utcoffset() == timedelta(0)


def test_to_utc_accepts_iso_date_string() -> None:
    """An ISO date string means midnight UTC, like a date object."""
    assert validation.to_utc("2026-10-10") == datetime(2026, 10, 10, tzinfo=UTC)


def test_period_accepts_date_strings_from_the_contract() -> None:
    """get_usage's documented ``period_start="2026-10-10"`` form parses to midnight UTC."""
    assert validation.period("2026-10-10", "2026-11-11") == (
        datetime(2026, 10, 10, tzinfo=UTC),
        datetime(2026, 11, 11, tzinfo=UTC),
    )


def test_to_utc_rejects_naive_datetime() -> None:
    """A datetime without a time zone is refused rather than guessed."""
    with pytest.raises(InvalidTimestamp, match="has no time zone"):
        validation.to_utc(datetime(2026, 1, 2, 3, 4, 5))


def test_to_utc_rejects_naive_iso_string() -> None:
    """An ISO datetime string without an offset is refused rather than guessed."""
    with pytest.raises(InvalidTimestamp, match="has no time zone"):
        validation.to_utc("2026-01-02T03:04:05")


@pytest.mark.parametrize(
    "value", ["yesterday", "", "2026-13-01T00:00:00Z", "12/01/2026", "2026-02-30", "1767225600"]
)
def test_to_utc_rejects_garbage_strings(value: str) -> None:
    """Strings that are not ISO 8601 are refused with a message saying so."""
    with pytest.raises(InvalidTimestamp, match="not an ISO 8601"):
        validation.to_utc(value)


@pytest.mark.parametrize("value", [True, None, [2026], float("nan"), 10**20])
def test_to_utc_rejects_other_values(value: object) -> None:
    """Booleans, None, other objects and impossible unix times are refused."""
    with pytest.raises(InvalidTimestamp):
        validation.to_utc(value)


def test_to_utc_names_the_field_in_errors() -> None:
    """The error message names the field it was given, e.g. period_start."""
    with pytest.raises(InvalidTimestamp, match=r"^period_start "):
        validation.to_utc("nope", field="period_start")


def test_event_time_defaults_to_now() -> None:
    """No timestamp means the event happened now."""
    assert validation.event_time(None, now=NOW) == NOW


def test_event_time_accepts_five_minutes_ahead() -> None:
    """Exactly five minutes in the future is still accepted."""
    at = NOW + timedelta(minutes=5)
    assert validation.event_time(at, now=NOW) == at


def test_event_time_rejects_beyond_five_minutes_ahead() -> None:
    """More than five minutes in the future is refused, as Stripe would refuse it."""
    with pytest.raises(InvalidTimestamp, match="more than 5 minutes in the future"):
        validation.event_time(NOW + timedelta(minutes=5, microseconds=1), now=NOW)


def test_event_time_accepts_oldest_billable_instant() -> None:
    """35 days minus one hour ago is the oldest instant accepted."""
    at = NOW - timedelta(days=35) + timedelta(hours=1)
    assert validation.event_time(at, now=NOW) == at


def test_event_time_rejects_older_than_billable() -> None:
    """Anything older than 35 days minus one hour is refused."""
    at = NOW - timedelta(days=35) + timedelta(hours=1) - timedelta(microseconds=1)
    with pytest.raises(InvalidTimestamp, match="older than"):
        validation.event_time(at, now=NOW)


def test_event_time_parses_strings_and_converts_to_utc() -> None:
    """An ISO string with an offset is parsed and returned in UTC."""
    result = validation.event_time("2026-03-15T13:30:00+02:00", now=NOW)
    assert result == datetime(2026, 3, 15, 11, 30, tzinfo=UTC)
    assert result.tzinfo is UTC


# --- idempotency keys ---------------------------------------------------------------------


def test_idempotency_key_none_means_no_key() -> None:
    """No key is allowed and stays None."""
    assert validation.idempotency_key(None) is None


@pytest.mark.parametrize("key", ["k", "req-1", "x" * 255])
def test_idempotency_key_accepts_up_to_255_characters(key: str) -> None:
    """Non-empty keys of up to 255 characters are returned unchanged."""
    assert validation.idempotency_key(key) == key


def test_idempotency_key_rejects_empty() -> None:
    """An empty key is refused: it would silently collide with every other empty key."""
    with pytest.raises(InvalidUsage, match="non-empty string"):
        validation.idempotency_key("")


def test_idempotency_key_rejects_too_long() -> None:
    """A key of 256 characters is refused with its length and the limit."""
    with pytest.raises(InvalidUsage, match="256 characters; at most 255"):
        validation.idempotency_key("x" * 256)


def test_idempotency_key_rejects_nul_character() -> None:
    """A key containing NUL is refused: PostgreSQL text cannot store it."""
    with pytest.raises(InvalidUsage, match="NUL"):
        validation.idempotency_key("req\x001")


@pytest.mark.parametrize("key", [5, b"req-1", ["k"]])
def test_idempotency_key_rejects_non_strings(key: object) -> None:
    """Keys must be strings; numbers and bytes are refused."""
    with pytest.raises(InvalidUsage, match="non-empty string"):
        validation.idempotency_key(key)


# --- periods ------------------------------------------------------------------------------


def test_period_parses_both_ends() -> None:
    """A period is parsed into two UTC datetimes, start first."""
    start, end = validation.period("2026-01-01T00:00:00Z", date(2026, 2, 1))
    assert (start, end) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))


def test_period_rejects_empty() -> None:
    """A period whose end equals its start is refused."""
    with pytest.raises(InvalidPeriod, match="must be after period_start"):
        validation.period(NOW, NOW)


def test_period_rejects_reversed() -> None:
    """A period whose end is before its start is refused."""
    with pytest.raises(InvalidPeriod, match="must be after period_start"):
        validation.period(NOW, NOW - timedelta(seconds=1))


def test_period_reports_bad_timestamps_as_invalid_period() -> None:
    """A malformed end is an InvalidPeriod naming period_end."""
    with pytest.raises(InvalidPeriod, match="period_end"):
        validation.period(NOW, "garbage")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (
            datetime(2026, 3, 15, 12, tzinfo=UTC),
            (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
        ),
        (
            datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ),
        (
            datetime(2026, 1, 31, tzinfo=UTC),
            (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
        ),
        (
            datetime(2028, 2, 29, 6, tzinfo=UTC),
            (datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
        ),
        (
            datetime(2026, 5, 1, tzinfo=UTC),
            (datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)),
        ),
    ],
)
def test_default_period_is_calendar_month(
    now: datetime, expected: tuple[datetime, datetime]
) -> None:
    """With no billing period known, the period is the calendar month holding ``now``."""
    assert validation.default_period(now) == expected
