"""Reporting schedules and report windows, including cuts at billing-period boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.domain import schedule
from adapter.domain.windows import Period, Window, period_containing, window_for
from adapter.errors import ConfigurationError

T = datetime(2026, 3, 4, 12, 34, 56, tzinfo=UTC)
HOUR = schedule.parse("every 1h")


def _at(hh: int, mm: int = 0, ss: int = 0, us: int = 0) -> datetime:
    return datetime(2026, 3, 4, hh, mm, ss, us, tzinfo=UTC)


# --- parse --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "interval"),
    [
        ("every 30s", timedelta(seconds=30)),
        ("every 15m", timedelta(minutes=15)),
        ("every 1h", timedelta(hours=1)),
        ("every 2h", timedelta(hours=2)),
        ("every 1d", timedelta(days=1)),
        ("  Every   15M ", timedelta(minutes=15)),
    ],
)
def test_parse_every_forms(expression: str, interval: timedelta) -> None:
    """``every N{s,m,h,d}`` parses to a fixed interval and no cron."""
    parsed = schedule.parse(expression)
    assert parsed.interval == interval
    assert parsed.cron is None


def test_parse_every_rejects_shorter_than_30s() -> None:
    """Intervals below 30 seconds are refused: they only multiply Stripe calls."""
    with pytest.raises(ConfigurationError, match="shorter than every 30s"):
        schedule.parse("every 10s")


def test_parse_every_rejects_interval_not_dividing_a_day() -> None:
    """An interval under a day that does not divide it evenly is refused."""
    with pytest.raises(ConfigurationError, match="does not divide a day evenly"):
        schedule.parse("every 7m")


@pytest.mark.parametrize(
    "expression",
    [
        "hourly",
        "every",
        "every 5 minutes",
        "every -1h",
        "",
        "0 */10 * * * *",
        "* * *",
        "61 * * * *",
    ],
)
def test_parse_rejects_unknown_forms_listing_accepted_ones(expression: str) -> None:
    """Garbage, 6-field and malformed cron expressions are refused, listing the forms."""
    with pytest.raises(ConfigurationError) as info:
        schedule.parse(expression)
    message = str(info.value)
    for form in ("every 30s", "every 15m", "every 1h", "every 1d", "5-field cron"):
        assert form in message


def test_parse_cron_expression() -> None:
    """A 5-field cron expression is kept as the schedule's cron, with no interval."""
    parsed = schedule.parse("*/10 * * * *")
    assert parsed.cron == "*/10 * * * *"
    assert parsed.interval is None
    assert parsed.expression == "*/10 * * * *"


# --- Schedule.window and next_tick --------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "at", "expected"),
    [
        ("every 1h", _at(12, 34, 56), (_at(12), _at(13))),
        ("every 15m", _at(12, 34, 56), (_at(12, 30), _at(12, 45))),
        ("every 30s", _at(12, 34, 56), (_at(12, 34, 30), _at(12, 35))),
        ("every 2h", _at(13, 59, 59, 999999), (_at(12), _at(14))),
        ("every 1d", _at(12, 34, 56), (_at(0), _at(0) + timedelta(days=1))),
        ("*/10 * * * *", _at(12, 34, 56), (_at(12, 30), _at(12, 40))),
        ("0 6,18 * * *", _at(12, 34, 56), (_at(6), _at(18))),
    ],
)
def test_window_contains_the_instant(
    expression: str, at: datetime, expected: tuple[datetime, datetime]
) -> None:
    """The window is the tick-to-tick interval holding the instant."""
    start, end = schedule.parse(expression).window(at)
    assert (start, end) == expected
    assert start <= at < end
    assert start.utcoffset() == timedelta(0)
    assert end.utcoffset() == timedelta(0)


@pytest.mark.parametrize("expression", ["every 1h", "every 15m", "*/10 * * * *"])
def test_window_is_half_open_at_a_tick(expression: str) -> None:
    """An instant exactly on a tick starts the next window; one microsecond earlier does not."""
    parsed = schedule.parse(expression)
    tick = _at(12)
    assert parsed.window(tick)[0] == tick
    before = parsed.window(tick - timedelta(microseconds=1))
    assert before[1] == tick
    assert before[0] < tick


def test_cron_window_across_a_month() -> None:
    """A monthly cron gives calendar-month windows, December into January."""
    start, end = schedule.parse("0 0 1 * *").window(datetime(2026, 12, 15, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("every 1h", _at(12, 34, 56), _at(13)),
        ("every 1h", _at(13), _at(14)),
        ("every 15m", _at(12, 44, 59, 999999), _at(12, 45)),
        ("*/10 * * * *", _at(12, 40), _at(12, 50)),
        ("*/10 * * * *", _at(12, 39, 59), _at(12, 40)),
    ],
)
def test_next_tick_is_strictly_after(expression: str, after: datetime, expected: datetime) -> None:
    """next_tick gives the first tick strictly after the instant, even when on a tick."""
    assert schedule.parse(expression).next_tick(after) == expected


