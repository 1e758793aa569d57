"""``ms.credits``: load prepaid credit, void it, and see the balance and its history.

Every read of the balance first draws the account's credit down to its usage (see
:mod:`adapter.crediting.drawdown`), so it is current to the last recorded event; the
scheduler also draws every account with grants on each tick.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from adapter.crediting import stripe_grants
from adapter.crediting.drawdown import Drawdown, draw_down, lock_account
from adapter.domain import validation
from adapter.domain.credits import PRIORITY_DEFAULT, check_grant
from adapter.errors import InvalidUsage
from adapter.store.audit import audit
from adapter.store.catalog import Accounts, Meters
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.credits import Entry, Grant, entries_of, grant_of, grant_rows
from adapter.store.models import table, utcnow
from adapter.store.periods import Periods

if TYPE_CHECKING:
    from adapter.gateway import Gateway

_GRANTS, _ENTRIES = table(CreditGrant), table(CreditEntry)


@dataclass(frozen=True, slots=True)
class Balance:
    """Credit an account has left now, per currency, and its grants."""

    account: str
    as_of: datetime
    #: Usable now, per currency (grants in effect, not expired or voided).
    available: dict[str, int]
    #: Granted but not yet in effect, per currency.
    scheduled: dict[str, int]
    grants: tuple[Grant, ...] = ()

    @property
    def currency(self) -> str | None:
        """The currency of the account's credit (``None`` with none, or several)."""
        found = set(self.available) | set(self.scheduled)
        return found.pop() if len(found) == 1 else None

    @property
    def amount(self) -> int:
        """Usable credit now, in minor units (of :attr:`currency`; summed if several)."""
        return sum(self.available.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "account": self.account,
            "as_of": self.as_of.isoformat(),
            "currency": self.currency,
            "amount": self.amount,
            "available": dict(self.available),
            "scheduled": dict(self.scheduled),
            "grants": [g.to_dict() for g in self.grants],
        }


@dataclass(frozen=True, slots=True)
class History:
    """An account's grants and ledger entries, newest entries first."""

    account: str
    grants: tuple[Grant, ...]
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "account": self.account,
            "grants": [g.to_dict() for g in self.grants],
            "entries": [e.to_dict() for e in self.entries],
        }


