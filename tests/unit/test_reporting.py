"""What a closed report sends to Stripe: formula, identifier, whole value with carry, time."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from adapter.domain.aggregation import AGGREGATIONS, ZERO, Aggregation
from adapter.domain.reporting import (
    FUTURE_MARGIN,
    PAST_MARGIN,
    ROUNDINGS,
    Decision,
    carry_from_history,
    identifier,
    round_whole,
    send_timestamp,
    stripe_formula,
    value_to_send,
)
from adapter.store import catalog

NOW = datetime(2026, 3, 10, 12, 34, 56, 789000, tzinfo=UTC)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
DAY = timedelta(days=1)
OLDEST = NOW - 35 * DAY + PAST_MARGIN  # the oldest instant send_timestamp may return
NEWEST_AHEAD = NOW + timedelta(minutes=5) - FUTURE_MARGIN
T0 = datetime(2026, 3, 1, tzinfo=UTC)
ID_CHARS = re.compile(r"[A-Za-z0-9_-]+")
#: Non-negative report values with up to 6 decimal places.
amounts = st.decimals(min_value=0, max_value=10**9, places=6)


def _ident(**changes: object) -> str:
    """An identifier for a default report, with some inputs changed."""
    args: dict[str, object] = {
        "namespace": "inst-1",
        "account_id": 7,
        "meter_id": 3,
        "report_id": 42,
        "window_start": T0,
        "attempt_generation": 0,
    }
    args.update(changes)
    return identifier(**args)  # type: ignore[arg-type]


def _oracle(total: Fraction, rounding: str) -> int:
    """The period total rounded by a rule, computed independently of the module."""
    if rounding == "down":
        return math.floor(total)
    if rounding == "up":
        return math.ceil(total)
    return math.floor(total + Fraction(1, 2))


def _push_period(
    values: Sequence[Decimal], *, rounding: str, aggregation: Aggregation = "sum"
) -> list[Decision]:
    """Push a period's reports in order, chaining the carry; the last one closes it."""
    decisions: list[Decision] = []
    carry, previous = ZERO, None
    for i, value in enumerate(values):
        decision = value_to_send(
            aggregation=aggregation,
            report_value=value,
            carried_in=carry,
            previous_sent_in_period=previous,
            closes_period=i == len(values) - 1,
            rounding=rounding,
        )
        decisions.append(decision)
        carry, previous = decision.carry_out, decision.value
    return decisions


# --- stripe_formula -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aggregation", "formula"),
    [("sum", "sum"), ("count", "sum"), ("max", "last"), ("last", "last")],
)
def test_stripe_formula_per_aggregation(aggregation: str, formula: str) -> None:
    """sum and count go to a sum meter, max and last to a last meter."""
    assert stripe_formula(aggregation) == formula


def test_stripe_formula_never_count() -> None:
    """No local aggregation is sent to a Stripe count meter, which ignores values."""
    assert {stripe_formula(a) for a in AGGREGATIONS} == {"sum", "last"}


def test_stripe_formula_refuses_unknown_aggregation() -> None:
    """An unknown aggregation is refused, naming the known ones."""
    with pytest.raises(ValueError, match="sum, count, max, last"):
        stripe_formula("avg")


# --- identifier -----------------------------------------------------------------------


def test_identifier_is_pinned() -> None:
    """The scheme never changes: a changed identifier would let a resend bill twice."""
    assert _ident() == "ms-a7-m3-r42-w20260301T000000Z-85c0ff564fcc2e021d4d"


def test_identifier_is_deterministic() -> None:
    """The same report gives the same identifier every time."""
    assert _ident() == _ident()
    assert _ident(attempt_generation=2) == _ident(attempt_generation=2)


def test_identifier_names_the_report() -> None:
    """The readable part names account, meter, report and window; generation 0 adds nothing."""
    assert _ident().startswith("ms-a7-m3-r42-w20260301T000000Z-")
    assert "-g" not in _ident()
    assert _ident(attempt_generation=3).startswith("ms-a7-m3-r42-w20260301T000000Z-g3-")


