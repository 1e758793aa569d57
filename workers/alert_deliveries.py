"""The scheduler's alert webhook sweep: every :data:`INTERVAL` seconds the leading
scheduler sends the alert webhooks that are due (new firings and retries), signed (see
:mod:`adapter.alerting.deliver`).

The sweep runs in a thread of its own, one at a time: a receiver that takes its full
timeout on every delivery must not hold up the scheduler's ticks or the renewal of its
leader lock. Should leadership move while a sweep is running, the new leader's sweep
skips what this one has claimed, so no delivery is posted twice at the same time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime

import structlog

from adapter.alerting.deliver import deliver_due
from adapter.client import Metersync
from adapter.store.models import utcnow

log = structlog.get_logger("metersync.scheduler")
#: Seconds between the starts of two sweeps; retries wait 10 s or more anyway.
INTERVAL = 2.0


def deliver_once(ms: Metersync, *, now: datetime | None = None) -> int:
    """Send the alert webhooks due now (one batch); how many deliveries were attempted."""
    results = deliver_due(ms.engine, settings=ms.settings, now=utcnow() if now is None else now)
    if results:
        by_status: dict[str, int] = {}
        for result in results:
            by_status[result.status] = by_status.get(result.status, 0) + 1
        log.info("alerts.swept", attempted=len(results), **by_status)
    return len(results)


class AlertSweeper:
    """Starts :func:`deliver_once` in a background thread, at most once per
    :data:`INTERVAL` and never while the previous sweep still runs."""

    def __init__(
        self,
        ms: Metersync,
        *,
        deliver: Callable[[Metersync], int] = deliver_once,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ms, self._deliver, self._monotonic = ms, deliver, monotonic
        self._next = float("-inf")
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """Start a sweep if one is due and none is running; whether one started."""
        now = self._monotonic()
        if now < self._next or (self._thread is not None and self._thread.is_alive()):
            return False
        self._next = now + INTERVAL
        self._thread = threading.Thread(
            target=self._sweep, name="metersync-alert-deliveries", daemon=True
        )
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running sweep, if any (tests; a clean shutdown)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _sweep(self) -> None:
        try:
            self._deliver(self._ms)
        except Exception:  # logged; the next sweep tries again
            log.exception("scheduler.alert_deliveries_failed")
