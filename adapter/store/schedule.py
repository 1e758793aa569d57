"""The reporting schedule in force, stored in the database and cached briefly.

Pausing does not change report windows: :meth:`ScheduleStore.current` keeps following the
expression while paused, so usage still lands in the windows it would have had. A pause
only tells the scheduler to stop closing reports until the schedule is resumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from adapter.domain import schedule as schedules
from adapter.errors import ConfigurationError
from adapter.store.models import AuditLog, ScheduleRow, table, utcnow

_SCHEDULE, _AUDIT = table(ScheduleRow), table(AuditLog)
#: How long a process trusts its copy of the schedule. A change reaches the windows of
#: new reports within this time; reports already open keep the window they were given.
CACHE_SECONDS = 5.0
#: The ``subject`` of every audit row about the schedule.
SUBJECT = "schedule"
#: What a change writes: new column values, the audit action and the audit detail.
_Change = tuple[dict[str, Any], str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """The stored schedule, who changed it last and when it next ticks."""

    expression: str
    paused: bool
    updated_by: str
    updated_at: datetime
    #: The next tick after now; None while paused (the scheduler closes nothing then).
    next_tick: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 strings."""
        return {
            "expression": self.expression,
            "paused": self.paused,
            "next_tick": self.next_tick.isoformat() if self.next_tick else None,
            "updated_by": self.updated_by,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ScheduleChange:
    """One audit row about the schedule: ``schedule.set``, ``.paused`` or ``.resumed``."""

    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the time as an ISO 8601 string."""
        return {
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "detail": self.detail,
        }


def schedule_json(state: ScheduleState, history: Iterable[ScheduleChange]) -> dict[str, Any]:
    """The schedule and its latest changes (as given, newest first) as one JSON document:
    what ``schedule show --json`` prints and ``GET /v1/schedule`` returns."""
    return state.to_dict() | {"history": [c.to_dict() for c in history]}


def _state(row: sa.Row[Any], now: datetime) -> ScheduleState:
    tick = None if row.paused else schedules.parse(row.expression).next_tick(now)
    return ScheduleState(row.expression, bool(row.paused), row.updated_by, row.updated_at, tick)


def _normal(expression: str) -> str:
    """The parsed form of a stored expression, to compare it with a new one."""
    try:
        return schedules.parse(expression).expression
    except ConfigurationError:
        return expression  # a broken stored value differs from any valid new one


class ScheduleStore:
    """Reads and changes the schedule row, seeding it from settings the first time."""

    def __init__(self, engine: sa.Engine, *, initial: str) -> None:
        schedules.parse(initial)  # a bad METERSYNC_REPORT_SCHEDULE fails at start, clearly
        self._engine = engine
        self._initial = initial
        self._cached: tuple[float, schedules.Schedule] | None = None
        self._lock = threading.Lock()

    def current(self, conn: sa.Connection | None = None) -> schedules.Schedule:
        """The schedule in force (cached for :data:`CACHE_SECONDS`), paused or not."""
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
                    self._insert_initial(conn)
        except sa.exc.IntegrityError:
            pass  # another process seeded it first: theirs is the same value

    def _insert_initial(self, conn: sa.Connection) -> None:
        initial = {"expression": self._initial, "paused": False, "updated_by": "settings"}
        conn.execute(_SCHEDULE.insert().values(id=1, updated_at=utcnow(), **initial))

    def _row(self, conn: sa.Connection, *, lock: bool = False) -> sa.Row[Any]:
        """The schedule row, stored from settings first if it is missing."""
        query = sa.select(_SCHEDULE).where(_SCHEDULE.c.id == 1)
        # Writers lock the row so that concurrent changes see each other's "old" value
        # (SQLite has no FOR UPDATE; its BEGIN IMMEDIATE already serialises writers).
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            self._insert_initial(conn)
            row = conn.execute(query).one()
        return row

    def state(self, conn: sa.Connection | None = None) -> ScheduleState:
        """The stored schedule, read now (never cached), with its next tick."""
        if conn is not None:
            return _state(self._row(conn), utcnow())
        with self._engine.begin() as own:
            return _state(self._row(own), utcnow())

    def set(self, expression: str, *, actor: str) -> ScheduleState:
        """Store a new expression and audit it. A bad one raises
        :class:`~adapter.errors.ConfigurationError` naming the accepted forms and changes
        nothing; the expression already stored changes nothing and writes no audit row."""
        new = schedules.parse(expression).expression

        def decide(row: sa.Row[Any]) -> _Change | None:
            if _normal(row.expression) == new:
                return None
            return {"expression": new}, "schedule.set", {"old": row.expression, "new": new}

        return self._change(actor, decide)

    def pause(self, *, actor: str) -> ScheduleState:
        """Stop the scheduler closing reports (windows still follow the expression)."""
        return self._flip(paused=True, actor=actor)

    def resume(self, *, actor: str) -> ScheduleState:
        """Let the scheduler close reports again."""
        return self._flip(paused=False, actor=actor)

    def _flip(self, *, paused: bool, actor: str) -> ScheduleState:
        def decide(row: sa.Row[Any]) -> _Change | None:
            if bool(row.paused) == paused:
                return None
            old, new = ("running", "paused") if paused else ("paused", "running")
            action = "schedule.paused" if paused else "schedule.resumed"
            detail = {"old": old, "new": new, "expression": row.expression}
            return {"paused": paused}, action, detail

        return self._change(actor, decide)

    def _change(self, actor: str, decide: Callable[[sa.Row[Any]], _Change | None]) -> ScheduleState:
        """Lock the row; ``decide`` gives the new values, the audit action and its detail
        (or None: nothing to change); write both in one transaction."""
        with self._engine.begin() as conn:
            row = self._row(conn, lock=True)
            change = decide(row)
            if change is None:
                return _state(row, utcnow())
            values, action, detail = change
            now = utcnow()
            where = _SCHEDULE.c.id == 1
            conn.execute(
                _SCHEDULE.update().where(where).values(updated_by=actor, updated_at=now, **values)
            )
            conn.execute(
                _AUDIT.insert().values(
                    at=now, actor=actor, action=action, subject=SUBJECT, detail=detail
                )
            )
            state = _state(conn.execute(sa.select(_SCHEDULE).where(where)).one(), now)
        with self._lock:
            self._cached = None  # this process sees the change at once
        return state

    def history(self, *, limit: int = 5) -> list[ScheduleChange]:
        """The latest ``limit`` audit rows about the schedule, newest first."""
        query = (
            sa.select(_AUDIT)
            .where(_AUDIT.c.subject == SUBJECT, _AUDIT.c.action.startswith("schedule."))
            .order_by(_AUDIT.c.at.desc(), _AUDIT.c.id.desc())
            .limit(limit)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [ScheduleChange(r.at, r.actor, r.action, dict(r.detail or {})) for r in rows]
