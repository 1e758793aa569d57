"""What a push reads and writes, as typed values: the report with its account and meter
(:class:`Loaded`), its period's other reports (:func:`history`), and the outcome's columns.

Pushes are the hot path of a worker, so every statement is built once at import and each
push costs few round trips: one statement loads and locks the report, one reads the
period's other reports, one stores the decision, one the outcome.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.domain.aggregation import Aggregate
from adapter.domain.push_decision import Past, Report
from adapter.domain.statuses import ReportStatus
from adapter.gateway import StreamEvent
from adapter.store.models import Account, BillingPeriod, Meter, UsageReport, table

REPORTS, _ACCOUNTS, _METERS = table(UsageReport), table(Account), table(Meter)
_PERIODS = table(BillingPeriod)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A report as a push sees it: its columns, its account's and meter's, and what has
    been decided for it (``replaces``: reports at its second to cancel first)."""

    id: int
    status: str
    account_id: int
    meter_id: int
    account: str
    free: bool
    stripe_customer_id: str | None
    meter: str
    event_name: str
    aggregation: str
    rounding: str
    window_start: datetime
    window_end: datetime
    period_start: datetime | None
    period_end: datetime | None
    total: Decimal
    events: int
    max_value: Decimal | None
    last_value: Decimal | None
    last_at: datetime | None
    identifier: str | None
    sent_value: Decimal | None
    sent_timestamp: datetime | None
    attempts: int
    attempted_at: datetime | None
    has_periods: bool
    replaces: tuple[int, ...] = ()

    @classmethod
    def of(cls, row: sa.Row[Any]) -> Loaded:
        """From the load statement's row."""
        return cls(**{f.name: getattr(row, f.name) for f in _LOADED_FIELDS})

    def report(self) -> Report:
        """What the push decision reads of it."""
        return Report(
            id=self.id,
            aggregation=self.aggregation,
            rounding=self.rounding,
            window_start=self.window_start,
            window_end=self.window_end,
            period_start=self.period_start,
            period_end=self.period_end,
            stats=Aggregate.of(self),
        )

    def event(self) -> StreamEvent:
        """The meter event a decided report sends."""
        if (
            self.sent_value is None
            or self.sent_timestamp is None
            or self.identifier is None
            or self.stripe_customer_id is None
        ):
            raise ValueError(f"report {self.id} has no decision to send, or no customer")
        return StreamEvent(
            event_name=self.event_name,
            stripe_customer_id=self.stripe_customer_id,
            value=int(self.sent_value),
            timestamp=self.sent_timestamp,
            identifier=self.identifier,
        )

    def decided(self, changes: dict[str, Any], *, replaces: tuple[int, ...]) -> Loaded:
        """The report once ``changes`` (the decision's columns) are stored; the row is
        locked, so the stored attempts are exactly one more than read."""
        return dataclasses.replace(self, **changes, attempts=self.attempts + 1, replaces=replaces)


_LOADED_FIELDS = [f for f in dataclasses.fields(Loaded) if f.name != "replaces"]


def load(conn: sa.Connection, report_id: int) -> Loaded | None:
    """The report with its account and meter, row-locked; ``None`` if it is gone. On
    PostgreSQL the same statement also takes the (account, meter) decision lock (see
    :func:`_load_statements`)."""
    statement = _LOAD["postgresql" if conn.dialect.name == "postgresql" else "any"]
    row = conn.execute(statement, {"report_id": report_id}).one_or_none()
    return None if row is None else Loaded.of(row)


def history(conn: sa.Connection, report: Loaded) -> list[Past]:
    """The other reports of the same (account, meter, billing period), in window order."""
    params: dict[str, Any] = {
        "account_id": report.account_id,
        "meter_id": report.meter_id,
        "report_id": report.id,
    }
    if report.period_start is not None:
        params["period_start"] = report.period_start
    rows = conn.execute(_HISTORY[report.period_start is not None], params).all()
    return [
        Past(
            id=r.id,
            status=r.status,
            identifier=r.identifier,
            stats=Aggregate.of(r),
            sent_value=r.sent_value,
            sent_timestamp=r.sent_timestamp,
        )
        for r in rows
    ]


def store_decision(conn: sa.Connection, report_id: int, changes: dict[str, Any]) -> None:
    """Store a decision (its columns, status ``sending``) and count the attempt."""
    conn.execute(_DECIDE, {"report_id": report_id, **changes})


