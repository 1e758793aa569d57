"""Sent and pending in get_usage, with reports marked sent by hand (pushing comes later).

The same expectations hold on SQLite (reports folded in Python) and PostgreSQL (covered
reports aggregated by the server), so this also pins the two query paths together.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from adapter.client import Metersync
from adapter.store.models import UsageReport, table

_REPORTS = table(UsageReport)


def _hour(ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=ago)


def _record_three_hours(ms: Metersync, meter: str, values: list[str]) -> list[int]:
    """One event per hour, 3, 2 and 1 hours ago; returns the report ids in that order."""
    ids = []
    for ago, value in zip((3, 2, 1), values, strict=True):
        r = ms.increment("acct_1", value, meter=meter, timestamp=_hour(ago) + timedelta(minutes=5))
        ids.append(r.report_id)
    return ids


def _mark_sent(ms: Metersync, report_id: int, value: str | None) -> None:
    with ms.engine.begin() as conn:
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id == report_id)
            .values(status="sent", sent_value=None if value is None else Decimal(value))
        )


def _usage(ms: Metersync, meter: str) -> tuple[Decimal, Decimal, Decimal]:
    u = ms.get_usage("acct_1", _hour(4), _hour(0) + timedelta(hours=1), meter=meter)
    m = u.meters[meter]
    return m.quantity, m.sent, m.pending


def test_sum_sent_is_what_stripe_received_and_pending_keeps_carried_fractions(
    ms: Metersync,
) -> None:
    """Sum: sent adds the whole numbers sent; a carried fraction stays pending."""
    ids = _record_three_hours(ms, "api_calls", ["2.5", "3", "4"])
    _mark_sent(ms, ids[0], "2")  # 0.5 carried to a later report
    _mark_sent(ms, ids[1], "3")
    assert _usage(ms, "api_calls") == (Decimal("9.5"), Decimal(5), Decimal("4.5"))


def test_count_sent_defaults_to_the_event_count(ms: Metersync) -> None:
    """Count: a sent report without an explicit value counts its events as sent."""
    ids = _record_three_hours(ms, "requests", ["7", "8", "9"])
    _mark_sent(ms, ids[0], None)
    assert _usage(ms, "requests") == (Decimal(3), Decimal(1), Decimal(2))


def test_max_sent_is_the_running_maximum_sent(ms: Metersync) -> None:
    """Max: Stripe holds the largest value sent so far in the period."""
    ids = _record_three_hours(ms, "peak", ["5", "9", "7"])
    _mark_sent(ms, ids[0], "5")
    _mark_sent(ms, ids[1], "9")
    assert _usage(ms, "peak") == (Decimal(9), Decimal(9), Decimal(0))


def test_last_sent_is_the_value_of_the_newest_report_sent(ms: Metersync) -> None:
    """Last: Stripe holds the value sent by the newest report; newer unsent usage pends."""
    ids = _record_three_hours(ms, "seats", ["10", "12", "11"])
    _mark_sent(ms, ids[0], "10")
    _mark_sent(ms, ids[1], "12")
    assert _usage(ms, "seats") == (Decimal(11), Decimal(12), Decimal(-1))


def test_only_sent_reports_count_as_sent(ms: Metersync) -> None:
    """Reports in any status but sent (dry_run, failed, closed) leave their usage pending."""
    ids = _record_three_hours(ms, "api_calls", ["1", "2", "3"])
    with ms.engine.begin() as conn:
        for rid, status in zip(ids, ("dry_run", "failed", "closed"), strict=True):
            conn.execute(_REPORTS.update().where(_REPORTS.c.id == rid).values(status=status))
    assert _usage(ms, "api_calls") == (Decimal(6), Decimal(0), Decimal(6))


def test_sub_period_through_a_sent_report_counts_its_events_inside_as_sent(
    ms: Metersync,
) -> None:
    """A query cutting through a sent report counts the report's events inside as sent."""
    h = _hour(2)
    first = ms.increment("acct_1", 4, meter="api_calls", timestamp=h + timedelta(minutes=10))
    ms.increment("acct_1", 6, meter="api_calls", timestamp=h + timedelta(minutes=50))
    _mark_sent(ms, first.report_id, "10")
    u = ms.get_usage("acct_1", h + timedelta(minutes=30), h + timedelta(hours=1))
    assert u.meters["api_calls"].quantity == Decimal(6)
    assert u.meters["api_calls"].sent == Decimal(6)
    with ms.engine.connect() as conn:
        statuses = conn.execute(sa.select(_REPORTS.c.status)).scalars().all()
    assert statuses == ["sent"]
