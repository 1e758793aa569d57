"""A first end-to-end pass through recording and querying, on both databases."""

from decimal import Decimal

from adapter.client import Metersync


def test_increment_then_get_usage(ms: Metersync) -> None:
    """An increment shows up in the current period's usage, and a repeat key counts nothing."""
    first = ms.increment("acct_1", 10, meter="api_calls", idempotency_key="req-1")
    again = ms.increment("acct_1", 10, meter="api_calls", idempotency_key="req-1")
    assert not first.duplicate
    assert again.duplicate
    assert again.report_id == first.report_id
    assert again.event_id == first.event_id
    u = ms.get_usage("acct_1")
    assert u.meters["api_calls"].quantity == Decimal(10)
    assert u.meters["api_calls"].events == 1
    assert u.meters["api_calls"].pending == Decimal(10)
    assert u.meters["peak"].quantity == 0
    assert u.meters["peak"].events == 0
