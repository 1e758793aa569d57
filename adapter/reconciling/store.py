"""What reconciliation reads from and writes to the database: the pairs to compare, what
we believe Stripe holds for each, the run with its resume cursor, the verdicts and the
corrections. :mod:`adapter.reconciling.run` drives it; :mod:`adapter.domain.drift` decides."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.domain import drift
from adapter.domain.reporting import stripe_formula
from adapter.domain.windows import Period
from adapter.store.models import Account, AuditLog, Meter, UsageReport, table, utcnow
from adapter.store.reconcile_models import ReconcileCorrection, ReconcilePair, ReconcileRun

_ACCOUNTS, _METERS, _REPORTS = table(Account), table(Meter), table(UsageReport)
_RUNS, _PAIRS, _FIXES = table(ReconcileRun), table(ReconcilePair), table(ReconcileCorrection)
_AUDIT = table(AuditLog)
#: Report statuses whose identifier Stripe may hold although we do not count it.
UNCOUNTED = ("failed", "expired")
#: Correction statuses Stripe may hold (``sending``: the call may have landed).
COUNTING = ("sent", "sending")
#: Accounts per query in :func:`meters_used` (5 bound parameters each, inside SQLite's
#: limit).
USED_CHUNK = 150


@dataclass(frozen=True, slots=True)
class PairKey:
    """One (account, meter, period) to compare, with what the comparison needs."""

    account_id: int
    account: str
    customer: str | None
    free: bool
    meter_id: int
    meter: str
    event_name: str
    aggregation: str
    stripe_meter_id: str | None
    period_start: datetime
    period_end: datetime

    @property
    def order(self) -> tuple[int, int, int]:
        """Where the pair stands in a run: the resume cursor compares these."""
        return self.account_id, self.meter_id, int(self.period_start.timestamp())

    @property
    def cursor(self) -> str:
        """The cursor stored once this pair is finished."""
        return ":".join(str(part) for part in self.order)

    @property
    def formula(self) -> drift.Formula:
        """The Stripe formula this meter reports to."""
        return stripe_formula(self.aggregation)


def parse_cursor(cursor: str | None) -> tuple[int, int, int] | None:
    """The ``order`` a stored cursor names."""
    if not cursor:
        return None
    account_id, meter_id, start = (int(part) for part in cursor.split(":"))
    return account_id, meter_id, start


def accounts(conn: sa.Connection, name: str | None) -> list[Any]:
    """Accounts by id, or the one named."""
    query = sa.select(_ACCOUNTS).order_by(_ACCOUNTS.c.id)
    if name is not None:
        query = query.where(_ACCOUNTS.c.name == name)
    return list(conn.execute(query).all())


def meters(conn: sa.Connection) -> dict[int, Any]:
    """Every meter by id."""
    return {row.id: row for row in conn.execute(sa.select(_METERS)).all()}


def meters_used(conn: sa.Connection, periods: dict[int, Period]) -> dict[int, list[int]]:
    """For each account id, the meters with a report overlapping its period, or a
    correction in it: a pair with neither has sent Stripe nothing, so there is nothing to
    compare. One query per :data:`USED_CHUNK` accounts."""
    used: dict[int, set[int]] = {account_id: set() for account_id in periods}
    items = sorted(periods.items())
    for first in range(0, len(items), USED_CHUNK):
        part = items[first : first + USED_CHUNK]
        reports = sa.select(_REPORTS.c.account_id, _REPORTS.c.meter_id).where(
            sa.or_(
                *(
                    sa.and_(
                        _REPORTS.c.account_id == account_id,
                        _REPORTS.c.window_end > start,
                        _REPORTS.c.window_start < end,
                    )
                    for account_id, (start, end) in part
                )
            )
        )
        fixes = sa.select(_FIXES.c.account_id, _FIXES.c.meter_id).where(
            sa.or_(
                *(
                    sa.and_(_FIXES.c.account_id == account_id, _FIXES.c.period_start == start)
                    for account_id, (start, _end) in part
                )
            )
        )
        for row in conn.execute(sa.union(reports, fixes)):
            used[row.account_id].add(row.meter_id)
    return {account_id: sorted(meters) for account_id, meters in used.items()}


def load_pairs(
    conn: sa.Connection, spans: dict[PairKey, Period]
) -> dict[PairKey, tuple[drift.Pair, list[Any]]]:
    """For each key, what we believe Stripe holds over its summary range, and the pair's
    corrections still ``sending`` (to send again before comparing): two queries for all."""
    if not spans:
        return {}
    ids = sorted({(key.account_id, key.meter_id) for key in spans})
    low = min(span[0] for span in spans.values())
    high = max(span[1] for span in spans.values())
    same_pair = sa.tuple_(_REPORTS.c.account_id, _REPORTS.c.meter_id).in_(ids)
    reports = conn.execute(
        sa.select(
            _REPORTS.c.account_id,
            _REPORTS.c.meter_id,
            _REPORTS.c.window_start,
            _REPORTS.c.window_end,
            _REPORTS.c.id,
            _REPORTS.c.status,
            _REPORTS.c.identifier,
            _REPORTS.c.sent_value,
            _REPORTS.c.sent_timestamp,
            _REPORTS.c.sent_at,
            _REPORTS.c.attempted_at,
        )
        .where(same_pair, _REPORTS.c.window_end > low, _REPORTS.c.window_start < high)
        .where(_REPORTS.c.status.in_(("sent", "sending", *UNCOUNTED)))
        .order_by(_REPORTS.c.id)
    ).all()
    fixes = conn.execute(
        sa.select(_FIXES)
        .where(sa.tuple_(_FIXES.c.account_id, _FIXES.c.meter_id).in_(ids))
        .where(_FIXES.c.period_start.in_(sorted({key.period_start for key in spans})))
        .order_by(_FIXES.c.id)
    ).all()
    by_pair: dict[tuple[int, int], list[Any]] = {}
    for r in reports:
        by_pair.setdefault((r.account_id, r.meter_id), []).append(r)
    fixes_by: dict[tuple[int, int, datetime], list[Any]] = {}
    for f in fixes:
        fixes_by.setdefault((f.account_id, f.meter_id, f.period_start), []).append(f)
    loaded = {}
    for key, (start, end) in spans.items():
        mine = [
            r
            for r in by_pair.get((key.account_id, key.meter_id), ())
            if r.window_end > start and r.window_start < end
        ]
        found = fixes_by.get((key.account_id, key.meter_id, key.period_start), [])
        loaded[key] = build_pair(key, (start, end), mine, found)
    return loaded


def build_pair(
    key: PairKey, span: Period, reports: list[Any], fixes: list[Any]
) -> tuple[drift.Pair, list[Any]]:
    """:func:`load_pairs` for one key, from its reports overlapping ``span`` and its
    corrections."""
    start, end = span
    cancelled = {f.identifier for f in fixes if f.kind == "cancel" and f.status == "sent"}
    counted, candidates, sends = [], [], []
    in_flight = False
    for r in reports:
        inside = r.sent_timestamp is not None and start <= r.sent_timestamp < end
        if r.status == "sending":
            in_flight = True
        elif r.status == "sent" and inside and r.sent_value is not None:
            counted.append(drift.Counted(r.sent_timestamp, _whole(r.sent_value), r.id))
            sends.append(r.sent_at)
        elif inside and r.identifier and r.sent_value is not None and r.attempted_at:
            if r.identifier in cancelled:
                continue
            value = _whole(r.sent_value)
            candidates.append(
                drift.Candidate(r.identifier, value, r.sent_timestamp, r.attempted_at)
            )
    pending = [f for f in fixes if f.status == "sending" and f.kind != "cancel"]
    for f in fixes:
        sends.append(f.sent_at or f.created_at)
        if f.kind != "cancel" and f.status in (*COUNTING, "failed"):
            # Ours, but not part of the target: cancellable (an excess) and, on a last
            # meter, an event the next correction must come after.
            at = f.sent_at or f.created_at
            candidates.append(drift.Candidate(f.identifier, int(f.value), f.timestamp, at))
    pair = drift.Pair(
        formula=key.formula,
        period_start=key.period_start,
        period_end=key.period_end,
        counted=counted,
        candidates=candidates,
        newest_send=max((s for s in sends if s is not None), default=None),
        in_flight=in_flight,
    )
    return pair, pending


def _whole(value: Decimal) -> int:
    """A sent value, always a whole number."""
    return int(value)


def next_sequence(conn: sa.Connection, key: PairKey) -> int:
    """The sequence number of the pair's next correction."""
    found = conn.execute(
        sa.select(sa.func.max(_FIXES.c.sequence)).where(
            _FIXES.c.account_id == key.account_id,
            _FIXES.c.meter_id == key.meter_id,
            _FIXES.c.period_start == key.period_start,
            _FIXES.c.kind != "cancel",
        )
    ).scalar()
    return 1 if found is None else int(found) + 1


