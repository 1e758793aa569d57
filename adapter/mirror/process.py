"""Applying a stored webhook delivery to the mirror, once, in one transaction.

``process_delivery`` is what the ``process_webhook`` actor runs. A delivery already
``processed``, ``ignored`` or ``skipped`` is left alone, so a redelivered message does
nothing. Otherwise the event is applied in one transaction together with its new status:
its first statement claims the delivery (marks it ``processed``, counts the attempt and
reads the event, locking the row), and only an event that ends otherwise (``skipped``,
``ignored``) writes its status again.
On an error that transaction is rolled back, the attempt and a short error text are
stored in a second, small one, and the error is raised again for Dramatiq to retry; once
the attempts reach the limit (or at once, for a payload that can never apply) the
delivery is ``failed``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from adapter.mirror import router
from adapter.mirror.context import Apply, Processed, Refetch
from adapter.mirror.shapes import MirrorError
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import table, utcnow
from config import defaults

if TYPE_CHECKING:
    from adapter.pushing.library import Library

log = structlog.get_logger("metersync.mirror")
DELIVERIES = table(WebhookDelivery)
#: Statuses a delivery keeps: processing it again changes nothing.
DONE = frozenset({"processed", "ignored", "skipped"})
#: Longest error text stored on a delivery.
ERROR_LIMIT = 500
#: Anything shaped like a Stripe secret is blanked out of stored errors.
_SECRET = re.compile(r"\b(sk|rk|whsec)_[A-Za-z0-9_]+")
_DELIVERY = DELIVERIES.c.id == sa.bindparam("delivery_id")
#: Claims a delivery not done yet, as processed, and reads its event (see the docstring).
_CLAIM = (
    DELIVERIES.update()
    .where(_DELIVERY, *(DELIVERIES.c.status != s for s in sorted(DONE)))
    .values(
        status="processed",
        attempts=DELIVERIES.c.attempts + 1,
        error=None,
        processed_at=sa.bindparam("now", type_=DELIVERIES.c.processed_at.type),
    )
    .returning(DELIVERIES.c.event_id, DELIVERIES.c.type, DELIVERIES.c.created, DELIVERIES.c.payload)
)
_READ = sa.select(DELIVERIES.c.status, DELIVERIES.c.error).where(_DELIVERY)
#: Sets the status of a claimed delivery that did not end ``processed``.
_FINISH = DELIVERIES.update().where(_DELIVERY).values(status=sa.bindparam("new_status"))


class UnknownDelivery(MirrorError):
    """No webhook delivery has the id given."""


def process_delivery(
    ms: Library,
    delivery_id: int,
    *,
    refetch: Refetch | None = None,
    max_attempts: int = defaults.WEBHOOK_MAX_ATTEMPTS,
) -> Processed:
    """Apply one stored delivery to the mirror (see the module docstring)."""
    if ms.engine.dialect.name == "sqlite":
        # A write transaction takes SQLite's one write lock: a redelivery reads first.
        with ms.engine.connect() as conn:
            found = _load(conn, delivery_id)
        if found.status in DONE:
            return Processed(delivery_id, found.status, (), found.error)
    try:
        with ms.engine.begin() as conn:
            return _apply(ms, conn, delivery_id, refetch=refetch)
    except Exception as exc:
        _record_failure(ms, delivery_id, exc, max_attempts=max_attempts)
        raise
    finally:
        # The mirror may have moved billing periods; the recorder's copy must not lag.
        ms.periods.forget()


def replay(ms: Library, delivery_id: int, *, refetch: Refetch | None = None) -> Processed:
    """Process a delivery again from scratch (``metersync webhooks replay``). The ordering
    rules still hold: a replay never moves an object back to an older state."""
    with ms.engine.begin() as conn:
        reset = conn.execute(
            DELIVERIES.update()
            .where(DELIVERIES.c.id == delivery_id)
            .values(status="received", attempts=0, error=None, processed_at=None)
        )
        if reset.rowcount == 0:
            raise _unknown(delivery_id)
    return process_delivery(ms, delivery_id, refetch=refetch)


def sync_object(
    ms: Library,
    obj: dict[str, Any],
    *,
    read_at: datetime | None = None,
    refetch: Refetch | None = None,
) -> Processed:
    """Apply one object read from Stripe by ``metersync sync`` (``read_at``: when it was
    read, default now). It applies unless an event newer than the read was applied."""
    kind = obj.get("object")
    handler = router.OBJECT_HANDLERS.get(kind) if isinstance(kind, str) else None
    if handler is None:
        known = ", ".join(router.OBJECT_HANDLERS)
        raise MirrorError(f"cannot mirror a Stripe {kind!r} object; metersync mirrors {known}")
    at = utcnow() if read_at is None else read_at
    if at.tzinfo is None:
        raise MirrorError("read_at must be an aware datetime (UTC)")
    # Cut to the second, as event times are, so a read and an event of the same second
    # meet in the ordering's tie rule instead of the read always winning.
    at = at.astimezone(UTC).replace(microsecond=0)
    try:
        with ms.engine.begin() as conn:
            ctx = Apply(ms=ms, conn=conn, event_id=None, event_at=at, refetch=refetch)
            status = handler(ctx, obj, kind="sync")
    finally:
        ms.periods.forget()
    return Processed(0, status, tuple(ctx.to_push))


def _apply(
    ms: Library, conn: sa.Connection, delivery_id: int, *, refetch: Refetch | None
) -> Processed:
    row = conn.execute(_CLAIM, {"delivery_id": delivery_id, "now": utcnow()}).first()
    if row is None:  # unknown, or another worker finished it (maybe while this one waited)
        done = _load(conn, delivery_id)
        return Processed(delivery_id, done.status, (), done.error)
    to_push: tuple[int, ...] = ()
    if router.handles(row.type):
        ctx = Apply(ms=ms, conn=conn, event_id=row.event_id, event_at=row.created, refetch=refetch)
        status = router.route(ctx, row.type, _object(row.payload))
        to_push = tuple(ctx.to_push)
    else:
        status = "ignored"
    if status != "processed":
        conn.execute(_FINISH, {"delivery_id": delivery_id, "new_status": status})
    return Processed(delivery_id, status, to_push)


def _load(conn: sa.Connection, delivery_id: int) -> sa.Row[Any, Any]:
    """The status and error of a delivery, or :class:`UnknownDelivery`."""
    row = conn.execute(_READ, {"delivery_id": delivery_id}).first()
    if row is None:
        raise _unknown(delivery_id)
    return row


def _unknown(delivery_id: int) -> UnknownDelivery:
    return UnknownDelivery(
        f"no webhook delivery {delivery_id}; list them with `metersync webhooks`"
    )


def _object(payload: object) -> dict[str, Any]:
    """The event's ``data.object``, or :class:`MirrorError`."""
    obj = payload.get("data", {}).get("object") if isinstance(payload, dict) else None
    if not isinstance(obj, dict):
        raise MirrorError("the event has no data.object; it cannot be mirrored")
    return obj


