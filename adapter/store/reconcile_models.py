"""Reconciliation tables: runs (with the cursor an interrupted run resumes after), the
verdict on every pair a run compared, and the corrections and cancels it sent to Stripe."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from adapter.store.models import BigId, utcnow, when_field


class ReconcileRun(SQLModel, table=True):
    """One reconcile run: what it compared, how far it got, and its counts at the end."""

    __tablename__ = "reconcile_run"

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    #: ``running`` → ``finished``; ``stopped`` when a Stripe call failed (resumable).
    status: str = Field(default="running", max_length=16, index=True)
    #: ``cli``, ``schedule`` or ``api``: who started it.
    trigger: str = Field(default="cli", max_length=16)
    #: What was asked: ``current``, ``previous``, ``current,previous`` or ``START..END``.
    period: str = Field(max_length=120)
    account: str | None = Field(default=None, max_length=255)
    repair: bool = False
    #: The instant periods were chosen at; a resumed run keeps it.
    as_of: datetime = when_field()
    #: ``account_id:meter_id:period_start`` of the last finished pair.
    cursor: str | None = Field(default=None, max_length=255)
    pairs: int = 0
    drifting: int = 0
    counts: dict[str, int] = Field(default_factory=dict, sa_type=sa.JSON())
    started_at: datetime = when_field(default_factory=utcnow)
    updated_at: datetime = when_field(default_factory=utcnow)
    finished_at: datetime | None = when_field(default=None, nullable=True)
    error: str | None = None


class ReconcilePair(SQLModel, table=True):
    """The verdict on one (account, meter, period) in one run."""

    __tablename__ = "reconcile_pair"
    __table_args__ = (sa.UniqueConstraint("run_id", "account_id", "meter_id", "period_start"),)

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    run_id: int = Field(sa_type=BigId, index=True)
    account_id: int
    meter_id: int
    period_start: datetime = when_field()
    period_end: datetime = when_field()
    expected: int = Field(default=0, sa_type=sa.BigInteger())
    stripe: float | None = Field(default=None, sa_type=sa.Float())
    verdict: str = Field(max_length=16)
    #: What ``--repair`` did, empty when it did nothing.
    repair: str = ""
    repaired: bool = False
    note: str = ""


class ReconcileCorrection(SQLModel, table=True):
    """A meter event reconcile sent (``kind`` ``add`` on a sum meter, ``set`` on a last
    meter) or a cancel it asked for (``cancel``, naming the cancelled identifier).

    A row is written (``sending``) before the Stripe call and marked ``sent`` or
    ``failed`` after, so a run that died between the two sends it again with the same
    identifier, which Stripe's duplicate rejection makes harmless. ``sent`` and
    ``sending`` events count towards what Stripe holds.
    """

    __tablename__ = "reconcile_correction"
    __table_args__ = (
        sa.Index("ix_reconcile_correction_pair", "account_id", "meter_id", "period_start"),
    )

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    run_id: int = Field(sa_type=BigId)
    account_id: int
    meter_id: int
    period_start: datetime = when_field()
    period_end: datetime = when_field()
    kind: str = Field(max_length=8)
    sequence: int = 0
    identifier: str = Field(max_length=100, unique=True)
    value: int = Field(default=0, sa_type=sa.BigInteger())
    timestamp: datetime = when_field()
    status: str = Field(default="sending", max_length=16)
    error: str | None = None
    stripe_request_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = when_field(default_factory=utcnow)
    sent_at: datetime | None = when_field(default=None, nullable=True)
