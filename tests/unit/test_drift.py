"""The pure drift rules: summary ranges, expectations, verdicts, and repair plans that,
applied to a model of Stripe's meter, make it hold exactly the expectation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.domain import drift
from adapter.domain.drift import Candidate, Counted, Pair

NOW = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)
START = datetime(2026, 11, 3, 8, 15, 17, tzinfo=UTC)
END = datetime(2026, 12, 3, 8, 15, 17, tzinfo=UTC)
NO_SETTLE = timedelta(0)


def pair(formula: drift.Formula, counted: list[Counted], **kw: object) -> Pair:
    return Pair(formula, START, END, counted, **kw)


def test_the_summary_range_is_minute_aligned_around_the_period() -> None:
    """Start floors and a past end ceils to the minute, so edge minutes are on both sides."""
    start, end = drift.summary_range(START, START + timedelta(days=1), now=NOW)
    assert (start, end) == (
        datetime(2026, 11, 3, 8, 15, tzinfo=UTC),
        datetime(2026, 11, 4, 8, 16, tzinfo=UTC),
    )


def test_a_running_period_is_compared_up_to_what_stripe_accepts() -> None:
    """A period still running ends five minutes after now (Stripe takes nothing later)."""
    assert drift.summary_range(START, END, now=NOW)[1] == datetime(2026, 11, 20, 12, 6, tzinfo=UTC)


def test_last_expectation_takes_the_newest_timestamp_then_the_later_row() -> None:
    """A last meter expects the value sent with the newest timestamp; a tie goes to the
    greater order."""
    at = NOW - timedelta(hours=1)
    events = [Counted(at, 5, 1), Counted(at, 7, 2), Counted(at - timedelta(1), 9, 3)]
    assert drift.expected_value("last", events) == 7
    assert drift.expected_value("sum", events) == 21
    assert drift.expected_value("last", []) == 0


def test_a_recent_send_is_settling_and_not_judged() -> None:
    """A pair sent to within the settle delay is settling whatever Stripe says."""
    recent = pair("sum", [Counted(NOW, 3)], newest_send=NOW - timedelta(minutes=2))
    found = drift.compare(recent, 0.0, now=NOW, settle=timedelta(minutes=10))
    assert (found.verdict, found.expected, found.plan.empty) == ("settling", 3, True)


def test_a_non_whole_summary_is_drift_left_to_the_operator() -> None:
    """Stripe holding 2.5 cannot be fixed with whole-number events: reported, not planned."""
    found = drift.compare(pair("sum", [Counted(NOW, 3)]), 2.5, now=NOW, settle=NO_SETTLE)
    assert (found.verdict, found.plan.empty) == ("missing", True)
    assert "not a whole number" in found.note


def test_an_excess_is_cancelled_only_within_stripes_24_hours() -> None:
    """An uncounted event received 23.5 hours ago is past the margin: not cancelled."""
    at = NOW - timedelta(hours=3)
    old = Candidate("ms-old", 4, at, NOW - timedelta(hours=23, minutes=30))
    fresh = Candidate("ms-new", 4, at, NOW - timedelta(hours=2))
    late = drift.compare(pair("sum", [], candidates=[old]), 4.0, now=NOW, settle=NO_SETTLE)
    assert (late.verdict, late.plan.empty) == ("excess", True)
    soon = drift.compare(pair("sum", [], candidates=[fresh]), 4.0, now=NOW, settle=NO_SETTLE)
    assert soon.plan.cancel == (fresh,)


def test_exact_cover_picks_values_that_add_up_exactly() -> None:
    """5 out of 2, 3, 4 is 2 + 3; 1 cannot be made."""
    at = NOW - timedelta(hours=1)
    candidates = [Candidate(f"c{v}", v, at, NOW) for v in (4, 2, 3)]
    assert {c.value for c in drift.exact_cover(candidates, 5) or ()} == {2, 3}
    assert drift.exact_cover(candidates, 1) is None


def test_a_last_correction_needs_a_second_after_the_newest_event() -> None:
    """With an event already at the latest usable second, a last meter cannot be fixed."""
    newest = NOW.replace(microsecond=0)
    found = drift.compare(pair("last", [Counted(newest, 3)]), 8.0, now=NOW, settle=NO_SETTLE)
    assert (found.verdict, found.plan.empty) == ("wrong_value", True)
    assert "by hand" in found.note


def test_correction_identifiers_are_stable_short_and_distinct() -> None:
    """Same inputs, same identifier, at most 100 characters; another sequence differs."""
    kw = {"namespace": "n" * 64, "account_id": 10**12, "meter_id": 10**12}
    first = drift.correction_identifier(**kw, period_start=START, sequence=1)
    again = drift.correction_identifier(**kw, period_start=START, sequence=1)
    other = drift.correction_identifier(**kw, period_start=START, sequence=2)
    assert first == again != other
    assert len(first) <= 100


# --- properties: a plan applied to a model of Stripe's meter ---------------------------------

seconds = st.integers(min_value=60, max_value=10 * 86_400)
values = st.integers(min_value=0, max_value=1_000)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Pair, list[tuple[datetime, int, str]]]:
    """Reports sent (each held by Stripe or lost), and uncounted events Stripe holds."""
    formula = draw(st.sampled_from(["sum", "last"]))
    reports = draw(st.lists(st.tuples(seconds, values, st.booleans()), max_size=6))
    extras = draw(st.lists(st.tuples(seconds, values), max_size=4))
    counted, held, candidates = [], [], []
    for n, (ago, value, kept) in enumerate(reports):
        at = NOW.replace(microsecond=0) - timedelta(seconds=ago)
        counted.append(Counted(at, value, n))
        if kept:
            held.append((at, value, f"r{n}"))
    for n, (ago, value) in enumerate(extras):
        at = NOW.replace(microsecond=0) - timedelta(seconds=ago)
        candidates.append(Candidate(f"x{n}", value, at, NOW - timedelta(hours=1)))
        held.append((at, value, f"x{n}"))
    return pair(formula, counted, candidates=candidates), held


def stripe_value(formula: str, held: list[tuple[datetime, int, str]]) -> float:
    """The model: a sum, or the value of the newest timestamp (a tie to the later one)."""
    if formula == "sum":
        return float(sum(value for _, value, _ in held))
    if not held:
        return 0.0
    return float(max(enumerate(held), key=lambda e: (e[1][0], e[0]))[1][1])


@given(scenarios())
def test_an_applied_plan_makes_stripe_hold_the_expectation(
    scenario: tuple[Pair, list[tuple[datetime, int, str]]],
) -> None:
    """Whatever was lost or held extra, a non-empty plan applied to Stripe's model makes
    it equal the expectation; a sum meter's plan only fails when no subset fits."""
    p, held = scenario
    found = drift.compare(p, stripe_value(p.formula, held), now=NOW, settle=NO_SETTLE)
    if found.verdict == "match":
        assert found.plan.empty
        return
    assert found.verdict in drift.DRIFT
    if found.plan.empty:
        assert found.verdict == "excess"
        return
    gone = {c.identifier for c in found.plan.cancel}
    after = [h for h in held if h[2] not in gone]
    if found.plan.send_value is not None:
        assert found.plan.send_timestamp is not None
        assert START <= found.plan.send_timestamp <= NOW
        after.append((found.plan.send_timestamp, found.plan.send_value, "fix"))
    assert stripe_value(p.formula, after) == found.expected


@given(st.sampled_from(["sum", "last"]), st.lists(st.tuples(seconds, values), max_size=6))
def test_nothing_is_repaired_when_stripe_matches(
    formula: drift.Formula, reports: list[tuple[int, int]]
) -> None:
    """Stripe holding exactly what was sent: the verdict is match and the plan is empty."""
    at = NOW.replace(microsecond=0)
    counted = [Counted(at - timedelta(seconds=ago), v, n) for n, (ago, v) in enumerate(reports)]
    held = [(c.timestamp, c.value, str(c.order)) for c in counted]
    found = drift.compare(
        pair(formula, counted), stripe_value(formula, held), now=NOW, settle=NO_SETTLE
    )
    assert (found.verdict, found.plan.empty) == ("match", True)


@pytest.mark.parametrize("formula", ["sum", "last"])
def test_a_lost_event_plans_a_correction_inside_the_period(formula: drift.Formula) -> None:
    """A lost report plans one correction at a whole second inside the period, by now."""
    sent = Counted(NOW - timedelta(hours=2), 6)
    found = drift.compare(pair(formula, [sent]), 0.0, now=NOW, settle=NO_SETTLE)
    assert found.plan.send_value == 6
    assert found.plan.send_timestamp == NOW.replace(microsecond=0)
