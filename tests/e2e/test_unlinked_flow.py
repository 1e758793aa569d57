"""End to end through real processes: usage recorded before the account has a Stripe
customer waits ``unlinked``, and reaches Stripe as soon as the customer webhook links the
account, with no operator action (``metersync run`` on PostgreSQL and Redis, pushing to
the Stripe stand-in over HTTP)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.store.models import UsageReport, table
from config.settings import Settings
from tests import stripe_events as se
from tests import stripe_standin
from tests.e2e.flow import API_KEY, OPS_TOKEN, Service, start_service, wait_for
from tests.e2e.test_webhook_flow import _deliver, clean_redis, database, standin
from tests.signing import SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
__all__ = ["clean_redis", "database", "standin"]  # fixtures used here

_REPORTS = table(UsageReport)
#: Seconds a wait may take: the scheduler ticks every 30 s, then pushes within a second.
DEADLINE = 45.0


def _statuses(ms: Metersync) -> list[str]:
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(_REPORTS.c.status).order_by(_REPORTS.c.id)).scalars())


@pytest.fixture
def service(
    database: str, clean_redis: str, standin: stripe_standin.StandinServer, tmp_path: Path
) -> Iterator[Service]:
    """``metersync run`` on the test database, reporting every 30 s."""
    ms = adapter.connect(Settings(database_url=database))
    ms.meters.upsert("api_calls", event_name="api_calls", aggregation="sum")
    ms.accounts.upsert("acct_new")  # signed up; no Stripe customer yet
    ms.schedule.set("every 30s", actor="e2e")
    ms.close()
    running = start_service(
        {
            "METERSYNC_DATABASE_URL": database,
            "METERSYNC_REDIS_URL": clean_redis,
            "METERSYNC_STRIPE_WEBHOOK_SECRET": SECRET,
            "METERSYNC_OPS_TOKEN": OPS_TOKEN,
            "METERSYNC_STRIPE_API_KEY": API_KEY,
            "METERSYNC_STRIPE_API_BASE": standin.url,
        },
        workdir=tmp_path,
    )
    yield running
    assert running.stop(timeout=20) == 0, running.output()


def test_usage_before_the_customer_link_reaches_stripe_on_the_customer_webhook(
    service: Service, database: str, standin: stripe_standin.StandinServer
) -> None:
    """Recorded, pushed, waiting unlinked (nothing sent, nothing failed); the
    customer.created webhook links the account and Stripe receives the usage."""
    ms = adapter.connect(Settings(database_url=database))
    try:
        earlier = datetime.fromtimestamp(time.time() - 90, UTC).isoformat()
        items = [
            {"account": "acct_new", "meter": "api_calls", "quantity": "7", "timestamp": earlier},
            {"account": "acct_new", "meter": "api_calls", "quantity": "5"},
        ]
        answer = service.ops("POST", "/v1/usage", {"items": items})
        assert answer.status == 200, answer
        assert answer.body["accepted"] == 2, answer
        wait_for(lambda: "unlinked" in _statuses(ms), timeout=DEADLINE, what="a report unlinked")
        assert "failed" not in _statuses(ms)
        assert standin.recorded.summary()["events"] == []

        customer = se.customer("cus_new", account="acct_new", created=int(time.time()))
        created = se.event("customer.created", customer, created=int(time.time()))
        _deliver(service, ms, created, wait=True)

        def received() -> int:
            events = standin.recorded.summary()["events"]
            return sum(int(e["value"]) for e in events if e["customer"] == "cus_new")

        wait_for(lambda: received() == 12, timeout=DEADLINE, what="12 units at Stripe")
        wait_for(lambda: set(_statuses(ms)) == {"sent"}, timeout=DEADLINE, what="every report sent")
        usage = ms.get_usage("acct_new").meters["api_calls"]
        assert (usage.quantity, usage.sent, usage.pending) == (12, 12, 0)
    finally:
        ms.close()
