"""Pushing a report recorded before its billing period was known (a recorder's copy of the
periods predating a renewal stored by another process): the push checks the stored periods
first, so no unit is lost to a fraction carried outside its period."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.store.models import UsageEvent, UsageReport, table
from adapter.store.periods import store_period
from config.settings import Settings
from tests.integration.test_push import EVENTS_URL, _gateway, _ok

_REPORTS, _EVENTS = table(UsageReport), table(UsageEvent)


@pytest.fixture
def live(db_url: str) -> Iterator[Metersync]:
    """A metersync with a Stripe gateway (HTTP intercepted), a linked account and a sum
    meter; no billing period known yet."""
    ms = adapter.connect(Settings(database_url=db_url, auto_migrate=True), gateway=_gateway())
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.meters.upsert("api_calls", aggregation="sum")
    ms.schedule.set("every 1h", actor="test")
    yield ms
    ms.close()


def _hour(ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=ago)


def _store_behind_the_cache(ms: Metersync, start: datetime, end: datetime) -> None:
    """Store a period as another process would: this process's copy is not told."""
    account_id = ms.accounts.get("acct_1").id
    with ms.engine.begin() as conn:
        store_period(conn, account_id, start, end, source="stripe")


def _reports(ms: Metersync) -> list[dict[str, Any]]:
    with ms.engine.connect() as conn:
        query = sa.select(_REPORTS).order_by(_REPORTS.c.window_start)
        return [dict(m) for m in conn.execute(query).mappings()]


def _sent_total() -> int:
    return sum(
        int(parse_qs(call.request.body)["payload[value]"][0])  # type: ignore[arg-type]
        for call in responses.calls
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@responses.activate
def test_a_report_without_a_period_joins_the_stored_one_and_its_fraction_counts(
    live: Metersync,
) -> None:
    """0.5 recorded in period B (then unknown) and 0.5 recorded once B is known: pushed
    together in B they send 1 unit. Deciding the first apart from B would send 0 + 0."""
    responses.add_callback(responses.POST, EVENTS_URL, callback=_ok)
    b_start, b_end = _hour(10), _hour(-700)
    live.increment("acct_1", "0.5", meter="api_calls", timestamp=_hour(5) + timedelta(minutes=5))
    assert _reports(live)[0]["period_start"] is None  # recorded before B was known
    _store_behind_the_cache(live, b_start, b_end)
    live.periods.forget()
    live.increment("acct_1", "0.5", meter="api_calls", timestamp=_hour(3) + timedelta(minutes=5))

    results = live.report_now()

    reports = _reports(live)
    assert {_aware(r["period_start"]) for r in reports} == {b_start}
    assert [r.status for r in results] == ["sent", "sent"]
    assert [r.value for r in results] == [0, 1]
    assert _sent_total() == 1


@responses.activate
def test_a_report_straddling_a_boundary_learned_late_is_cut_there(live: Metersync) -> None:
    """A window [h, h+1) recorded before the renewal at h+30min was known: at push the
    events before it stay (period A), the ones after move to the open report of B that
    starts at the boundary; nothing is lost and each side carries its own period."""
    responses.add_callback(responses.POST, EVENTS_URL, callback=_ok)
    hour = _hour(5)
    boundary = hour + timedelta(minutes=30)
    live.increment("acct_1", 2, meter="api_calls", timestamp=hour + timedelta(minutes=10))
    live.increment("acct_1", 3, meter="api_calls", timestamp=hour + timedelta(minutes=40))
    a_start, b_end = hour - timedelta(days=20), boundary + timedelta(days=30)
    _store_behind_the_cache(live, a_start, boundary)
    _store_behind_the_cache(live, boundary, b_end)

    first = live.report_now()

    reports = _reports(live)
    windows = [(_aware(r["window_start"]), _aware(r["window_end"])) for r in reports]
    assert windows == [(hour, boundary), (boundary, hour + timedelta(hours=1))]
    assert [_aware(r["period_start"]) for r in reports] == [a_start, boundary]
    assert [Decimal(r["total"]) for r in reports] == [2, 3]
    assert [r.value for r in first] == [2]
    assert reports[1]["status"] == "open"  # the moved events wait for the next tick
    second = live.report_now()
    assert [r.value for r in second] == [3]
    assert _sent_total() == 5


@responses.activate
def test_a_report_whose_events_all_belong_to_the_next_period_moves_whole(
    live: Metersync,
) -> None:
    """Every event past the late-learned boundary: the report is deleted ("moved"), its
    events now belong to B's report, and that report sends them."""
    responses.add_callback(responses.POST, EVENTS_URL, callback=_ok)
    hour = _hour(5)
    boundary = hour + timedelta(minutes=30)
    live.increment("acct_1", 4, meter="api_calls", timestamp=hour + timedelta(minutes=45))
    _store_behind_the_cache(live, boundary, boundary + timedelta(days=30))

    first = live.report_now()

    assert [r.status for r in first] == ["moved"]
    assert len(responses.calls) == 0
    second = live.report_now()
    assert [(r.status, r.value) for r in second] == [("sent", 4)]
    with live.engine.connect() as conn:
        owners = conn.execute(sa.select(_EVENTS.c.report_id)).scalars().all()
    assert owners == [second[0].report_id]
    assert _sent_total() == 4
