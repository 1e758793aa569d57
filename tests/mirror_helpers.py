"""Helpers shared by the Stripe mirror tests: emptying the mirror, delivering an event as
the receiver and worker do, mirroring an invoice as the mirror would, and recording usage
around a billing boundary for the usage effects to act on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from adapter.client import Metersync
from adapter.mirror import deliveries, process
from adapter.mirror.context import Apply, Processed
from adapter.mirror.effects import invoice_drafted
from adapter.store.mirror_models import (
    Invoice,
    InvoiceLine,
    InvoiceReport,
    Price,
    StripeCustomer,
    StripeMeter,
    Subscription,
    SubscriptionItem,
    SyncState,
    WebhookDelivery,
)
from adapter.store.models import BillingPeriod, Meter, UsageReport, table

#: What :func:`clear_mirror` empties: every table the mirror writes, the sync state, and
#: the billing periods the mirrored subscriptions set.
MIRROR_TABLES = tuple(
    table(model)
    for model in (
        WebhookDelivery,
        StripeCustomer,
        Subscription,
        SubscriptionItem,
        Invoice,
        InvoiceLine,
        InvoiceReport,
        Price,
        StripeMeter,
        SyncState,
        BillingPeriod,
    )
)
_DELIVERIES, _INVOICES, _LINES = table(WebhookDelivery), table(Invoice), table(InvoiceLine)
_REPORTS = table(UsageReport)


def utc(ts: int) -> datetime:
    """A unix timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


def clear_mirror(engine: sa.Engine) -> None:
    """Empty :data:`MIRROR_TABLES` (hypothesis examples share one database)."""
    with engine.begin() as conn:
        for t in MIRROR_TABLES:
            conn.execute(t.delete())


def account_id(ms: Metersync, name: str = "acct_1") -> int:
    """The id of a local account."""
    return ms.accounts.get(name).id


# --- deliveries ----------------------------------------------------------------------------


def deliver(
    ms: Metersync,
    event: dict[str, Any],
    *,
    refetch: Callable[[str, str], dict[str, Any] | None] | None = None,
) -> Processed:
    """Store ``event`` as a delivery (once) and process it."""
    delivery_id = deliveries.store(ms.engine, event)
    if delivery_id is None:
        delivery_id = delivery_of(ms, event["id"]).id
    return process.process_delivery(ms, delivery_id, refetch=refetch)


def delivery_of(ms: Metersync, event_id: str) -> sa.Row[Any]:
    """The stored delivery row of an event."""
    with ms.engine.connect() as conn:
        return conn.execute(sa.select(_DELIVERIES).where(_DELIVERIES.c.event_id == event_id)).one()


# --- usage around a boundary ---------------------------------------------------------------


def hour(ago: int) -> datetime:
    """The start of the UTC hour ``ago`` hours back from the current one."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=ago)


def record(
    ms: Metersync,
    meter: str,
    base: datetime,
    plan: Iterable[tuple[int, Any]],
    account: str = "acct_1",
) -> None:
    """Record (minutes after ``base``, quantity) pairs on one meter."""
    for minutes, quantity in plan:
        ms.increment(account, quantity, meter=meter, timestamp=base + timedelta(minutes=minutes))


def report_at(ms: Metersync, meter: str, at: datetime) -> sa.Row[Any]:
    """The report of ``meter`` (acct_1) whose window holds ``at``."""
    query = (
        sa.select(_REPORTS)
        .where(_REPORTS.c.meter_id == ms.meters.get(meter).id)
        .where(_REPORTS.c.window_start <= at, _REPORTS.c.window_end > at)
    )
    with ms.engine.connect() as conn:
        return conn.execute(query).one()


# --- mirrored meters and invoices ----------------------------------------------------------


def link_meter(ms: Metersync, name: str, stripe_meter_id: str) -> None:
    """Give a local meter its Stripe meter id, as ``metersync meters check`` would."""
    meters = table(Meter)
    with ms.engine.begin() as conn:
        conn.execute(
            meters.update().where(meters.c.name == name).values(stripe_meter_id=stripe_meter_id)
        )


def mirror_stripe_meter(ms: Metersync, meter_id: str, *, event_name: str, **values: object) -> None:
    """Store an active mirrored Stripe meter; ``values`` sets further columns."""
    with ms.engine.begin() as conn:
        conn.execute(
            table(StripeMeter)
            .insert()
            .values(id=meter_id, event_name=event_name, status="active", meta={}, **values)
        )


def mirror_invoice(  # noqa: PLR0913  keyword-only columns of the stored invoice, each independent
    ms: Metersync,
    *,
    period: tuple[datetime, datetime],
    lines: list[dict[str, Any]],
    invoice_id: str = "in_1",
    status: str = "draft",
    created: datetime | None = None,
) -> None:
    """Store a mirrored invoice of cus_123 with its lines, as the mirror would."""
    with ms.engine.begin() as conn:
        conn.execute(_INVOICES.delete().where(_INVOICES.c.id == invoice_id))
        conn.execute(_LINES.delete().where(_LINES.c.invoice_id == invoice_id))
        conn.execute(
            _INVOICES.insert().values(
                id=invoice_id,
                customer_id="cus_123",
                status=status,
                billing_reason="subscription_cycle",
                period_start=period[0],
                period_end=period[1],
                created=created or period[1],
                meta={},
            )
        )
        for line in lines:
            values = {"period_start": period[0], "period_end": period[1], **line}
            conn.execute(_LINES.insert().values(invoice_id=invoice_id, **values))


def draft(ms: Metersync, invoice_id: str = "in_1") -> list[int]:
    """Apply :func:`invoice_drafted` in one transaction; return the reports it queued."""
    with ms.engine.begin() as conn:
        ctx = Apply(ms=ms, conn=conn, event_id="evt_2", event_at=datetime.now(UTC))
        invoice_drafted(ctx, invoice_id=invoice_id)
    return ctx.to_push