@pytest.mark.parametrize(
    "change",
    [
        {"namespace": "inst-2"},
        {"account_id": 8},
        {"meter_id": 4},
        {"report_id": 43},
        {"window_start": T0 + HOUR},
        {"window_start": T0 + timedelta(microseconds=1)},
        {"attempt_generation": 1},
    ],
)
def test_identifier_changes_with_every_input(change: dict[str, object]) -> None:
    """Each input, the namespace included, changes the identifier."""
    assert _ident(**change) != _ident()


def test_identifier_namespace_only_in_hash() -> None:
    """Two installations with the same ids differ only in the hash."""
    a, b = _ident(namespace="inst-a"), _ident(namespace="inst-b")
    assert a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0]
    assert a.rsplit("-", 1)[1] != b.rsplit("-", 1)[1]


def test_identifier_same_instant_any_time_zone() -> None:
    """A window start given in another time zone names the same instant, same identifier."""
    tokyo = T0.astimezone(timezone(timedelta(hours=9)))
    assert _ident(window_start=tokyo) == _ident()


def test_identifier_long_inputs_fit() -> None:
    """Huge ids and a huge non-ASCII namespace still give ≤100 safe characters."""
    big = 10**60
    ident = _ident(
        namespace="名前/ü " * 5000,
        account_id=big,
        meter_id=big + 1,
        report_id=big + 2,
        attempt_generation=big,
    )
    assert len(ident) == 100
    assert ID_CHARS.fullmatch(ident)


def test_identifier_cut_readable_part_stays_unique() -> None:
    """When the readable part is cut, ids differing only in the cut tail still differ."""
    big = 10**80
    a, b = _ident(account_id=big, report_id=1), _ident(account_id=big, report_id=2)
    assert a[:79] == b[:79]
    assert a != b


@pytest.mark.parametrize(
    "change",
    [
        {"namespace": ""},
        {"account_id": -1},
        {"meter_id": True},
        {"report_id": "42"},
        {"attempt_generation": -1},
        {"window_start": datetime(2026, 3, 1)},  # naive on purpose
    ],
)
def test_identifier_refuses_bad_input(change: dict[str, object]) -> None:
    """Empty namespace, negative or non-int ids and naive datetimes are refused."""
    with pytest.raises(ValueError, match="must be"):
        _ident(**change)


@given(
    namespace=st.text(min_size=1, max_size=300),
    ids=st.tuples(*[st.integers(min_value=0, max_value=10**40)] * 4),
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
def test_identifier_always_fits_stripe(
    namespace: str, ids: tuple[int, int, int, int], start: datetime
) -> None:
    """Any inputs give a deterministic identifier of ≤100 characters from [A-Za-z0-9_-]."""
    ident = identifier(
        namespace=namespace,
        account_id=ids[0],
        meter_id=ids[1],
        report_id=ids[2],
        window_start=start,
        attempt_generation=ids[3],
    )
    assert 0 < len(ident) <= 100
    assert ID_CHARS.fullmatch(ident)
    assert ident == identifier(
        namespace=namespace,
        account_id=ids[0],
        meter_id=ids[1],
        report_id=ids[2],
        window_start=start,
        attempt_generation=ids[3],
    )


# --- round_whole ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rounding", "expected"),
    [
        ("2.5", "down", 2),
        ("2.5", "up", 3),
        ("2.5", "nearest", 3),
        ("2.49", "nearest", 2),
        ("3", "up", 3),
        ("3.000001", "up", 4),
        ("0.999999", "down", 0),
        ("-0.5", "nearest", 0),  # half-up means towards +infinity
        ("-0.51", "nearest", -1),
        ("-0.2", "up", 0),
        ("-0.2", "down", -1),
    ],
)
def test_round_whole_rules(value: str, rounding: str, expected: int) -> None:
    """down is floor, up is ceiling, nearest sends halves up."""
    result = round_whole(Decimal(value), rounding)
    assert result == expected
    assert type(result) is int


