"""The prepaid credit ledger: grants, and append-only entries that take from them
(drawdowns, voids, expiries: negative amounts) or give back (releases: positive). A
grant's balance is its amount plus the sum of its entries; no row is ever updated except
a grant's Stripe status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from adapter.store.models import BigId, utcnow, when_field


class CreditGrant(SQLModel, table=True):
    """Credit loaded to an account: minor units of one currency, for a scope and a time."""

    __tablename__ = "credit_grant"
    __table_args__ = (sa.UniqueConstraint("account_id", "idempotency_key"),)

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    account_id: int = Field(foreign_key="account.id", index=True)
    amount: int = Field(sa_type=sa.BigInteger())
    currency: str = Field(max_length=3)
    #: ``all`` (every metered price of the account), ``meters`` or ``prices``.
    scope: str = Field(default="all", max_length=8)
    #: Meter names or Stripe price ids the grant covers (empty for ``all``).
    targets: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    #: 0 (drawn first) to 100 (drawn last), as Stripe's credit grants.
    priority: int = 50
    category: str = Field(default="paid", max_length=16)
    effective_at: datetime = when_field()
    expires_at: datetime | None = when_field(default=None, nullable=True)
    reason: str = Field(default="", max_length=500)
    idempotency_key: str | None = Field(default=None, max_length=255)
    created_at: datetime = when_field(default_factory=utcnow)
    created_by: str = Field(default="", max_length=255)
    #: ``pending`` → ``created`` at Stripe, ``dry_run`` without a key, ``failed`` (error),
    #: ``skipped`` (voided or expired unsent), ``voided`` (see adapter.crediting.stripe_grants).
    stripe_status: str = Field(default="pending", max_length=16, index=True)
    stripe_credit_grant_id: str | None = Field(default=None, max_length=255, index=True)
    stripe_error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON())


class CreditEntry(SQLModel, table=True):
    """One movement on a grant, signed: ``drawdown``, ``void`` and ``expiry`` are negative
    (they take from it), ``release`` is positive (a cost that fell gives credit back)."""

    __tablename__ = "credit_entry"
    __table_args__ = (sa.Index("ix_credit_entry_account_period", "account_id", "period_start"),)

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    grant_id: int = Field(sa_type=BigId, foreign_key="credit_grant.id", index=True)
    account_id: int = Field(foreign_key="account.id")
    kind: str = Field(max_length=16)
    amount: int = Field(sa_type=sa.BigInteger())
    #: The meter and billing period a drawdown or release is for.
    meter_id: int | None = None
    period_start: datetime | None = when_field(default=None, nullable=True)
    at: datetime = when_field(default_factory=utcnow)
    actor: str = Field(default="", max_length=255)
    note: str = Field(default="", max_length=500)
