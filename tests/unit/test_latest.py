"""The pure decision of what a report on a Stripe ``last`` meter sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapter.domain.latest import Earlier, LatestDecision, decide, held_value

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
START, END = NOW - timedelta(hours=6), NOW + timedelta(hours=6)
S = timedelta(seconds=1)


def _decide(
    target: int, preferred: datetime, *earlier: Earlier, end: datetime = END
) -> LatestDecision | None:
    return decide(
        target=target,
        preferred=preferred,
        earlier=earlier,
        period_start=START,
        period_end=end,
        now=NOW,
    )


def test_first_value_goes_at_its_preferred_second() -> None:
    """With no history the value is sent at the preferred second, floored."""
    at = NOW - timedelta(hours=1, microseconds=-500)
    decision = _decide(7, at)
    assert decision is not None
    assert (decision.value, decision.timestamp, decision.replaces) == (
        7,
        at.replace(microsecond=0),
        (),
    )


def test_value_stripe_holds_needs_no_call() -> None:
    """When the newest held send carries the target, nothing is sent."""
    held = Earlier(1, 7, NOW - timedelta(hours=1), held=True)
    decision = _decide(7, NOW - timedelta(hours=3), held)
    assert decision is not None
    assert decision.timestamp is None


def test_new_value_goes_after_every_used_second() -> None:
    """A changed value older than the newest send moves just after it, so Stripe keeps it."""
    held = Earlier(1, 7, NOW - timedelta(hours=1), held=True)
    refused = Earlier(2, 3, NOW - timedelta(minutes=30), held=False)
    decision = _decide(9, NOW - timedelta(hours=3), held, refused)
    assert decision is not None
    assert decision.timestamp == NOW - timedelta(minutes=30) + S


def test_a_refused_send_does_not_count_as_held() -> None:
    """A failed send's value is not what Stripe holds: the newest held one is."""
    held = Earlier(1, 7, NOW - timedelta(hours=2), held=True)
    refused = Earlier(2, 9, NOW - timedelta(hours=1), held=False)
    assert held_value([held, refused]) == held
    decision = _decide(9, NOW - timedelta(hours=3), held, refused)
    assert decision is not None
    assert decision.timestamp is not None


def test_last_second_taken_replaces_what_is_there() -> None:
    """With the period's last second used, the value goes there and replaces the send."""
    end = NOW - timedelta(hours=1)
    last = Earlier(4, 7, end - S, held=True)
    decision = _decide(9, end - S, last, end=end)
    assert decision is not None
    assert (decision.timestamp, decision.replaces) == (end - S, (4,))


def test_period_older_than_stripe_bills_gives_none() -> None:
    """A period wholly older than Stripe's 35 days has no second left: None."""
    old_end = NOW - timedelta(days=36)
    result = decide(
        target=3,
        preferred=old_end - timedelta(hours=1),
        earlier=(),
        period_start=old_end - timedelta(days=2),
        period_end=old_end,
        now=NOW,
    )
    assert result is None


def test_future_preferred_second_is_pulled_inside_stripes_window() -> None:
    """A preferred second beyond Stripe's 5 minutes ahead is pulled back inside it."""
    decision = _decide(3, NOW + timedelta(minutes=5))
    assert decision is not None
    assert decision.timestamp is not None
    assert decision.timestamp <= NOW + timedelta(minutes=4)