def add_fix(engine: sa.Engine, run_id: int, key: PairKey, **values: object) -> int:
    """Store a correction or cancel as ``sending``, before its Stripe call."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                _FIXES.insert()
                .values(
                    run_id=run_id,
                    account_id=key.account_id,
                    meter_id=key.meter_id,
                    period_start=key.period_start,
                    period_end=key.period_end,
                    status="sending",
                    created_at=utcnow(),
                    **values,
                )
                .returning(_FIXES.c.id)
            ).scalar_one()
        )


def mark_fix(engine: sa.Engine, fix_id: int, *, status: str, **values: object) -> None:
    """Record how a correction's Stripe call ended."""
    with engine.begin() as conn:
        conn.execute(_FIXES.update().where(_FIXES.c.id == fix_id).values(status=status, **values))


def open_run(  # noqa: PLR0913  keyword-only: the request a run is resumed by
    engine: sa.Engine,
    *,
    period: str,
    account: str | None,
    repair: bool,
    trigger: str,
    now: datetime,
    restart: bool,
    resume_within: timedelta,
) -> tuple[Any, bool]:
    """The unfinished run of the same request to resume (``True``), or a new run."""
    with engine.begin() as conn:
        same = (
            sa.select(_RUNS)
            .where(_RUNS.c.status.in_(("running", "stopped")), _RUNS.c.period == period)
            .where(_RUNS.c.repair.is_(repair), _RUNS.c.started_at > now - resume_within)
            .where(_RUNS.c.account.is_(None) if account is None else _RUNS.c.account == account)
            .order_by(_RUNS.c.id.desc())
            .limit(1)
        )
        found = conn.execute(same).first()
        if found is not None and not restart:
            conn.execute(_RUNS.update().where(_RUNS.c.id == found.id).values(status="running"))
            return found, True
        if found is not None:
            conn.execute(_RUNS.update().where(_RUNS.c.id == found.id).values(status="abandoned"))
        values: dict[str, Any] = {
            "period": period,
            "account": account,
            "repair": repair,
            "trigger": trigger,
            "as_of": now,
            "counts": {},
            "started_at": now,
            "updated_at": now,
        }
        run_id = conn.execute(_RUNS.insert().values(**values).returning(_RUNS.c.id)).scalar_one()
        return conn.execute(sa.select(_RUNS).where(_RUNS.c.id == run_id)).one(), False


