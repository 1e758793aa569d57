"""Usage alerts: thresholds, each crossing fired once per billing period, and the
outbound webhook deliveries of each firing."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from adapter.store.models import BigId, Quantity, utcnow, when_field


class Alert(SQLModel, table=True):
    """A threshold: on usage quantity or rated cost (fires when reached, going up), or on
    credit balance (fires when at or below it, going down)."""

    __tablename__ = "alert"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    #: ``usage`` (meter quantity), ``cost`` (minor units) or ``credit_balance`` (minor units).
    metric: str = Field(max_length=16)
    threshold: Decimal = Field(sa_type=Quantity())
    #: ``None``: every account.
    account_id: int | None = Field(default=None, foreign_key="account.id", index=True)
    #: ``usage`` needs a meter; ``cost`` without one is the cost of every meter together.
    meter_id: int | None = Field(default=None, foreign_key="meter.id")
    #: Outbound webhook for this alert (``None``: ``METERSYNC_ALERT_WEBHOOK_URL``, if set).
    webhook_url: str | None = Field(default=None, max_length=2000)
    #: Bumped by a re-arm: each generation fires at most once per account and period.
    generation: int = 0
    active: bool = True
    created_at: datetime = when_field(default_factory=utcnow)
    created_by: str = Field(default="", max_length=255)
    removed_at: datetime | None = when_field(default=None, nullable=True)


class AlertFiring(SQLModel, table=True):
    """One crossing: a local alert for an account in a period (once per generation), or a
    ``billing.alert.triggered`` event Stripe sent (``source = stripe``)."""

    __tablename__ = "alert_firing"
    __table_args__ = (sa.UniqueConstraint("alert_id", "account_id", "period_start", "generation"),)

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    source: str = Field(default="local", max_length=8)
    alert_id: int | None = Field(default=None, foreign_key="alert.id", index=True)
    account_id: int | None = Field(default=None, foreign_key="account.id")
    period_start: datetime | None = when_field(default=None, nullable=True)
    generation: int = 0
    metric: str = Field(max_length=16)
    value: Decimal = Field(sa_type=Quantity())
    threshold: Decimal = Field(sa_type=Quantity())
    fired_at: datetime = when_field(default_factory=utcnow)
    #: Stripe's alert and event ids for ``source = stripe``.
    stripe_alert_id: str | None = Field(default=None, max_length=255)
    stripe_event_id: str | None = Field(default=None, max_length=255, unique=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON())


class AlertDelivery(SQLModel, table=True):
    """One outbound webhook of a firing: ``pending`` → ``delivered``, or ``failed`` after
    the last retry; every attempt's outcome is kept in ``attempts``/``last_error``."""

    __tablename__ = "alert_delivery"

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    firing_id: int = Field(sa_type=BigId, foreign_key="alert_firing.id", index=True)
    url: str = Field(max_length=2000)
    status: str = Field(default="pending", max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime = when_field(default_factory=utcnow)
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = when_field(default=None, nullable=True)
    created_at: datetime = when_field(default_factory=utcnow)
