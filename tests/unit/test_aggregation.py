"""Report aggregates: adding events, merging reports and reading a meter's value."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.domain.aggregation import AGGREGATIONS, ZERO, Aggregate, Aggregation, combine

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _agg(*events: tuple[str | int, int]) -> Aggregate:
    """An aggregate of (quantity, minutes after T0) events, added in order."""
    result = Aggregate()
    for quantity, minutes in events:
        result = result.add(Decimal(quantity), T0 + timedelta(minutes=minutes))
    return result


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_empty_aggregate_values_are_zero(aggregation: Aggregation) -> None:
    """An aggregate with no events is worth zero by every rule."""
    value = Aggregate().value(aggregation)
    assert value == ZERO
    assert isinstance(value, Decimal)


def test_add_tracks_every_statistic() -> None:
    """Adding events keeps the total, count, maximum and latest value together."""
    a = _agg(("2.5", 10), ("7", 0), ("1.25", 5))
    assert a.total == Decimal("10.75")
    assert a.events == 3
    assert a.max_value == Decimal(7)
    assert a.last_value == Decimal("2.5")
    assert a.last_at == T0 + timedelta(minutes=10)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("sum", Decimal("11.75")), ("count", Decimal(4)), ("max", Decimal(7)), ("last", Decimal(1))],
)
def test_value_follows_the_meters_rule(aggregation: Aggregation, expected: Decimal) -> None:
    """value() picks the statistic the aggregation names."""
    a = _agg(("2.5", 10), ("7", 0), ("1.25", 5), ("1", 20))
    assert a.value(aggregation) == expected


def test_add_does_not_mutate() -> None:
    """add() returns a new aggregate and leaves the original untouched."""
    a = _agg(("1", 0))
    b = a.add(Decimal(5), T0 + timedelta(minutes=1))
    assert (a.total, a.events) == (Decimal(1), 1)
    assert (b.total, b.events) == (Decimal(6), 2)


def test_add_older_event_does_not_replace_last() -> None:
    """An event older than the latest one does not become the last value."""
    a = _agg(("4", 10), ("9", 3))
    assert a.last_value == Decimal(4)
    assert a.last_at == T0 + timedelta(minutes=10)


def test_add_equal_time_later_recorded_wins() -> None:
    """On equal event times, the event added later is the last value."""
    a = _agg(("4", 10), ("9", 10))
    assert a.value("last") == Decimal(9)
    b = _agg(("9", 10), ("4", 10))
    assert b.value("last") == Decimal(4)


def test_add_zero_quantity_counts_as_an_event() -> None:
    """A zero quantity is an event: it counts, and can be the last and the max value."""
    a = _agg(("0", 1))
    assert a.events == 1
    assert a.value("count") == 1
    assert a.max_value == ZERO
    assert a.last_value == ZERO


def test_extend_equals_repeated_add() -> None:
    """extend() gives exactly what adding the same events one by one gives."""
    start = _agg(("2", 3))
    events = [(Decimal("1.5"), T0 + timedelta(minutes=3)), (Decimal(0), T0)]
    assert start.extend(events) == start.add(*events[0]).add(*events[1])
    assert start.extend([]) is start


def test_sums_stay_exact_beyond_default_decimal_precision() -> None:
    """Totals keep every digit even past Decimal's default 28 digits of precision."""
    big, tiny = Decimal("999999999999999"), Decimal("1E-30")
    a = Aggregate().add(big, T0).add(tiny, T0)
    assert a.total == Decimal("999999999999999.000000000000000000000000000001")
    merged = a.merge(a)
    assert merged.total == Decimal("1999999999999998.000000000000000000000000000002")


def test_sums_that_cannot_be_exact_raise_instead_of_rounding() -> None:
    """A total needing more than 60 digits raises rather than silently losing a fraction."""
    with pytest.raises(decimal.Inexact):
        Aggregate().add(Decimal("1E+40"), T0).add(Decimal("1E-30"), T0)


