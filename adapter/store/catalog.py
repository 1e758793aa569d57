"""Accounts and meters: upsert, list, and cached name → id lookups."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from adapter.domain.aggregation import AGGREGATIONS, Aggregation
from adapter.errors import InvalidUsage, UnknownAccount, UnknownMeter
from adapter.store import unlinked
from adapter.store.models import Account, AuditLog, Meter, UsageReport, table, utcnow
from config import defaults

_ACCOUNTS, _METERS, _AUDIT = table(Account), table(Meter), table(AuditLog)
_REPORTS = table(UsageReport)
#: How long a process trusts its list of all meters.
CACHE_SECONDS = 2.0
#: Fraction rounding rules applied at period close.
ROUNDINGS = ("down", "up", "nearest")


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """An account as the API returns it."""

    id: int
    name: str
    stripe_customer_id: str | None
    free: bool
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """A meter as the API returns it."""

    id: int
    name: str
    event_name: str
    aggregation: Aggregation
    rounding: str
    stripe_meter_id: str | None


def _account(row: sa.Row[Any]) -> AccountInfo:
    return AccountInfo(row.id, row.name, row.stripe_customer_id, row.free, dict(row.meta or {}))


def _meter(row: sa.Row[Any]) -> MeterInfo:
    return MeterInfo(
        row.id, row.name, row.event_name, row.aggregation, row.rounding, row.stripe_meter_id
    )


def _check_name(kind: str, name: object, limit: int) -> str:
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > limit
        or name != name.strip()
        or "\x00" in name
    ):
        raise InvalidUsage(
            f"{kind} must be a non-empty string of at most {limit} characters "
            f"without surrounding spaces, got {name!r}"
        )
    return name


class Accounts:
    """Accounts: the local id applications use, linked to a Stripe customer."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def upsert(
        self,
        name: str,
        *,
        stripe_customer_id: str | None = None,
        free: bool | None = None,
        metadata: dict[str, Any] | None = None,
        actor: str = "api",
    ) -> AccountInfo:
        """Create the account, or update the fields given (None leaves a field as it is)."""
        _check_name("account", name, 255)
        if stripe_customer_id is not None and not stripe_customer_id.startswith("cus_"):
            raise InvalidUsage(
                f"stripe_customer_id must look like cus_…, got {stripe_customer_id!r}"
            )
        changes: dict[str, Any] = {}
        if stripe_customer_id is not None:
            changes["stripe_customer_id"] = stripe_customer_id
        if free is not None:
            changes["free"] = bool(free)
        if metadata is not None:
            changes["meta"] = dict(metadata)
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(_ACCOUNTS).where(_ACCOUNTS.c.name == name)).first()
            now = utcnow()
            if row is None:
                values = {"name": name, "free": False, "meta": {}, **changes}
                conn.execute(_ACCOUNTS.insert().values(created_at=now, updated_at=now, **values))
                action = "account.created"
            elif changes:
                conn.execute(
                    _ACCOUNTS.update()
                    .where(_ACCOUNTS.c.id == row.id)
                    .values(updated_at=now, **changes)
                )
                action = "account.updated"
                if changes.get("stripe_customer_id"):
                    unlinked.release(conn, row.id, now=now)  # waiting usage goes out now
            else:
                return _account(row)
            conn.execute(
                _AUDIT.insert().values(
                    at=now,
                    actor=actor,
                    action=action,
                    subject=name,
                    detail={k: v for k, v in changes.items() if k != "meta"},
                )
            )
            row = conn.execute(sa.select(_ACCOUNTS).where(_ACCOUNTS.c.name == name)).one()
        return _account(row)

    def get(self, name: str, conn: sa.Connection | None = None) -> AccountInfo:
        """The account called ``name``, or :class:`UnknownAccount`; read on ``conn`` when
        given (the caller's transaction), else on a connection of its own."""
        query = sa.select(_ACCOUNTS).where(_ACCOUNTS.c.name == name)
        if conn is None:
            with self._engine.connect() as own:
                row = own.execute(query).first()
        else:
            row = conn.execute(query).first()
        if row is None:
            raise self.unknown(name)
        return _account(row)

    @staticmethod
    def unknown(name: str) -> UnknownAccount:
        """The error for an account that does not exist."""
        return UnknownAccount(
            f"unknown account {name!r}; create it with accounts.upsert or `metersync accounts add`"
        )

    def list(self) -> list[AccountInfo]:
        """Every account, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(_ACCOUNTS).order_by(_ACCOUNTS.c.name)).all()
        return [_account(r) for r in rows]

    def ids(self, conn: sa.Connection, names: Iterable[str]) -> dict[str, int]:
        """Map known account names to ids (unknown names are left out); cached."""
        wanted = set(names)
        missing = [n for n in wanted if n not in self._ids]
        if missing:
            rows = conn.execute(
                sa.select(_ACCOUNTS.c.name, _ACCOUNTS.c.id).where(_ACCOUNTS.c.name.in_(missing))
            ).all()
            with self._lock:
                self._ids.update({r.name: r.id for r in rows})
        return {n: self._ids[n] for n in wanted if n in self._ids}


class Meters:
    """Meters: local name, Stripe event name and the local aggregation."""

    def __init__(self, engine: sa.Engine, *, default_meter: str = defaults.DEFAULT_METER) -> None:
        self._engine = engine
        self._by_name: dict[str, MeterInfo] = {}
        self._all: tuple[float, list[MeterInfo]] | None = None
        self._lock = threading.Lock()
        self.default = default_meter

    def upsert(
        self,
        name: str,
        *,
        event_name: str | None = None,
        aggregation: str | None = None,
        rounding: str | None = None,
        actor: str = "api",
    ) -> MeterInfo:
        """Create the meter (``sum`` unless told), or update it. The aggregation of a meter
        that already holds usage cannot change: its reports were kept by the old rule."""
        _check_name("meter", name, defaults.MAX_STRIPE_NAME)
        if event_name is not None:
            _check_name("event_name", event_name, defaults.MAX_STRIPE_NAME)
        if aggregation is not None and aggregation not in AGGREGATIONS:
            raise InvalidUsage(
                f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}"
            )
        if rounding is not None and rounding not in ROUNDINGS:
            raise InvalidUsage(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
        with self._engine.begin() as conn:
            row = conn.execute(sa.select(_METERS).where(_METERS.c.name == name)).first()
            now = utcnow()
            if row is None:
                values = {
                    "name": name,
                    "event_name": event_name or name,
                    "aggregation": aggregation or "sum",
                    "rounding": rounding or "down",
                }
                conn.execute(_METERS.insert().values(created_at=now, updated_at=now, **values))
                action, detail = "meter.created", values
            else:
                detail = {
                    k: v
                    for k, v in {
                        "event_name": event_name,
                        "aggregation": aggregation,
                        "rounding": rounding,
                    }.items()
                    if v is not None and v != getattr(row, k)
                }
                if not detail:
                    return _meter(row)
                if "aggregation" in detail:
                    self._refuse_aggregation_change(conn, row, detail["aggregation"])
                conn.execute(
                    _METERS.update().where(_METERS.c.id == row.id).values(updated_at=now, **detail)
                )
                action = "meter.updated"
            conn.execute(
                _AUDIT.insert().values(
                    at=now, actor=actor, action=action, subject=name, detail=detail
                )
            )
            row = conn.execute(sa.select(_METERS).where(_METERS.c.name == name)).one()
        with self._lock:
            self._by_name.pop(name, None)
            self._all = None
        return _meter(row)

    @staticmethod
    def _refuse_aggregation_change(conn: sa.Connection, row: sa.Row[Any], new: str) -> None:
        used = conn.execute(
            sa.select(_REPORTS.c.id).where(_REPORTS.c.meter_id == row.id).limit(1)
        ).first()
        if used is not None:
            raise InvalidUsage(
                f"meter {row.name!r} already holds usage aggregated by {row.aggregation!r}; "
                f"create a new meter for {new!r} instead of changing it"
            )

    def all(self, conn: sa.Connection) -> list[MeterInfo]:
        """Every meter, by name, cached for :data:`CACHE_SECONDS` (a meter made by
        another process shows up within that time; one made here, at once)."""
        cached = self._all
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        meters = [_meter(r) for r in conn.execute(sa.select(_METERS).order_by(_METERS.c.name))]
        self._all = (time.monotonic(), meters)
        return meters

    def list(self) -> list[MeterInfo]:
        """Every meter, by name."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(_METERS).order_by(_METERS.c.name)).all()
        return [_meter(r) for r in rows]

    def get(self, name: str) -> MeterInfo:
        """The meter called ``name``, or :class:`UnknownMeter` listing the known ones."""
        with self._engine.connect() as conn:
            found = self.resolve(conn, [name])
        if name not in found:
            raise self.unknown(name)
        return found[name]

    def unknown(self, name: str, conn: sa.Connection | None = None) -> UnknownMeter:
        """The error for an unknown meter, naming the meters that exist. Pass the open
        connection when there is one: a second one would wait on its lock (SQLite)."""
        if conn is None:
            names = [m.name for m in self.list()]
        else:
            names = list(conn.execute(sa.select(_METERS.c.name).order_by(_METERS.c.name)).scalars())
        known = ", ".join(names) or "none yet"
        return UnknownMeter(f"unknown meter {name!r}; known meters: {known}")

    def resolve(self, conn: sa.Connection, names: Iterable[str]) -> dict[str, MeterInfo]:
        """Map known meter names to meters (unknown names are left out); cached."""
        wanted = set(names)
        missing = [n for n in wanted if n not in self._by_name]
        if missing:
            rows = conn.execute(sa.select(_METERS).where(_METERS.c.name.in_(missing))).all()
            with self._lock:
                self._by_name.update({r.name: _meter(r) for r in rows})
        return {n: self._by_name[n] for n in wanted if n in self._by_name}

    def ensure_default(self) -> None:
        """Create the default meter (a ``sum`` meter) unless it exists; call outside any
        transaction. Two processes racing here both end up with the same meter."""
        if self.default in self._by_name:
            return
        with self._engine.connect() as conn:
            if self.resolve(conn, [self.default]):
                return
        with contextlib.suppress(sa.exc.IntegrityError):  # another process was first
            self.upsert(self.default, aggregation="sum", actor="metersync")