def test_round_whole_refuses_unknown_rule_and_nan() -> None:
    """An unknown rule and a non-finite value are refused."""
    with pytest.raises(ValueError, match="down, up, nearest"):
        round_whole(Decimal(1), "half-even")
    with pytest.raises(ValueError, match="finite"):
        round_whole(Decimal("NaN"), "down")


def test_roundings_match_the_catalog() -> None:
    """The rules here are exactly the ones a meter may be given."""
    assert ROUNDINGS == catalog.ROUNDINGS


# --- value_to_send: sum and count ----------------------------------------------------


def test_sum_carries_fractions_and_rounds_at_close() -> None:
    """Fractions travel to the next report; the closing report rounds what is left."""
    values = [Decimal("0.4"), Decimal("0.4"), Decimal("0.4")]
    down = _push_period(values, rounding="down")
    assert [(d.value, d.carry_out) for d in down] == [
        (0, Decimal("0.4")),
        (0, Decimal("0.8")),
        (1, Decimal("0.2")),
    ]
    up = _push_period(values, rounding="up")
    assert [d.value for d in up] == [0, 0, 2]
    assert up[-1].carry_out == Decimal("-0.8")


def test_sum_sends_whole_part_at_once() -> None:
    """A report worth 12.75 sends 12 and carries 0.75 when it does not close the period."""
    d = value_to_send(
        aggregation="sum",
        report_value=Decimal("12.75"),
        carried_in=Decimal("0.5"),
        previous_sent_in_period=None,
        closes_period=False,
        rounding="up",
    )
    assert d == Decision(13, Decimal("0.25"))


@pytest.mark.parametrize(("rounding", "expected"), [("down", 0), ("up", 1), ("nearest", 1)])
def test_sum_closing_half(rounding: str, expected: int) -> None:
    """A closing report holding exactly half a unit follows the rule."""
    d = value_to_send(
        aggregation="sum",
        report_value=Decimal("0.25"),
        carried_in=Decimal("0.25"),
        previous_sent_in_period=None,
        closes_period=True,
        rounding=rounding,
    )
    assert d.value == expected
    assert d.carry_out == Decimal("0.5") - expected


def test_late_report_after_rounding_up_sends_nothing_twice() -> None:
    """After a close rounded 1.5 up to 2, a late 0.3 sends 0: ceil(1.8) is still 2."""
    d = value_to_send(
        aggregation="sum",
        report_value=Decimal("0.3"),
        carried_in=Decimal("-0.5"),
        previous_sent_in_period=2,
        closes_period=True,
        rounding="up",
    )
    assert d == Decision(0, Decimal("-0.2"))


def test_negative_carry_never_sends_a_negative_value() -> None:
    """A negative carry on a report that does not close sends 0 and keeps the debt."""
    d = value_to_send(
        aggregation="sum",
        report_value=Decimal("0.1"),
        carried_in=Decimal("-0.9"),
        previous_sent_in_period=None,
        closes_period=False,
        rounding="down",
    )
    assert d == Decision(0, Decimal("-0.8"))


def test_count_sends_whole_counts() -> None:
    """A count meter's reports are whole, so they are sent as they are with no carry."""
    decisions = _push_period(
        [Decimal(3), Decimal(0), Decimal(5)], rounding="up", aggregation="count"
    )
    assert [d.value for d in decisions] == [3, 0, 5]
    assert all(d.carry_out == 0 for d in decisions)


def test_value_of_fifteen_digits_is_sent() -> None:
    """The largest 15-digit whole number goes through."""
    d = value_to_send(
        aggregation="sum",
        report_value=Decimal("999999999999999.4"),
        carried_in=ZERO,
        previous_sent_in_period=None,
        closes_period=True,
        rounding="nearest",
    )
    assert d.value == 999_999_999_999_999


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_value_of_sixteen_digits_is_refused(aggregation: str) -> None:
    """A value of 16 digits is refused before it reaches Stripe, whatever the rule."""
    with pytest.raises(ValueError, match="16 digits; Stripe takes whole numbers of at most 15"):
        value_to_send(
            aggregation=aggregation,
            report_value=Decimal("999999999999999.5"),
            carried_in=ZERO,
            previous_sent_in_period=None,
            closes_period=True,
            rounding="up",
        )


