"""The usage and ops API: ``GET /v1/accounts/{account}/usage``,
``GET /v1/accounts/{account}/invoice-preview``, ``POST /v1/usage`` and
``GET|PUT /v1/schedule``. Every route needs the ops token (see :mod:`webhooks.auth`).

``POST /v1/usage`` takes ``{"items": [...]}`` or a bare list of the items
``ms.record_many`` takes, at most :data:`MAX_BATCH` of them. A well-formed batch answers
200 with per-item results (valid items are stored, invalid ones listed in ``rejected``),
except when every item was rejected: then nothing was stored, and it answers 422 with the
same results beside the ``error`` object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapter.client import Metersync
from adapter.domain import schedule as schedules
from adapter.domain.items import BatchResult, Receipt
from adapter.errors import ConfigurationError
from adapter.store.mirror_models import Invoice
from adapter.store.models import table
from adapter.store.schedule import schedule_json
from webhooks.auth import OpsActor
from webhooks.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    describe_validation,
    error_body,
)
from webhooks.metrics import Metrics
from webhooks.receiver import parse_json, read_body
from webhooks.state import AppState, app_state

router = APIRouter(prefix="/v1")
_INVOICES = table(Invoice)
#: Most items one ``POST /v1/usage`` may carry.
MAX_BATCH = 10_000
#: Largest ``POST /v1/usage`` body: room for a full batch of items with dimensions.
USAGE_MAX_BODY = 8 * 1024 * 1024
#: Largest ``PUT /v1/schedule`` body.
SCHEDULE_MAX_BODY = 16 * 1024
#: Audit rows listed by ``GET /v1/schedule``.
HISTORY = 5

DateParam = Annotated[
    str | None, Query(max_length=64, description="ISO 8601 date or datetime (UTC if a date).")
]


@router.get("/accounts/{account}/usage")
def account_usage(  # noqa: PLR0913  a FastAPI route: one parameter per query parameter
    request: Request,
    account: str,
    _actor: OpsActor,
    period_start: DateParam = None,
    period_end: DateParam = None,
    invoice: Annotated[str | None, Query(max_length=255)] = None,
    meter: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, Any]:
    """Usage of ``account`` per meter over ``[period_start, period_end)``, the period of
    ``invoice``, or (neither) the account's current billing period."""
    ms = app_state(request).metersync()
    if invoice is not None:
        if period_start is not None or period_end is not None:
            raise Unprocessable("give invoice or period_start and period_end, not both")
        start, end = invoice_period(ms, account, invoice)
        return ms.get_usage(account, start, end, meter=meter).to_dict() | {"invoice": invoice}
    return ms.get_usage(account, period_start, period_end, meter=meter).to_dict()


@router.get("/accounts/{account}/invoice-preview")
def invoice_preview(
    request: Request,
    account: str,
    _actor: OpsActor,
    subscription: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    """The current period's invoice of ``account``, rated locally: base fees, metered
    lines with allowance, overage and tiers, subtotal and total (minor units)."""
    ms = app_state(request).metersync()
    return ms.preview_invoice(account, subscription=subscription).to_dict()


class CreditGrantBody(BaseModel):
    """``POST /v1/accounts/{account}/credits``: one grant, as ``ms.credits.grant`` takes it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    amount: int = Field(description="Minor units of the currency (cents).")
    currency: str = Field(max_length=3)
    meters: list[str] = Field(default_factory=list, max_length=100)
    prices: list[str] = Field(default_factory=list, max_length=100)
    priority: int = 50
    category: str = Field(default="paid", max_length=16)
    effective_at: str | None = Field(default=None, max_length=64)
    expires_at: str | None = Field(default=None, max_length=64)
    reason: str = Field(default="", max_length=500)
    idempotency_key: str | None = Field(default=None, max_length=255)


@router.get("/accounts/{account}/credits")
def account_credits(request: Request, account: str, _actor: OpsActor) -> dict[str, Any]:
    """Credit left now (drawn down to the usage recorded so far) and every grant."""
    return app_state(request).metersync().credits.balance(account).to_dict()


@router.post("/accounts/{account}/credits", status_code=201)
async def grant_credits(request: Request, account: str, actor: OpsActor) -> dict[str, Any]:
    """Load credit to ``account``; audited as ``actor``. A repeated idempotency key
    answers the first grant and loads nothing."""
    data = parse_json(await read_body(request, limit=SCHEDULE_MAX_BODY))
    try:
        body = CreditGrantBody.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(describe_validation(exc.errors())) from None
    ms = app_state(request).metersync()
    options = body.model_dump(exclude={"amount", "currency"})
    grant = await run_in_threadpool(
        lambda: ms.credits.grant(
            account, body.amount, currency=body.currency, actor=actor, **options
        )
    )
    return grant.to_dict()


def invoice_period(ms: Metersync, account: str, invoice: str) -> tuple[datetime, datetime]:
    """The usage period of a mirrored invoice of ``account``'s Stripe customer."""
    customer = ms.accounts.get(account).stripe_customer_id  # UnknownAccount → 404
    with ms.engine.connect() as conn:
        row = conn.execute(
            sa.select(
                _INVOICES.c.customer_id, _INVOICES.c.period_start, _INVOICES.c.period_end
            ).where(_INVOICES.c.id == invoice)
        ).first()
    if row is None:
        raise NotFound(
            f"unknown invoice {invoice!r}: it is not in the mirror yet; it arrives with its "
            "invoice.* webhook, or run `metersync sync`"
        )
    if row.customer_id != customer:
        raise NotFound(f"invoice {invoice!r} is not an invoice of account {account!r}")
    if row.period_start is None or row.period_end is None or row.period_end <= row.period_start:
        raise Unprocessable(
            f"invoice {invoice!r} covers no usage period (its period_start and period_end "
            "are missing or equal, as on a subscription's first invoice)"
        )
    return row.period_start, row.period_end


def batch_items(data: object) -> list[Any]:
    """The items of a ``POST /v1/usage`` body: ``{"items": [...]}`` or a bare list."""
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"items"})
        if unknown:
            raise Unprocessable(
                f"unknown field(s) {', '.join(map(repr, unknown))}; expected 'items'"
            )
        data = data.get("items")
    if not isinstance(data, list):
        raise Unprocessable('the body must be {"items": [...]} or a list of usage items')
    if len(data) > MAX_BATCH:
        raise PayloadTooLarge(
            f"{len(data)} items in one batch; send at most {MAX_BATCH} per request",
            type="batch_too_large",
        )
    return data


