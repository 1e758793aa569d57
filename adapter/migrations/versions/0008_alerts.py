"""usage alerts, their firings and outbound webhook deliveries

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import adapter.store.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, adapter.store.models.UtcDateTime(timezone=True), nullable=nullable)


def _quantity(name: str) -> sa.Column[object]:
    return sa.Column(name, adapter.store.models.Quantity(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        _quantity("threshold"),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("meter_id", sa.Integer(), nullable=True),
        sa.Column("webhook_url", sa.String(length=2000), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _when("created_at"),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        _when("removed_at", nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.ForeignKeyConstraint(["meter_id"], ["meter.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_alert_account_id"), "alert", ["account_id"])
    op.create_table(
        "alert_firing",
        sa.Column("id", _ID, nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.Column("account_id", sa.Integer(), nullable=True),
        _when("period_start", nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        _quantity("value"),
        _quantity("threshold"),
        _when("fired_at"),
        sa.Column("stripe_alert_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_event_id", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.ForeignKeyConstraint(["alert_id"], ["alert.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("alert_id", "account_id", "period_start", "generation"),
        sa.UniqueConstraint("stripe_event_id"),
    )
    op.create_index(op.f("ix_alert_firing_alert_id"), "alert_firing", ["alert_id"])
    op.create_table(
        "alert_delivery",
        sa.Column("id", _ID, nullable=False),
        sa.Column("firing_id", _ID, nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _when("next_attempt_at"),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        _when("delivered_at", nullable=True),
        _when("created_at"),
        sa.ForeignKeyConstraint(["firing_id"], ["alert_firing.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_alert_delivery_firing_id"), "alert_delivery", ["firing_id"])
    op.create_index(op.f("ix_alert_delivery_status"), "alert_delivery", ["status"])


def downgrade() -> None:
    op.drop_table("alert_delivery")
    op.drop_table("alert_firing")
    op.drop_table("alert")