def test_carry_can_push_a_value_over_fifteen_digits() -> None:
    """A carry that tips the total to 10^15 is refused too."""
    with pytest.raises(ValueError, match="16 digits"):
        value_to_send(
            aggregation="sum",
            report_value=Decimal("999999999999999.6"),
            carried_in=Decimal("0.5"),
            previous_sent_in_period=None,
            closes_period=False,
            rounding="down",
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"aggregation": "avg"}, "aggregation must be"),
        ({"rounding": "banker"}, "rounding must be"),
        ({"report_value": Decimal(-1)}, "report_value must be"),
        ({"report_value": Decimal("Infinity")}, "report_value must be"),
        ({"report_value": 3}, "report_value must be"),
        ({"carried_in": Decimal(1)}, "between -1 and 1"),
        ({"carried_in": Decimal(-1)}, "between -1 and 1"),
        ({"carried_in": Decimal("NaN")}, "carried_in must be"),
    ],
)
def test_value_to_send_refuses_bad_input(change: dict[str, object], message: str) -> None:
    """Unknown rules, negative or non-finite values and impossible carries are refused."""
    args: dict[str, object] = {
        "aggregation": "sum",
        "report_value": Decimal(1),
        "carried_in": ZERO,
        "previous_sent_in_period": None,
        "closes_period": False,
        "rounding": "down",
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        value_to_send(**args)  # type: ignore[arg-type]


# --- value_to_send: max and last -----------------------------------------------------


def test_max_sends_the_rounded_running_maximum() -> None:
    """A max meter sends the running maximum, rounded, never going down."""
    values = [Decimal("3.2"), Decimal("7.5"), Decimal(5), Decimal("7.6")]
    decisions = _push_period(values, rounding="nearest", aggregation="max")
    assert [d.value for d in decisions] == [3, 8, 8, 8]
    assert all(d.carry_out == 0 for d in decisions)


def test_max_never_below_what_was_sent() -> None:
    """A report below the value already sent in the period sends that value again."""
    d = value_to_send(
        aggregation="max",
        report_value=Decimal(2),
        carried_in=ZERO,
        previous_sent_in_period=Decimal(9),
        closes_period=False,
        rounding="down",
    )
    assert d == Decision(9, ZERO)


@pytest.mark.parametrize("closes", [False, True])
@pytest.mark.parametrize(("rounding", "expected"), [("down", 4), ("up", 5), ("nearest", 5)])
def test_max_rounds_by_the_rule_on_every_report(closes: bool, rounding: str, expected: int) -> None:
    """A last meter keeps one value, so max rounds every report, closing or not."""
    d = value_to_send(
        aggregation="max",
        report_value=Decimal("4.5"),
        carried_in=ZERO,
        previous_sent_in_period=None,
        closes_period=closes,
        rounding=rounding,
    )
    assert d.value == expected


def test_last_can_go_down() -> None:
    """A last meter sends the latest value, even below one sent before."""
    d = value_to_send(
        aggregation="last",
        report_value=Decimal("2.2"),
        carried_in=ZERO,
        previous_sent_in_period=9,
        closes_period=False,
        rounding="up",
    )
    assert d == Decision(3, ZERO)


@pytest.mark.parametrize("aggregation", ["max", "last"])
def test_max_and_last_refuse_a_carry(aggregation: str) -> None:
    """max and last carry nothing, so a carry handed to them is a caller's mistake."""
    with pytest.raises(ValueError, match="carries nothing"):
        value_to_send(
            aggregation=aggregation,
            report_value=Decimal(1),
            carried_in=Decimal("0.5"),
            previous_sent_in_period=None,
            closes_period=False,
            rounding="down",
        )


@pytest.mark.parametrize("previous", [Decimal("2.5"), Decimal(-1), Decimal("NaN"), True])
def test_max_refuses_an_impossible_previous_value(previous: object) -> None:
    """A previous value that is not a non-negative whole number was never sent."""
    with pytest.raises(ValueError, match="value sent must"):
        value_to_send(
            aggregation="max",
            report_value=Decimal(1),
            carried_in=ZERO,
            previous_sent_in_period=previous,  # type: ignore[arg-type]
            closes_period=False,
            rounding="down",
        )


# --- carry_from_history ----------------------------------------------------------------


def test_carry_from_history() -> None:
    """The carry is what sent reports counted minus what was sent for them."""
    assert carry_from_history([], []) == 0
    assert carry_from_history([Decimal("0.4"), Decimal("1.7")], [0, Decimal(2)]) == Decimal("0.1")
    assert carry_from_history([Decimal("1.5")], [2]) == Decimal("-0.5")


@pytest.mark.parametrize(
    ("reported", "sent"),
    [
        ([Decimal(3)], [1]),
        ([Decimal(1)], [3]),
        ([Decimal(-1)], []),
        ([Decimal(1)], [Decimal("0.5")]),
    ],
)
def test_carry_from_history_refuses_inconsistent_history(
    reported: list[Decimal], sent: list[Decimal]
) -> None:
    """A history no sequence of decisions produces is refused."""
    with pytest.raises(ValueError, match=r"must be|carry lies between"):
        carry_from_history(reported, sent)


# --- properties: nothing lost, nothing sent twice -----------------------------------------


@pytest.mark.parametrize("rounding", ROUNDINGS)
@given(values=st.lists(amounts, min_size=1, max_size=30))
def test_sum_property_sent_equals_rounded_total(rounding: str, values: list[Decimal]) -> None:
    """Over a period, the values sent add up to the total rounded by the rule."""
    decisions = _push_period(values, rounding=rounding)
    assert all(type(d.value) is int and d.value >= 0 for d in decisions)
    assert all(0 <= d.carry_out < 1 for d in decisions[:-1])
    assert -1 < decisions[-1].carry_out < 1
    total = sum((Fraction(v) for v in values), Fraction(0))
    assert sum(d.value for d in decisions) == _oracle(total, rounding)
    assert Fraction(decisions[-1].carry_out) == total - sum(d.value for d in decisions)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@given(
    values=st.lists(amounts, min_size=1, max_size=15),
    late=st.lists(amounts, min_size=1, max_size=5),
)
def test_sum_property_late_reports_after_close(
    rounding: str, values: list[Decimal], late: list[Decimal]
) -> None:
    """Late reports after the close keep the sum sent equal to the rounded total."""
    decisions = _push_period(values, rounding=rounding)
    carry, sent = decisions[-1].carry_out, sum(d.value for d in decisions)
    total = sum((Fraction(v) for v in values), Fraction(0))
    for value in late:
        d = value_to_send(
            aggregation="sum",
            report_value=value,
            carried_in=carry,
            previous_sent_in_period=None,
            closes_period=True,
            rounding=rounding,
        )
        assert d.value >= 0
        assert -1 < d.carry_out < 1
        carry, sent, total = d.carry_out, sent + d.value, total + Fraction(value)
        assert sent == _oracle(total, rounding)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@given(values=st.lists(amounts, min_size=1, max_size=20))
def test_carry_from_history_matches_chained_carry(rounding: str, values: list[Decimal]) -> None:
    """The carry rebuilt from stored totals and sent values equals the chained one."""
    decisions = _push_period(values, rounding=rounding)
    for i, d in enumerate(decisions):
        assert carry_from_history(values[: i + 1], [x.value for x in decisions[: i + 1]]) == (
            d.carry_out
        )


@given(counts=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30))
def test_count_property_sends_the_exact_count(counts: list[int]) -> None:
    """A count meter sends exactly the number of events, with no carry."""
    decisions = _push_period([Decimal(c) for c in counts], rounding="up", aggregation="count")
    assert [d.value for d in decisions] == counts
    assert all(d.carry_out == 0 for d in decisions)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@given(values=st.lists(amounts, min_size=1, max_size=30))