def test_merge_with_empty_is_identity() -> None:
    """Merging with an empty aggregate, on either side, changes nothing."""
    a = _agg(("3", 1), ("5", 2))
    assert a.merge(Aggregate()) == a
    assert Aggregate().merge(a) == a
    assert Aggregate().merge(Aggregate()) == Aggregate()


def test_merge_adds_totals_and_counts_and_keeps_max() -> None:
    """Merging sums totals and counts and keeps the larger maximum."""
    merged = _agg(("3", 1), ("8", 2)).merge(_agg(("5", 3)))
    assert merged.total == Decimal(16)
    assert merged.events == 3
    assert merged.max_value == Decimal(8)


def test_merge_keeps_newer_last_value_from_either_side() -> None:
    """The last value comes from whichever side holds the latest event time."""
    early, late = _agg(("3", 1)), _agg(("5", 9))
    assert early.merge(late).last_value == Decimal(5)
    assert late.merge(early).last_value == Decimal(5)
    assert late.merge(early).last_at == T0 + timedelta(minutes=9)


def test_merge_equal_time_later_recorded_wins() -> None:
    """On equal latest times, the aggregate passed as ``later`` provides the last value."""
    first, second = _agg(("3", 4)), _agg(("5", 4))
    assert first.merge(second).value("last") == Decimal(5)
    assert second.merge(first).value("last") == Decimal(3)


def test_combine_empty_list_is_empty() -> None:
    """Combining no aggregates gives an empty aggregate."""
    assert combine([]) == Aggregate()


def test_combine_uses_recording_order_for_ties() -> None:
    """combine() treats its list as recording order: on a tie, the later part wins."""
    parts = [_agg(("1", 5)), Aggregate(), _agg(("2", 5)), _agg(("3", 2))]
    result = combine(parts)
    assert result.value("last") == Decimal(2)
    assert result.value("sum") == Decimal(6)
    assert result.value("count") == Decimal(3)
    assert result.value("max") == Decimal(3)


# --- property: combining chunk aggregates equals aggregating everything ------------------

_quantities = st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False)
# A few distinct minutes only, so equal times (ties for ``last``) are frequent.
_times = st.integers(min_value=0, max_value=5).map(lambda m: T0 + timedelta(minutes=m))
_events = st.lists(st.tuples(_quantities, _times), max_size=30)


@st.composite
def _split(draw: st.DrawFn) -> tuple[list[tuple[Decimal, datetime]], list[int]]:
    """Events, and the cut points (0..len, repeats allowed) splitting them into chunks."""
    events = draw(_events)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(events)), max_size=6))
    return events, sorted(cuts)


@given(split=_split())
def test_combining_chunks_equals_aggregating_all(
    split: tuple[list[tuple[Decimal, datetime]], list[int]],
) -> None:
    """Split into consecutive chunks anywhere, the chunks combined (or merged in order)
    equal the whole, by every rule (so a query may add up reports however windows fell)."""
    events, cuts = split
    whole = Aggregate()
    for quantity, at in events:
        whole = whole.add(quantity, at)
    edges = [0, *cuts, len(events)]
    chunks = []
    for lo, hi in pairwise(edges):
        chunk = Aggregate()
        for quantity, at in events[lo:hi]:
            chunk = chunk.add(quantity, at)
        chunks.append(chunk)
    combined = combine(chunks)
    merged = Aggregate()
    for chunk in chunks:
        merged = merged.merge(chunk)
    for aggregation in AGGREGATIONS:
        assert combined.value(aggregation) == whole.value(aggregation)
        assert merged.value(aggregation) == whole.value(aggregation)
    assert combined == whole
    assert merged == whole
    assert Aggregate().extend(events) == whole
    # And against a model written without Aggregate at all.
    if events:
        latest = max(range(len(events)), key=lambda i: (events[i][1], i))
        assert whole.value("sum") == sum((q for q, _ in events), ZERO)
        assert whole.value("count") == len(events)
        assert whole.value("max") == max(q for q, _ in events)
        assert whole.value("last") == events[latest][0]
