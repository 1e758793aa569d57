"""Mirror tables: Stripe's objects as the webhook receiver and ``metersync sync`` last saw
them, the deliveries that carried them, and the links from invoices back to reports.

Every mirrored object shares one set of columns (dj-stripe's lesson): the Stripe id, live
mode, Stripe's ``created``, metadata, a deleted flag, and the id and ``created`` time of
the last event applied to it, so an older event never moves an object backwards.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Unpack

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from adapter.store.models import BigId, FieldOptions, Quantity, utcnow, when_field


def json_field(**options: Unpack[FieldOptions]) -> dict[str, Any]:
    """A JSON column, typed as its value like the helpers in :mod:`adapter.store.models`."""
    field: dict[str, Any] = Field(sa_type=sa.JSON(), **options)
    return field


class Mirrored(SQLModel):
    """Columns every mirrored Stripe object has."""

    id: str = Field(primary_key=True, max_length=255)
    livemode: bool = False
    created: datetime | None = when_field(default=None, nullable=True)
    meta: dict[str, Any] = json_field(default_factory=dict)
    deleted: bool = False
    #: Id and ``created`` of the last event applied; ``sync`` leaves the id empty.
    last_event_id: str | None = Field(default=None, max_length=255)
    last_event_at: datetime | None = when_field(default=None, nullable=True)
    updated_at: datetime = when_field(default_factory=utcnow)


class StripeCustomer(Mirrored, table=True):
    """A Stripe customer; ``account_id`` is set once it names a local account."""

    __tablename__ = "stripe_customer"

    email: str | None = Field(default=None, max_length=512)
    name: str | None = Field(default=None, max_length=512)
    account_id: int | None = Field(default=None, index=True)


class Subscription(Mirrored, table=True):
    """A subscription; the period columns hold the older, subscription-level shape."""

    __tablename__ = "subscription"

    customer_id: str = Field(max_length=255, index=True)
    status: str = Field(max_length=32)
    current_period_start: datetime | None = when_field(default=None, nullable=True)
    current_period_end: datetime | None = when_field(default=None, nullable=True)
    cancel_at_period_end: bool = False
    canceled_at: datetime | None = when_field(default=None, nullable=True)


class SubscriptionItem(Mirrored, table=True):
    """A subscription item: its price, the price's meter, and (since 2025-03-31) the
    current billing period."""

    __tablename__ = "subscription_item"

    subscription_id: str = Field(max_length=255, index=True)
    price_id: str | None = Field(default=None, max_length=255)
    stripe_meter_id: str | None = Field(default=None, max_length=255)
    quantity: int | None = None
    current_period_start: datetime | None = when_field(default=None, nullable=True)
    current_period_end: datetime | None = when_field(default=None, nullable=True)


class Invoice(Mirrored, table=True):
    """An invoice; ``flushed_at`` is when metersync made its final push for it."""

    __tablename__ = "invoice"

    customer_id: str = Field(max_length=255, index=True)
    subscription_id: str | None = Field(default=None, max_length=255, index=True)
    status: str = Field(max_length=32)
    billing_reason: str | None = Field(default=None, max_length=64)
    currency: str | None = Field(default=None, max_length=8)
    period_start: datetime | None = when_field(default=None, nullable=True)
    period_end: datetime | None = when_field(default=None, nullable=True)
    total: int | None = Field(default=None, sa_type=sa.BigInteger())
    flushed_at: datetime | None = when_field(default=None, nullable=True)


class InvoiceLine(SQLModel, table=True):
    """A line of an invoice, replaced whole each time the invoice is applied."""

    __tablename__ = "invoice_line"

    id: str = Field(primary_key=True, max_length=255)
    invoice_id: str = Field(max_length=255, index=True)
    price_id: str | None = Field(default=None, max_length=255)
    stripe_meter_id: str | None = Field(default=None, max_length=255)
    subscription_item_id: str | None = Field(default=None, max_length=255)
    period_start: datetime | None = when_field(default=None, nullable=True)
    period_end: datetime | None = when_field(default=None, nullable=True)
    quantity: Decimal | None = Field(default=None, sa_type=Quantity(), nullable=True)
    amount: int | None = Field(default=None, sa_type=sa.BigInteger())
    currency: str | None = Field(default=None, max_length=8)
    description: str | None = None


class Price(Mirrored, table=True):
    """A price, with its tiers, so local rating can match Stripe's invoice."""

    __tablename__ = "price"

    product_id: str | None = Field(default=None, max_length=255)
    active: bool = True
    currency: str | None = Field(default=None, max_length=8)
    billing_scheme: str | None = Field(default=None, max_length=16)
    tiers_mode: str | None = Field(default=None, max_length=16)
    tiers: list[dict[str, Any]] | None = Field(default=None, sa_type=sa.JSON(), nullable=True)
    unit_amount: int | None = Field(default=None, sa_type=sa.BigInteger())
    unit_amount_decimal: str | None = Field(default=None, max_length=64)
    transform_quantity: dict[str, Any] | None = json_field(default=None, nullable=True)
    usage_type: str | None = Field(default=None, max_length=16)
    interval: str | None = Field(default=None, max_length=16)
    stripe_meter_id: str | None = Field(default=None, max_length=255, index=True)
    nickname: str | None = Field(default=None, max_length=255)
    #: A pay-what-you-want price's bounds (``minimum``, ``maximum``, ``preset``).
    custom_unit_amount: dict[str, Any] | None = json_field(default=None, nullable=True)


class StripeMeter(Mirrored, table=True):
    """A Stripe billing meter."""

    __tablename__ = "stripe_meter"

    event_name: str = Field(max_length=100, index=True)
    display_name: str | None = Field(default=None, max_length=255)
    status: str = Field(max_length=16)
    formula: str | None = Field(default=None, max_length=16)
    customer_key: str | None = Field(default=None, max_length=100)
    value_key: str | None = Field(default=None, max_length=100)


class WebhookDelivery(SQLModel, table=True):
    """A verified webhook delivery, stored once per Stripe event id."""

    __tablename__ = "webhook_delivery"

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    event_id: str = Field(max_length=255, unique=True)
    type: str = Field(max_length=128, index=True)
    #: The event's own ``created`` (one-second resolution), for ordering and lag.
    created: datetime = when_field()
    livemode: bool = False
    object_id: str | None = Field(default=None, max_length=255)
    payload: dict[str, Any] = json_field()
    #: ``received`` → ``processed`` | ``ignored`` | ``skipped`` (older than applied) |
    #: ``failed``.
    status: str = Field(default="received", max_length=16, index=True)
    attempts: int = 0
    error: str | None = None
    source: str = Field(default="webhook", max_length=16)
    received_at: datetime = when_field(default_factory=utcnow)
    processed_at: datetime | None = when_field(default=None, nullable=True)


class InvoiceReport(SQLModel, table=True):
    """Which reports stand behind which metered invoice line."""

    __tablename__ = "invoice_report"
    __table_args__ = (sa.UniqueConstraint("line_id", "report_id"),)

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    invoice_id: str = Field(max_length=255, index=True)
    line_id: str = Field(max_length=255)
    report_id: int = Field(sa_type=BigId, index=True)


class SyncState(SQLModel, table=True):
    """Where ``metersync sync`` got to for one resource, so it can resume."""

    __tablename__ = "sync_state"

    resource: str = Field(primary_key=True, max_length=64)
    cursor: str | None = Field(default=None, max_length=255)
    done: bool = False
    count: int = 0
    updated_at: datetime = when_field(default_factory=utcnow)
