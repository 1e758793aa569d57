"""Tables. Quantities are exact Decimals: NUMERIC on PostgreSQL, text on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypedDict, Unpack, cast

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.types import TypeEngine
from sqlmodel import Field, SQLModel


class Quantity(sa.types.TypeDecorator[Decimal]):
    """An exact decimal. SQLite has no decimal type, so it stores the text form there;
    arithmetic on quantities is therefore done in Python, never in SQL."""

    impl = sa.Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """NUMERIC where the database has it, text elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(48))
        return dialect.type_descriptor(sa.Numeric(asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Decimal | str | None:
        """Store Decimals exactly."""
        if value is None or dialect.name != "sqlite":
            return value
        return str(Decimal(value))

    def process_result_value(self, value: Decimal | str | None, dialect: Dialect) -> Decimal | None:
        """Always hand back a Decimal."""
        return None if value is None else Decimal(value)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """SQLite returns naive values: they were stored as UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: 64-bit ids on PostgreSQL; SQLite auto-increments only ``INTEGER PRIMARY KEY``.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


class FieldOptions(TypedDict, total=False):
    """The ``Field`` options the column helpers below pass on."""

    default: Decimal | None
    default_factory: Callable[[], object]
    nullable: bool


# The helpers are typed as the column's value, as ``dataclasses.field`` is, so that they
# can stand as an attribute's default; what they return is sqlmodel's ``FieldInfo``.


def when_field(**options: Unpack[FieldOptions]) -> datetime:
    """A :class:`UtcDateTime` column."""
    field: datetime = Field(sa_type=UtcDateTime(), **options)
    return field


def quantity_field(**options: Unpack[FieldOptions]) -> Decimal:
    """A :class:`Quantity` column."""
    field: Decimal = Field(sa_type=Quantity(), **options)
    return field


class Account(SQLModel, table=True):
    """A customer of the application, optionally linked to a Stripe customer."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=255, unique=True, index=True)
    stripe_customer_id: str | None = Field(default=None, max_length=255, index=True)
    free: bool = False
    meta: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON())
    created_at: datetime = when_field(default_factory=utcnow)
    updated_at: datetime = when_field(default_factory=utcnow)


class Meter(SQLModel, table=True):
    """A local meter and how it maps onto a Stripe meter."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True, index=True)
    event_name: str = Field(max_length=100)
    aggregation: str = Field(max_length=8)
    rounding: str = Field(default="down", max_length=8)
    stripe_meter_id: str | None = Field(default=None, max_length=255)
    stripe_formula: str | None = Field(default=None, max_length=16)
    created_at: datetime = when_field(default_factory=utcnow)
    updated_at: datetime = when_field(default_factory=utcnow)


class BillingPeriod(SQLModel, table=True):
    """A billing period of an account, ``[period_start, period_end)``; the mirror fills it."""

    __tablename__ = "billing_period"
    __table_args__ = (sa.UniqueConstraint("account_id", "period_start"),)

    id: int | None = Field(default=None, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    period_start: datetime = when_field()
    period_end: datetime = when_field()
    source: str = Field(default="manual", max_length=255)


class UsageReport(SQLModel, table=True):
    """An open report: the running aggregate of one (account, meter, window)."""

    __tablename__ = "usage_report"
    __table_args__ = (
        sa.Index(
            "uq_usage_report_open",
            "account_id",
            "meter_id",
            "window_start",
            unique=True,
            postgresql_where=sa.text("status = 'open'"),
            sqlite_where=sa.text("status = 'open'"),
        ),
        sa.Index("ix_usage_report_lookup", "account_id", "meter_id", "window_end"),
        sa.Index("ix_usage_report_due", "status", "window_end"),
    )

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    account_id: int = Field(foreign_key="account.id")
    meter_id: int = Field(foreign_key="meter.id")
    status: str = Field(default="open", max_length=16)
    window_start: datetime = when_field()
    window_end: datetime = when_field()
    period_start: datetime | None = when_field(default=None, nullable=True)
    period_end: datetime | None = when_field(default=None, nullable=True)
    total: Decimal = quantity_field(default=Decimal(0))
    events: int = 0
    max_value: Decimal | None = quantity_field(default=None, nullable=True)
    last_value: Decimal | None = quantity_field(default=None, nullable=True)
    last_at: datetime | None = when_field(default=None, nullable=True)
    identifier: str | None = Field(default=None, max_length=100)
    sent_value: Decimal | None = quantity_field(default=None, nullable=True)
    sent_timestamp: datetime | None = when_field(default=None, nullable=True)
    attempts: int = 0
    #: When a worker last started a Stripe call for it; the outbox sweep leaves recent
    #: attempts alone instead of enqueueing a second message for them.
    attempted_at: datetime | None = when_field(default=None, nullable=True)
    last_error: str | None = None
    stripe_request_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = when_field(default_factory=utcnow)
    closed_at: datetime | None = when_field(default=None, nullable=True)
    sent_at: datetime | None = when_field(default=None, nullable=True)


class UsageEvent(SQLModel, table=True):
    """The audit trail: one row per accepted usage event."""

    __tablename__ = "usage_event"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "idempotency_key", name="uq_usage_event_key"),
        sa.Index("ix_usage_event_report", "report_id", "occurred_at"),
    )

    id: int | None = Field(default=None, sa_type=BigId, primary_key=True)
    # No foreign keys here: each costs a trigger run per row on the hottest insert we
    # have (the report key alone took 40 % of a batch insert on PostgreSQL). The recorder
    # creates and locks the report in the same transaction as its events, deletes only
    # reports that hold no event, and account and meter follow from the report.
    account_id: int
    meter_id: int
    report_id: int = Field(sa_type=BigId)
    quantity: Decimal = quantity_field()
    occurred_at: datetime = when_field()
    received_at: datetime = when_field(default_factory=utcnow)
    idempotency_key: str | None = Field(default=None, max_length=255)
    dimensions: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON())


class ScheduleRow(SQLModel, table=True):
    """The reporting schedule in force (one row), and who set it."""

    __tablename__ = "schedule"

    id: int = Field(default=1, primary_key=True)
    expression: str = Field(max_length=100)
    paused: bool = False
    updated_by: str = Field(default="settings", max_length=255)
    updated_at: datetime = when_field(default_factory=utcnow)


class AuditLog(SQLModel, table=True):
    """Operator actions and other decisions someone may ask about later."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = when_field(default_factory=utcnow)
    actor: str = Field(max_length=255)
    action: str = Field(max_length=64)
    subject: str = Field(default="", max_length=255)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=sa.JSON())


class Installation(SQLModel, table=True):
    """This installation's identity: its namespace goes into every meter event identifier,
    so two databases never send the same identifier to one Stripe account."""

    id: int = Field(default=1, primary_key=True)
    namespace: str = Field(max_length=64)
    created_at: datetime = when_field(default_factory=utcnow)


def table(model: type[SQLModel]) -> sa.Table:
    """The Core table behind a model, for set-based statements."""
    return cast(sa.Table, model.__table__)  # type: ignore[attr-defined]


class PriceAllowance(SQLModel, table=True):
    """Units of a Stripe price a plan includes, set in metersync (shown in the preview)."""

    __tablename__ = "price_allowance"

    price_id: str = Field(primary_key=True, max_length=255)
    quantity: Decimal = Field(sa_type=Quantity())
    updated_at: datetime = when_field(default_factory=utcnow)
    updated_by: str = Field(default="", max_length=255)
