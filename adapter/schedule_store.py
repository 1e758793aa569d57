"""The reporting schedule in force, stored in the database and cached briefly."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from adapter import schedule as schedules
from adapter.models import ScheduleRow, table, utcnow

_SCHEDULE = table(ScheduleRow)
#: How long a process trusts its copy of the schedule. A change reaches the windows of
#: new reports within this time; reports already open keep the window they were given.
CACHE_SECONDS = 5.0


class ScheduleStore:
    """Reads the schedule row, seeding it from settings the first time."""

    def __init__(self, engine: sa.Engine, *, initial: str) -> None:
        schedules.parse(initial)  # a bad METERSYNC_REPORT_SCHEDULE fails at start, clearly
        self._engine = engine
        self._initial = initial
        self._cached: tuple[float, schedules.Schedule] | None = None
        self._lock = threading.Lock()

    def current(self, conn: sa.Connection | None = None) -> schedules.Schedule:
        """The schedule in force (cached for :data:`CACHE_SECONDS`)."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        if conn is None:
            with self._engine.connect() as own:
                expression = self._read(own)
        else:
            expression = self._read(conn)
        parsed = schedules.parse(expression)
        with self._lock:
            self._cached = (time.monotonic(), parsed)
        return parsed

    def _read(self, conn: sa.Connection) -> str:
        row = conn.execute(sa.select(_SCHEDULE.c.expression).where(_SCHEDULE.c.id == 1)).first()
        return self._initial if row is None else str(row.expression)

    def seed(self) -> None:
        """Store the initial schedule if none is stored yet (an operator's change wins)."""
        try:
            with self._engine.begin() as conn:
                if conn.execute(sa.select(_SCHEDULE.c.id)).first() is None:
                    conn.execute(
                        _SCHEDULE.insert().values(
                            id=1,
                            expression=self._initial,
                            paused=False,
                            updated_by="settings",
                            updated_at=utcnow(),
                        )
                    )
        except sa.exc.IntegrityError:
            pass  # another process seeded it first: theirs is the same value
