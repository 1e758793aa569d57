"""The three-step write of a batch of usage items, inside one transaction.

1. Upsert the open report of every (account, meter, window) the batch touches, in key
   order. The upsert locks those rows until commit, so a concurrent close or increment
   waits instead of interleaving, and concurrent batches cannot deadlock on them.
2. Insert the events, skipping any whose idempotency key the account has used already:
   the unique constraint decides, so two processes racing on one key agree.
3. Write each report's new aggregate, computed in Python from the events accepted; drop
   a report this batch created that ended up with no events.

Quantities are added in Python with Decimals, never in SQL, so SQLite (which has no
decimal type) and PostgreSQL give the same exact totals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from adapter.domain.aggregation import Aggregate
from adapter.domain.items import Item, mark_batch_duplicates
from adapter.domain.windows import Window
from adapter.recording import postgres as fastpath
from adapter.store.models import UsageEvent, UsageReport, table, utcnow

_EVENTS, _REPORTS = table(UsageEvent), table(UsageReport)
_AGGREGATE_COLUMNS = ("total", "events", "max_value", "last_value", "last_at")
_SET_AGGREGATE = (
    _REPORTS.update()
    .where(_REPORTS.c.id == sa.bindparam("rid"))
    .values({c: sa.bindparam(f"v_{c}", type_=_REPORTS.c[c].type) for c in _AGGREGATE_COLUMNS})
)


def write_batch(conn: sa.Connection, items: list[Item], *, now: datetime) -> None:
    """Write ``items`` (names resolved, windows assigned) on ``conn``'s transaction."""
    fresh = mark_batch_duplicates(items)
    reports = _lock_reports(conn, fresh)
    if conn.dialect.name == "postgresql":
        _insert_events_postgres(conn, fresh, now=now)
    else:
        _insert_events(conn, fresh, now=now)
    _update_reports(conn, fresh, reports)
    fill_duplicates(conn, items)


@dataclass(frozen=True, slots=True)
class _Report:
    """A locked open report: its id, key and aggregate before this batch."""

    id: int
    key: tuple[int, int, datetime]
    before: Aggregate


def _lock_reports(conn: sa.Connection, items: list[Item]) -> dict[int, _Report]:
    """Upsert the open reports the batch needs, in key order; return them by id."""
    windows: dict[tuple[int, int, datetime], Window] = {}
    for item in items:
        assert item.window is not None
        windows[(item.account_id, item.meter_id, item.window.start)] = item.window
    ordered = sorted(windows.items(), key=lambda kv: kv[0])
    if conn.dialect.name == "postgresql":
        rows = fastpath.fetch_all(
            conn,
            fastpath.LOCK_REPORTS_PSYCOPG,
            {
                "now": utcnow(),
                "a": [k[0] for k, _ in ordered],
                "m": [k[1] for k, _ in ordered],
                "ws": [w.start for _, w in ordered],
                "we": [w.end for _, w in ordered],
                "ps": [w.period_start for _, w in ordered],
                "pe": [w.period_end for _, w in ordered],
            },
        )
    else:
        rows = [tuple(r) for r in conn.execute(_SQLITE_UPSERT, _sqlite_values(ordered)).all()]
    reports = {
        r[0]: _Report(r[0], (r[1], r[2], r[3].astimezone(UTC)), Aggregate(*r[4:9])) for r in rows
    }
    ids = {report.key: report.id for report in reports.values()}
    for item in items:
        assert item.window is not None
        item.report_id = ids[(item.account_id, item.meter_id, item.window.start)]
    return reports


def _sqlite_values(ordered: list[tuple[tuple[int, int, datetime], Window]]) -> list[dict[str, Any]]:
    created = utcnow()
    return [
        {
            "account_id": account_id,
            "meter_id": meter_id,
            "status": "open",
            "window_start": w.start,
            "window_end": w.end,
            "period_start": w.period_start,
            "period_end": w.period_end,
            "total": Decimal(0),
            "events": 0,
            "attempts": 0,
            "created_at": created,
        }
        for (account_id, meter_id, _), w in ordered
    ]


def _sqlite_upsert_statement() -> sa.Executable:
    """One statement for any number of reports (executemany), so SQLAlchemy compiles it
    once; a VALUES list sized to the batch would be compiled again on every call."""
    insert = sqlite.insert(_REPORTS)
    return insert.on_conflict_do_update(
        index_elements=["account_id", "meter_id", "window_start"],
        index_where=sa.text("status = 'open'"),
        # Takes the write lock; a window that grew (a billing period's end moved later)
        # extends the report.
        set_={
            "events": _REPORTS.c.events,
            "window_end": sa.func.max(_REPORTS.c.window_end, insert.excluded.window_end),
            # A writer whose copy of the periods predates the report's period (another
            # process learned it first) must not take it away.
            "period_start": sa.func.coalesce(insert.excluded.period_start, _REPORTS.c.period_start),
            "period_end": sa.func.coalesce(insert.excluded.period_end, _REPORTS.c.period_end),
        },
    ).returning(
        *(
            _REPORTS.c[c]
            for c in ("id", "account_id", "meter_id", "window_start", *_AGGREGATE_COLUMNS)
        )
    )


