"""Shared pieces of the benchmarks: run statistics, result tables, throwaway databases,
baselines through the raw drivers, and profiles.

Machines here are shared and noisy, so every figure is measured in several runs and
reported as the median, with the spread of the runs beside it.
"""

from __future__ import annotations

import cProfile
import io
import math
import os
import pstats
import sqlite3
import statistics
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal

import psycopg

from tests.servers import find_postgres


@dataclass(frozen=True, slots=True)
class Target:
    """A goal a figure is judged against: at least (``>=``) or at most (``<=``) a value."""

    op: Literal[">=", "<="]
    value: float
    unit: str

    def met(self, measured: float) -> bool:
        """Whether ``measured`` reaches the goal."""
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def __str__(self) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        return f"{sign} {_number(self.value)} {self.unit}".rstrip()


@dataclass(slots=True)
class Figure:
    """One measured quantity: its value in each run, and the target it answers to."""

    label: str
    unit: str
    runs: list[float] = field(default_factory=list)
    target: Target | None = None
    #: False when the run was too small for the target to say anything (verdict "n/a").
    target_applies: bool = True

    @property
    def median(self) -> float:
        """The median over runs (NaN when nothing was measured)."""
        return statistics.median(self.runs) if self.runs else math.nan

    def verdict(self) -> str:
        """PASS or MISS against the target; blank when there is none."""
        if self.target is None:
            return ""
        if not self.target_applies:
            return "n/a"
        return "PASS" if self.target.met(self.median) else "MISS"


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 0.01 else f"{value:.4f}"


def render(title: str, figures: Sequence[Figure], notes: Sequence[str] = ()) -> str:
    """A plain-text table: figure, median, unit, target, verdict, and the run spread."""
    header = ("figure", "median", "unit", "target", "verdict", "runs: min - max (n)")
    rows = [header]
    for f in figures:
        spread = f"{_number(min(f.runs))} - {_number(max(f.runs))} ({len(f.runs)})"
        target = str(f.target) if f.target is not None else ""
        rows.append((f.label, _number(f.median), f.unit, target, f.verdict(), spread))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [title, "=" * len(title)]
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(w) if i == 1 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend(f"* {note}" for note in notes)
    return "\n".join(lines)