def test_max_property_last_sent_is_rounded_maximum(rounding: str, values: list[Decimal]) -> None:
    """Every value sent is the rounded maximum so far; so the last is the period's."""
    decisions = _push_period(values, rounding=rounding, aggregation="max")
    for i, d in enumerate(decisions):
        assert d.value == _oracle(Fraction(max(values[: i + 1])), rounding)
        assert d.carry_out == 0
    assert [d.value for d in decisions] == sorted(d.value for d in decisions)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@given(values=st.lists(amounts, min_size=1, max_size=30))
def test_last_property_last_sent_is_rounded_latest(rounding: str, values: list[Decimal]) -> None:
    """Each value sent is the latest value rounded; so the last is the period's."""
    decisions = _push_period(values, rounding=rounding, aggregation="last")
    assert [d.value for d in decisions] == [_oracle(Fraction(v), rounding) for v in values]
    assert all(d.carry_out == 0 for d in decisions)


# --- send_timestamp -------------------------------------------------------------------


def _at(
    start: datetime,
    end: datetime,
    *,
    period: tuple[datetime, datetime] | tuple[None, None] = (None, None),
    now: datetime = NOW,
) -> datetime | None:
    """send_timestamp for a window, an optional period and a clock."""
    return send_timestamp(
        window_start=start, window_end=end, period_start=period[0], period_end=period[1], now=now
    )


