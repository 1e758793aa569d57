"""Recording usage: the raw event and its open report change in one transaction.

One write path serves ``increment`` (a batch of one) and ``record_many``:

1. upsert the open report of every (account, meter, window) the batch touches, in a
   fixed order, which locks those rows until commit, so a concurrent close or increment
   waits instead of interleaving;
2. insert the events, skipping any whose idempotency key the account has used already
   (the unique constraint decides, so two processes racing on one key agree);
3. write each report's new aggregate, computed in Python from the events accepted.

Arithmetic on quantities happens in Python with Decimals, never in SQL, so SQLite (which
has no decimal type) and PostgreSQL give the same exact totals.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from adapter import fastpath, validation
from adapter.aggregation import Aggregate
from adapter.catalog import Accounts, Meters
from adapter.errors import InvalidUsage, MetersyncError, UnknownAccount
from adapter.models import UsageEvent, UsageReport, table, utcnow
from adapter.periods import Periods
from adapter.schedule_store import ScheduleStore
from adapter.windows import Window, window_for

_EVENTS, _REPORTS = table(UsageEvent), table(UsageReport)
_ITEM_FIELDS = frozenset(
    {"account", "meter", "quantity", "timestamp", "idempotency_key", "dimensions"}
)
#: Deadlocks, busy databases and dropped connections are retried this many times.
_RETRIES = 5


@dataclass(frozen=True, slots=True)
class Receipt:
    """What recording one event returns. ``duplicate`` means nothing was counted."""

    event_id: int
    report_id: int
    duplicate: bool
    account: str
    meter: str
    quantity: Decimal
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item of a batch that was not stored, and why."""

    index: int
    error: str
    item: Any = None


@dataclass(slots=True)
class BatchResult:
    """Per-item outcome of ``record_many``: ``receipts[i]`` is None for rejected items."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    receipts: list[Receipt | None] = field(default_factory=list)


@dataclass(slots=True)
class _Item:
    index: int
    account: str
    meter: str
    account_id: int
    meter_id: int
    quantity: Decimal
    occurred_at: datetime
    key: str | None
    dimensions: dict[str, Any] | None
    window: Window | None = None
    report_id: int | None = None
    event_id: int | None = None
    duplicate: bool = False


def _parse(index: int, raw: object, *, now: datetime, default_meter: str) -> dict[str, Any]:
    """Validate one item's fields (not yet its names), raising InvalidUsage."""
    if not isinstance(raw, Mapping):
        raise InvalidUsage(f"item must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _ITEM_FIELDS)
    if unknown:
        raise InvalidUsage(
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(sorted(_ITEM_FIELDS))}"
        )
    if not isinstance(raw.get("account"), str) or not raw["account"]:
        raise InvalidUsage(f"account must be a non-empty string, got {raw.get('account')!r}")
    if raw.get("meter") is not None and not isinstance(raw["meter"], str):
        raise InvalidUsage(f"meter must be a string, got {raw['meter']!r}")
    dims = raw.get("dimensions")
    if dims is not None and not (
        isinstance(dims, Mapping)
        and all(isinstance(k, str) for k in dims)
        and all(isinstance(v, str | int | float | bool) or v is None for v in dims.values())
    ):
        raise InvalidUsage("dimensions must map strings to strings, numbers or booleans")
    return {
        "account": raw["account"],
        "meter": raw.get("meter") or default_meter,
        "quantity": validation.to_quantity(raw.get("quantity", 1)),
        "occurred_at": validation.event_time(raw.get("timestamp"), now=now),
        "key": validation.idempotency_key(raw.get("idempotency_key")),
        "dimensions": dict(dims) if dims is not None else None,
    }


