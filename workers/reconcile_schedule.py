"""When the scheduler starts a reconcile run: at each tick of
``METERSYNC_RECONCILE_SCHEDULE`` (default ``every 1d``; the report schedule's syntax).

The scheduled run compares ``previous,current``: the previous period still changes in
the grace hour before its invoice finalises and through late corrections, the current
one shows drift early. It reports only (no repair): writing to Stripe is an operator's
decision, ``metersync reconcile --repair``. After a restart the scheduler does not start
a second run for a tick a scheduled run already began in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
import structlog

from adapter.client import Metersync
from adapter.domain import schedule as schedules
from adapter.store.models import table, utcnow
from adapter.store.reconcile_models import ReconcileRun
from workers.actors import Actors

log = structlog.get_logger("metersync.scheduler")
_RUNS = table(ReconcileRun)
#: What the scheduled run compares.
SCHEDULED_PERIOD = "previous,current"


class ReconcileTicker:
    """Enqueues the ``reconcile`` actor once per tick of the reconcile schedule."""

    def __init__(
        self, ms: Metersync, actors: Actors, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._ms, self._actors, self._clock = ms, actors, clock
        self._schedule = schedules.parse(ms.settings.reconcile_schedule)
        self._last: datetime | None = None

    def run_once(self) -> datetime | None:
        """Enqueue a run if a tick passed since the last one; the tick, or ``None``."""
        due = self._schedule.window(self._clock())[0]
        if self._last is None:
            self._last = self._last_started()
        if self._last is not None and due <= self._last:
            return None
        self._actors.reconcile.send(SCHEDULED_PERIOD)
        self._last = due
        log.info("scheduler.reconcile", tick=due.isoformat(), period=SCHEDULED_PERIOD)
        return due

    def _last_started(self) -> datetime | None:
        """When the newest scheduled run started (it covers the tick it started in)."""
        with self._ms.engine.connect() as conn:
            found: datetime | None = conn.execute(
                sa.select(sa.func.max(_RUNS.c.started_at)).where(_RUNS.c.trigger == "schedule")
            ).scalar()
        return found