def _record_failure(ms: Library, delivery_id: int, exc: Exception, *, max_attempts: int) -> None:
    """Count the failed attempt and keep its error; ``failed`` once out of attempts."""
    if isinstance(exc, UnknownDelivery):
        return
    attempts = DELIVERIES.c.attempts + 1
    failed = sa.true() if isinstance(exc, MirrorError) else attempts >= max_attempts
    error = describe(exc)
    try:
        with ms.engine.begin() as conn:
            conn.execute(
                DELIVERIES.update()
                .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.status.not_in(DONE))
                .values(
                    attempts=attempts,
                    error=error,
                    status=sa.case((failed, "failed"), else_="received"),
                )
            )
    except sa.exc.SQLAlchemyError:  # the database is down too: the original error matters
        log.exception("webhook.failure_not_recorded", delivery_id=delivery_id)
    log.warning("webhook.attempt_failed", delivery_id=delivery_id, error=error)


def describe(exc: BaseException) -> str:
    """A short, secret-free text for an error: no SQL statement, no bound parameters."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        first = str(exc.orig).strip().splitlines()[:1]
        message = f"{type(exc.orig).__name__}: {first[0] if first else ''}"
    else:
        message = f"{type(exc).__name__}: {exc}"
    return _SECRET.sub(r"\1_…", message)[:ERROR_LIMIT]
