"""Stripe billing meters (``billing.meter.*``): event name, formula, payload keys, status.

Meters are never deleted in Stripe, only deactivated; the payload's ``status`` says which.
"""

from __future__ import annotations

from typing import Any

from adapter.mirror import ordering, shapes
from adapter.mirror.context import Apply
from adapter.store.mirror_models import StripeMeter
from adapter.store.models import table

METERS = table(StripeMeter)


def to_row(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``stripe_meter`` columns of a billing meter."""
    row = shapes.base_row(obj)
    if shapes.is_stub(obj):
        return row
    return row | {
        "event_name": shapes.text(obj.get("event_name"), limit=100) or "",
        "display_name": shapes.text(obj.get("display_name"), limit=255),
        "status": shapes.text(obj.get("status"), limit=16) or "unknown",
        "formula": shapes.text(shapes.dig(obj, "default_aggregation", "formula"), limit=16),
        "customer_key": shapes.text(
            shapes.dig(obj, "customer_mapping", "event_payload_key"), limit=100
        ),
        "value_key": shapes.text(shapes.dig(obj, "value_settings", "event_payload_key"), limit=100),
    }


RESOURCE = ordering.Resource(
    METERS, "billing.meter", to_row, stub_defaults={"event_name": "", "status": "inactive"}
)


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Mirror a billing meter."""
    applied = ordering.apply_object(ctx, RESOURCE, obj, kind=kind)
    return "skipped" if applied is None else "processed"
