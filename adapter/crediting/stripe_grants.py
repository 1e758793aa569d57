"""Sending the credit ledger's grants to Stripe as credit grants, and their voids.

A grant's ``stripe_status`` says where Stripe stands (``stripe_error`` says why):
``pending`` (not sent yet: waiting for its account's Stripe customer, or Stripe could not
take it and the next sweep sends it again), ``created`` (Stripe holds it,
``stripe_credit_grant_id``), ``dry_run`` (no Stripe key; never sent), ``failed`` (Stripe
refused it, or a grant for meters no live subscription item bills: void it and grant
again), ``skipped`` (voided or expired before it was sent; nothing was) and ``voided``
(Stripe holds it voided: our void, or one made at Stripe, via the mirror).

Sending happens once: the ``Idempotency-Key`` is a function of the installation's
namespace and the grant id alone, so Stripe replays a retried send (for 24 hours), and
Stripe's grant carries ``metadata.metersync_grant_id`` and ``metersync_installation`` so
the webhook mirror ties it to ours (:mod:`adapter.mirror.credit_grants`).

A grant voided locally that Stripe holds is voided at Stripe too, right after the local
void and by every sweep until done; ``credit_grant.meta["stripe_void_status"]`` keeps the
outcome: ``voided``, or ``failed`` (refused, ``stripe_error`` says why; not tried again).
One Stripe could not take now leaves the grant ``created`` with the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from adapter.errors import InvalidUsage
from adapter.gateway import PermanentError, TransientError
from adapter.reading.pricing import stripe_meter_ids
from adapter.store.catalog import MeterInfo
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.models import Account, Installation, Meter, table, utcnow
from adapter.store.prices import account_items

if TYPE_CHECKING:
    from adapter.gateway import Gateway

log = structlog.get_logger("metersync.credits")
_GRANTS, _ENTRIES, _ACCOUNTS = table(CreditGrant), table(CreditEntry), table(Account)
_METERS, _INSTALLATION = table(Meter), table(Installation)
#: Metadata keys on Stripe's grant naming ours (read by :mod:`adapter.mirror.credit_grants`).
GRANT_KEY, INSTALLATION_KEY = "metersync_grant_id", "metersync_installation"
ACCOUNT_KEY = "metersync_account"
#: ``credit_grant.meta`` key holding the outcome of voiding at Stripe.
VOID_STATUS = "stripe_void_status"
#: Most grants one sweep sends; the rest wait for the next one.
SWEEP_LIMIT = 20
#: Longest name Stripe shows in the Dashboard that we send.
NAME_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one sweep did: grants by the ``stripe_status`` they ended with, voids sent."""

    pushed: dict[str, int] = field(default_factory=dict)
    voided: int = 0

    @property
    def changed(self) -> bool:
        """Whether any grant moved."""
        return bool(self.voided or any(s != "pending" for s in self.pushed))


def create_key(namespace: str, grant_id: int) -> str:
    """The ``Idempotency-Key`` creating grant ``grant_id`` of this installation."""
    return f"metersync-credit-grant:{namespace}:{grant_id}"


def void_key(namespace: str, grant_id: int) -> str:
    """The ``Idempotency-Key`` voiding grant ``grant_id`` of this installation at Stripe."""
    return f"metersync-credit-grant-void:{namespace}:{grant_id}"


def unlinked(account: str) -> str:
    """Why a grant waits: its account has no Stripe customer yet."""
    return (
        f"account {account!r} has no Stripe customer yet; the grant is sent to Stripe as "
        "soon as it is linked (accounts.upsert(..., stripe_customer_id=...), a customer "
        "webhook carrying metadata.metersync_account, or metersync sync)"
    )


def push_grant(
    engine: sa.Engine, grant_id: int, *, gateway: Gateway | None, now: datetime | None = None
) -> str:
    """Send a ``pending`` grant to Stripe (see the module); its ``stripe_status`` after.
    A grant in any other status is left as it is."""
    now = now or utcnow()
    with engine.connect() as conn:
        row = _load(conn, grant_id)
        if row.stripe_status != "pending":
            return str(row.stripe_status)
        settled = _without_stripe(row, gateway=gateway, now=now)
        prices = None if settled is not None else _prices(conn, row)
        namespace = _namespace(conn)
    if settled is None and prices == []:
        settled = ("failed", _unpriced(row))
    if settled is not None or gateway is None:
        status, error = settled or ("dry_run", None)
        return _store(engine, grant_id, now=now, expect="pending", status=status, error=error)
    return _send(engine, row, gateway=gateway, prices=prices, namespace=namespace, now=now)


