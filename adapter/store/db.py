"""Engines, transactions and migrations. Nothing connects until :func:`make_engine` is called."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.pool import ConnectionPoolEntry

from adapter.errors import SchemaOutOfDate

_migrate_lock = threading.Lock()


def make_engine(url: str, *, pool_size: int = 10) -> sa.Engine:
    """An engine for SQLite (WAL, immediate write transactions) or PostgreSQL (psycopg 3)."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, pool_pre_ping=False
        )
        _sqlite_transactions(engine)
        return engine
    # No pre-ping: it costs a round trip per checkout. A connection the server dropped
    # fails its statement with connection_invalidated, and the recorder retries it.
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)


def make_autocommit_engine(url: str, *, pool_size: int = 10) -> sa.Engine:
    """PostgreSQL connections in autocommit, for work done in one atomic statement."""
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        isolation_level="AUTOCOMMIT",
    )


def _sqlite_transactions(engine: sa.Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, decide when transactions begin, and make
    them ``BEGIN IMMEDIATE`` so that concurrent writers queue instead of failing."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _alembic_config(engine: sa.Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("adapter") / "migrations"))
    # ConfigParser interpolates '%': escape it, or URL-encoded passwords and socket paths
    # (%2F) break migrations.
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["engine"] = engine
    return cfg


def head_revision(engine: sa.Engine) -> str | None:
    """The newest migration shipped with this version of metersync."""
    return ScriptDirectory.from_config(_alembic_config(engine)).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    """The migration the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine) -> str | None:
    """Apply every pending migration; safe to call from several processes at once."""
    with _migrate_lock, _sqlite_migration_lock(engine):
        command.upgrade(_alembic_config(engine), "head")
    return current_revision(engine)


@contextmanager
def _sqlite_migration_lock(engine: sa.Engine) -> Iterator[None]:
    """Let one process at a time migrate a SQLite file: an exclusive ``flock`` on
    ``<file>.migrate-lock`` (a file of its own: opening and closing the database file
    itself would drop SQLite's own locks). Alembic reads the version inside it, so a
    process that waited finds the schema migrated. PostgreSQL needs none: its DDL is
    transactional and the version row is locked."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: Tries at migrating a new SQLite file that other processes are migrating at the same
#: moment: SQLite answers "database is locked" at once (not after its busy timeout) when
#: waiting could deadlock, and the whole migration is one transaction, so trying again
#: after a pause is safe and finds the schema migrated, or migrates it.
SQLITE_LOCK_TRIES = 6


def ensure_schema(engine: sa.Engine, *, migrate: bool) -> None:
    """Migrate (when allowed) or refuse to run on a schema behind this code."""
    for attempt in range(1, SQLITE_LOCK_TRIES + 1):
        try:
            _ensure_schema(engine, migrate=migrate)
            return
        except sa.exc.OperationalError as exc:
            locked = engine.dialect.name == "sqlite" and "locked" in str(exc.orig)
            if not locked or attempt == SQLITE_LOCK_TRIES:
                raise
            time.sleep(0.25 * attempt)


def _ensure_schema(engine: sa.Engine, *, migrate: bool) -> None:
    current, head = current_revision(engine), head_revision(engine)
    if current == head:
        return
    if migrate:
        upgrade(engine)
        return
    raise SchemaOutOfDate(
        f"database schema is at {current or 'nothing'}, this metersync needs {head}; "
        "run `metersync db upgrade` (or set METERSYNC_AUTO_MIGRATE=true)"
    )