def receipt_json(receipt: Receipt | None) -> dict[str, Any] | None:
    """One item's receipt as JSON (None for a rejected item)."""
    if receipt is None:
        return None
    return {
        "event_id": receipt.event_id,
        "report_id": receipt.report_id,
        "duplicate": receipt.duplicate,
        "account": receipt.account,
        "meter": receipt.meter,
        "quantity": str(receipt.quantity),
        "occurred_at": receipt.occurred_at.isoformat(),
    }


def batch_json(result: BatchResult) -> dict[str, Any]:
    """A batch result as JSON: counts, rejected items and one receipt per item."""
    return {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "rejected": [{"index": r.index, "error": r.error} for r in result.rejected],
        "receipts": [receipt_json(r) for r in result.receipts],
    }


@router.post("/usage")
async def record_usage(request: Request, _actor: OpsActor) -> JSONResponse:
    """Record a batch of usage items, as ``ms.record_many`` does."""
    items = batch_items(parse_json(await read_body(request, limit=USAGE_MAX_BODY)))
    state = app_state(request)
    result: BatchResult = await run_in_threadpool(lambda: state.metersync().record_many(items))
    metrics: Metrics = request.app.state.metrics
    metrics.recorded(result.accepted)
    body = batch_json(result)
    if items and not (result.accepted or result.duplicates):
        first = result.rejected[0]
        message = f"every item was rejected, nothing was stored; item {first.index}: {first.error}"
        return JSONResponse(body | error_body("invalid_usage", message), status_code=422)
    return JSONResponse(body)


class ScheduleUpdate(BaseModel):
    """``PUT /v1/schedule``: a new expression, a pause or resume, or both."""

    model_config = ConfigDict(extra="forbid", strict=True)

    expression: str | None = Field(default=None, max_length=100)
    paused: bool | None = None


@router.get("/schedule")
def get_schedule(request: Request, _actor: OpsActor) -> dict[str, Any]:
    """The reporting schedule, whether it is paused, its next tick and recent changes."""
    ms = app_state(request).metersync()
    return schedule_json(ms.schedule.state(), ms.schedule.history(limit=HISTORY))


@router.put("/schedule")
async def put_schedule(request: Request, actor: OpsActor) -> dict[str, Any]:
    """Change the expression and/or pause or resume; each change is audited as ``actor``."""
    data = parse_json(await read_body(request, limit=SCHEDULE_MAX_BODY))
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object such as {"expression": "every 15m"}')
    try:
        update = ScheduleUpdate.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(describe_validation(exc.errors())) from None
    if update.expression is None and update.paused is None:
        raise Unprocessable('give "expression", "paused" or both')
    if update.expression is not None:
        try:  # checked before any change, so a bad expression changes nothing at all
            schedules.parse(update.expression)
        except ConfigurationError as exc:
            raise Unprocessable(str(exc), type="invalid_schedule") from None
    return await run_in_threadpool(_change_schedule, app_state(request), update, actor)


def _change_schedule(state: AppState, update: ScheduleUpdate, actor: str) -> dict[str, Any]:
    ms = state.metersync()
    before = ms.schedule.state()
    if update.expression is not None:
        ms.schedule.set(update.expression, actor=actor)
    if update.paused is not None:
        (ms.schedule.pause if update.paused else ms.schedule.resume)(actor=actor)
    after = ms.schedule.state()
    changed = (before.expression, before.paused) != (after.expression, after.paused)
    return schedule_json(after, ms.schedule.history(limit=HISTORY)) | {"changed": changed}