def test_interval_window_contains_instant_far_from_epoch() -> None:
    """An interval window contains its instant even a microsecond before a tick in 9999."""
    at = datetime(9999, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)
    assert HOUR.window(at) == (
        datetime(9998, 12, 31, 23, tzinfo=UTC),
        at + timedelta(microseconds=1),
    )


def test_interval_window_contains_instant_before_epoch() -> None:
    """An interval window contains its instant before 1970 too."""
    at = datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)
    assert HOUR.window(at) == (
        datetime(1969, 12, 31, 23, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
    )


# --- window_for with billing periods ------------------------------------------------------


def test_window_for_without_periods_is_the_schedule_window() -> None:
    """With no known period, the report window is the schedule's and has no period."""
    assert window_for(T, HOUR) == Window(_at(12), _at(13))


def test_window_for_cuts_at_period_start_inside_the_window() -> None:
    """A period starting mid-window cuts the window there for events after it."""
    periods = [(_at(12, 30), _at(12, 30) + timedelta(days=30))]
    w = window_for(_at(12, 45), HOUR, periods)
    assert w == Window(_at(12, 30), _at(13), periods[0][0], periods[0][1])


def test_window_for_event_before_a_period_ends_at_its_start() -> None:
    """An event just before a known period begins gets a window ending at that start."""
    periods = [(_at(12, 30), _at(12, 30) + timedelta(days=30))]
    assert window_for(_at(12, 10), HOUR, periods) == Window(_at(12), _at(12, 30))


def test_window_for_cuts_at_both_ends_of_a_short_period() -> None:
    """A period inside one schedule window is cut out exactly."""
    periods = [(_at(12, 10), _at(12, 20))]
    assert window_for(_at(12, 15), HOUR, periods) == Window(
        _at(12, 10), _at(12, 20), _at(12, 10), _at(12, 20)
    )
    assert window_for(_at(12, 20), HOUR, periods) == Window(_at(12, 20), _at(13))


def test_period_containing_is_half_open() -> None:
    """A period holds its start and not its end."""
    p: Period = (_at(12), _at(13))
    assert period_containing(_at(12), [p]) == p
    assert period_containing(_at(13), [p]) is None


_EPOCH_2026 = datetime(2026, 1, 1, tzinfo=UTC)
_INTERVALS = ["every 30s", "every 15m", "every 1h", "every 2h", "every 1d", "*/10 * * * *"]
_YEAR_US = 365 * 86400 * 10**6
# Instants as microseconds from 2026: mostly realistic (2026 to 2028), sometimes far from
# the epoch either way (1900 to 9000), where float arithmetic would go wrong.
_offsets = st.one_of(
    st.integers(min_value=0, max_value=3 * _YEAR_US),
    st.integers(min_value=-126 * _YEAR_US, max_value=6900 * _YEAR_US),
)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[datetime, str, list[Period]]:
    """An instant, a schedule and non-overlapping periods, often close to the instant."""
    base = draw(_offsets)
    at = _EPOCH_2026 + timedelta(microseconds=base)
    # Boundaries within a few days of the instant, some exactly on it or on a tick.
    near = st.one_of(
        st.integers(min_value=-3 * 86400 * 10**6, max_value=3 * 86400 * 10**6),
        st.sampled_from([0, 1, -1, 3600 * 10**6, -3600 * 10**6]),
        st.integers(min_value=-72, max_value=72).map(
            lambda h: h * 3600 * 10**6 - base % (3600 * 10**6)
        ),
    )
    edges = sorted(set(draw(st.lists(near, min_size=0, max_size=8))))
    bounds = [at + timedelta(microseconds=e) for e in edges]
    # Consecutive pairs become periods; skipping some pairs leaves gaps between periods.
    keep = draw(st.lists(st.booleans(), min_size=len(bounds), max_size=len(bounds)))
    periods = [(a, b) for (a, b), k in zip(pairwise(bounds), keep, strict=False) if k]
    return at, draw(st.sampled_from(_INTERVALS)), periods


@given(case=_cases())
def test_window_for_never_crosses_a_period_boundary(
    case: tuple[datetime, str, list[Period]],
) -> None:
    """The window holds the instant, lies inside the schedule's window, has no period
    boundary strictly inside it, and names the period iff a known one holds the instant."""
    at, expression, periods = case
    sched = schedule.parse(expression)
    w = window_for(at, sched, periods)
    s_start, s_end = sched.window(at)
    assert w.start <= at < w.end
    assert s_start <= w.start
    assert w.end <= s_end
    for p_start, p_end in periods:
        for boundary in (p_start, p_end):
            assert not (w.start < boundary < w.end), (boundary, w)
    # The window only shrinks to a boundary: its ends are ticks or boundaries.
    boundaries = {b for p in periods for b in p}
    assert w.start == s_start or w.start in boundaries
    assert w.end == s_end or w.end in boundaries
    holding = [p for p in periods if p[0] <= at < p[1]]
    if holding:
        assert (w.period_start, w.period_end) == holding[0]
        assert holding[0][0] <= w.start
        assert w.end <= holding[0][1]
    else:
        assert w.period_start is None
        assert w.period_end is None