class Credits:
    """The credit ledger of one database. With ``gateway`` (the Stripe gateway, ``None``
    in a dry run) grants and voids are also sent to Stripe (see
    :mod:`adapter.crediting.stripe_grants`); without it they wait ``pending``."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        accounts: Accounts,
        meters: Meters,
        periods: Periods,
        gateway: Callable[[], Gateway | None] | None = None,
    ) -> None:
        self._engine = engine
        self._accounts, self._meters, self._periods = accounts, meters, periods
        self._gateway = gateway

    def grant(  # noqa: PLR0913  public API: independent keyword options of one grant
        self,
        account: str,
        amount: int,
        *,
        currency: str,
        meters: Sequence[str] = (),
        prices: Sequence[str] = (),
        priority: int = PRIORITY_DEFAULT,
        category: str = "paid",
        effective_at: object = None,
        expires_at: object = None,
        reason: str = "",
        idempotency_key: str | None = None,
        actor: str = "api",
    ) -> Grant:
        """Load ``amount`` minor units of ``currency`` to ``account``: for all its metered
        prices, or only ``meters`` or ``prices``. A repeated ``idempotency_key`` returns the
        first grant and loads nothing. Once committed, the grant is sent to Stripe."""
        if meters and prices:
            raise InvalidUsage("a grant covers named meters or named prices, not both")
        scope = "meters" if meters else "prices" if prices else "all"
        targets = sorted(set(meters or prices))
        now = utcnow()
        start = (
            now if effective_at is None else validation.to_utc(effective_at, field="effective_at")
        )
        end = None if expires_at is None else validation.to_utc(expires_at, field="expires_at")
        amount, currency = check_grant(
            amount=amount, currency=currency, priority=priority, category=category,
            scope=scope, targets=targets, effective_at=start, expires_at=end,
        )  # fmt: skip
        key = validation.idempotency_key(idempotency_key)
        with self._engine.begin() as conn:
            info = self._accounts.get(account, conn)
            if scope == "meters":
                known = self._meters.resolve(conn, targets)
                missing = [m for m in targets if m not in known]
                if missing:
                    raise self._meters.unknown(missing[0], conn)
            found = None
            if key is not None:
                found = conn.execute(
                    sa.select(_GRANTS.c.id).where(
                        _GRANTS.c.account_id == info.id, _GRANTS.c.idempotency_key == key
                    )
                ).scalar_one_or_none()
            if found is not None:  # a repeat: the first grant, sent to Stripe if still due
                granted = self._grant(conn, info.id, found)
            else:
                granted = self._insert(conn, info.id, actor=actor, account=account, values=dict(
                    amount=amount, currency=currency, scope=scope, targets=targets,
                    priority=priority, category=category, effective_at=start, expires_at=end,
                    reason=reason[:500], idempotency_key=key, created_at=now, created_by=actor,
                ))  # fmt: skip
        return self._to_stripe(granted)

    def _insert(
        self,
        conn: sa.Connection,
        account_id: int,
        *,
        actor: str,
        account: str,
        values: dict[str, Any],
    ) -> Grant:
        """Store a new pending grant of ``account_id`` with its audit row."""
        grant_id = conn.execute(
            _GRANTS.insert()
            .values(account_id=account_id, stripe_status="pending", meta={}, **values)
            .returning(_GRANTS.c.id)
        ).scalar_one()
        detail = {"grant": grant_id, "amount": values["amount"]}
        audit(conn, actor, "credit.grant", account, detail)
        return self._grant(conn, account_id, grant_id)

    def void(self, grant_id: int, *, reason: str = "", actor: str = "api") -> Grant:
        """Cancel what is left of a grant (an append-only ``void`` entry); once committed,
        a grant Stripe holds is voided at Stripe too."""
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(_GRANTS.c.account_id).where(_GRANTS.c.id == grant_id)
            ).first()
            if row is None:
                raise InvalidUsage(f"no credit grant {grant_id}; see `metersync credits history`")
            # Wait for a drawdown (or void) of the account in progress, then read what is
            # left: read first, and a drawdown committing meanwhile would take the grant
            # below zero (its draw and this void of the same credit would both stand).
            lock_account(conn, row.account_id)
            current = self._grant(conn, row.account_id, grant_id)
            if current.status == "voided":
                raise InvalidUsage(f"credit grant {grant_id} is already voided")
            conn.execute(
                _ENTRIES.insert().values(
                    grant_id=grant_id, account_id=row.account_id, kind="void",
                    amount=-current.remaining, at=utcnow(), actor=actor, note=reason[:500],
                )
            )  # fmt: skip
            audit(conn, actor, "credit.void", str(grant_id), {"left": current.remaining})
            voided = self._grant(conn, row.account_id, grant_id)
        return self._to_stripe(voided)

    def sync_stripe(self) -> stripe_grants.Sweep:
        """Send pending grants and owed voids to Stripe (the scheduler's credit tick);
        nothing without a gateway."""
        if self._gateway is None:
            return stripe_grants.Sweep()
        return stripe_grants.sweep(self._engine, gateway=self._gateway())

    def draw(self, account: str) -> Drawdown:
        """Draw the account's credit down to its usage now (the scheduler does this too)."""
        with self._engine.begin() as conn:
            info = self._accounts.get(account, conn)
            return draw_down(
                conn, account=info, meters=self._meters.all(conn), periods=self._periods,
                now=utcnow(),
            )  # fmt: skip

    def balance(self, account: str, *, draw: bool = True) -> Balance:
        """Credit left now, after drawing down the usage recorded so far (``draw=False``:
        as the ledger stands, for a caller that has just drawn, such as the tick)."""
        with self._engine.begin() as conn:
            info = self._accounts.get(account, conn)
            now = utcnow()
            if draw:
                draw_down(
                    conn, account=info, meters=self._meters.all(conn), periods=self._periods,
                    now=now,
                )  # fmt: skip
            grants = [grant_of(r, now=now) for r in grant_rows(conn, info.id)]
        available: dict[str, int] = {}
        scheduled: dict[str, int] = {}
        for g in grants:
            into = available if g.status in ("active", "used") else scheduled
            if g.status in ("active", "used", "scheduled"):
                into[g.currency] = into.get(g.currency, 0) + g.remaining
        return Balance(account, now, available, scheduled, tuple(grants))

    def history(self, account: str, *, limit: int = 1000) -> History:
        """The account's grants and its newest ledger entries."""
        with self._engine.connect() as conn:
            info = self._accounts.get(account, conn)
            now = utcnow()
            grants = tuple(grant_of(r, now=now) for r in grant_rows(conn, info.id))
            entries = tuple(entries_of(conn, info.id, limit=limit))
        return History(account, grants, entries)

    def _to_stripe(self, grant: Grant) -> Grant:
        """Send a just-committed grant, or its void, to Stripe; the grant as it is after."""
        if self._gateway is None:
            return grant
        if grant.stripe_status == "pending":
            stripe_grants.push_grant(self._engine, grant.id, gateway=self._gateway())
        elif grant.stripe_status == "created" and grant.status == "voided":
            stripe_grants.void_at_stripe(self._engine, grant.id, gateway=self._gateway())
        else:
            return grant
        with self._engine.connect() as conn:
            account_id = conn.execute(
                sa.select(_GRANTS.c.account_id).where(_GRANTS.c.id == grant.id)
            ).scalar_one()
            return self._grant(conn, account_id, grant.id)

    @staticmethod
    def _grant(conn: sa.Connection, account_id: int, grant_id: int) -> Grant:
        (row,) = grant_rows(conn, account_id, grant_id=grant_id)
        return grant_of(row, now=utcnow())