def _without_stripe(
    row: sa.Row[Any], *, gateway: Gateway | None, now: datetime
) -> tuple[str, str | None] | None:
    """The outcome of a pending grant that needs no Stripe call now, or ``None``."""
    if row.voided or (row.expires_at is not None and row.expires_at <= now):
        why = "voided" if row.voided else "expired"
        return "skipped", f"{why} before it reached Stripe; nothing was sent"
    if gateway is None:
        return "dry_run", None
    if not row.stripe_customer_id:
        return "pending", unlinked(row.name)
    return None


def _send(  # noqa: PLR0913  one send's facts, by keyword, each its own
    engine: sa.Engine,
    row: sa.Row[Any],
    *,
    gateway: Gateway,
    prices: list[str] | None,
    namespace: str,
    now: datetime,
) -> str:
    """Create the grant at Stripe and store how that ended."""
    grant_id = row.id
    error: str | None = None
    stripe_id: str | None = None
    try:
        sent = gateway.create_credit_grant(
            customer=row.stripe_customer_id, amount=row.amount, currency=row.currency,
            category=row.category, priority=row.priority,
            # A start already past is Stripe's default (now), and Stripe may refuse a past one.
            effective_at=row.effective_at if row.effective_at > now else None,
            expires_at=row.expires_at, name=_name(row), prices=prices,
            metadata=_metadata(namespace, row), idempotency_key=create_key(namespace, grant_id),
        )  # fmt: skip
    except TransientError as exc:
        status, error = "pending", str(exc)
    except PermanentError as exc:
        status, error = "failed", str(exc)
    else:
        status, stripe_id = "created", str(sent["id"])
    log.info(
        "credit_grant.push", grant_id=grant_id, status=status, stripe_id=stripe_id, error=error
    )
    return _store(
        engine, grant_id, now=now, expect="pending", status=status, error=error,
        stripe_id=stripe_id,
    )  # fmt: skip


def void_at_stripe(
    engine: sa.Engine, grant_id: int, *, gateway: Gateway | None, now: datetime | None = None
) -> str:
    """Void at Stripe a grant voided locally that Stripe holds (see the module). Says how
    that ended: ``voided``, ``failed`` (refused: not tried again), ``deferred`` (Stripe
    could not take it now) or ``none`` (nothing to void at Stripe, or no key)."""
    now = now or utcnow()
    with engine.connect() as conn:
        row = _load(conn, grant_id)
        namespace = _namespace(conn)
    if row.stripe_status == "voided":
        return "voided"
    done = (row.meta or {}).get(VOID_STATUS)
    due = row.stripe_status == "created" and row.voided and row.stripe_credit_grant_id
    if not due or gateway is None or done == "failed":
        return "failed" if done == "failed" else "none"
    outcome, status, error = "voided", "voided", None
    try:
        key = void_key(namespace, grant_id)
        gateway.void_credit_grant(row.stripe_credit_grant_id, idempotency_key=key)
    except TransientError as exc:
        outcome, status, error = "deferred", "created", str(exc)
    except PermanentError as exc:
        outcome, status, error = "failed", "created", str(exc)
    log.info("credit_grant.void_at_stripe", grant_id=grant_id, outcome=outcome, error=error)
    _store(
        engine, grant_id, now=now, expect="created", status=status, error=error,
        void=None if outcome == "deferred" else outcome,
    )  # fmt: skip
    return outcome


def sweep(engine: sa.Engine, *, gateway: Gateway | None, limit: int = SWEEP_LIMIT) -> Sweep:
    """Send up to ``limit`` pending grants (of linked accounts, with a key), then the
    voids Stripe still owes; stops at the first call Stripe cannot take now."""
    with engine.connect() as conn:
        pending, voids = _due(conn, linked_only=gateway is not None, limit=limit)
    pushed: dict[str, int] = {}
    for grant_id in pending:
        status = push_grant(engine, grant_id, gateway=gateway)
        pushed[status] = pushed.get(status, 0) + 1
        if status == "pending":  # Stripe cannot take calls now: the next sweep tries again
            return Sweep(pushed)
    voided = 0
    for grant_id in voids:
        outcome = void_at_stripe(engine, grant_id, gateway=gateway)
        if outcome == "deferred":
            break
        voided += outcome == "voided"
    return Sweep(pushed, voided)