def store(conn: sa.Connection, report_id: int, values: dict[str, Any]) -> None:
    """Set ``values`` on one report."""
    conn.execute(_UPDATE, {"report_id": report_id, **values})


def store_many(conn: sa.Connection, report_ids: list[int], values: dict[str, Any]) -> None:
    """Set ``values`` on many reports, in one statement."""
    conn.execute(REPORTS.update().where(REPORTS.c.id.in_(report_ids)).values(**values))


def outcome_values(
    status: str, *, now: datetime, error: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """The columns a push's outcome sets."""
    values: dict[str, Any] = {"status": status, "last_error": error}
    if status in (ReportStatus.SENT, ReportStatus.DRY_RUN):
        values["sent_at"] = now
    if request_id:
        values["stripe_request_id"] = request_id
    return values


def customer_now(conn: sa.Connection, account_id: int) -> str | None:
    """The account's Stripe customer, read under a share lock: a link committing meanwhile
    is waited for and seen, and one starting later waits until this push has marked its
    report ``unlinked``, so the link's release of such reports cannot miss it."""
    customer: str | None = conn.execute(
        sa.select(_ACCOUNTS.c.stripe_customer_id)
        .where(_ACCOUNTS.c.id == account_id)
        .with_for_update(read=True)
    ).scalar_one()
    return customer


def _has_periods(account_id: sa.ColumnElement[int]) -> sa.Label[bool]:
    return sa.exists().where(_PERIODS.c.account_id == account_id).label("has_periods")


def _load_statements() -> dict[str, sa.Select[Any]]:
    """The load, by dialect. On PostgreSQL the subquery's ``FOR UPDATE`` locks the row
    before the outer select calls ``pg_advisory_xact_lock``: rows, then the pair, the
    order the mirror's re-cut takes them in too, so the two cannot deadlock."""
    query = (
        sa.select(
            REPORTS,
            _ACCOUNTS.c.name.label("account"),
            _ACCOUNTS.c.free,
            _ACCOUNTS.c.stripe_customer_id,
            _METERS.c.name.label("meter"),
            _METERS.c.event_name,
            _METERS.c.aggregation,
            _METERS.c.rounding,
        )
        .join(_ACCOUNTS, _ACCOUNTS.c.id == REPORTS.c.account_id)
        .join(_METERS, _METERS.c.id == REPORTS.c.meter_id)
        .where(REPORTS.c.id == sa.bindparam("report_id"))
        .with_for_update(of=REPORTS)
    )
    locked = query.subquery("locked")
    pair_lock = sa.func.pg_advisory_xact_lock(locked.c.account_id, locked.c.meter_id)
    return {
        "any": query.add_columns(_has_periods(REPORTS.c.account_id)),
        "postgresql": sa.select(
            locked, _has_periods(locked.c.account_id), pair_lock.label("pair_lock")
        ),
    }


def _history_statements() -> dict[bool, sa.Select[Any]]:
    """The history query, for a report with a billing period (True) and without: every
    other report of the (account, meter, period), decided or not."""
    return {
        in_period: sa.select(
            REPORTS.c.id,
            REPORTS.c.status,
            REPORTS.c.identifier,
            REPORTS.c.total,
            REPORTS.c.events,
            REPORTS.c.max_value,
            REPORTS.c.last_value,
            REPORTS.c.last_at,
            REPORTS.c.sent_value,
            REPORTS.c.sent_timestamp,
        )
        .where(
            REPORTS.c.account_id == sa.bindparam("account_id"),
            REPORTS.c.meter_id == sa.bindparam("meter_id"),
            REPORTS.c.period_start == sa.bindparam("period_start")
            if in_period
            else REPORTS.c.period_start.is_(None),
            REPORTS.c.id != sa.bindparam("report_id"),
        )
        .order_by(REPORTS.c.window_start, REPORTS.c.id)
        for in_period in (True, False)
    }


#: Statements of every push, built once: building one costs more than running it. The
#: updates set the columns named in their parameters.
_LOAD, _HISTORY = _load_statements(), _history_statements()
_UPDATE = REPORTS.update().where(REPORTS.c.id == sa.bindparam("report_id"))
_DECIDE = _UPDATE.values(attempts=REPORTS.c.attempts + 1)
