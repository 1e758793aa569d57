"""``POST /webhooks/stripe``: read the raw body, verify, store once, enqueue, answer.

No business logic here: the worker applies the stored delivery to the mirror. The stored
row is the outbox: once it is committed the delivery is ours, whatever happens next.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Request, Response

from adapter.mirror import deliveries
from config import defaults
from webhooks.errors import BadRequest, PayloadTooLarge, Unavailable
from webhooks.metrics import Metrics
from webhooks.signature import SignatureError, verify
from webhooks.state import AppState, app_state

log = structlog.get_logger("metersync.webhook")
router = APIRouter()


async def read_body(request: Request, *, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes. The declared Content-Length
    is checked first, and the bytes are counted as they arrive, so a body sent chunked or
    under a lying Content-Length cannot get past either."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest("Content-Length must be a whole number of bytes")
        if int(declared) > limit:
            raise PayloadTooLarge(_too_large(limit))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(_too_large(limit))
    return bytes(body)


def _too_large(limit: int) -> str:
    return f"request body is larger than {limit} bytes"


def parse_json(body: bytes) -> object:
    """The body as JSON, or 400."""
    try:
        return json.loads(body)
    except ValueError:  # also UnicodeDecodeError: the body is not UTF-8 text
        raise BadRequest("request body is not valid JSON", type="invalid_json") from None


#: The two answers, encoded once: serialising a dict per request costs more than the rest
#: of the answer (``tests/bench/webhooks.py``).
STORED = b'{"received":true,"duplicate":false}'
DUPLICATE = b'{"received":true,"duplicate":true}'


@router.post(
    "/webhooks/stripe",
    responses={200: {"description": "Stored (or a duplicate of a stored event)."}},
)
async def receive_stripe(request: Request) -> Response:
    """Accept one signed Stripe event: stored once, then handed to a worker."""
    state = app_state(request)
    metrics: Metrics = request.app.state.metrics
    secrets = state.settings.webhook_secrets
    if not secrets:
        raise Unavailable(
            "no webhook signing secret configured: set METERSYNC_STRIPE_WEBHOOK_SECRET to the "
            "endpoint's whsec_… secret; nothing was stored and Stripe will retry",
            type="webhook_not_configured",
        )
    body = await read_body(request, limit=defaults.WEBHOOK_MAX_BODY)
    try:
        verify(
            body,
            request.headers.get("stripe-signature"),
            secrets,
            tolerance=state.settings.webhook_tolerance,
        )
    except SignatureError as exc:
        metrics.delivery("refused")
        log.info("webhook.refused", reason=exc.code)
        raise BadRequest(str(exc), type=exc.code) from None
    event = parse_json(body)
    if not isinstance(event, dict):
        raise BadRequest("not a Stripe event: the body is not a JSON object", type="invalid_event")
    delivery_id = await _store(state, event)
    duplicate = delivery_id is None
    metrics.delivery("duplicate" if duplicate else "stored")
    _log_received(event, delivery_id)
    return Response(DUPLICATE if duplicate else STORED, media_type="application/json")


def _log_received(event: dict[str, Any], delivery_id: int | None) -> None:
    """The one log line of a stored or duplicate delivery: ids and type, never the body."""
    log.info(
        "webhook.received",
        event_id=event["id"],
        event_type=event["type"],
        delivery_id=delivery_id,
        duplicate=delivery_id is None,
    )


async def _store(state: AppState, event: dict[str, Any]) -> int | None:
    """Store the delivery with the next group (and enqueue it); None when its event id
    is stored already."""
    try:
        values = deliveries.row(event, source="webhook")
    except ValueError as exc:  # not an event: no id, type or created
        raise BadRequest(str(exc), type="invalid_event") from None
    try:
        return await state.writer().store(values)
    except sa.exc.DataError as exc:  # e.g. an id too long for its column on PostgreSQL
        raise BadRequest(
            f"the event cannot be stored: {type(exc.orig).__name__}", type="invalid_event"
        ) from None
