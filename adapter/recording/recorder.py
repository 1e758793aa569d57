"""Recording usage: validate, resolve names, assign report windows, write.

A batch is written by :func:`adapter.recording.batch.write_batch` in one transaction. On PostgreSQL
a single ``increment`` is one atomic statement instead (:mod:`adapter.recording.postgres`), which
costs one round trip rather than five.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime

import psycopg
import sqlalchemy as sa

from adapter.domain.items import BatchResult, Item, Receipt, Rejected, parse_item
from adapter.domain.windows import Window, window_for
from adapter.errors import InvalidUsage, UnknownAccount
from adapter.recording import postgres as fastpath
from adapter.recording.batch import write_batch
from adapter.store.catalog import Accounts, Meters
from adapter.store.models import utcnow
from adapter.store.periods import Periods
from adapter.store.schedule import ScheduleStore

__all__ = ["BatchResult", "Receipt", "Recorder", "Rejected"]

#: Deadlocks, busy databases and dropped connections are retried this many times.
_RETRIES = 5


class Recorder:
    """Validates usage, assigns it to report windows and writes it."""

    def __init__(  # noqa: PLR0913  the stores it writes through, passed in by the client
        self,
        engine: sa.Engine,
        accounts: Accounts,
        meters: Meters,
        schedule: ScheduleStore,
        periods: Periods,
        *,
        autocommit: sa.Engine | None = None,
    ) -> None:
        self._engine = engine
        self._autocommit = autocommit if engine.dialect.name == "postgresql" else None
        self._accounts = accounts
        self._meters = meters
        self._schedule = schedule
        self._periods = periods

    def record(self, raw_items: Sequence[object], *, strict: bool = False) -> BatchResult:
        """Record a batch; invalid items are rejected (or raised, when ``strict``)."""
        now = utcnow()
        result = BatchResult(receipts=[None] * len(raw_items))
        parsed: list[Item] = []
        for index, raw in enumerate(raw_items):
            try:
                parsed.append(parse_item(index, raw, now=now, default_meter=self._meters.default))
            except InvalidUsage as exc:
                if strict:
                    raise
                result.rejected.append(Rejected(index, str(exc), raw))
        if any(item.meter == self._meters.default for item in parsed):
            self._meters.ensure_default()
        if parsed:
            for item in self._write_with_retry(parsed, result, now=now, strict=strict):
                result.receipts[item.index] = item.receipt()
                if item.duplicate:
                    result.duplicates += 1
                else:
                    result.accepted += 1
        result.rejected.sort(key=lambda r: r.index)
        return result

    def _write_with_retry(
        self, parsed: list[Item], result: BatchResult, *, now: datetime, strict: bool
    ) -> list[Item]:
        rejected_before = list(result.rejected)
        for attempt in range(_RETRIES + 1):
            result.rejected = list(rejected_before)
            try:
                if self._autocommit is not None and len(parsed) == 1:
                    with self._autocommit.connect() as conn:
                        items = self._resolve(conn, parsed, result, strict=strict)
                        for item in items:
                            self._write_one(conn, item, now=now)
                else:
                    with self._engine.begin() as conn:
                        items = self._resolve(conn, parsed, result, strict=strict)
                        if items:
                            write_batch(conn, items, now=now)
                return items
            except sa.exc.OperationalError as exc:
                keyed = all(item.key is not None for item in parsed)
                if attempt == _RETRIES or not _is_retryable(exc, all_keyed=keyed):
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _resolve(
        self, conn: sa.Connection, parsed: list[Item], result: BatchResult, *, strict: bool
    ) -> list[Item]:
        """Map names to ids and assign windows; reject items naming unknown names."""
        accounts = self._accounts.ids(conn, {i.account for i in parsed})
        meters = self._meters.resolve(conn, {i.meter for i in parsed})
        items: list[Item] = []
        for item in parsed:
            error: InvalidUsage | None = None
            if item.account not in accounts:
                error = UnknownAccount(
                    f"unknown account {item.account!r}; create it with accounts.upsert "
                    "or `metersync accounts add`"
                )
            elif item.meter not in meters:
                error = self._meters.unknown(item.meter, conn)
            if error is not None:
                if strict:
                    raise error
                result.rejected.append(Rejected(item.index, str(error)))
                continue
            item.account_id, item.meter_id = accounts[item.account], meters[item.meter].id
            items.append(item)
        if items:
            self._assign_windows(conn, items)
        return items

    def _assign_windows(self, conn: sa.Connection, items: list[Item]) -> None:
        """Give each item its report window. Windows partition time, so an event inside
        a window already found for its account in this batch has that window."""
        schedule = self._schedule.current(conn)
        periods = self._periods.of(conn, {i.account_id for i in items})
        latest: dict[int, Window] = {}
        for item in items:
            window = latest.get(item.account_id)
            if window is None or not window.start <= item.occurred_at < window.end:
                known = periods.get(item.account_id, ())
                window = latest[item.account_id] = window_for(item.occurred_at, schedule, known)
            item.window = window

    @staticmethod
    def _write_one(conn: sa.Connection, item: Item, *, now: datetime) -> None:
        """PostgreSQL: record one event in one atomic statement (see :mod:`fastpath`)."""
        assert item.window is not None, "windows are assigned before writing"
        values = fastpath.params(
            account_id=item.account_id,
            meter_id=item.meter_id,
            quantity=item.quantity,
            occurred_at=item.occurred_at,
            key=item.key,
            window=item.window,
            now=now,
            dimensions=None if item.dimensions is None else json.dumps(item.dimensions),
        )
        driver = conn.connection.driver_connection
        assert driver is not None, "connection is closed"
        try:
            row = fastpath.run(driver, values)
        except psycopg.errors.DivisionByZero:
            row = None  # a concurrent call took the key first; nothing was written
        except psycopg.OperationalError as exc:
            conn.invalidate()  # handled like SQLAlchemy's own errors: retried by the caller
            raise sa.exc.OperationalError(fastpath.INCREMENT_PSYCOPG, values, exc) from exc
        if row is not None and row["event_id"] is not None:
            item.event_id, item.report_id = row["event_id"], row["report_id"]
            return
        item.duplicate = True
        if row is None or row["dup_id"] is None:
            row = fastpath.original(conn, item.account_id, item.key)
        item.event_id, item.report_id = row["dup_id"], row["dup_report_id"]
        item.quantity, item.occurred_at = row["dup_quantity"], row["dup_occurred_at"]


def _is_retryable(exc: sa.exc.OperationalError, *, all_keyed: bool) -> bool:
    """Deadlocks and serialization failures (PostgreSQL) and busy databases (SQLite) are
    rolled back, so trying again is safe. A dropped connection is ambiguous (the commit
    may have happened), so it is retried only when every item has an idempotency key:
    then a second attempt finds the first one's events and counts nothing twice."""
    code = getattr(exc.orig, "sqlstate", None)
    if code in {"40P01", "40001"} or "database is locked" in str(exc.orig):
        return True
    return exc.connection_invalidated and all_keyed
