"""PostgreSQL: one increment in one autocommit statement (one round trip).

The statement is atomic on its own. Its common-table expressions run in this order:
``dup`` looks for an earlier event with the key; if there is none, ``rep`` upserts the
open report with the new aggregate (taking its row lock) and ``ev`` inserts the event.
If a concurrent transaction takes the key between ``dup`` and ``ev``, ``ev`` inserts
nothing while ``rep`` has already counted the event; the final SELECT then divides by
zero on purpose, which aborts the whole statement, and the caller reads the original
event. The error is the only way plain SQL can abort itself; it is raised for nothing
else here, and it is caught by SQLSTATE, not by message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import sqlalchemy as sa

from adapter.domain.windows import Window

#: SQLSTATE of division_by_zero: the statement's own "lost a race on the key" signal.
RACE_SQLSTATE = "22012"

INCREMENT_SQL = sa.text("""
WITH dup AS (
    SELECT id, report_id, quantity, occurred_at FROM usage_event
    WHERE account_id = :account_id AND idempotency_key = CAST(:key AS varchar)
), rep AS (
    INSERT INTO usage_report AS r (
        account_id, meter_id, status, window_start, window_end, period_start, period_end,
        total, events, max_value, last_value, last_at, attempts, created_at)
    SELECT :account_id, :meter_id, 'open', CAST(:window_start AS timestamptz),
        CAST(:window_end AS timestamptz), CAST(:period_start AS timestamptz),
        CAST(:period_end AS timestamptz), CAST(:quantity AS numeric), 1,
        CAST(:quantity AS numeric), CAST(:quantity AS numeric),
        CAST(:occurred_at AS timestamptz), 0, CAST(:now AS timestamptz)
    WHERE NOT EXISTS (SELECT 1 FROM dup)
    ON CONFLICT (account_id, meter_id, window_start) WHERE status = 'open' DO UPDATE SET
        window_end = GREATEST(r.window_end, EXCLUDED.window_end),
        period_start = COALESCE(EXCLUDED.period_start, r.period_start),
        period_end = COALESCE(EXCLUDED.period_end, r.period_end),
        total = r.total + EXCLUDED.total,
        events = r.events + 1,
        max_value = GREATEST(r.max_value, EXCLUDED.max_value),
        last_value = CASE WHEN r.last_at IS NULL OR EXCLUDED.last_at >= r.last_at
                          THEN EXCLUDED.last_value ELSE r.last_value END,
        last_at = GREATEST(r.last_at, EXCLUDED.last_at)
    RETURNING id
), ev AS (
    INSERT INTO usage_event (account_id, meter_id, report_id, quantity, occurred_at,
        received_at, idempotency_key, dimensions)
    SELECT :account_id, :meter_id, rep.id, CAST(:quantity AS numeric),
        CAST(:occurred_at AS timestamptz), CAST(:now AS timestamptz),
        CAST(:key AS varchar), CAST(:dimensions AS json)
    FROM rep
    ON CONFLICT (account_id, idempotency_key) DO NOTHING
    RETURNING id
)
SELECT
    (SELECT id FROM ev) AS event_id,
    (SELECT id FROM rep) AS report_id,
    dup.id AS dup_id, dup.report_id AS dup_report_id,
    dup.quantity AS dup_quantity, dup.occurred_at AS dup_occurred_at,
    -- counted in rep but not inserted in ev: divide by ev's row count, zero, to abort
    -- (a literal 1/0 would be folded, and raised, when the statement is planned)
    CASE WHEN EXISTS (SELECT 1 FROM rep) THEN 1 / (SELECT count(*) FROM ev) ELSE 0 END
        AS lost_race
