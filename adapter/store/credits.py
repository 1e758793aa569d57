"""Reading and appending the credit ledger (see :mod:`adapter.store.credit_models`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from adapter.domain.credits import GrantState
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.models import Account, Meter, table

_GRANTS, _ENTRIES, _METERS = table(CreditGrant), table(CreditEntry), table(Meter)
_ACCOUNTS = table(Account)
#: Entry kinds; all but ``release`` take from the grant (``writeoff``: credit released back
#: to a grant no longer in effect, taken again at once).
KINDS = ("drawdown", "release", "void", "expiry", "writeoff")


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant as the API shows it, with what is left of it now."""

    id: int
    amount: int
    remaining: int
    currency: str
    scope: str
    targets: tuple[str, ...]
    priority: int
    category: str
    effective_at: datetime
    expires_at: datetime | None
    reason: str
    created_at: datetime
    created_by: str
    #: ``active``, ``scheduled`` (not yet effective), ``expired``, ``voided`` or ``used``.
    status: str
    stripe_status: str
    stripe_credit_grant_id: str | None
    stripe_error: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: amounts as integers of minor units, times in ISO 8601."""
        data = {name: getattr(self, name) for name in self.__slots__}
        for name in ("effective_at", "expires_at", "created_at"):
            data[name] = data[name].isoformat() if data[name] is not None else None
        data["targets"] = list(self.targets)
        return data


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger movement (signed: negative takes credit, positive gives it back)."""

    id: int
    grant_id: int
    kind: str
    amount: int
    meter: str | None
    period_start: datetime | None
    at: datetime
    actor: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["at"] = self.at.isoformat()
        data["period_start"] = self.period_start.isoformat() if self.period_start else None
        return data


def _remaining() -> sa.Label[Any]:
    """A grant's amount plus its entries, as a correlated scalar."""
    moved = (
        sa.select(sa.func.coalesce(sa.func.sum(_ENTRIES.c.amount), 0))
        .where(_ENTRIES.c.grant_id == _GRANTS.c.id)
        .scalar_subquery()
    )
    return (_GRANTS.c.amount + moved).label("remaining")


def _voided() -> sa.ColumnElement[bool]:
    """Whether a void entry exists for the grant."""
    return sa.exists().where(_ENTRIES.c.grant_id == _GRANTS.c.id, _ENTRIES.c.kind == "void")


def grant_rows(
    conn: sa.Connection, account_id: int, *, grant_id: int | None = None
) -> list[sa.Row[Any]]:
    """Every grant of the account (or only ``grant_id``) with ``remaining`` and
    ``voided``, oldest first."""
    query = (
        sa.select(_GRANTS, _remaining(), _voided().label("voided"))
        .where(_GRANTS.c.account_id == account_id)
        .order_by(_GRANTS.c.id)
    )
    if grant_id is not None:
        query = query.where(_GRANTS.c.id == grant_id)
    return list(conn.execute(query).all())


def states(rows: Iterable[sa.Row[Any]]) -> list[GrantState]:
    """The rows as the pure drawdown rules see them."""
    return [
        GrantState(
            id=r.id,
            currency=r.currency,
            remaining=int(r.remaining),
            priority=r.priority,
            effective_at=r.effective_at,
            expires_at=r.expires_at,
            scope=r.scope,
            targets=tuple(r.targets or ()),
            voided=bool(r.voided),
        )
        for r in rows
    ]


def grant_of(row: sa.Row[Any], *, now: datetime) -> Grant:
    """A grant row as the API shows it."""
    remaining = int(row.remaining)
    if row.voided:
        status = "voided"
    elif row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    elif row.effective_at > now:
        status = "scheduled"
    else:
        status = "active" if remaining > 0 else "used"
    return Grant(
        id=row.id, amount=row.amount, remaining=remaining, currency=row.currency,
        scope=row.scope, targets=tuple(row.targets or ()), priority=row.priority,
        category=row.category, effective_at=row.effective_at, expires_at=row.expires_at,
        reason=row.reason, created_at=row.created_at, created_by=row.created_by,
        status=status, stripe_status=row.stripe_status,
        stripe_credit_grant_id=row.stripe_credit_grant_id, stripe_error=row.stripe_error,
    )  # fmt: skip


def add_entries(conn: sa.Connection, entries: Iterable[Mapping[str, Any]]) -> int:
    """Append ledger entries on ``conn`` (the caller's transaction); how many."""
    rows = [dict(e) for e in entries]
    if rows:
        conn.execute(_ENTRIES.insert(), rows)
    return len(rows)


def drawn_for_period(
    conn: sa.Connection, account_id: int, period_start: datetime
) -> dict[int, list[tuple[int, int]]]:
    """Per meter id, the credit drawn (net of releases) for the period from each grant, as
    ``(grant id, drawn)`` in the order the grants were first drawn."""
    rows = conn.execute(
        sa.select(
            _ENTRIES.c.meter_id,
            _ENTRIES.c.grant_id,
            (-sa.func.sum(_ENTRIES.c.amount)).label("drawn"),
            sa.func.min(_ENTRIES.c.id).label("first"),
        )
        .where(_ENTRIES.c.account_id == account_id, _ENTRIES.c.period_start == period_start)
        .where(_ENTRIES.c.kind.in_(("drawdown", "release")))
        .group_by(_ENTRIES.c.meter_id, _ENTRIES.c.grant_id)
        .order_by(sa.func.min(_ENTRIES.c.id))
    ).all()
    found: dict[int, list[tuple[int, int]]] = {}
    for row in rows:
        if row.meter_id is not None and int(row.drawn) > 0:
            found.setdefault(row.meter_id, []).append((row.grant_id, int(row.drawn)))
    return found


def entries_of(conn: sa.Connection, account_id: int, *, limit: int = 1000) -> list[Entry]:
    """The account's newest ledger entries, newest first."""
    rows = conn.execute(
        sa.select(_ENTRIES, _METERS.c.name.label("meter"))
        .outerjoin(_METERS, _METERS.c.id == _ENTRIES.c.meter_id)
        .where(_ENTRIES.c.account_id == account_id)
        .order_by(_ENTRIES.c.id.desc())
        .limit(limit)
    ).all()
    return [
        Entry(r.id, r.grant_id, r.kind, int(r.amount), r.meter, r.period_start, r.at, r.actor,
              r.note)
        for r in rows
    ]  # fmt: skip


def has_grants(conn: sa.Connection, account_id: int) -> bool:
    """Whether the account ever had a grant (drawdown has nothing to do otherwise)."""
    found = conn.execute(
        sa.select(_GRANTS.c.id).where(_GRANTS.c.account_id == account_id).limit(1)
    ).first()
    return found is not None


def accounts_with_grants(conn: sa.Connection) -> list[str]:
    """Names of the accounts that have a grant, for the periodic drawdown."""
    query = (
        sa.select(_ACCOUNTS.c.name)
        .where(sa.exists().where(_GRANTS.c.account_id == _ACCOUNTS.c.id))
        .order_by(_ACCOUNTS.c.name)
    )
    return list(conn.execute(query).scalars())
