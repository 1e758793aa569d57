"""price nickname and custom_unit_amount, for rating

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("price") as batch_op:
        batch_op.add_column(sa.Column("nickname", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("custom_unit_amount", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite rebuilds the table where it cannot drop a column in place.
    with op.batch_alter_table("price") as batch_op:
        batch_op.drop_column("custom_unit_amount")
        batch_op.drop_column("nickname")
