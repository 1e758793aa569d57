"""What the dashboard reads that the library has no call for: bounded queries on reports,
deliveries, reconcile pairs, accounts and billing periods. None reads ``usage_event``:
every page costs the same with a million events as with ten.

Each query is limited by rows (``LIMIT``) or by time (a window range on an index).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from adapter.domain.drift import DRIFT
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import Account, BillingPeriod, Meter, UsageReport, table
from adapter.store.reconcile_models import ReconcilePair, ReconcileRun
from webhooks.metrics import REPORT_STATUSES, newest_finished_run, quantile

_REPORTS, _DELIVERIES = table(UsageReport), table(WebhookDelivery)
_ACCOUNTS, _METERS, _PERIODS = table(Account), table(Meter), table(BillingPeriod)
_RUNS, _PAIRS = table(ReconcileRun), table(ReconcilePair)
#: Hours of the events-per-hour chart.
HOURS = 24
#: Deliveries the processing delay is measured over (the newest processed ones).
DELAY_SAMPLE = 1000
#: Most drifting pairs listed.
DRIFT_ROWS = 50
#: Most accounts listed.
ACCOUNT_ROWS = 200


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A stored webhook delivery, its payload left out."""

    id: int
    event_id: str
    type: str
    created: datetime
    status: str
    attempts: int
    error: str | None
    received_at: datetime
    processed_at: datetime | None


@dataclass(frozen=True, slots=True)
class DriftRow:
    """A pair the newest finished reconcile run found drifting and did not repair."""

    account: str
    meter: str
    period_start: datetime
    period_end: datetime
    expected: int
    stripe: float | None
    verdict: str
    note: str


@dataclass(frozen=True, slots=True)
class Drift:
    """The newest finished reconcile run and its unrepaired drifting pairs."""

    run_id: int | None = None
    finished_at: datetime | None = None
    pairs: tuple[DriftRow, ...] = ()


def events_per_hour(conn: sa.Connection, *, now: datetime) -> list[tuple[datetime, int]]:
    """Events per hour over the last :data:`HOURS` hours, from the reports' event counts
    by the hour their window starts in (oldest first, empty hours as 0)."""
    top = now.replace(minute=0, second=0, microsecond=0)
    since = top - timedelta(hours=HOURS - 1)
    rows = conn.execute(
        sa.select(_REPORTS.c.window_start, sa.func.sum(_REPORTS.c.events))
        # Naming every status keeps this a range scan of the (status, window_end) index.
        .where(_REPORTS.c.status.in_(REPORT_STATUSES))
        .where(_REPORTS.c.window_end > since, _REPORTS.c.window_start <= now)
        .group_by(_REPORTS.c.window_start)
    ).all()
    hours = {since + timedelta(hours=n): 0 for n in range(HOURS)}
    for start, events in rows:
        bucket = max(start.replace(minute=0, second=0, microsecond=0), since)
        if bucket in hours:
            hours[bucket] += int(events or 0)
    return sorted(hours.items())


def processing_delay(conn: sa.Connection) -> tuple[float, float, int]:
    """Median and slowest seconds from receiving a delivery to processing it, over the
    newest :data:`DELAY_SAMPLE` processed deliveries, and how many those were."""
    rows = conn.execute(
        sa.select(_DELIVERIES.c.received_at, _DELIVERIES.c.processed_at)
        .where(_DELIVERIES.c.processed_at.is_not(None))
        .order_by(_DELIVERIES.c.id.desc())
        .limit(DELAY_SAMPLE)
    ).all()
    delays = sorted(max(0.0, (p - r).total_seconds()) for r, p in rows)
    return quantile(delays, 0.5), quantile(delays, 1.0), len(delays)


def deliveries(engine: sa.Engine, *, status: str | None, limit: int) -> list[DeliveryRow]:
    """The newest ``limit`` deliveries, optionally of one status."""
    columns = [_DELIVERIES.c[name] for name in DeliveryRow.__slots__]
    query = sa.select(*columns).order_by(_DELIVERIES.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(_DELIVERIES.c.status == status)
    with engine.connect() as conn:
        return [DeliveryRow(**row) for row in conn.execute(query).mappings()]


def drift(conn: sa.Connection) -> Drift:
    """The newest finished reconcile run's drifting pairs that were not repaired."""
    run = newest_finished_run(conn)
    if run is None:
        return Drift()
    pair = [_PAIRS.c[name] for name in DriftRow.__slots__[2:]]
    rows = conn.execute(
        sa.select(_ACCOUNTS.c.name.label("account"), _METERS.c.name.label("meter"), *pair)
        .join(_ACCOUNTS, _ACCOUNTS.c.id == _PAIRS.c.account_id)
        .join(_METERS, _METERS.c.id == _PAIRS.c.meter_id)
        .where(_PAIRS.c.run_id == run.id, _PAIRS.c.verdict.in_(DRIFT))
        .where(_PAIRS.c.repaired.is_(False))
        .order_by(_PAIRS.c.id)
        .limit(DRIFT_ROWS)
    ).mappings()
    return Drift(run.id, run.finished_at, tuple(DriftRow(**row) for row in rows))


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account in the accounts list."""

    name: str
    stripe_customer_id: str | None
    free: bool


def accounts(engine: sa.Engine, *, prefix: str = "") -> list[AccountRow]:
    """Up to :data:`ACCOUNT_ROWS` accounts by name, those starting with ``prefix``."""
    query = sa.select(_ACCOUNTS.c.name, _ACCOUNTS.c.stripe_customer_id, _ACCOUNTS.c.free)
    if prefix:
        query = query.where(_ACCOUNTS.c.name.startswith(prefix, autoescape=True))
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(_ACCOUNTS.c.name).limit(ACCOUNT_ROWS)).all()
    return [AccountRow(r.name, r.stripe_customer_id, bool(r.free)) for r in rows]


def periods_before(
    engine: sa.Engine, account_id: int, before: datetime, *, limit: int
) -> list[tuple[datetime, datetime]]:
    """Up to ``limit`` known billing periods of the account that end by ``before``,
    newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(_PERIODS.c.period_start, _PERIODS.c.period_end)
            .where(_PERIODS.c.account_id == account_id, _PERIODS.c.period_end <= before)
            .order_by(_PERIODS.c.period_start.desc())
            .limit(limit)
        ).all()
    return [(r.period_start, r.period_end) for r in rows]