def save_pairs(engine: sa.Engine, run_id: int, rows: list[tuple[PairKey, dict[str, Any]]]) -> None:
    """Store finished pairs' verdicts (in run order) and move the run's cursor past the
    last of them, in one transaction."""
    if not rows:
        return
    with engine.begin() as conn:
        conn.execute(
            _PAIRS.insert(),
            [
                {
                    "run_id": run_id,
                    "account_id": key.account_id,
                    "meter_id": key.meter_id,
                    "period_start": key.period_start,
                    "period_end": key.period_end,
                    **values,
                }
                for key, values in rows
            ],
        )
        conn.execute(
            _RUNS.update()
            .where(_RUNS.c.id == run_id)
            .values(cursor=rows[-1][0].cursor, updated_at=utcnow(), pairs=_RUNS.c.pairs + len(rows))
        )


def stop_run(engine: sa.Engine, run_id: int, error: str) -> None:
    """Mark a run stopped by a Stripe failure; the next run of the request resumes it."""
    with engine.begin() as conn:
        conn.execute(
            _RUNS.update()
            .where(_RUNS.c.id == run_id)
            .values(status="stopped", error=error, updated_at=utcnow())
        )


def finish_run(
    engine: sa.Engine,
    run: sa.Row[Any],
    *,
    counts: dict[str, int],
    drifting: int,
    detail: dict[str, Any],
) -> None:
    """Mark the run finished with its counts, and write its audit-log entry."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            _RUNS.update()
            .where(_RUNS.c.id == run.id)
            .values(
                status="finished",
                counts=counts,
                drifting=drifting,
                finished_at=now,
                updated_at=now,
                error=None,
            )
        )
        conn.execute(
            _AUDIT.insert().values(
                at=now,
                actor=run.trigger,
                action="reconcile",
                subject=run.period if run.account is None else f"{run.period} {run.account}",
                detail={"run_id": run.id, "counts": counts, "drifting": drifting, **detail},
            )
        )


def run_pairs(conn: sa.Connection, run_id: int) -> list[Any]:
    """Every pair a run stored, in run order, with account, customer and meter names."""
    query = (
        sa.select(
            _PAIRS,
            _ACCOUNTS.c.name.label("account"),
            _ACCOUNTS.c.stripe_customer_id.label("customer"),
            _METERS.c.name.label("meter"),
        )
        .join(_ACCOUNTS, _ACCOUNTS.c.id == _PAIRS.c.account_id)
        .join(_METERS, _METERS.c.id == _PAIRS.c.meter_id)
        .where(_PAIRS.c.run_id == run_id)
        .order_by(_PAIRS.c.account_id, _PAIRS.c.meter_id, _PAIRS.c.period_start)
    )
    return list(conn.execute(query).all())
