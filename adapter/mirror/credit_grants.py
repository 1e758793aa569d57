"""Stripe credit grants (``billing.credit_grant.created|updated``): Stripe's id and status
recorded on the local grant they mirror.

A Stripe grant is ours when its ``metadata.metersync_grant_id`` names a local grant (and
its ``metadata.metersync_installation``, when present, is this installation), or when a
local grant already holds its id. That grant gets Stripe's id and ``stripe_status``
``created``, or ``voided`` once Stripe's object has ``voided_at``; this also settles a
grant whose send ended without an answer. The ledger itself is never written here: a grant
made in the Stripe Dashboard has no local counterpart, so it is logged
(``credit_grant.not_local``) and the delivery is processed, but it is not drawn down
locally. A grant voided only at Stripe is marked ``voided`` and logged; the local ledger
still draws it until it is voided here too.

Never backwards: a void is final at Stripe, and id and status are all that is mirrored,
so the status only moves forward along :data:`RANK` (a ``created`` event delivered after
an ``updated`` one that carried ``voided_at`` is skipped) and no other ordering is needed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog

from adapter.crediting.stripe_grants import GRANT_KEY, INSTALLATION_KEY
from adapter.mirror import shapes
from adapter.mirror.context import Apply
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.models import Installation, table

log = structlog.get_logger("metersync.mirror")
GRANTS, _ENTRIES = table(CreditGrant), table(CreditEntry)
_INSTALLATION = table(Installation)
#: How far along Stripe's lifecycle each ``stripe_status`` is; unlisted ones (pending,
#: failed, dry_run, skipped: not at Stripe as far as we knew) are 0.
RANK = {"created": 1, "voided": 2}


def to_row(obj: dict[str, Any]) -> dict[str, Any]:
    """What a Stripe grant says about ours: its id, status and the metadata naming ours
    (``grant_id`` ``None`` when absent or not a number)."""
    named = shapes.dig(obj, "metadata", GRANT_KEY)
    installation = shapes.dig(obj, "metadata", INSTALLATION_KEY)
    return {
        "stripe_credit_grant_id": shapes.object_id(obj),
        "stripe_status": "voided" if obj.get("voided_at") else "created",
        "grant_id": int(named) if isinstance(named, str) and named.isdigit() else None,
        "installation": installation if isinstance(installation, str) else None,
    }


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Record Stripe's id and status on the local grant (see the module)."""
    row = to_row(obj)
    local = _local(ctx.conn, row)
    stripe_id = row["stripe_credit_grant_id"]
    if local is None:
        log.info("credit_grant.not_local", stripe_id=stripe_id, event_type=kind)
        return "processed"
    if local.stripe_credit_grant_id not in (None, stripe_id):
        log.warning(
            "credit_grant.duplicate_at_stripe", grant_id=local.id, stripe_id=stripe_id,
            kept=local.stripe_credit_grant_id,
        )  # fmt: skip
        return "processed"
    status = row["stripe_status"]
    if RANK.get(status, 0) < RANK.get(local.stripe_status, 0):
        return "skipped"  # the grant is further along at Stripe than this event says
    if status == "voided" and not local.voided:
        log.warning("credit_grant.voided_at_stripe_only", grant_id=local.id, stripe_id=stripe_id)
    if (local.stripe_status, local.stripe_credit_grant_id) != (status, stripe_id):
        ctx.conn.execute(
            GRANTS.update()
            .where(GRANTS.c.id == local.id)
            .values(stripe_status=status, stripe_credit_grant_id=stripe_id, stripe_error=None)
        )
    return "processed"


def _local(conn: sa.Connection, row: dict[str, Any]) -> sa.Row[Any] | None:
    """Our grant the Stripe grant mirrors (locked), or ``None``."""
    voided = sa.exists().where(_ENTRIES.c.grant_id == GRANTS.c.id, _ENTRIES.c.kind == "void")
    query: sa.Select[Any] = sa.select(
        GRANTS.c.id, GRANTS.c.stripe_status, GRANTS.c.stripe_credit_grant_id, voided.label("voided")
    ).with_for_update(of=GRANTS)
    found = conn.execute(
        query.where(GRANTS.c.stripe_credit_grant_id == row["stripe_credit_grant_id"])
    ).first()
    if found is not None or row["grant_id"] is None:
        return found
    namespace = conn.execute(sa.select(_INSTALLATION.c.namespace)).scalar_one()
    if row["installation"] not in (None, namespace):
        return None  # another installation's grant on the same Stripe account
    return conn.execute(query.where(GRANTS.c.id == row["grant_id"])).first()