def _due(conn: sa.Connection, *, linked_only: bool, limit: int) -> tuple[list[int], list[int]]:
    """Ids of the pending grants to send and of the voids to make at Stripe, oldest first."""
    query = sa.select(_GRANTS.c.id).where(_GRANTS.c.stripe_status == "pending")
    if linked_only:
        linked = _ACCOUNTS.c.stripe_customer_id.is_not(None) & (
            _ACCOUNTS.c.stripe_customer_id != ""
        )
        query = query.join(_ACCOUNTS, _ACCOUNTS.c.id == _GRANTS.c.account_id).where(linked)
    pending = list(conn.execute(query.order_by(_GRANTS.c.id).limit(limit)).scalars())
    rows = conn.execute(
        sa.select(_GRANTS.c.id, _GRANTS.c.meta)
        .where(_GRANTS.c.stripe_status == "created", _voided())
        .order_by(_GRANTS.c.id)
    ).all()
    voids = [r.id for r in rows if (r.meta or {}).get(VOID_STATUS) != "failed"][:limit]
    return pending, voids


def _voided() -> sa.ColumnElement[bool]:
    return sa.exists().where(_ENTRIES.c.grant_id == _GRANTS.c.id, _ENTRIES.c.kind == "void")


def _load(conn: sa.Connection, grant_id: int) -> sa.Row[Any]:
    """The grant with its account's name and customer and whether it is voided."""
    row = conn.execute(
        sa.select(
            _GRANTS, _ACCOUNTS.c.name, _ACCOUNTS.c.stripe_customer_id, _voided().label("voided")
        )
        .join(_ACCOUNTS, _ACCOUNTS.c.id == _GRANTS.c.account_id)
        .where(_GRANTS.c.id == grant_id)
    ).first()
    if row is None:
        raise InvalidUsage(f"no credit grant {grant_id}; see `metersync credits history`")
    return row


def _prices(conn: sa.Connection, row: sa.Row[Any]) -> list[str] | None:
    """The Stripe prices the grant is scoped to; ``None`` for every metered price. A grant
    for meters covers the prices of the account's live items that bill those meters."""
    if row.scope == "all":
        return None
    targets = sorted(row.targets or ())
    if row.scope == "prices":
        return targets
    meters = [
        MeterInfo(m.id, m.name, m.event_name, m.aggregation, m.rounding, m.stripe_meter_id)
        for m in conn.execute(sa.select(_METERS).where(_METERS.c.name.in_(targets)))
    ]
    wanted = set(stripe_meter_ids(conn, meters).values())
    items = account_items(conn, row.account_id)
    return sorted({i.price_id for i in items if i.price_id and i.stripe_meter_id in wanted})


def _unpriced(row: sa.Row[Any]) -> str:
    meters = ", ".join(sorted(row.targets or ()))
    return (
        f"credit grant {row.id} covers meters {meters}, but no live subscription item of "
        f"account {row.name!r} bills them at Stripe, so Stripe has no price to scope it "
        "to; check the meters' Stripe meter ids and the mirrored subscription (metersync "
        "sync), then void this grant and grant it again"
    )


def _name(row: sa.Row[Any]) -> str:
    """The name the Dashboard shows: the grant's reason, else its id."""
    return str(row.reason or f"metersync credit grant {row.id}")[:NAME_LIMIT]


def _metadata(namespace: str, row: sa.Row[Any]) -> dict[str, str]:
    return {GRANT_KEY: str(row.id), INSTALLATION_KEY: namespace, ACCOUNT_KEY: row.name}


def _namespace(conn: sa.Connection) -> str:
    return str(conn.execute(sa.select(_INSTALLATION.c.namespace)).scalar_one())


def _store(  # noqa: PLR0913  the outcome's fields, by keyword, each its own
    engine: sa.Engine,
    grant_id: int,
    *,
    now: datetime,
    expect: str,
    status: str,
    error: str | None,
    stripe_id: str | None = None,
    void: str | None = None,
) -> str:
    """Write an outcome over the status ``expect`` it came from (``pending`` for a push,
    ``created`` for a void): a status the mirror wrote meanwhile wins. The status after."""
    with engine.begin() as conn:
        found = conn.execute(
            sa.select(_GRANTS.c.stripe_status, _GRANTS.c.meta)
            .where(_GRANTS.c.id == grant_id)
            .with_for_update()
        ).one()
        if found.stripe_status != expect:
            return str(found.stripe_status)
        meta: dict[str, Any] = {**(found.meta or {}), "stripe_at": now.isoformat()}
        if void is not None:
            meta[VOID_STATUS] = void
        values: dict[str, Any] = {"stripe_status": status, "stripe_error": error, "meta": meta}
        if stripe_id is not None:
            values["stripe_credit_grant_id"] = stripe_id
        conn.execute(_GRANTS.update().where(_GRANTS.c.id == grant_id).values(**values))
    return status
