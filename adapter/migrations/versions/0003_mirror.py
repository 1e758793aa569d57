"""mirror tables, deliveries, invoice links, attempted_at

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import adapter.store.models

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "invoice",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.Column("last_event_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("subscription_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("billing_reason", sa.String(length=64), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("period_start", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("period_end", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("flushed_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_invoice_customer_id"), "invoice", ["customer_id"], unique=False)
    op.create_index(
        op.f("ix_invoice_subscription_id"), "invoice", ["subscription_id"], unique=False
    )
    op.create_table(
        "invoice_line",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("invoice_id", sa.String(length=255), nullable=False),
        sa.Column("price_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_meter_id", sa.String(length=255), nullable=True),
        sa.Column("subscription_item_id", sa.String(length=255), nullable=True),
        sa.Column("period_start", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("period_end", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("quantity", adapter.store.models.Quantity(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("description", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_invoice_line_invoice_id"), "invoice_line", ["invoice_id"], unique=False
    )
    op.create_table(
        "invoice_report",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("invoice_id", sa.String(length=255), nullable=False),
        sa.Column("line_id", sa.String(length=255), nullable=False),
        sa.Column(
            "report_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("line_id", "report_id"),
    )
    op.create_index(
        op.f("ix_invoice_report_invoice_id"), "invoice_report", ["invoice_id"], unique=False
    )
    op.create_index(
        op.f("ix_invoice_report_report_id"), "invoice_report", ["report_id"], unique=False
    )
    op.create_table(
        "price",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.Column("last_event_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("product_id", sa.String(length=255), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("billing_scheme", sa.String(length=16), nullable=True),
        sa.Column("tiers_mode", sa.String(length=16), nullable=True),
        sa.Column("tiers", sa.JSON(), nullable=True),
        sa.Column("unit_amount", sa.BigInteger(), nullable=True),
        sa.Column("unit_amount_decimal", sa.String(length=64), nullable=True),
        sa.Column("transform_quantity", sa.JSON(), nullable=True),
        sa.Column("usage_type", sa.String(length=16), nullable=True),
        sa.Column("interval", sa.String(length=16), nullable=True),
        sa.Column("stripe_meter_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_price_stripe_meter_id"), "price", ["stripe_meter_id"], unique=False)
    op.create_table(
        "stripe_customer",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.Column("last_event_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("email", sa.String(length=512), nullable=True),
        sa.Column("name", sa.String(length=512), nullable=True),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_stripe_customer_account_id"), "stripe_customer", ["account_id"], unique=False
    )
    op.create_table(
        "stripe_meter",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.Column("last_event_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("event_name", sa.String(length=100), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("formula", sa.String(length=16), nullable=True),
        sa.Column("customer_key", sa.String(length=100), nullable=True),
        sa.Column("value_key", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_stripe_meter_event_name"), "stripe_meter", ["event_name"], unique=False
    )
    op.create_table(
        "subscription",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.Column("last_event_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column(
            "current_period_start", adapter.store.models.UtcDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "current_period_end", adapter.store.models.UtcDateTime(timezone=True), nullable=True
        ),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("canceled_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_subscription_customer_id"), "subscription", ["customer_id"], unique=False
    )
    op.create_table(
        "subscription_item",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_event_id", sa.String(length=255), nullable=True),
        sa.Column("last_event_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("subscription_id", sa.String(length=255), nullable=False),
        sa.Column("price_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_meter_id", sa.String(length=255), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=True),
        sa.Column(
            "current_period_start", adapter.store.models.UtcDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "current_period_end", adapter.store.models.UtcDateTime(timezone=True), nullable=True
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_subscription_item_subscription_id"),
        "subscription_item",
        ["subscription_id"],
        unique=False,
    )
    op.create_table(
        "sync_state",
        sa.Column("resource", sa.String(length=64), nullable=False),
        sa.Column("cursor", sa.String(length=255), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("resource"),
    )
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("created", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("received_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        op.f("ix_webhook_delivery_status"), "webhook_delivery", ["status"], unique=False
    )
    op.create_index(op.f("ix_webhook_delivery_type"), "webhook_delivery", ["type"], unique=False)
    op.add_column(
        "usage_report",
        sa.Column("attempted_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("usage_report", "attempted_at")
    op.drop_index(op.f("ix_webhook_delivery_type"), table_name="webhook_delivery")
    op.drop_index(op.f("ix_webhook_delivery_status"), table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_table("sync_state")
    op.drop_index(op.f("ix_subscription_item_subscription_id"), table_name="subscription_item")
    op.drop_table("subscription_item")
    op.drop_index(op.f("ix_subscription_customer_id"), table_name="subscription")
    op.drop_table("subscription")
    op.drop_index(op.f("ix_stripe_meter_event_name"), table_name="stripe_meter")
    op.drop_table("stripe_meter")
    op.drop_index(op.f("ix_stripe_customer_account_id"), table_name="stripe_customer")
    op.drop_table("stripe_customer")
    op.drop_index(op.f("ix_price_stripe_meter_id"), table_name="price")
    op.drop_table("price")
    op.drop_index(op.f("ix_invoice_report_report_id"), table_name="invoice_report")
    op.drop_index(op.f("ix_invoice_report_invoice_id"), table_name="invoice_report")
    op.drop_table("invoice_report")
    op.drop_index(op.f("ix_invoice_line_invoice_id"), table_name="invoice_line")
    op.drop_table("invoice_line")
    op.drop_index(op.f("ix_invoice_subscription_id"), table_name="invoice")
    op.drop_index(op.f("ix_invoice_customer_id"), table_name="invoice")
    op.drop_table("invoice")
