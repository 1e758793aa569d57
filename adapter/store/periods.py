"""Billing periods per account, as report windows need them, cached briefly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from adapter.domain import validation
from adapter.domain.windows import Period
from adapter.errors import InvalidPeriod
from adapter.store.models import BillingPeriod, table, utcnow
from config import defaults

_PERIODS = table(BillingPeriod)
#: How long a process trusts its copy of an account's periods. The webhook mirror closes
#: the old period's reports when a new period begins, and pushing cuts a report at any
#: boundary it crosses, so a copy this stale cannot bill usage in the wrong period.
CACHE_SECONDS = 2.0


class Periods:
    """Known billing periods ``[start, end)`` of each account."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._cache: dict[int, tuple[float, list[Period]]] = {}
        self._lock = threading.Lock()

    def of(self, conn: sa.Connection, account_ids: Iterable[int]) -> dict[int, list[Period]]:
        """The recent periods of each account (cached for :data:`CACHE_SECONDS`)."""
        now = time.monotonic()
        found: dict[int, list[Period]] = {}
        missing: list[int] = []
        for account_id in set(account_ids):
            cached = self._cache.get(account_id)
            if cached is not None and now - cached[0] < CACHE_SECONDS:
                found[account_id] = cached[1]
            else:
                missing.append(account_id)
        if missing:
            oldest = utcnow() - defaults.STRIPE_MAX_EVENT_AGE
            rows = conn.execute(
                sa.select(_PERIODS.c.account_id, _PERIODS.c.period_start, _PERIODS.c.period_end)
                .where(_PERIODS.c.account_id.in_(missing))
                .where(_PERIODS.c.period_end > oldest)
                .order_by(_PERIODS.c.period_start)
            ).all()
            fresh: dict[int, list[Period]] = {a: [] for a in missing}
            for row in rows:
                fresh[row.account_id].append((row.period_start, row.period_end))
            with self._lock:
                self._cache.update({a: (now, p) for a, p in fresh.items()})
            found.update(fresh)
        return found

    def current(self, conn: sa.Connection, account_id: int) -> Period | None:
        """The period containing now, if known (from the same cache as :meth:`of`)."""
        now = utcnow()
        for start, end in reversed(self.of(conn, [account_id])[account_id]):
            if start <= now < end:
                return start, end
        return None

    def set(self, account_id: int, start: object, end: object, *, source: str) -> Period:
        """Store a period; refuse one that overlaps another known period of the account."""
        begin, finish = validation.period(start, end)
        with self._engine.begin() as conn:
            store_period(conn, account_id, begin, finish, source=source)
        self.forget([account_id])
        return begin, finish

    def forget(self, account_ids: Iterable[int] | None = None) -> None:
        """Drop this process's copy of the periods of ``account_ids`` (all when ``None``),
        so the next read sees a change made outside :meth:`set` (the webhook mirror)."""
        with self._lock:
            if account_ids is None:
                self._cache.clear()
            else:
                for account_id in account_ids:
                    self._cache.pop(account_id, None)


def store_period(
    conn: sa.Connection, account_id: int, start: object, end: object, *, source: str
) -> Period:
    """Store a period of an account on ``conn`` (the caller's transaction), replacing the
    account's period with the same start. Another known period that overlaps it is
    refused with :class:`InvalidPeriod`. Callers drop cached copies with
    :meth:`Periods.forget` once the transaction commits."""
    begin, finish = validation.period(start, end)
    overlap = conn.execute(_overlapping(account_id, begin, finish)).first()
    if overlap is not None:
        raise InvalidPeriod(
            f"period {begin.isoformat()}..{finish.isoformat()} overlaps the known "
            f"period {overlap.period_start.isoformat()}..{overlap.period_end.isoformat()}"
        )
    _put(conn, account_id, (begin, finish), source=source)
    return begin, finish


def replace_period(
    conn: sa.Connection, account_id: int, start: object, end: object, *, source: str
) -> Period:
    """:func:`store_period` for a period whose word is final (Stripe's, e.g. after a
    billing-cycle-anchor reset): an earlier period it overlaps is cut to end where this
    one starts and a later one is deleted, instead of refusing it."""
    begin, finish = validation.period(start, end)
    for row in conn.execute(_overlapping(account_id, begin, finish)).all():
        if row.period_start < begin:
            conn.execute(_PERIODS.update().where(_PERIODS.c.id == row.id).values(period_end=begin))
        else:
            conn.execute(_PERIODS.delete().where(_PERIODS.c.id == row.id))
    _put(conn, account_id, (begin, finish), source=source)
    return begin, finish


def _overlapping(account_id: int, begin: datetime, finish: datetime) -> sa.Select[Any]:
    """The account's other periods (another start) that overlap ``[begin, finish)``."""
    return (
        sa.select(_PERIODS.c.id, _PERIODS.c.period_start, _PERIODS.c.period_end)
        .where(_PERIODS.c.account_id == account_id)
        .where(_PERIODS.c.period_start < finish, _PERIODS.c.period_end > begin)
        .where(_PERIODS.c.period_start != begin)
    )


def _put(conn: sa.Connection, account_id: int, period: Period, *, source: str) -> None:
    """Write ``period``, replacing the account's period with the same start."""
    begin, finish = period
    conn.execute(
        _PERIODS.delete().where(
            _PERIODS.c.account_id == account_id, _PERIODS.c.period_start == begin
        )
    )
    conn.execute(
        _PERIODS.insert().values(
            account_id=account_id, period_start=begin, period_end=finish, source=source
        )
    )


def latest_period(conn: sa.Connection, account_id: int) -> Period | None:
    """The account's known period that starts last, read on ``conn`` (no cache)."""
    row = conn.execute(
        sa.select(_PERIODS.c.period_start, _PERIODS.c.period_end)
        .where(_PERIODS.c.account_id == account_id)
        .order_by(_PERIODS.c.period_start.desc())
        .limit(1)
    ).first()
    return None if row is None else (row.period_start, row.period_end)


def period_now(
    conn: sa.Connection, periods: Periods, account_id: int, now: datetime
) -> tuple[datetime, datetime, str]:
    """The account's billing period at ``now`` with where it came from: the mirror's
    (``billing_period``), else the calendar month (``calendar_month``)."""
    current = periods.current(conn, account_id)
    if current is not None:
        return (*current, "billing_period")
    return (*validation.default_period(now), "calendar_month")
