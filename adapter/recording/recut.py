"""Cutting a report at billing-period boundaries learned after usage went into it.

Report windows are cut at the boundaries known when usage is recorded. When the mirror
learns a boundary later, a report may straddle it, holding events of two periods. A re-cut
ends the report at the boundary and moves its later events to the open report of the same
(account, meter) that starts there, then recomputes both aggregates from their events
(in Python: SQLite stores quantities as text). Only a report with no decision stored
(no identifier) may be cut: a decided value may already be at Stripe.

This module is the one home of period settlement: the webhook mirror cuts and assigns
when it learns a boundary (``adapter.mirror.effects``), and the push settles a report
recorded before its period was known with :func:`settle` (``adapter.pushing.pusher``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from adapter.domain import reporting
from adapter.domain.aggregation import Aggregate
from adapter.domain.windows import Period, period_containing
from adapter.store.mirror_models import InvoiceReport
from adapter.store.models import BillingPeriod, UsageEvent, UsageReport, table, utcnow

_REPORTS, _EVENTS = table(UsageReport), table(UsageEvent)
_PERIODS, _LINKS = table(BillingPeriod), table(InvoiceReport)
#: Statuses of a report that may still be cut, as long as it has no identifier.
UNDECIDED_STATUSES = ("open", "closed")
#: The columns a re-cut reads of a report.
COLUMNS = (
    "id",
    "account_id",
    "meter_id",
    "status",
    "window_start",
    "window_end",
    "period_start",
    "period_end",
    "identifier",
    "total",
    "events",
    "sent_value",
)
_AGGREGATE = ("total", "events", "max_value", "last_value", "last_at")
log = structlog.get_logger("metersync.mirror")


@dataclass(frozen=True, slots=True)
class MeterKey:
    """One (account, meter) whose reports are being settled, and the meter's rule."""

    account_id: int
    meter_id: int
    aggregation: str


@dataclass(frozen=True, slots=True)
class Cut:
    """What cutting one report did."""

    report_id: int
    #: The window end the report has now.
    window_end: datetime
    #: Reports that received its later events, latest boundary first.
    targets: tuple[int, ...]
    #: Every event moved out, so the report was deleted.
    emptied: bool


def undecided() -> sa.ColumnElement[bool]:
    """Reports no push has decided yet: their window and aggregate may still change."""
    return sa.and_(_REPORTS.c.status.in_(UNDECIDED_STATUSES), _REPORTS.c.identifier.is_(None))


def known_periods(conn: sa.Connection, account_id: int) -> list[Period]:
    """The account's stored billing periods, read now (never from a process cache)."""
    rows = conn.execute(
        sa.select(_PERIODS.c.period_start, _PERIODS.c.period_end)
        .where(_PERIODS.c.account_id == account_id)
        .order_by(_PERIODS.c.period_start)
    ).all()
    return [(r.period_start, r.period_end) for r in rows]


class Window(Protocol):
    """What a re-cut reads of a report: which (account, meter) and its window."""

    @property
    def id(self) -> int: ...
    @property
    def account_id(self) -> int: ...
    @property
    def meter_id(self) -> int: ...
    @property
    def window_start(self) -> datetime: ...
    @property
    def window_end(self) -> datetime: ...


def settle(conn: sa.Connection, report: Window) -> Cut | None:
    """Settle one undecided report recorded with no billing period against the periods
    stored now (the caller holds its row and (account, meter) locks).

    A process records with a copy of the periods that may predate a renewal the mirror has
    just stored, so a report of the new period can reach the push without one. Deciding it
    so would carry its fraction apart from the rest of the period, and a fraction left
    there is never rounded in: units lost. So events past a stored boundary move to the
    open report of the period they belong to, and the report joins the period that holds
    its window. Returns ``None`` when nothing changed, else the cut (``emptied`` when all
    its events moved and it was deleted)."""
    periods = known_periods(conn, report.account_id)
    if not periods:
        return None
    cut = cut_at_boundaries(conn, report, periods)
    if cut.emptied:
        return cut
    period = period_containing(report.window_start, periods)
    if period is not None and cut.window_end <= period[1]:
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id == report.id)
            .values(period_start=period[0], period_end=period[1])
        )
        return cut
    return cut if cut.targets else None


def lock(conn: sa.Connection, *conditions: sa.ColumnElement[bool]) -> list[Any]:
    """Reports matching ``conditions``, locked (PostgreSQL) in the recorder's key order
    (account, meter, window start), so a concurrent batch cannot deadlock with us."""
    query = (
        sa.select(*(_REPORTS.c[c] for c in COLUMNS))
        .where(*conditions)
        .order_by(_REPORTS.c.account_id, _REPORTS.c.meter_id, _REPORTS.c.window_start)
        .order_by(_REPORTS.c.id)
        .with_for_update()
    )
    return list(conn.execute(query).all())


def boundaries_inside(report: Window, periods: Sequence[Period]) -> list[datetime]:
    """Known period boundaries strictly inside the report's window, latest first."""
    found = {b for p in periods for b in p if report.window_start < b < report.window_end}
    return sorted(found, reverse=True)


def cut_at_boundaries(conn: sa.Connection, report: Window, periods: Sequence[Period]) -> Cut:
    """Cut ``report`` (locked by the caller, undecided) at every known boundary inside its
    window: the events of each later segment move to the open report starting at that
    boundary, and every report involved gets its aggregate recomputed."""
    end = report.window_end
    targets: list[int] = []
    for boundary in boundaries_inside(report, periods):
        target = _move_after(
            conn, report, at=boundary, end=end, period=period_containing(boundary, periods)
        )
        if target is not None:
            targets.append(target)
        end = boundary
    if end == report.window_end:
        return Cut(report.id, end, (), emptied=False)
    conn.execute(_REPORTS.update().where(_REPORTS.c.id == report.id).values(window_end=end))
    for target in targets:
        recompute(conn, target)
    emptied = recompute(conn, report.id).events == 0
    return Cut(report.id, end, tuple(targets), emptied=emptied)