def test_timestamp_last_second_of_a_closed_window() -> None:
    """A past window sends at its last whole second, strictly before its end."""
    start = datetime(2026, 3, 10, 11, tzinfo=UTC)
    assert _at(start, start + HOUR) == datetime(2026, 3, 10, 11, 59, 59, tzinfo=UTC)


def test_timestamp_window_end_with_fraction() -> None:
    """An end at 12:00:00.5 allows 12:00:00 itself."""
    start = datetime(2026, 3, 10, 11, tzinfo=UTC)
    end = datetime(2026, 3, 10, 12, 0, 0, 500000, tzinfo=UTC)
    assert _at(start, end) == datetime(2026, 3, 10, 12, tzinfo=UTC)


def test_timestamp_open_window_not_after_now() -> None:
    """A window still running (flushed early) sends at now, whole seconds."""
    start = datetime(2026, 3, 10, 12, tzinfo=UTC)
    assert _at(start, start + HOUR) == datetime(2026, 3, 10, 12, 34, 56, tzinfo=UTC)


def test_timestamp_window_just_ahead_of_now() -> None:
    """A window starting within Stripe's 5 minutes ahead sends at its first second."""
    start = NOW + timedelta(minutes=2)
    assert _at(start, start + HOUR) == datetime(2026, 3, 10, 12, 36, 57, tzinfo=UTC)


@pytest.mark.parametrize("ahead", [timedelta(minutes=4, seconds=30), timedelta(minutes=6), DAY])
def test_timestamp_window_too_far_ahead(ahead: timedelta) -> None:
    """A window starting beyond 5 minutes ahead (less the margin) has no timestamp."""
    assert _at(NOW + ahead, NOW + ahead + HOUR) is None


def test_timestamp_window_older_than_35_days() -> None:
    """A window entirely older than Stripe's 35 days has no timestamp: it expired."""
    end = NOW - 35 * DAY
    assert _at(end - HOUR, end) is None


def test_timestamp_window_ending_inside_the_margin() -> None:
    """A window ending less than the margin inside 35 days has no timestamp either."""
    end = NOW - 35 * DAY + PAST_MARGIN - SECOND
    assert _at(end - HOUR, end) is None


def test_timestamp_window_straddling_35_days() -> None:
    """A window reaching past the 35-day limit sends at its end, which Stripe still takes."""
    start = NOW - 36 * DAY
    end = NOW - 34 * DAY
    assert _at(start, end) == end.replace(microsecond=0)  # end is at .789 s
    short_end = OLDEST + timedelta(seconds=2)
    assert _at(start, short_end) == OLDEST.replace(microsecond=0) + 2 * SECOND


