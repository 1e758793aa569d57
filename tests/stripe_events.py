"""Realistic Stripe objects and events for tests, written from Stripe's API reference.

Two API shapes matter to the mirror (see ``/work/shared/STRIPE_FACTS.md``):

- ``LEGACY`` (API versions before 2025-03-31): a subscription's current period on the
  subscription; an invoice's subscription at top-level ``subscription``; a line's price
  as the full ``price`` object (with ``recurring.meter``) and ``subscription_item``.
- ``BASIL`` (2025-03-31.basil and later): the current period on each subscription item;
  the invoice's subscription at ``parent.subscription_details.subscription``; a line's
  price id at ``pricing.price_details.price`` and its item at
  ``parent.subscription_item_details.subscription_item``.

Every builder returns plain JSON-ready dicts; timestamps are unix seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

Shape = Literal["legacy", "basil"]
LEGACY: Shape = "legacy"
BASIL: Shape = "basil"
#: 2026-01-01T00:00:00Z.
T0 = 1_767_225_600
DAY = 86_400
#: A billing period: January 2026.
JAN = (T0, T0 + 31 * DAY)
#: February 2026, the period after :data:`JAN`.
FEB = (T0 + 31 * DAY, T0 + 59 * DAY)
API_VERSION = {LEGACY: "2024-06-20", BASIL: "2026-10-28.endive"}
_ids = itertools.count(1)


def event(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    kind: str,
    obj: dict[str, Any],
    *,
    created: int,
    id: str | None = None,
    shape: Shape = BASIL,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A snapshot event (``/v1/events`` object) carrying ``obj``."""
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": id or f"evt_{next(_ids):014d}",
        "object": "event",
        "api_version": API_VERSION[shape],
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": f"req_{next(_ids):010d}", "idempotency_key": None},
        "type": kind,
    }