FROM (SELECT 1) AS one LEFT JOIN dup ON true
""")

#: The same statement in the driver's own parameter style: it is sent straight through
#: the psycopg connection, which prepares it server-side after a few runs.
INCREMENT_PSYCOPG = re.sub(r"(?<!:):(\w+)", r"%(\1)s", str(INCREMENT_SQL))

ORIGINAL_SQL = sa.text(
    "SELECT id AS dup_id, report_id AS dup_report_id, quantity AS dup_quantity, "
    "occurred_at AS dup_occurred_at FROM usage_event "
    "WHERE account_id = :account_id AND idempotency_key = :key"
)


def run(driver_conn: psycopg.Connection[Any], values: dict[str, Any]) -> dict[str, Any]:
    """Execute the increment on a raw psycopg connection in autocommit; one round trip."""
    cur = driver_conn.execute(INCREMENT_PSYCOPG, values)
    row = cur.fetchone()
    assert row is not None, "the increment returns one row"
    assert cur.description is not None, "the increment returns columns"
    names = [c.name for c in cur.description]
    result = dict(zip(names, row, strict=True))
    if result["dup_occurred_at"] is not None:
        result["dup_occurred_at"] = result["dup_occurred_at"].astimezone(UTC)
    return result


def fetch_all(conn: sa.Connection, sql: str, values: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the driver connection inside ``conn``'s transaction and return plain
    tuples: for a thousand returned ids, SQLAlchemy's row objects cost more than the
    insert itself. Driver errors are raised as SQLAlchemy's, so callers handle one kind."""
    driver: psycopg.Connection[tuple[Any, ...]] | None = conn.connection.driver_connection
    assert driver is not None, "connection is closed"
    try:
        with driver.cursor() as cur:
            cur.execute(sql.encode(), values)
            return cur.fetchall()
    except psycopg.OperationalError as exc:
        raise sa.exc.OperationalError(sql, values, exc) from exc
    except psycopg.Error as exc:
        raise sa.exc.DBAPIError(sql, values, exc) from exc


def original(conn: sa.Connection, account_id: int, key: str | None) -> dict[str, Any]:
    """The event that first used ``key`` (it exists: the caller just lost a race to it)."""
    row = conn.execute(ORIGINAL_SQL, {"account_id": account_id, "key": key}).one()
    result = row._asdict()
    result["dup_occurred_at"] = result["dup_occurred_at"].astimezone(UTC)
    return result


def params(  # noqa: PLR0913  keyword-only: the statement's bound values, each named
    *,
    account_id: int,
    meter_id: int,
    quantity: Decimal,
    occurred_at: datetime,
    key: str | None,
    dimensions: str | None,
    window: Window,
    now: datetime,
) -> dict[str, Any]:
    """The bound values of :data:`INCREMENT_SQL`."""
    return {
        "account_id": account_id,
        "meter_id": meter_id,
        "quantity": quantity,
        "occurred_at": occurred_at,
        "key": key,
        "dimensions": dimensions,
        "now": now,
        "window_start": window.start,
        "window_end": window.end,
        "period_start": window.period_start,
        "period_end": window.period_end,
    }


#: PostgreSQL: a whole batch of events in one small statement. Arrays travel as single
#: parameters, so the statement stays short and is prepared once, unlike a multi-row
#: VALUES list; ``%b`` sends them in binary, with no per-element quoting. Quantities go
#: as text (exact; the server parses it) because psycopg's numeric array dumper is slow
#: in Python. Rows are
#: inserted in ``ord`` order, so their ids ascend in batch order.
INSERT_EVENTS_PSYCOPG = """
INSERT INTO usage_event (account_id, meter_id, report_id, quantity, occurred_at,
    received_at, idempotency_key, dimensions)
SELECT a, m, r, CAST(q AS numeric), t, %(now)s, k, CAST(d AS json)
FROM unnest(%(a)b::int[], %(m)b::int[], %(r)b::bigint[], %(q)b::text[],
    %(t)b::timestamptz[], %(k)b::varchar[], %(d)b::text[])
    WITH ORDINALITY AS u(a, m, r, q, t, k, d, ord)
ORDER BY ord
ON CONFLICT (account_id, idempotency_key) DO NOTHING
RETURNING id, account_id, idempotency_key
"""


#: PostgreSQL: upsert (and lock) a batch's open reports in one preparable statement, in
#: the caller's key order so that concurrent batches take row locks in the same order.
LOCK_REPORTS_PSYCOPG = """
INSERT INTO usage_report AS r (account_id, meter_id, status, window_start, window_end,
    period_start, period_end, total, events, attempts, created_at)
SELECT a, m, 'open', ws, we, ps, pe, 0, 0, 0, %(now)s
FROM unnest(%(a)b::int[], %(m)b::int[], %(ws)b::timestamptz[], %(we)b::timestamptz[],
    %(ps)b::timestamptz[], %(pe)b::timestamptz[]) WITH ORDINALITY AS u(a, m, ws, we, ps, pe, ord)
ORDER BY ord
ON CONFLICT (account_id, meter_id, window_start) WHERE status = 'open'
    DO UPDATE SET events = r.events, window_end = GREATEST(r.window_end, EXCLUDED.window_end),
        period_start = COALESCE(EXCLUDED.period_start, r.period_start),
        period_end = COALESCE(EXCLUDED.period_end, r.period_end)
RETURNING id, account_id, meter_id, window_start, total, events, max_value, last_value, last_at
"""
