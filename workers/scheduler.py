"""The scheduler: at each tick of the stored schedule it closes the due reports and
enqueues pushes.

- **Outbox.** Each tick enqueues the reports it closed, and every report still closed or
  in flight that no worker has touched for :data:`SWEEP_GRACE`, so a message lost with a
  crashed worker or broker is sent again. Pushes are idempotent, so a duplicate message
  costs at most a duplicate-identifier answer from Stripe. Webhook deliveries still
  ``received`` after :data:`SWEEP_GRACE` are enqueued again the same way.
- **Run-time changes.** The schedule is re-read on every loop (about once a second),
  so an operator's change takes effect without a restart. Pausing stops the closing;
  windows keep following the expression.
- **Catch-up.** After downtime the scheduler ticks once for the latest due tick, not
  once per missed tick: closing is by window end, so one tick closes everything due.
- **Credit.** Every ``METERSYNC_CREDIT_INTERVAL`` seconds the leader draws down the
  credit of every account that has some (see :mod:`workers.credit_ticks`).
- **Alert webhooks.** The leader sends the due alert webhooks in a background sweep
  (see :mod:`workers.alert_deliveries`).
- **One leader.** A Redis lock lets only one of several schedulers act; the others wait
  to take over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
import structlog

from adapter.client import Metersync
from adapter.domain import schedule as schedules
from adapter.pushing.outbox import claim_for_push, close_reports
from adapter.store import unlinked
from adapter.store.models import utcnow
from workers.actors import Actors, stale_deliveries
from workers.alert_deliveries import AlertSweeper
from workers.credit_ticks import CreditTicker
from workers.reconcile_schedule import ReconcileTicker

log = structlog.get_logger("metersync.scheduler")
#: Seconds between looks at the clock and the stored schedule.
POLL_SECONDS = 1.0
#: How long a report or delivery handed to a worker is left alone before the sweep
#: enqueues it again. Longer than one push with its in-call retries, shorter than
#: Dramatiq's last retries, which a lost message would never get.
SWEEP_GRACE = timedelta(minutes=10)
#: Seconds the leader's lock lives without renewal; a dead leader is replaced after it.
LOCK_SECONDS = 15


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick did."""

    at: datetime
    tick: datetime
    closed: int
    enqueued: int


class Scheduler:
    """Ticks the reporting schedule; see the module docstring."""

    def __init__(
        self,
        ms: Metersync,
        actors: Actors,
        *,
        client: redis.Redis | None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._ms = ms
        self._actors = actors
        self._clock = clock
        self._lock = (
            None
            if client is None
            else client.lock("metersync:scheduler", timeout=LOCK_SECONDS, thread_local=False)
        )
        self._last_tick: datetime | None = None
        self._reconcile = ReconcileTicker(ms, actors, clock=clock)
        self._credits = CreditTicker(ms, on_fire=actors.alert_fired)
        self._alerts = AlertSweeper(ms)

    def run_once(self) -> Tick | None:
        """Tick if a tick is due, this scheduler leads and the schedule runs."""
        state = self._ms.schedule.state()
        if state.paused or not self._leading():
            return None
        now = self._clock()
        # Reports released by an account link wait for no tick: they go out within seconds.
        self._actors.enqueue_pushes(unlinked.claim_released(self._ms.engine, now=now))
        due = schedules.parse(state.expression).window(now)[0]  # latest tick at or before now
        if self._last_tick is not None and due <= self._last_tick:
            return None
        unlinked.expire_stale(self._ms.engine, now=now)
        closed = close_reports(self._ms.engine, now=now, due_only=True)
        ids = claim_for_push(self._ms.engine, now=now, grace=SWEEP_GRACE)
        self._actors.enqueue_pushes(ids)
        self._actors.enqueue_deliveries(
            stale_deliveries(self._ms.engine, now=now, grace=SWEEP_GRACE)
        )
        self._last_tick = due
        tick = Tick(at=now, tick=due, closed=closed, enqueued=len(ids))
        log.info("scheduler.tick", expression=state.expression, closed=closed, enqueued=len(ids))
        return tick

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # a failed tick is logged and tried again on the next loop
                log.exception("scheduler.tick_failed")
            self.reconcile_once()
            self.credits_once()
            self.alerts_once()
            stop.wait(POLL_SECONDS)
        if self._lock is not None and self._lock.owned():
            self._lock.release()

    def reconcile_once(self) -> datetime | None:
        """Enqueue the scheduled reconcile run when its schedule ticked and this
        scheduler leads (see :mod:`workers.reconcile_schedule`)."""
        try:
            return self._reconcile.run_once() if self._leading() else None
        except Exception:  # logged and tried again on the next loop
            log.exception("scheduler.reconcile_failed")
            return None

    def credits_once(self) -> int | None:
        """Draw down every account with credit when the credit interval passed and this
        scheduler leads (see :mod:`workers.credit_ticks`)."""
        try:
            return self._credits.run_once() if self._leading() else None
        except Exception:  # logged and tried again on the next loop
            log.exception("scheduler.credits_failed")
            return None

    def alerts_once(self) -> bool | None:
        """Start a sweep of the due alert webhooks when this scheduler leads (see
        :mod:`workers.alert_deliveries`)."""
        try:
            return self._alerts.run_once() if self._leading() else None
        except Exception:  # logged and tried again on the next loop
            log.exception("scheduler.alerts_failed")
            return None

    def _leading(self) -> bool:
        if self._lock is None:
            return True  # an in-process broker: this is the only scheduler
        if self._lock.owned():
            try:
                self._lock.reacquire()
                return True
            except redis.exceptions.LockError:
                return False
        return bool(self._lock.acquire(blocking=False))
