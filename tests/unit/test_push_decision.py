"""The pure push decision (:func:`adapter.domain.push_decision.decide`): sum meters send
their period's rounded total exactly once over any number of reports, max and last
meters send the period's value from the whole history, and a tie on the newest event
time needs the caller's lookup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.domain import push_decision as pd
from adapter.domain.aggregation import Aggregate
from adapter.domain.reporting import round_whole
from adapter.domain.statuses import ReportStatus

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
START = NOW - timedelta(days=2)
HOUR = timedelta(hours=1)


def report(
    n: int, aggregation: str, stats: Aggregate, *, hours: int, rounding: str = "down"
) -> pd.Report:
    """The ``n``-th hourly report of a period of ``hours`` hours starting at START."""
    return pd.Report(
        id=n + 1,
        aggregation=aggregation,
        rounding=rounding,
        window_start=START + n * HOUR,
        window_end=START + (n + 1) * HOUR,
        period_start=START,
        period_end=START + hours * HOUR,
        stats=stats,
    )


def past(r: pd.Report, decision: pd.Decision) -> pd.Past:
    """``r`` as the history holds it once ``decision`` was stored and sent."""
    return pd.Past(
        id=r.id,
        status=ReportStatus.SENT,
        identifier=f"id-{r.id}",
        stats=r.stats,
        sent_value=Decimal(decision.value),
        sent_timestamp=decision.timestamp,
    )


def decide_all(reports: list[pd.Report]) -> list[pd.Decision]:
    """Decide the reports in window order, each seeing the ones before it as sent."""
    history: list[pd.Past] = []
    decisions = []
    for r in reports:
        decision = pd.decide(r, history, NOW)
        assert decision is not None
        decisions.append(decision)
        history.append(past(r, decision))
    return decisions


@given(
    totals=st.lists(
        st.decimals(min_value=0, max_value=50, places=2, allow_nan=False), min_size=1, max_size=12
    ),
    rounding=st.sampled_from(["down", "up", "nearest"]),
)
def test_a_sum_period_sends_its_rounded_total_once(totals: list[Decimal], rounding: str) -> None:
    """Over the period's reports the values sent add up to the period total rounded by
    the meter's rule: fractions are carried, never lost or sent twice."""
    hours = len(totals)
    at = START + timedelta(minutes=30)
    reports = [
        report(n, "sum", Aggregate().add(total, at + n * HOUR), hours=hours, rounding=rounding)
        for n, total in enumerate(totals)
    ]
    decisions = decide_all(reports)
    assert sum(d.value for d in decisions) == round_whole(sum(totals, Decimal(0)), rounding)
    for r, d in zip(reports, decisions, strict=True):
        assert d.timestamp is not None
        assert r.window_start <= d.timestamp < r.window_end


@given(values=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=10))
def test_a_max_period_sends_the_running_maximum(values: list[int]) -> None:
    """On a max meter each decision carries the period's maximum so far."""
    at = START + timedelta(minutes=30)
    reports = [
        report(n, "max", Aggregate().add(Decimal(v), at + n * HOUR), hours=len(values))
        for n, v in enumerate(values)
    ]
    decisions = decide_all(reports)
    running = [max(values[: n + 1]) for n in range(len(values))]
    assert [d.value for d in decisions] == running
    # A decision repeating what Stripe holds already makes no call (no timestamp).
    repeats = [n for n in range(1, len(values)) if running[n] == running[n - 1]]
    assert [n for n, d in enumerate(decisions) if d.timestamp is None] == repeats


def test_a_late_last_report_for_an_older_time_keeps_the_newest_value() -> None:
    """A report whose events are older than one already sent does not move Stripe's
    value: the decision is the newest event's value, which Stripe holds already."""
    newer = report(
        1, "last", Aggregate().add(Decimal(7), START + 90 * timedelta(minutes=1)), hours=4
    )
    first = pd.decide(newer, [], NOW)
    assert first is not None
    assert first.value == 7
    older = report(0, "last", Aggregate().add(Decimal(3), START + timedelta(minutes=5)), hours=4)
    late = pd.decide(older, [past(newer, first)], NOW)
    assert late == pd.Decision(7, None)


def test_a_tie_on_the_newest_time_needs_the_callers_lookup() -> None:
    """Two reports whose newest events share a time: :func:`tie` names them, and deciding
    without the tie's value is refused rather than guessed."""
    at = START + timedelta(minutes=30)
    one = report(0, "last", Aggregate().add(Decimal(1), at), hours=4)
    two = pd.Report(
        id=9,
        aggregation="last",
        rounding="down",
        window_start=one.window_start,
        window_end=one.window_end,
        period_start=START,
        period_end=one.period_end,
        stats=Aggregate().add(Decimal(2), at),
    )
    history = [pd.Past(one.id, ReportStatus.CLOSED, None, one.stats, None, None)]
    found = pd.tie(two, history)
    assert found == pd.Tie((one.id, two.id), at)
    with pytest.raises(ValueError, match="tie_value"):
        pd.decide(two, history, NOW)
    decided = pd.decide(two, history, NOW, tie_value=Decimal(2))
    assert decided is not None
    assert decided.value == 2


def test_a_report_too_old_for_stripe_gets_no_decision() -> None:
    """Past Stripe's 35 days no second is left to send at: ``None``."""
    old = pd.Report(
        id=1,
        aggregation="sum",
        rounding="down",
        window_start=NOW - timedelta(days=40),
        window_end=NOW - timedelta(days=40) + HOUR,
        period_start=None,
        period_end=None,
        stats=Aggregate().add(Decimal(5), NOW - timedelta(days=40)),
    )
    assert pd.decide(old, [], NOW) is None
