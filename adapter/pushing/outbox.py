"""The outbox: closing open reports when their window ends, and handing closed ones to
the push (the operator's flush lists them; the worker's sweep claims them)."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from adapter.domain.statuses import PUSHABLE, ReportStatus
from adapter.pushing.rows import REPORTS as _REPORTS

__all__ = ["claim_for_push", "close_reports", "pushable_ids"]


def close_reports(engine: sa.Engine, *, now: datetime, due_only: bool = True) -> int:
    """Close open reports (only those whose window has ended, when ``due_only``). An
    increment racing this waits on the report's row lock and, once the close commits,
    opens a new report: it is counted in exactly one of them."""
    stmt = _REPORTS.update().where(_REPORTS.c.status == ReportStatus.OPEN)
    if due_only:
        stmt = stmt.where(_REPORTS.c.window_end <= now)
    with engine.begin() as conn:
        return conn.execute(stmt.values(status=ReportStatus.CLOSED, closed_at=now)).rowcount


def pushable_ids(engine: sa.Engine) -> list[int]:
    """Closed and in-flight reports, oldest window first. Each (account, meter) still
    comes in window order, while neighbours in the list belong to different pairs, so
    workers do not queue on one pair's lock. (Pushes run concurrently, so this is a
    preference, not a guarantee; a decision accounts for every earlier decision of its
    period, so the values sent add up whatever the order.)"""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(_REPORTS.c.id)
                .where(_REPORTS.c.status.in_(PUSHABLE))
                .order_by(
                    _REPORTS.c.window_start,
                    _REPORTS.c.account_id,
                    _REPORTS.c.meter_id,
                    _REPORTS.c.id,
                )
            ).scalars()
        )


def claim_for_push(engine: sa.Engine, *, now: datetime, grace: timedelta) -> list[int]:
    """The outbox sweep: closed and in-flight reports not handed to a worker within
    ``grace``, oldest window first; each is stamped as handed over now. A report whose
    message was lost is therefore sent again after ``grace``, while one still queued or
    being retried is not enqueued a second time on every tick."""
    quiet = sa.or_(_REPORTS.c.attempted_at.is_(None), _REPORTS.c.attempted_at < now - grace)
    with engine.begin() as conn:
        rows = list(
            conn.execute(
                _REPORTS.update()
                .where(_REPORTS.c.status.in_(PUSHABLE), quiet)
                .values(attempted_at=now)
                .returning(
                    _REPORTS.c.id,
                    _REPORTS.c.window_start,
                    _REPORTS.c.account_id,
                    _REPORTS.c.meter_id,
                )
            )
        )
    rows.sort(key=lambda r: (r.window_start, r.account_id, r.meter_id, r.id))
    return [row.id for row in rows]