_SQLITE_UPSERT = _sqlite_upsert_statement()


def _insert_events_postgres(conn: sa.Connection, items: list[Item], *, now: datetime) -> None:
    """Insert all events in one array statement (see :data:`fastpath.INSERT_EVENTS_PSYCOPG`)."""
    # Batch order, so event ids (and with them 'last' ties) follow the caller's order.
    # Concurrent batches already met at the report locks, taken in key order.
    ordered = items
    params = {
        "now": now,
        "a": [i.account_id for i in ordered],
        "m": [i.meter_id for i in ordered],
        "r": [i.report_id for i in ordered],
        "q": [str(i.quantity) for i in ordered],
        "t": [i.occurred_at for i in ordered],
        "k": [i.key for i in ordered],
        "d": [None if i.dimensions is None else json.dumps(i.dimensions) for i in ordered],
    }
    rows = fastpath.fetch_all(conn, fastpath.INSERT_EVENTS_PSYCOPG, params)
    _match_ids(ordered, rows)


def _insert_events(conn: sa.Connection, items: list[Item], *, now: datetime) -> None:
    """Portable insert (SQLite): keyless rows plainly, keyed rows skipping conflicts."""
    keyless = [i for i in items if i.key is None]
    keyed = [i for i in items if i.key is not None]  # batch order; SQLite has one writer
    rows: list[Any] = []
    if keyless:
        stmt = sa.insert(_EVENTS).returning(
            _EVENTS.c.id,
            _EVENTS.c.account_id,
            _EVENTS.c.idempotency_key,
            sort_by_parameter_order=True,
        )
        rows += conn.execute(stmt, [_event_row(i, now) for i in keyless]).all()
    if keyed:
        stmt = (
            sqlite.insert(_EVENTS)
            .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
            .returning(_EVENTS.c.id, _EVENTS.c.account_id, _EVENTS.c.idempotency_key)
        )
        rows += conn.execute(stmt, [_event_row(i, now) for i in keyed]).all()
    _match_ids(keyless + keyed, rows)


def _match_ids(items: list[Item], rows: list[Any]) -> None:
    """Give each item its new event id; a keyed item with no row is a duplicate. Rows are
    (id, account_id, idempotency_key). Keyless rows were inserted in item order, so their
    ascending ids follow that order."""
    by_key = {(account_id, key): event_id for event_id, account_id, key in rows if key}
    keyless_ids = iter(sorted(event_id for event_id, _, key in rows if key is None))
    for item in items:
        if item.key is None:
            item.event_id = next(keyless_ids)
        else:
            item.event_id = by_key.get((item.account_id, item.key))
            item.duplicate = item.event_id is None


def _event_row(item: Item, now: datetime) -> dict[str, Any]:
    return {
        "account_id": item.account_id,
        "meter_id": item.meter_id,
        "report_id": item.report_id,
        "quantity": item.quantity,
        "occurred_at": item.occurred_at,
        "received_at": now,
        "idempotency_key": item.key,
        "dimensions": item.dimensions,
    }


def _update_reports(conn: sa.Connection, items: list[Item], reports: dict[int, _Report]) -> None:
    """Write each touched report's new aggregate; drop reports left empty."""
    added: dict[int, list[tuple[Decimal, datetime]]] = {rid: [] for rid in reports}
    # In event-id order, the order queries read events in, so that 'last' ties between
    # equal times resolve the same way whether a query reads the report or its events.
    for item in sorted(items, key=lambda i: i.event_id or 0):
        if not item.duplicate:
            assert item.report_id is not None
            added[item.report_id].append((item.quantity, item.occurred_at))
    updates, empty = [], []
    for rid, report in sorted(reports.items()):
        after = report.before.extend(added[rid])
        if after.events == 0:
            empty.append(rid)
        elif added[rid]:
            updates.append(
                {"rid": rid, **{f"v_{c}": getattr(after, c) for c in _AGGREGATE_COLUMNS}}
            )
    if updates:
        conn.execute(_SET_AGGREGATE, updates)
    if empty:
        conn.execute(_REPORTS.delete().where(_REPORTS.c.id.in_(empty)))


def fill_duplicates(conn: sa.Connection, items: list[Item]) -> None:
    """Give each duplicate the receipt of the event that first used its key."""
    wanted: dict[int, set[str]] = {}
    for item in items:
        if item.duplicate and item.key is not None:
            wanted.setdefault(item.account_id, set()).add(item.key)
    found: dict[tuple[int, str], Any] = {}
    for account_id, keys in wanted.items():
        rows = conn.execute(
            sa.select(
                _EVENTS.c.id,
                _EVENTS.c.report_id,
                _EVENTS.c.idempotency_key,
                _EVENTS.c.quantity,
                _EVENTS.c.occurred_at,
            ).where(_EVENTS.c.account_id == account_id, _EVENTS.c.idempotency_key.in_(keys))
        ).all()
        found.update({(account_id, r.idempotency_key): r for r in rows})
    for item in items:
        if item.duplicate and item.key is not None:
            original = found[(item.account_id, item.key)]
            item.event_id, item.report_id = original.id, original.report_id
            item.quantity, item.occurred_at = original.quantity, original.occurred_at
