"""reconcile runs, per-pair verdicts and corrections

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import adapter.store.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, adapter.store.models.UtcDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "reconcile_run",
        sa.Column("id", _ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("period", sa.String(length=120), nullable=False),
        sa.Column("account", sa.String(length=255), nullable=True),
        sa.Column("repair", sa.Boolean(), nullable=False),
        _when("as_of"),
        sa.Column("cursor", sa.String(length=255), nullable=True),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("drifting", sa.Integer(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        _when("started_at"),
        _when("updated_at"),
        _when("finished_at", nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_reconcile_run_status"), "reconcile_run", ["status"], unique=False)
    op.create_table(
        "reconcile_pair",
        sa.Column("id", _ID, nullable=False),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        _when("period_start"),
        _when("period_end"),
        sa.Column("expected", sa.BigInteger(), nullable=False),
        sa.Column("stripe", sa.Float(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("repair", sa.String(), nullable=False),
        sa.Column("repaired", sa.Boolean(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "account_id", "meter_id", "period_start"),
    )
    op.create_index(op.f("ix_reconcile_pair_run_id"), "reconcile_pair", ["run_id"], unique=False)
    op.create_table(
        "reconcile_correction",
        sa.Column("id", _ID, nullable=False),
        sa.Column("run_id", _ID, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=False),
        _when("period_start"),
        _when("period_end"),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=100), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        _when("timestamp"),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("stripe_request_id", sa.String(length=255), nullable=True),
        _when("created_at"),
        _when("sent_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("identifier"),
    )
    op.create_index(
        "ix_reconcile_correction_pair",
        "reconcile_correction",
        ["account_id", "meter_id", "period_start"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_reconcile_correction_pair", table_name="reconcile_correction")
    op.drop_table("reconcile_correction")
    op.drop_index(op.f("ix_reconcile_pair_run_id"), table_name="reconcile_pair")
    op.drop_table("reconcile_pair")
    op.drop_index(op.f("ix_reconcile_run_status"), table_name="reconcile_run")
    op.drop_table("reconcile_run")
