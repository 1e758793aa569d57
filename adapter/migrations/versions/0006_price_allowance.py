"""allowances per Stripe price, set in metersync

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import adapter.store.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "price_allowance",
        sa.Column("price_id", sa.String(length=255), nullable=False),
        sa.Column("quantity", adapter.store.models.Quantity(), nullable=False),
        sa.Column("updated_at", adapter.store.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("price_id"),
    )


def downgrade() -> None:
    op.drop_table("price_allowance")
