"""Listing reports for operators (``metersync reports``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.domain.aggregation import Aggregate
from adapter.domain.statuses import ReportStatus
from adapter.errors import InvalidUsage
from adapter.store.models import Account, Meter, UsageReport, table

_REPORTS, _ACCOUNTS, _METERS = table(UsageReport), table(Account), table(Meter)
#: Every status a report can have.
STATUSES: tuple[str, ...] = tuple(ReportStatus)


@dataclass(frozen=True, slots=True)
class ReportInfo:
    """One report as operators see it."""

    id: int
    account: str
    meter: str
    status: str
    window_start: datetime
    window_end: datetime
    events: int
    total: Decimal
    #: The report's value by its meter's rule (sum, count, max or latest value).
    value: Decimal
    aggregation: str
    sent_value: Decimal | None
    attempts: int
    last_error: str | None


def list_reports(engine: sa.Engine, *, status: str | None, limit: int) -> list[ReportInfo]:
    """The newest ``limit`` reports, optionally of one status."""
    if status is not None and status not in STATUSES:
        raise InvalidUsage(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    query = (
        sa.select(
            _REPORTS.c.id,
            _ACCOUNTS.c.name.label("account"),
            _METERS.c.name.label("meter"),
            _REPORTS.c.status,
            _REPORTS.c.window_start,
            _REPORTS.c.window_end,
            _REPORTS.c.events,
            _REPORTS.c.total,
            _REPORTS.c.max_value,
            _REPORTS.c.last_value,
            _REPORTS.c.last_at,
            _METERS.c.aggregation,
            _REPORTS.c.sent_value,
            _REPORTS.c.attempts,
            _REPORTS.c.last_error,
        )
        .join(_ACCOUNTS, _ACCOUNTS.c.id == _REPORTS.c.account_id)
        .join(_METERS, _METERS.c.id == _REPORTS.c.meter_id)
        .order_by(_REPORTS.c.id.desc())
        .limit(limit)
    )
    if status is not None:
        query = query.where(_REPORTS.c.status == status)
    with engine.connect() as conn:
        return [_info(row) for row in conn.execute(query)]


def _info(row: sa.Row[*tuple[Any, ...]]) -> ReportInfo:
    aggregate = Aggregate.of(row)
    return ReportInfo(
        id=row.id,
        account=row.account,
        meter=row.meter,
        status=row.status,
        window_start=row.window_start,
        window_end=row.window_end,
        events=row.events,
        total=row.total,
        value=aggregate.value(row.aggregation),
        aggregation=row.aggregation,
        sent_value=row.sent_value,
        attempts=row.attempts,
        last_error=row.last_error,
    )