class Recorder:
    """Validates usage, assigns it to report windows and writes it."""

    def __init__(
        self, engine: sa.Engine, accounts: Accounts, meters: Meters, schedule: ScheduleStore,
        periods: Periods, *, autocommit: sa.Engine | None = None,
    ) -> None:
        self._engine = engine
        self._autocommit = autocommit
        self._periods = periods
        self._accounts = accounts
        self._meters = meters
        self._schedule = schedule
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        #: PostgreSQL records a single event in one statement; SQLite and batches use the
        #: three-step transaction.
        self._one_statement = dialect == "postgresql" and autocommit is not None

    def record(self, raw_items: Sequence[object], *, strict: bool = False) -> BatchResult:
        """Record a batch; invalid items are rejected (or raised, when ``strict``)."""
        now = utcnow()
        result = BatchResult(receipts=[None] * len(raw_items))
        parsed: list[tuple[int, dict[str, Any]]] = []
        for index, raw in enumerate(raw_items):
            try:
                parsed.append(
                    (index, _parse(index, raw, now=now, default_meter=self._meters.default))
                )
            except InvalidUsage as exc:
                if strict:
                    raise
                result.rejected.append(Rejected(index, str(exc), raw))
        if any(p["meter"] == self._meters.default for _, p in parsed):
            self._meters.ensure_default()
        if parsed:
            self._write_with_retry(parsed, result, now=now, strict=strict)
        result.rejected.sort(key=lambda r: r.index)
        return result

    def _write_with_retry(
        self,
        parsed: list[tuple[int, dict[str, Any]]],
        result: BatchResult,
        *,
        now: datetime,
        strict: bool,
    ) -> None:
        one_statement = self._one_statement and len(parsed) == 1
        for attempt in range(_RETRIES + 1):
            try:
                if one_statement:
                    assert self._autocommit is not None
                    with self._autocommit.connect() as conn:
                        items = self._resolve(conn, parsed, result, strict=strict)
                        if items:
                            self._write_one(conn, items[0], now=now)
                else:
                    with self._engine.begin() as conn:
                        items = self._resolve(conn, parsed, result, strict=strict)
                        if items:
                            self._write(conn, items, now=now)
                break
            except sa.exc.OperationalError as exc:
                if attempt == _RETRIES or not _is_retryable(exc):
                    raise
                time.sleep(0.005 * (attempt + 1))
        for item in items:
            result.receipts[item.index] = Receipt(
                event_id=item.event_id or 0,
                report_id=item.report_id or 0,
                duplicate=item.duplicate,
                account=item.account,
                meter=item.meter,
                quantity=item.quantity,
                occurred_at=item.occurred_at,
            )
            if item.duplicate:
                result.duplicates += 1
            else:
                result.accepted += 1

    def _write_one(self, conn: sa.Connection, item: _Item, *, now: datetime) -> None:
        """PostgreSQL: record one event in one atomic statement (see :mod:`fastpath`)."""
        self._assign_windows(conn, [item])
        values = fastpath.params(
            account_id=item.account_id, meter_id=item.meter_id, quantity=item.quantity,
            occurred_at=item.occurred_at, key=item.key, window=item.window, now=now,
            dimensions=None if item.dimensions is None else json.dumps(item.dimensions),
        )
        try:
            row = fastpath.run(conn.connection.driver_connection, values)
        except psycopg.errors.DivisionByZero:
            row = None  # a concurrent call took the key first; nothing was written
        except psycopg.OperationalError as exc:
            # Same handling as through SQLAlchemy: the caller retries dropped connections.
            conn.invalidate()
            raise sa.exc.OperationalError(fastpath.INCREMENT_PSYCOPG, values, exc) from exc
        if row is not None and row["event_id"] is not None:
            item.event_id, item.report_id = row["event_id"], row["report_id"]
            return
        item.duplicate = True
        if row is not None and row["dup_id"] is not None:
            item.event_id, item.report_id = row["dup_id"], row["dup_report_id"]
            item.quantity, item.occurred_at = row["dup_quantity"], row["dup_occurred_at"]
            return
        original = conn.execute(
            fastpath.ORIGINAL_SQL, {"account_id": item.account_id, "key": item.key}
        ).one()
        item.event_id, item.report_id = original.id, original.report_id
        item.quantity, item.occurred_at = original.quantity, original.occurred_at

    def _resolve(
        self,
        conn: sa.Connection,
        parsed: list[tuple[int, dict[str, Any]]],
        result: BatchResult,
        *,
        strict: bool,
    ) -> list[_Item]:
        """Map names to ids; reject items naming unknown accounts or meters."""
        result.rejected = [r for r in result.rejected if r.index not in {i for i, _ in parsed}]
        accounts = self._accounts.ids(conn, {p["account"] for _, p in parsed})
        meters = self._meters.resolve(conn, {p["meter"] for _, p in parsed})
        items: list[_Item] = []
        for index, p in parsed:
            error: InvalidUsage | None = None
            if p["account"] not in accounts:
                error = UnknownAccount(
                    f"unknown account {p['account']!r}; create it with accounts.upsert "
                    "or `metersync accounts add`"
                )
            elif p["meter"] not in meters:
                error = self._meters.unknown(str(p["meter"]))
            if error is not None:
                if strict:
                    raise error
                result.rejected.append(Rejected(index, str(error)))
                continue
            items.append(
                _Item(
                    index=index,
                    account=p["account"],
                    meter=p["meter"],
                    account_id=accounts[p["account"]],
                    meter_id=meters[p["meter"]].id,
                    quantity=p["quantity"],
                    occurred_at=p["occurred_at"],
                    key=p["key"],
                    dimensions=p["dimensions"],
                )
            )
        return items

    def _write(self, conn: sa.Connection, items: list[_Item], *, now: datetime) -> None:
        fresh = _mark_batch_duplicates(items)
        self._assign_windows(conn, fresh)
        reports = self._lock_reports(conn, fresh)
        self._insert_events(conn, fresh, now=now)
        self._update_reports(conn, fresh, reports)
        self._fill_duplicates(conn, items)

    def _assign_windows(self, conn: sa.Connection, items: list[_Item]) -> None:
        schedule = self._schedule.current(conn)
        periods = self._periods.of(conn, {i.account_id for i in items})
        for item in items:
            item.window = window_for(item.occurred_at, schedule, periods.get(item.account_id, ()))

    def _lock_reports(self, conn: sa.Connection, items: list[_Item]) -> dict[tuple[Any, ...], Any]:
        """Upsert the open reports the batch needs, in key order, and return their rows."""
        keys: dict[tuple[Any, ...], Window] = {}
        for item in items:
            assert item.window is not None
            keys[(item.account_id, item.meter_id, item.window.start)] = item.window
        values = [
            {
                "account_id": a,
                "meter_id": m,
                "status": "open",
                "window_start": w.start,
                "window_end": w.end,
                "period_start": w.period_start,
                "period_end": w.period_end,
                "total": Decimal(0),
                "events": 0,
                "attempts": 0,
                "created_at": utcnow(),
            }
            for (a, m, _), w in sorted(keys.items(), key=lambda kv: kv[0])
        ]
        stmt = self._insert(_REPORTS).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id", "meter_id", "window_start"],
            index_where=sa.text("status = 'open'"),  # literal: a bound value defeats index inference once psycopg prepares the statement
            set_={"events": _REPORTS.c.events},  # a no-op that takes the row lock
        ).returning(_REPORTS)
        rows = conn.execute(stmt).all()
        reports = {(r.account_id, r.meter_id, r.window_start): r for r in rows}
        for item in items:
            assert item.window is not None
            item.report_id = reports[(item.account_id, item.meter_id, item.window.start)].id
        return reports

    def _insert_events(self, conn: sa.Connection, items: list[_Item], *, now: datetime) -> None:
        """Insert events; an item whose key the account already used becomes a duplicate.

        Keyless events cannot conflict, so they go in one plain insert whose ids come back
        in order; keyed events skip conflicts and are matched back by key. Keyed rows go
        in key order so that concurrent batches wait on each other rather than deadlock.
        """
        keyless = [i for i in items if i.key is None]
        keyed = sorted((i for i in items if i.key is not None), key=lambda i: (i.account_id, i.key))
        if keyless:
            stmt = sa.insert(_EVENTS).returning(_EVENTS.c.id, sort_by_parameter_order=True)
            ids = conn.execute(stmt, [_event_row(i, now) for i in keyless]).scalars().all()
            for item, event_id in zip(keyless, ids, strict=True):
                item.event_id = event_id
        if keyed:
            stmt = (
                self._insert(_EVENTS)
                .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
                .returning(_EVENTS.c.id, _EVENTS.c.account_id, _EVENTS.c.idempotency_key)
            )
            rows = conn.execute(stmt, [_event_row(i, now) for i in keyed]).all()
            by_key = {(r.account_id, r.idempotency_key): r.id for r in rows}
            for item in keyed:
                item.event_id = by_key.get((item.account_id, item.key))
                item.duplicate = item.event_id is None

    def _update_reports(
        self, conn: sa.Connection, items: list[_Item], reports: dict[tuple[Any, ...], Any]
    ) -> None:
        """Write each touched report's new aggregate; drop reports left empty."""
        aggregates: dict[int, Aggregate] = {}
        for row in reports.values():
            aggregates[row.id] = Aggregate(
                row.total, row.events, row.max_value, row.last_value, row.last_at
            )
        for item in items:
            if not item.duplicate:
                assert item.report_id is not None
                aggregates[item.report_id] = aggregates[item.report_id].add(
                    item.quantity, item.occurred_at
                )
        updates = [
            {
                "rid": rid,
                "v_total": a.total,
                "v_events": a.events,
                "v_max_value": a.max_value,
                "v_last_value": a.last_value,
                "v_last_at": a.last_at,
            }
            for rid, a in sorted(aggregates.items())
            if a.events
        ]
        if updates:
            conn.execute(_SET_AGGREGATE, updates)
        empty = [rid for rid, a in aggregates.items() if a.events == 0]
        if empty:
            conn.execute(_REPORTS.delete().where(_REPORTS.c.id.in_(empty)))

    @staticmethod
    def _fill_duplicates(conn: sa.Connection, items: list[_Item]) -> None:
        """Give each duplicate the receipt of the event that first used its key."""
        dups = [i for i in items if i.duplicate]
        if not dups:
            return
        by_account: dict[int, set[str]] = {}
        for item in dups:
            by_account.setdefault(item.account_id, set()).add(item.key or "")
        found: dict[tuple[int, str], Any] = {}
        for account_id, keys in by_account.items():
            rows = conn.execute(
                sa.select(
                    _EVENTS.c.id,
                    _EVENTS.c.report_id,
                    _EVENTS.c.idempotency_key,
                    _EVENTS.c.quantity,
                    _EVENTS.c.occurred_at,
                )
                .where(_EVENTS.c.account_id == account_id)
                .where(_EVENTS.c.idempotency_key.in_(keys))
            ).all()
            found.update({(account_id, r.idempotency_key): r for r in rows})
        for item in dups:
            original = found[(item.account_id, item.key or "")]
            item.event_id, item.report_id = original.id, original.report_id
            item.quantity, item.occurred_at = original.quantity, original.occurred_at


_SET_AGGREGATE = (
    _REPORTS.update()
    .where(_REPORTS.c.id == sa.bindparam("rid"))
    .values(
        {
            c: sa.bindparam(f"v_{c}", type_=_REPORTS.c[c].type)
            for c in ("total", "events", "max_value", "last_value", "last_at")
        }
    )
)


def _event_row(item: _Item, now: datetime) -> dict[str, Any]:
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


def _mark_batch_duplicates(items: list[_Item]) -> list[_Item]:
    """Within one batch the first use of a key wins; later uses are duplicates of it."""
    seen: set[tuple[int, str]] = set()
    fresh: list[_Item] = []
    for item in items:
        if item.key is not None:
            if (item.account_id, item.key) in seen:
                item.duplicate = True
                continue
            seen.add((item.account_id, item.key))
        fresh.append(item)
    return fresh


def _is_retryable(exc: sa.exc.OperationalError) -> bool:
    """Deadlocks and serialization failures (PostgreSQL), busy databases (SQLite), and
    connections the server dropped (nothing was committed on them)."""
    code = getattr(exc.orig, "sqlstate", None)
    return (
        code in {"40P01", "40001"}
        or "database is locked" in str(exc.orig)
        or exc.connection_invalidated
    )
