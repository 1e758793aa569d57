"""Sending a reconcile repair to Stripe: a correction event or cancels, each stored as a
``reconcile_correction`` row *before* its call and marked after, so a run that dies in
between sends the same identifier again and Stripe's duplicate rejection (or the cancel's
idempotency key) keeps it from counting twice.

A :class:`PermanentError` marks the row ``failed`` and the repair reports why; a
:class:`TransientError` leaves it ``sending`` and stops the run, which resumes later.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from adapter.domain import drift
from adapter.gateway import PermanentError
from adapter.reconciling import store
from adapter.store.models import Installation, table, utcnow
from adapter.store.reconcile_models import ReconcileCorrection

if TYPE_CHECKING:
    from adapter.gateway import Gateway
    from adapter.pushing.library import Library

_FIXES, _INSTALLATION = table(ReconcileCorrection), table(Installation)


def repair_pair(  # noqa: PLR0913  the library, its gateway, then one pair's plan
    ms: Library,
    gateway: Gateway,
    run_id: int,
    key: store.PairKey,
    *,
    plan: drift.Plan | None = None,
    pending: Sequence[Any] = (),
) -> str:
    """Carry out ``plan`` (or resend ``pending`` corrections); what was done, in words
    (starting with ``failed`` when Stripe refused)."""
    if pending:
        done = [
            _send(ms, gateway, key, row.id, row.identifier, row.value, row.timestamp)
            for row in pending
        ]
        return "; ".join(done)
    assert plan is not None
    if plan.send_value is not None and plan.send_timestamp is not None:
        with ms.engine.connect() as conn:
            sequence = store.next_sequence(conn, key)
            namespace = conn.execute(sa.select(_INSTALLATION.c.namespace)).scalar_one()
        identifier = drift.correction_identifier(
            namespace=namespace,
            account_id=key.account_id,
            meter_id=key.meter_id,
            period_start=key.period_start,
            sequence=sequence,
        )
        fix_id = store.add_fix(
            ms.engine,
            run_id,
            key,
            kind="add" if key.formula == "sum" else "set",
            sequence=sequence,
            identifier=identifier,
            value=plan.send_value,
            timestamp=plan.send_timestamp,
        )
        return _send(ms, gateway, key, fix_id, identifier, plan.send_value, plan.send_timestamp)
    return "; ".join(_cancel(ms, gateway, run_id, key, c) for c in plan.cancel)


def _send(  # noqa: PLR0913  one stored correction's fields
    ms: Library,
    gateway: Gateway,
    key: store.PairKey,
    fix_id: int,
    identifier: str,
    value: int,
    timestamp: datetime,
) -> str:
    """Send one stored correction; mark it ``sent`` or ``failed``."""
    assert key.customer is not None
    try:
        delivery = gateway.send_meter_event(
            event_name=key.event_name,
            stripe_customer_id=key.customer,
            value=int(value),
            timestamp=timestamp,
            identifier=identifier,
        )
    except PermanentError as error:
        store.mark_fix(ms.engine, fix_id, status="failed", error=str(error))
        return f"failed: Stripe refused correction {identifier}: {error}"
    store.mark_fix(
        ms.engine, fix_id, status="sent", sent_at=utcnow(), stripe_request_id=delivery.request_id
    )
    return f"sent {value} as {identifier}"


def _cancel(
    ms: Library, gateway: Gateway, run_id: int, key: store.PairKey, target: drift.Candidate
) -> str:
    """Cancel one uncounted event: a failed correction of ours is marked ``cancelled``;
    a report's identifier gets a ``cancel`` row so later runs stop offering it."""
    with ms.engine.connect() as conn:
        own = conn.execute(
            sa.select(_FIXES.c.id, _FIXES.c.kind).where(_FIXES.c.identifier == target.identifier)
        ).first()
    if own is not None and own.kind != "cancel":
        fix_id, done = int(own.id), "cancelled"
    else:
        if own is not None:
            fix_id = int(own.id)
            store.mark_fix(ms.engine, fix_id, status="sending")
        else:
            fix_id = store.add_fix(
                ms.engine,
                run_id,
                key,
                kind="cancel",
                identifier=target.identifier,
                value=target.value,
                timestamp=target.timestamp,
            )
        done = "sent"
    try:
        gateway.cancel_meter_event(event_name=key.event_name, identifier=target.identifier)
    except PermanentError as error:
        if done == "sent":
            store.mark_fix(ms.engine, fix_id, status="failed", error=str(error))
        return f"failed: Stripe refused to cancel {target.identifier}: {error}"
    store.mark_fix(ms.engine, fix_id, status=done, sent_at=utcnow())
    return f"cancelled {target.identifier} ({target.value})"
