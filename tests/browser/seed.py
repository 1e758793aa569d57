"""A database for the dashboard tests: billed and unbilled accounts, reports of many
statuses (failed ones included), webhook deliveries (a failed one and one waiting), a
mirrored base-fee + graduated subscription, a credit grant, a fired alert and a reconcile
run that found drift. :class:`Seeded` names the values the pages must show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from adapter.client import Metersync
from adapter.mirror import deliveries
from adapter.store.alert_models import Alert, AlertDelivery, AlertFiring
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import UsageReport, table
from adapter.store.reconcile_models import ReconcilePair, ReconcileRun
from tests import stripe_events as se
from tests.billing_world import API, BASE, NOW, mirror
from tests.mirror_helpers import link_meter

_REPORTS, _DELIVERIES = table(UsageReport), table(WebhookDelivery)
_RUNS, _PAIRS = table(ReconcileRun), table(ReconcilePair)
#: Tables the shared test database's reset leaves alone: emptied around each use.
LEDGER_TABLES = tuple(
    table(m) for m in (AlertDelivery, AlertFiring, Alert, CreditEntry, CreditGrant)
)
#: The ops token the test servers are configured with.
TOKEN = "dashboard-ops-token-0123456789abcdef"
#: Stand-ins for the other secrets: none may appear in a page.
STRIPE_KEY = "sk_test_dashboardSecretKey0123456789"
WEBHOOK_SECRET = "whsec_dashboardWebhookSecret0123456789"
#: Events in the reports of the last 24 hours: five, and a day of acct_unlinked's traffic.
EVENTS_24H = 5 + sum(1 + hours * 7 % 5 for hours in range(3, 23))
#: The error a failed report carries.
FAILED_ERROR = "Stripe refused the event: No such customer: 'cus_gone'"


@dataclass(frozen=True, slots=True)
class Seeded:
    """Ids the tests act on."""

    failed_report: int
    failed_delivery: int


def _accounts(ms: Metersync) -> None:
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.accounts.upsert("acct_unlinked")
    ms.accounts.upsert("acct_retry", stripe_customer_id="cus_retry")
    ms.meters.upsert("api_calls", aggregation="sum")
    ms.meters.upsert("peak", aggregation="max")
    link_meter(ms, "api_calls", "mtr_api")


def _usage(ms: Metersync) -> None:
    """acct_1: 4,000 calls last period; 12,000 this period pushed (dry run), 3,000
    pending; acct_unlinked: 700 (no customer); acct_retry: 250 (made to fail)."""
    ms.set_billing_period("acct_1", NOW - timedelta(days=40), NOW - timedelta(days=10))
    mirror(ms, BASE, API)
    ms.increment("acct_1", 4000, meter="api_calls", timestamp=NOW - timedelta(days=12))
    ms.increment("acct_1", 12000, meter="api_calls", timestamp=NOW - timedelta(hours=2))
    ms.increment("acct_1", 7, meter="peak", timestamp=NOW - timedelta(hours=2))
    ms.increment("acct_unlinked", 700, meter="api_calls", timestamp=NOW - timedelta(hours=2))
    ms.increment("acct_retry", 250, meter="api_calls", timestamp=NOW - timedelta(hours=3))
    for hours in range(3, 23):  # a day of traffic for the events-per-hour chart
        at = NOW - timedelta(hours=hours)
        items = [{"account": "acct_unlinked", "meter": "peak", "quantity": n, "timestamp": at}
                 for n in range(1 + hours * 7 % 5)]  # fmt: skip
        ms.record_many(items)
    ms.report_now()
    ms.increment("acct_1", 3000, meter="api_calls", timestamp=NOW - timedelta(hours=2))


def _fail_report(ms: Metersync) -> int:
    """acct_retry's report, as Stripe refusing it would leave it."""
    retry_id = ms.accounts.get("acct_retry").id
    with ms.engine.begin() as conn:
        report_id: int = conn.execute(
            sa.select(_REPORTS.c.id).where(_REPORTS.c.account_id == retry_id)
        ).scalar_one()
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id == report_id)
            .values(status="failed", last_error=FAILED_ERROR, attempts=5)
        )
    return report_id


def _mark_one_sent(ms: Metersync) -> None:
    """acct_1's 12,000 calls as a real push: 1.5 s from closing to Stripe taking them."""
    account_id, meter_id = ms.accounts.get("acct_1").id, ms.meters.get("api_calls").id
    with ms.engine.begin() as conn:
        row = conn.execute(
            sa.select(_REPORTS.c.id, _REPORTS.c.closed_at)
            .where(_REPORTS.c.status == "dry_run", _REPORTS.c.account_id == account_id)
            .where(_REPORTS.c.meter_id == meter_id)
            .order_by(_REPORTS.c.id.desc())
            .limit(1)
        ).one()
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id == row.id)
            .values(status="sent", sent_at=row.closed_at + timedelta(seconds=1.5))
        )


def _deliveries(ms: Metersync) -> int:
    """A delivery that failed (a type replay will mark ignored) and one still waiting."""
    created = int(NOW.timestamp()) - 600
    failed = deliveries.store(ms.engine, se.event("charge.succeeded", {}, created=created))
    deliveries.store(ms.engine, se.event("charge.refunded", {}, created=created + 1))
    assert failed is not None
    with ms.engine.begin() as conn:
        conn.execute(
            _DELIVERIES.update()
            .where(_DELIVERIES.c.id == failed)
            .values(status="failed", attempts=5, error="RuntimeError: handler crashed")
        )
    return failed


def _drift(ms: Metersync) -> None:
    """A finished reconcile run that found acct_1's api_calls missing at Stripe."""
    account_id, meter_id = ms.accounts.get("acct_1").id, ms.meters.get("api_calls").id
    with ms.engine.begin() as conn:
        run_id = conn.execute(
            _RUNS.insert()
            .values(status="finished", period="current", as_of=NOW, finished_at=NOW, pairs=1,
                    drifting=1, counts={"missing": 1}, started_at=NOW, updated_at=NOW)
            .returning(_RUNS.c.id)
        ).scalar_one()  # fmt: skip
        conn.execute(
            _PAIRS.insert().values(
                run_id=run_id, account_id=account_id, meter_id=meter_id,
                period_start=NOW - timedelta(days=10), period_end=NOW + timedelta(days=20),
                expected=12000, stripe=11000.0,
                verdict="missing", note="Stripe holds 1,000 fewer",
            )
        )  # fmt: skip


def clear_ledger(ms: Metersync) -> None:
    """Empty the credit and alert tables (the shared PostgreSQL database keeps them)."""
    with ms.engine.begin() as conn:
        for t in LEDGER_TABLES:
            conn.execute(t.delete())


def seed(ms: Metersync) -> Seeded:
    """Fill an empty, migrated database (see the module docstring)."""
    _accounts(ms)
    _usage(ms)
    failed_report = _fail_report(ms)
    _mark_one_sent(ms)
    failed_delivery = _deliveries(ms)
    _drift(ms)
    ms.credits.grant("acct_1", 50000, currency="usd", reason="prepaid pack", actor="seed")
    ms.alerts.add("10k calls", metric="usage", threshold=10000, meter="api_calls", account="acct_1")
    ms.alerts.check()
    return Seeded(failed_report=failed_report, failed_delivery=failed_delivery)
