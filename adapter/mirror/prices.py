"""Prices, with their tiers, so local rating can match Stripe's invoice.

Webhook payloads do not include a price's ``tiers`` (Stripe sends that field only when
expanded), so a payload without them leaves the stored tiers as they are; ``metersync
sync`` and the tie re-read should expand ``tiers``.
"""

from __future__ import annotations

from typing import Any

from adapter.mirror import ordering, shapes
from adapter.mirror.context import Apply
from adapter.store.mirror_models import Price
from adapter.store.models import table

PRICES = table(Price)


def to_row(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``price`` columns; ``tiers`` only when the payload carries them."""
    row = shapes.base_row(obj)
    if shapes.is_stub(obj):
        return row
    recurring = obj.get("recurring")
    meter = shapes.dig(recurring, "meter")
    transform = obj.get("transform_quantity")
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
    }
    tiers = obj.get("tiers")
    if isinstance(tiers, list):
        row["tiers"] = [dict(t) for t in tiers if isinstance(t, dict)]
    return row


RESOURCE = ordering.Resource(PRICES, "price", to_row)


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Mirror a price."""
    applied = ordering.apply_object(ctx, RESOURCE, obj, kind=kind)
    return "skipped" if applied is None else "processed"