def progress(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the results."""
    print(f"  .. {message}", file=sys.stderr, flush=True)


@contextmanager
def postgres_database(prefix: str = "metersync_bench") -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database (URL, description of the server), dropped afterwards."""
    server = find_postgres()
    url = server.create_database(prefix)
    try:
        yield url, f"{server.origin} server"
    finally:
        server.drop_database(url)


@contextmanager
def sqlite_database() -> Iterator[tuple[str, str]]:
    """A fresh SQLite database file in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="metersync-bench-") as root:
        yield f"sqlite:///{root}/bench.db", f"file in {root}"


def driver_url(sqlalchemy_url: str) -> str:
    """The libpq URL psycopg takes, from a ``postgresql+psycopg://`` SQLAlchemy URL."""
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


def sqlite_path(sqlalchemy_url: str) -> str:
    """The file path of a ``sqlite:///path`` URL."""
    return sqlalchemy_url.split(":///", 1)[1]


# Baselines through the raw drivers, one class per database, side by side.

#: Columns of ``usage_event`` (less its id) that the ceiling baseline writes.
COPY_COLUMNS = (
    "account_id",
    "meter_id",
    "report_id",
    "quantity",
    "occurred_at",
    "received_at",
    "idempotency_key",
    "dimensions",
)
_GRAVITY_DDL = (
    "CREATE TABLE bench_gravity (account text, meter text, quantity numeric NOT NULL, "
    "PRIMARY KEY (account, meter))"
)

Rows = list[tuple[Any, ...]]


class RawPostgres:
    """The baselines through psycopg in autocommit: each statement is its own transaction."""

    ceiling_label = "baseline: raw COPY, unindexed table"

    def __init__(self, url: str, *, counter: tuple[str, str]) -> None:
        self.counter = counter
        self.conn = psycopg.connect(driver_url(url), autocommit=True)
        self.conn.execute(_GRAVITY_DDL)
        self.conn.execute(
            "CREATE TABLE bench_copy (id bigserial, account_id integer, meter_id integer, "
            "report_id bigint, quantity numeric, occurred_at timestamptz, "
            "received_at timestamptz, idempotency_key varchar(255), dimensions json)"
        )
        self.conn.execute("INSERT INTO bench_gravity VALUES (%s, %s, 0)", counter)
        row = self.conn.execute("SHOW server_version").fetchone()
        self.version = f"PostgreSQL {row[0] if row else '?'}"

    def gravity(self, calls: int) -> tuple[float, list[float]]:
        """Updates/s and latencies (s) of ``calls`` counter updates, each committed."""
        sql = "UPDATE bench_gravity SET quantity = quantity + %s WHERE account = %s AND meter = %s"
        return _timed_updates(self.conn.execute, sql, self.counter, calls)

    def prepare(self, rows: Rows) -> Rows:
        """Rows as this driver takes them: psycopg adapts Python values itself."""
        return rows

    def ceiling(self, batches: list[Rows]) -> float:
        """Seconds to COPY the batches, one COPY (one transaction) per batch."""
        sql = f"COPY bench_copy ({', '.join(COPY_COLUMNS)}) FROM STDIN"
        started = perf_counter()
        with self.conn.cursor() as cur:
            for batch in batches:
                with cur.copy(sql) as copy:
                    for row in batch:
                        copy.write_row(row)
        return perf_counter() - started

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class RawSqlite:
    """The baselines through sqlite3, with the pragmas metersync's engine sets."""

    ceiling_label = "baseline: executemany INSERT, unindexed (no COPY in SQLite)"

    def __init__(self, url: str, *, counter: tuple[str, str]) -> None:
        self.counter = counter
        self.conn = sqlite3.connect(sqlite_path(url), isolation_level=None, timeout=30)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.execute(_GRAVITY_DDL)
        self.conn.execute(
            "CREATE TABLE bench_copy (id integer, account_id integer, meter_id integer, "
            "report_id integer, quantity varchar(48), occurred_at datetime, "
            "received_at datetime, idempotency_key varchar(255), dimensions json)"
        )
        self.conn.execute("INSERT INTO bench_gravity VALUES (?, ?, 0)", counter)
        self.version = f"SQLite {sqlite3.sqlite_version}"

    def gravity(self, calls: int) -> tuple[float, list[float]]:
        """Updates/s and latencies (s) of ``calls`` counter updates, each its own
        transaction."""
        sql = "UPDATE bench_gravity SET quantity = quantity + ? WHERE account = ? AND meter = ?"
        return _timed_updates(self.conn.execute, sql, self.counter, calls)

    def prepare(self, rows: Rows) -> Rows:
        """Rows as metersync stores them in SQLite: decimals and UTC times as text."""
        text = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's DATETIME storage format
        return [
            (a, m, r, str(q), o.strftime(text), t.strftime(text), k, d)
            for a, m, r, q, o, t, k, d in rows
        ]

    def ceiling(self, batches: list[Rows]) -> float:
        """Seconds to insert the batches, one transaction per batch."""
        marks = ", ".join("?" for _ in COPY_COLUMNS)
        sql = f"INSERT INTO bench_copy ({', '.join(COPY_COLUMNS)}) VALUES ({marks})"
        started = perf_counter()
        for batch in batches:
            self.conn.execute("BEGIN")
            self.conn.executemany(sql, batch)
            self.conn.execute("COMMIT")
        return perf_counter() - started

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def profile_calls(works: dict[str, Callable[[], object]], *, top: int = 15) -> str:
    """cProfile of each named piece of work: its top functions by own and by cumulative
    time, with paths shortened to what tells modules apart."""
    out = io.StringIO()
    for title, work in works.items():
        profiler = cProfile.Profile()
        profiler.runcall(work)
        stats = pstats.Stats(profiler, stream=out)
        for order in ("tottime", "cumulative"):
            out.write(f"cProfile of {title}, top {top} by {order}:\n")
            stats.sort_stats(order).print_stats(top)
    text = out.getvalue()
    for prefix in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], os.getcwd()):
        text = text.replace(prefix + "/", "")
    return text


def _timed_updates(
    execute: Callable[..., Any], sql: str, counter: tuple[str, str], calls: int
) -> tuple[float, list[float]]:
    """Updates/s and per-call latencies (s) of ``calls`` Gravity counter updates (the
    connection commits each one: autocommit on PostgreSQL, isolation_level None on SQLite)."""
    latencies = []
    begun = perf_counter()
    for _ in range(calls):
        started = perf_counter()
        execute(sql, (1, *counter))
        latencies.append(perf_counter() - started)
    return calls / (perf_counter() - begun), latencies
