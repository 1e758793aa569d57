"""Prices, with their tiers, so local rating can match Stripe's invoice.

Stripe sends a price's ``tiers`` only when asked (``expand[]=tiers``): ``metersync sync``
and every re-read from Stripe ask, webhook payloads never do. So a payload without them
leaves the stored tiers as they are, and a tiered price that arrives without tiers while
none are stored is read again from Stripe when a key is configured. Stripe cannot change a
price's tiers once it exists, so stored tiers never need that re-read. Without a key the
row stays without tiers until ``metersync sync``, and rating says so.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from adapter.mirror import ordering, shapes
from adapter.mirror.context import Apply
from adapter.store.mirror_models import Price
from adapter.store.models import table

PRICES = table(Price)
_STORED_TIERS = sa.select(PRICES.c.tiers).where(PRICES.c.id == sa.bindparam("price_id"))


def to_row(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``price`` columns; ``tiers`` only when the payload carries them."""
    row = shapes.base_row(obj)
    if shapes.is_stub(obj):
        return row
    recurring = obj.get("recurring")
    meter = shapes.dig(recurring, "meter")
    transform, custom = obj.get("transform_quantity"), obj.get("custom_unit_amount")
    row |= {
        "product_id": shapes.ref(obj.get("product")),
        "active": bool(obj.get("active", True)),
        "currency": shapes.text(obj.get("currency"), limit=8),
        "billing_scheme": shapes.text(obj.get("billing_scheme"), limit=16),
        "tiers_mode": shapes.text(obj.get("tiers_mode"), limit=16),
        "unit_amount": shapes.integer(obj.get("unit_amount")),
        "unit_amount_decimal": shapes.text(obj.get("unit_amount_decimal"), limit=64),
        "transform_quantity": dict(transform) if isinstance(transform, dict) else None,
        "usage_type": shapes.text(shapes.dig(recurring, "usage_type"), limit=16),
        "interval": shapes.text(shapes.dig(recurring, "interval"), limit=16),
        "stripe_meter_id": meter if isinstance(meter, str) and meter else None,
        "nickname": shapes.text(obj.get("nickname"), limit=255),
        "custom_unit_amount": dict(custom) if isinstance(custom, dict) else None,
    }
    tiers = obj.get("tiers")
    if isinstance(tiers, list):
        row["tiers"] = [dict(t) for t in tiers if isinstance(t, dict)]
    return row


RESOURCE = ordering.Resource(PRICES, "price", to_row)


def lacks_tiers(obj: dict[str, Any], *, kind: str) -> bool:
    """Is ``obj`` a live tiered price whose payload left its ``tiers`` out?"""
    return (
        obj.get("billing_scheme") == "tiered"
        and not isinstance(obj.get("tiers"), list)
        and not shapes.is_deletion(obj, kind=kind)
    )


def with_tiers(ctx: Apply, obj: dict[str, Any], *, kind: str) -> dict[str, Any]:
    """``obj``, or the price as Stripe holds it now (tiers expanded) when ``obj`` lacks
    tiers that are not stored either and a Stripe key is configured."""
    if ctx.refetch is None or not lacks_tiers(obj, kind=kind):
        return obj
    price_id = shapes.object_id(obj)
    if ctx.conn.execute(_STORED_TIERS, {"price_id": price_id}).scalar() is not None:
        return obj  # tiers cannot change at Stripe: the stored ones are still right
    fresh = ctx.refetch("price", price_id)
    return fresh if fresh is not None else ordering.stub("price", price_id)


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Mirror a price, reading its tiers from Stripe when it must (see the module)."""
    applied = ordering.apply_object(ctx, RESOURCE, with_tiers(ctx, obj, kind=kind), kind=kind)
    return "skipped" if applied is None else "processed"