def _move_after(
    conn: sa.Connection, report: Window, *, at: datetime, end: datetime, period: Period | None
) -> int | None:
    """Move the report's events at or after ``at`` to the open report ``[at, end)``;
    ``None`` when it has none there (no report is made for nothing)."""
    later = (_EVENTS.c.report_id == report.id, _EVENTS.c.occurred_at >= at)
    if conn.execute(sa.select(_EVENTS.c.id).where(*later).limit(1)).first() is None:
        return None
    target = open_report(conn, report.account_id, report.meter_id, start=at, end=end, period=period)
    conn.execute(_EVENTS.update().where(*later).values(report_id=target))
    return target


def open_report(  # noqa: PLR0913  the (account, meter), then its window by keyword
    conn: sa.Connection,
    account_id: int,
    meter_id: int,
    *,
    start: datetime,
    end: datetime,
    period: Period | None,
) -> int:
    """The id of the open report of (account, meter) starting at ``start``, made if there is
    none, and locked. Like the recorder's upsert, a shorter existing window grows to
    ``end``, so every event moved into it lies inside it."""
    insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(_REPORTS).values(
        account_id=account_id,
        meter_id=meter_id,
        status="open",
        window_start=start,
        window_end=end,
        period_start=None if period is None else period[0],
        period_end=None if period is None else period[1],
        total=Aggregate().total,
        events=0,
        attempts=0,
        created_at=utcnow(),
    )
    greatest = sa.func.greatest if conn.dialect.name == "postgresql" else sa.func.max
    changes: dict[str, Any] = {
        "window_end": greatest(_REPORTS.c.window_end, stmt.excluded.window_end)
    }
    if period is not None:
        changes.update(period_start=stmt.excluded.period_start, period_end=stmt.excluded.period_end)
    stmt = stmt.on_conflict_do_update(
        index_elements=["account_id", "meter_id", "window_start"],
        index_where=sa.text("status = 'open'"),
        set_=changes,
    ).returning(_REPORTS.c.id)
    return int(conn.execute(stmt).scalar_one())


def recompute(conn: sa.Connection, report_id: int) -> Aggregate:
    """Store the report's aggregate as computed from its events, in event-id order (the
    order queries read events in, so 'last' ties resolve alike); delete it, and any
    invoice link to it, when no event is left."""
    rows = conn.execute(
        sa.select(_EVENTS.c.quantity, _EVENTS.c.occurred_at)
        .where(_EVENTS.c.report_id == report_id)
        .order_by(_EVENTS.c.id)
    ).all()
    aggregate = Aggregate().extend([(r.quantity, r.occurred_at) for r in rows])
    if aggregate.events == 0:
        conn.execute(_LINKS.delete().where(_LINKS.c.report_id == report_id))
        conn.execute(_REPORTS.delete().where(_REPORTS.c.id == report_id))
    else:
        values = {c: getattr(aggregate, c) for c in _AGGREGATE}
        conn.execute(_REPORTS.update().where(_REPORTS.c.id == report_id).values(**values))
    return aggregate


def adopt(conn: sa.Connection, key: MeterKey, reports: Sequence[Any], period: Period) -> None:
    """Give ``reports`` of one (account, meter) (locked, windows inside ``period``) the
    billing period ``period``, which the push carries fractions and rounds by.

    An undecided report simply joins it. A decided one keeps its group unless it has none
    (it was decided before any period was known) and moving it keeps the carry of both
    groups valid: then the fraction it carries is rounded at the period's end instead of
    being stranded. Decided max reports never move: their value may hold the old period's
    peak, and the new period's next report must be free to send less."""
    start, end = period
    moving = [r.id for r in reports if r.identifier is None or r.period_start == start]
    orphans = [r for r in reports if r.identifier is not None and r.period_start is None]
    if orphans and _may_move(conn, key, orphans, start):
        moving += [r.id for r in orphans]
    elif orphans:
        log.warning("period.decided_kept", meter_id=key.meter_id, reports=[r.id for r in orphans])
    if moving:
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.id.in_(moving))
            .values(period_start=start, period_end=end)
        )


def _may_move(conn: sa.Connection, key: MeterKey, orphans: Sequence[Any], start: datetime) -> bool:
    """Whether decided reports without a period may join the period starting at ``start``
    without breaking the carry of either group (see :func:`reporting.carry_from_history`)."""
    if key.aggregation in ("max", "last"):
        return key.aggregation == "last"  # a Stripe 'last' meter ignores earlier values
    rows = conn.execute(
        sa.select(*(_REPORTS.c[c] for c in ("id", "period_start", "total", "events", "sent_value")))
        .where(_REPORTS.c.account_id == key.account_id, _REPORTS.c.meter_id == key.meter_id)
        .where(_REPORTS.c.identifier.is_not(None))
        .where(sa.or_(_REPORTS.c.period_start.is_(None), _REPORTS.c.period_start == start))
    ).all()
    moving = {r.id for r in orphans}
    group = [r for r in rows if r.period_start is not None or r.id in moving]
    rest = [r for r in rows if r.period_start is None and r.id not in moving]
    for part in (group, rest):
        values = [r.total if key.aggregation == "sum" else Decimal(r.events) for r in part]
        try:
            reporting.carry_from_history(values, [r.sent_value for r in part])
        except ValueError:
            return False
    return True