def customer(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    id: str = "cus_123",
    *,
    account: str | None = None,
    email: str | None = "billing@example.com",
    name: str | None = "Example Ltd",
    created: int = T0 - 30 * DAY,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A customer; ``account`` goes into ``metadata.metersync_account``."""
    meta = dict(metadata or {})
    if account is not None:
        meta["metersync_account"] = account
    return {
        "id": id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": "usd",
        "default_source": None,
        "delinquent": False,
        "description": None,
        "email": email,
        "invoice_prefix": "ABCD1234",
        "invoice_settings": {"custom_fields": None, "default_payment_method": None},
        "livemode": False,
        "metadata": meta,
        "name": name,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def price(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    id: str = "price_api",
    *,
    meter: str | None = "mtr_api",
    usage_type: str = "metered",
    unit_amount: int | None = 2,
    tiers: Sequence[dict[str, Any]] | None = None,
    tiers_mode: str | None = None,
    active: bool = True,
    product: str = "prod_api",
    created: int = T0 - 60 * DAY,
) -> dict[str, Any]:
    """A recurring monthly price; metered on ``meter`` unless ``usage_type="licensed"``.
    ``tiers`` (as Stripe returns them when expanded) makes it a tiered price."""
    tiered = tiers is not None
    body: dict[str, Any] = {
        "id": id,
        "object": "price",
        "active": active,
        "billing_scheme": "tiered" if tiered else "per_unit",
        "created": created,
        "currency": "usd",
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": product,
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "meter": meter if usage_type == "metered" else None,
            "trial_period_days": None,
            "usage_type": usage_type,
        },
        "tax_behavior": "unspecified",
        "tiers_mode": (tiers_mode or "graduated") if tiered else None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": None if tiered else unit_amount,
        "unit_amount_decimal": None if tiered or unit_amount is None else str(unit_amount),
    }
    if tiered:
        body["tiers"] = [dict(t) for t in tiers]
    return body


def tier(up_to: int | None, *, unit: int | None = None, flat: int | None = None) -> dict[str, Any]:
    """One price tier as Stripe returns it (``up_to`` ``None`` is infinity)."""
    return {
        "flat_amount": flat,
        "flat_amount_decimal": None if flat is None else str(flat),
        "unit_amount": unit,
        "unit_amount_decimal": None if unit is None else str(unit),
        "up_to": up_to,
    }


def meter(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    id: str = "mtr_api",
    *,
    event_name: str = "api_calls",
    formula: str = "sum",
    status: str = "active",
    customer_key: str = "stripe_customer_id",
    value_key: str = "value",
    created: int = T0 - 90 * DAY,
) -> dict[str, Any]:
    """A billing meter (``billing.meter``)."""
    return {
        "id": id,
        "object": "billing.meter",
        "created": created,
        "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
        "default_aggregation": {"formula": formula},
        "display_name": event_name.replace("_", " ").title(),
        "event_name": event_name,
        "event_time_window": None,
        "livemode": False,
        "status": status,
        "status_transitions": {"deactivated_at": None if status == "active" else created},
        "updated": created,
        "value_settings": {"event_payload_key": value_key},
    }


def item(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    id: str = "si_api",
    *,
    subscription: str = "sub_1",
    price_obj: dict[str, Any] | None = None,
    period: tuple[int, int] | None = JAN,
    quantity: int | None = None,
    shape: Shape = BASIL,
    created: int = T0 - DAY,
) -> dict[str, Any]:
    """A subscription item; its period is carried only in the ``BASIL`` shape."""
    the_price = price_obj if price_obj is not None else price()
    body: dict[str, Any] = {
        "id": id,
        "object": "subscription_item",
        "created": created,
        "discounts": [],
        "metadata": {},
        "price": the_price,
        "subscription": subscription,
        "tax_rates": [],
    }
    if the_price["recurring"]["usage_type"] != "metered":
        body["quantity"] = 1 if quantity is None else quantity
    elif quantity is not None:
        body["quantity"] = quantity
    if shape == BASIL and period is not None:
        body["current_period_start"], body["current_period_end"] = period
    return body


def subscription(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    id: str = "sub_1",
    *,
    customer_id: str = "cus_123",
    status: str = "active",
    period: tuple[int, int] = JAN,
    items: Sequence[dict[str, Any]] | None = None,
    shape: Shape = BASIL,
    has_more: bool = False,
    cancel_at_period_end: bool = False,
    canceled_at: int | None = None,
    created: int = T0 - DAY,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A subscription with one metered item by default. ``LEGACY`` puts ``period`` on
    the subscription, ``BASIL`` on each item that has none of its own."""
    listed = (
        [dict(i) for i in items]
        if items is not None
        else [item(subscription=id, period=period, shape=shape)]
    )
    if shape == BASIL:
        for entry in listed:
            entry.setdefault("current_period_start", period[0])
            entry.setdefault("current_period_end", period[1])
    body: dict[str, Any] = {
        "id": id,
        "object": "subscription",
        "billing_cycle_anchor": period[0],
        "cancel_at": None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "customer": customer_id,
        "days_until_due": None,
        "ended_at": canceled_at if status == "canceled" else None,
        "items": {
            "object": "list",
            "data": listed,
            "has_more": has_more,
            "total_count": len(listed),
            "url": f"/v1/subscription_items?subscription={id}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "pause_collection": None,
        "start_date": created,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }
    if shape == LEGACY:
        body["current_period_start"], body["current_period_end"] = period
    return body


def line(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    id: str = "il_api",
    *,
    invoice_id: str = "in_1",
    price_obj: dict[str, Any] | None = None,
    subscription_id: str = "sub_1",
    subscription_item: str = "si_api",
    period: tuple[int, int] = JAN,
    quantity: int = 1200,
    amount: int | None = None,
    shape: Shape = BASIL,
) -> dict[str, Any]:
    """An invoice line for a subscription item, in either shape."""
    the_price = price_obj if price_obj is not None else price()
    unit = the_price.get("unit_amount") or 0
    body: dict[str, Any] = {
        "id": id,
        "object": "line_item",
        "amount": unit * quantity if amount is None else amount,
        "currency": "usd",
        "description": f"{quantity} x API calls",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "period": {"start": period[0], "end": period[1]},
        "quantity": quantity,
        "taxes": [],
    }
    if shape == LEGACY:
        body |= {
            "type": "subscription",
            "price": the_price,
            "plan": None,
            "proration": False,
            "subscription": subscription_id,
            "subscription_item": subscription_item,
        }
    else:
        body |= {
            "parent": {
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription_id,
                    "subscription_item": subscription_item,
                },
            },
            "pricing": {
                "type": "price_details",
                "price_details": {"price": the_price["id"], "product": the_price["product"]},
                "unit_amount_decimal": the_price.get("unit_amount_decimal"),
            },
            "quantity_decimal": str(quantity),
        }
    return body


def invoice(  # noqa: PLR0913  keyword-only fields of a Stripe object, each independent
    id: str = "in_1",
    *,
    customer_id: str = "cus_123",
    subscription_id: str | None = "sub_1",
    status: str = "draft",
    billing_reason: str = "subscription_cycle",
    period: tuple[int, int] = JAN,
    lines: Sequence[dict[str, Any]] | None = None,
    has_more: bool = False,
    shape: Shape = BASIL,
    created: int | None = None,
) -> dict[str, Any]:
    """An invoice of a subscription (or a one-off one with ``subscription_id=None``)."""
    listed = [dict(x) for x in lines] if lines is not None else [line(invoice_id=id, shape=shape)]
    total = sum(int(x.get("amount") or 0) for x in listed)
    body: dict[str, Any] = {
        "id": id,
        "object": "invoice",
        "amount_due": total,
        "amount_paid": total if status == "paid" else 0,
        "amount_remaining": 0 if status == "paid" else total,
        "attempt_count": 0,
        "auto_advance": status == "draft",
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": period[1] if created is None else created,
        "currency": "usd",
        "customer": customer_id,
        "description": None,
        "hosted_invoice_url": None,
        "lines": {
            "object": "list",
            "data": listed,
            "has_more": has_more,
            "total_count": len(listed),
            "url": f"/v1/invoices/{id}/lines",
        },
        "livemode": False,
        "metadata": {},
        "number": None if status == "draft" else f"ABCD1234-{id[-4:]}",
        "period_end": period[1],
        "period_start": period[0],
        "status": status,
        "subtotal": total,
        "total": total,
    }
    if shape == LEGACY:
        body["subscription"] = subscription_id
    else:
        body["parent"] = (
            None
            if subscription_id is None
            else {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription_id},
            }
        )
    return body


def deleted(object_type: str, id: str) -> dict[str, Any]:
    """Stripe's reply for a deleted object."""
    return {"id": id, "object": object_type, "deleted": True}
