"""Stripe customers, and the link from a customer to a local account.

A customer whose ``metadata.metersync_account`` names an account is linked to it: the
account gets the customer's id (the account is created if it does not exist yet), and the
mirror row records the account. A link is never stolen: an account already billed to
another customer keeps it. The customer is still mirrored, unlinked, and the refusal is
written to the audit log (``account.link_refused``) and logged, so an operator can move
the account deliberately (``metersync accounts``). Failing the delivery instead would
only retry a decision that cannot change, and keep the customer out of the mirror.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog

from adapter.mirror import ordering, shapes, subscriptions
from adapter.mirror.context import Apply
from adapter.store import unlinked
from adapter.store.mirror_models import StripeCustomer
from adapter.store.models import Account, AuditLog, table, utcnow

log = structlog.get_logger("metersync.mirror")
CUSTOMERS = table(StripeCustomer)
_ACCOUNTS, _AUDIT = table(Account), table(AuditLog)
#: The customer metadata key that names the local account.
LINK_KEY = "metersync_account"


def to_row(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``stripe_customer`` columns of a customer (``account_id`` is set by apply)."""
    row = shapes.base_row(obj)
    if shapes.is_stub(obj):
        return row
    return row | {
        "email": shapes.text(obj.get("email"), limit=512),
        "name": shapes.text(obj.get("name"), limit=512),
    }


def linked_name(obj: dict[str, Any]) -> str | None:
    """The account name a customer's metadata links it to, if it is a usable name."""
    name = shapes.dig(obj, "metadata", LINK_KEY)
    if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > 255:
        return None
    return None if "\x00" in name else name


RESOURCE = ordering.Resource(CUSTOMERS, "customer", to_row)
_NAMED_ACCOUNT = sa.select(_ACCOUNTS.c.id, _ACCOUNTS.c.stripe_customer_id).where(
    _ACCOUNTS.c.name == sa.bindparam("name")
)


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Mirror a customer and link it to the account its metadata names."""
    applied = ordering.apply_object(ctx, RESOURCE, obj, kind=kind)
    if applied is None:
        return "skipped"
    admitted, row, saved = applied.obj, applied.row, applied.saved
    name = None if row["deleted"] else linked_name(admitted)
    if name is not None:
        _link(ctx, name, customer_id=row["id"])
    account_id = subscriptions.account_for(ctx.conn, row["id"])
    if account_id != saved.account_id:
        ctx.conn.execute(
            CUSTOMERS.update().where(CUSTOMERS.c.id == row["id"]).values(account_id=account_id)
        )
        if account_id is not None:
            # Subscription events that came before the link set no period: set it now.
            subscriptions.periods_for_customer(ctx, customer_id=row["id"], account_id=account_id)
    return "processed"


def _link(ctx: Apply, name: str, *, customer_id: str) -> None:
    """Point account ``name`` at ``customer_id``: create it, fill an empty link, or
    refuse (audited) when it is linked to another customer."""
    account = ctx.conn.execute(_NAMED_ACCOUNT, {"name": name}).first()
    now = utcnow()
    detail: dict[str, Any] = {"stripe_customer_id": customer_id, "event_id": ctx.event_id}
    if account is None:
        ctx.conn.execute(
            _ACCOUNTS.insert().values(
                name=name,
                stripe_customer_id=customer_id,
                free=False,
                meta={},
                created_at=now,
                updated_at=now,
            )
        )
        action = "account.created"
    elif account.stripe_customer_id is None:
        ctx.conn.execute(
            _ACCOUNTS.update()
            .where(_ACCOUNTS.c.id == account.id)
            .values(stripe_customer_id=customer_id, updated_at=now)
        )
        action = "account.linked"
        released = unlinked.release(ctx.conn, account.id, now=now)
        ctx.to_push.extend(i for i in released if i not in ctx.to_push)
        detail["released_reports"] = len(released)
    elif account.stripe_customer_id == customer_id:
        return
    else:
        action = "account.link_refused"
        detail["linked_to"] = account.stripe_customer_id
        log.warning("mirror.link_refused", account=name, **detail)
    ctx.conn.execute(
        _AUDIT.insert().values(at=now, actor="stripe", action=action, subject=name, detail=detail)
    )
