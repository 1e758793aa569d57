"""What the HTTP app holds: settings, the metersync connection and the hand-off to workers,
each made on first use so that importing the app connects to nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import redis
import structlog
from fastapi import Request
from pydantic import ValidationError

import adapter
from adapter.errors import MetersyncError
from config.settings import Settings
from webhooks.errors import HttpError, Unavailable
from webhooks.intake import GroupWriter

if TYPE_CHECKING:
    from adapter.client import Metersync

log = structlog.get_logger("metersync.http")
#: The entry point group and name of the workers' hand-off (``pyproject.toml``).
HANDOFF_GROUP, HANDOFF_NAME = "metersync.handoff", "webhooks"
Handoff = tuple[Callable[[int], object], Callable[[], None]]
#: Seconds the health check waits for Redis.
REDIS_TIMEOUT = 2.0


class AppState:
    """Settings, connection and enqueue of one app; see :func:`webhooks.app.create_app`."""

    def __init__(
        self,
        settings: Settings | None,
        *,
        ms: Metersync | None,
        enqueue: Callable[[int], object] | None,
    ) -> None:
        self._settings = settings if settings is not None else (ms.settings if ms else None)
        self._ms = ms
        self._owns_ms = ms is None
        self._enqueue: Callable[[int], object] | None = enqueue
        self._close_handoff: Callable[[], None] | None = None
        self._redis: redis.Redis | None = None
        self._writer: GroupWriter | None = None
        self._lock = threading.Lock()
        # Connecting may take seconds (an unreachable database): it has its own lock so
        # that health checks of Redis do not queue behind it.
        self._connecting = threading.Lock()

    @property
    def settings(self) -> Settings:
        """The settings given, or read from the environment on first use."""
        if self._settings is None:
            with self._lock:
                if self._settings is None:
                    self._settings = _read_settings()
        return self._settings

    def metersync(self) -> Metersync:
        """The connection given, or one made from the settings on first use."""
        if self._ms is None:
            settings = self.settings
            with self._connecting:
                if self._ms is None:
                    self._ms = _connect(settings)
        return self._ms

    def enqueue(self, delivery_id: int) -> None:
        """Hand a stored delivery to the workers."""
        if self._enqueue is None:
            ms = self.metersync()
            with self._lock:
                if self._enqueue is None:
                    self._enqueue = self._broker_enqueue(ms)
        self._enqueue(delivery_id)

    def writer(self) -> GroupWriter:
        """The group writer that stores and enqueues verified deliveries."""
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = GroupWriter(lambda: self.metersync().engine, self.enqueue)
        return self._writer

    def _broker_enqueue(self, ms: Metersync) -> Callable[[int], object]:
        """The workers' hand-off, found through the ``metersync.handoff`` entry point
        (see :mod:`workers.bootstrap`); without one, deliveries wait for the sweep."""
        factory = _handoff_factory()
        if factory is None:
            log.warning("webhook.no_handoff", hint="install metersync with its workers")
            return lambda _delivery_id: None
        send, self._close_handoff = factory(self.settings, ms)
        return send

    def redis(self) -> redis.Redis | None:
        """A client for ``METERSYNC_REDIS_URL`` with short timeouts; None when unset."""
        url = self.settings.redis_url
        if not url:
            return None
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
                )
            return self._redis

    def close(self) -> None:
        """Release what this state made (never a connection it was given)."""
        with self._lock:
            if self._close_handoff is not None:
                self._close_handoff()
                self._close_handoff = None
            if self._redis is not None:
                self._redis.close()
                self._redis = None
            if self._owns_ms and self._ms is not None:
                self._ms.close()
                self._ms = None


def _read_settings() -> Settings:
    """Settings from the environment; invalid ones answer 500 naming the fields only."""
    try:
        return Settings()
    except ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors(include_input=False)})
        raise HttpError(
            f"invalid settings: {', '.join(fields)}; fix the METERSYNC_* environment",
            type="configuration_error",
        ) from None


def _connect(settings: Settings) -> Metersync:
    try:
        return adapter.connect(settings)
    except MetersyncError as exc:  # unreachable database, schema behind: say so, as 503
        raise Unavailable(str(exc), type="database_unavailable") from None


def _handoff_factory() -> Callable[[Settings, Metersync], Handoff] | None:
    """The factory the ``metersync.handoff`` entry point names, if one is installed."""
    found = entry_points(group=HANDOFF_GROUP, name=HANDOFF_NAME)
    for point in found:
        factory: Callable[[Settings, Metersync], Handoff] = point.load()
        return factory
    return None


def app_state(request: Request) -> AppState:
    """The state of the app serving ``request``."""
    state: AppState = request.app.state.metersync
    return state
