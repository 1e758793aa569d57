"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import adapter.store.models

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("free", sa.Boolean(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_account_name"), ["name"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_account_stripe_customer_id"), ["stripe_customer_id"], unique=False
        )

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "meter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("event_name", sa.String(length=100), nullable=False),
        sa.Column("aggregation", sa.String(length=8), nullable=False),
        sa.Column("rounding", sa.String(length=8), nullable=False),
        sa.Column("stripe_meter_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_formula", sa.String(length=16), nullable=True),
        sa.Column("created_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("meter", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_meter_name"), ["name"], unique=True)

    op.create_table(
        "schedule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("expression", sa.String(length=100), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "billing_period",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("period_start", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("period_end", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "period_start"),
    )
    op.create_table(
        "usage_report",
        sa.Column("id", BigId, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("window_start", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("window_end", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("period_start", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("period_end", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("total", adapter.store.models.Quantity(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("max_value", adapter.store.models.Quantity(), nullable=True),
        sa.Column("last_value", adapter.store.models.Quantity(), nullable=True),
        sa.Column("last_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("identifier", sa.String(length=100), nullable=True),
        sa.Column("sent_value", adapter.store.models.Quantity(), nullable=True),
        sa.Column("sent_timestamp", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("stripe_request_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column("sent_at", adapter.store.models.UtcDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
        ),
        sa.ForeignKeyConstraint(
            ["meter_id"],
            ["meter.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("usage_report", schema=None) as batch_op:
        batch_op.create_index("ix_usage_report_due", ["status", "window_end"], unique=False)
        batch_op.create_index(
            "ix_usage_report_lookup", ["account_id", "meter_id", "window_end"], unique=False
        )
        batch_op.create_index(
            "uq_usage_report_open",
            ["account_id", "meter_id", "window_start"],
            unique=True,
            postgresql_where=sa.text("status = 'open'"),
            sqlite_where=sa.text("status = 'open'"),
        )

    op.create_table(
        "usage_event",
        sa.Column("id", BigId, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("report_id", BigId, nullable=False),
        sa.Column("quantity", adapter.store.models.Quantity(), nullable=False),
        sa.Column("occurred_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("received_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("dimensions", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_usage_event_key"),
    )
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.create_index("ix_usage_event_report", ["report_id", "occurred_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_event", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_event_report")

    op.drop_table("usage_event")
    with op.batch_alter_table("usage_report", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_usage_report_open",
            postgresql_where=sa.text("status = 'open'"),
            sqlite_where=sa.text("status = 'open'"),
        )
        batch_op.drop_index("ix_usage_report_lookup")
        batch_op.drop_index("ix_usage_report_due")

    op.drop_table("usage_report")
    op.drop_table("billing_period")
    op.drop_table("schedule")
    with op.batch_alter_table("meter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_meter_name"))

    op.drop_table("meter")
    op.drop_table("audit_log")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_account_stripe_customer_id"))
        batch_op.drop_index(batch_op.f("ix_account_name"))

    op.drop_table("account")
