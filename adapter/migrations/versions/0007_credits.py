"""prepaid credit ledger: grants and their entries

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import adapter.store.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, adapter.store.models.UtcDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "credit_grant",
        sa.Column("id", _ID, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        _when("effective_at"),
        _when("expires_at", nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        _when("created_at"),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("stripe_status", sa.String(length=16), nullable=False),
        sa.Column("stripe_credit_grant_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_error", sa.String(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "idempotency_key"),
    )
    op.create_index(op.f("ix_credit_grant_account_id"), "credit_grant", ["account_id"])
    op.create_index(op.f("ix_credit_grant_stripe_status"), "credit_grant", ["stripe_status"])
    op.create_index(
        op.f("ix_credit_grant_stripe_credit_grant_id"), "credit_grant", ["stripe_credit_grant_id"]
    )
    op.create_table(
        "credit_entry",
        sa.Column("id", _ID, nullable=False),
        sa.Column("grant_id", _ID, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("meter_id", sa.Integer(), nullable=True),
        _when("period_start", nullable=True),
        _when("at"),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("note", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["account.id"]),
        sa.ForeignKeyConstraint(["grant_id"], ["credit_grant.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_credit_entry_grant_id"), "credit_entry", ["grant_id"])
    op.create_index(
        "ix_credit_entry_account_period", "credit_entry", ["account_id", "period_start"]
    )


def downgrade() -> None:
    op.drop_table("credit_entry")
    op.drop_table("credit_grant")