def test_timestamp_inside_the_period_end() -> None:
    """A period ending inside the window caps the timestamp at the period's last second."""
    start = datetime(2026, 3, 10, 9, tzinfo=UTC)
    period_end = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)
    got = _at(start, start + HOUR, period=(start - DAY, period_end))
    assert got == datetime(2026, 3, 10, 9, 29, 59, tzinfo=UTC)


def test_timestamp_inside_the_period_start() -> None:
    """A period starting inside a window ahead of now moves the first second there."""
    start = NOW + timedelta(seconds=30)
    period_start = NOW + timedelta(minutes=1, seconds=10)
    got = _at(start, start + HOUR, period=(period_start, period_start + DAY))
    assert got == period_start.replace(microsecond=0) + SECOND


def test_timestamp_period_partly_older_than_35_days() -> None:
    """A period still open at the 35-day limit does not extend what Stripe takes."""
    start = NOW - 40 * DAY
    assert _at(start, start + HOUR, period=(start - DAY, NOW)) is None


def test_timestamp_converts_time_zones() -> None:
    """Inputs in any time zone give an aware UTC result."""
    paris = timezone(timedelta(hours=1))
    start = datetime(2026, 3, 10, 12, tzinfo=paris)
    got = _at(start, start + HOUR, now=NOW.astimezone(paris))
    assert got == datetime(2026, 3, 10, 11, 59, 59, tzinfo=UTC)
    assert got is not None
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    ("start", "end", "period", "message"),
    [
        (T0, T0, (None, None), "empty report window"),
        (T0 + HOUR, T0, (None, None), "empty report window"),
        (T0, T0 + HOUR, (T0 + HOUR, T0 + DAY), "outside its billing period"),
        (T0, T0 + HOUR, (T0 - DAY, T0), "outside its billing period"),
        (datetime(2026, 3, 1), T0 + HOUR, (None, None), "aware datetime"),
    ],
)
def test_timestamp_refuses_impossible_windows(
    start: datetime,
    end: datetime,
    period: tuple[datetime, datetime] | tuple[None, None],
    message: str,
) -> None:
    """Empty windows, windows outside their period and naive datetimes are refused."""
    with pytest.raises(ValueError, match=message):
        _at(start, end, period=period, now=T0 + DAY)


def _ceil(at: datetime) -> datetime:
    """The first whole second at or after ``at``."""
    whole = at.replace(microsecond=0)
    return whole if whole == at else whole + SECOND


_instants = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 6, 1), timezones=st.just(UTC)
)


@given(
    start=_instants,
    length=st.timedeltas(min_value=SECOND, max_value=3 * DAY),
    now=_instants,
    known=st.booleans(),
    period_shift=st.fractions(min_value=-1, max_value=Fraction(1, 2)),
    period_length=st.timedeltas(min_value=SECOND, max_value=40 * DAY),
)
def test_timestamp_property_latest_second_inside_every_bound(  # noqa: PLR0913  one parameter per input Hypothesis draws
    start: datetime,
    length: timedelta,
    now: datetime,
    known: bool,
    period_shift: Fraction,
    period_length: timedelta,
) -> None:
    """The timestamp is a whole second inside window, period and Stripe's window: the
    latest one not after now, else the first one; None exactly when there is none."""
    end = start + length
    p_start = start + length * float(period_shift) if known else None
    p_end = p_start + period_length if p_start is not None else None
    assume(p_end is None or p_end > start)
    got = _at(start, end, period=(p_start, p_end) if known else (None, None), now=now)  # type: ignore[arg-type]
    low = max(start, p_start or start, now - 35 * DAY + PAST_MARGIN)
    high = min(end, p_end or end)  # exclusive
    newest = now + timedelta(minutes=5) - FUTURE_MARGIN
    first, last = _ceil(low), min(_ceil(high) - SECOND, newest.replace(microsecond=0))
    if got is None:
        assert first > last
        return
    assert got.microsecond == 0
    assert got.tzinfo is UTC
    assert first <= got <= last
    if first <= now:
        assert got <= now
        assert got == last or got + SECOND > now
    else:
        assert got == first
