"""Stripe's own usage alerts: each ``billing.alert.triggered`` event is kept as a firing
(``source = stripe``), shown beside metersync's alerts in ``metersync alerts history``."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from adapter.mirror import shapes
from adapter.mirror.context import Apply
from adapter.reading.explain import account_of_customer
from adapter.store.alert_models import AlertFiring
from adapter.store.models import table

_FIRINGS = table(AlertFiring)


def _number(value: object) -> Decimal:
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Keep one firing per Stripe event (a replayed event changes nothing)."""
    if ctx.event_id is None:
        return "skipped"  # not an object ``metersync sync`` reads
    alert = obj.get("alert")
    alert_id = shapes.ref(alert)
    threshold = shapes.dig(alert, "usage_threshold", "gte")
    meter = shapes.dig(alert, "usage_threshold", "meter")
    customer = shapes.ref(obj.get("customer"))
    account_id = account_of_customer(ctx.conn, customer) if customer else None
    row = {
        "source": "stripe", "alert_id": None, "account_id": account_id, "period_start": None,
        "generation": 0, "metric": "usage", "value": _number(obj.get("value")),
        "threshold": _number(threshold), "fired_at": ctx.event_at,
        "stripe_alert_id": alert_id, "stripe_event_id": ctx.event_id,
        "detail": {"customer": customer, "meter": shapes.ref(meter), "kind": kind,
                   "title": shapes.dig(alert, "title")},
    }  # fmt: skip
    dialect = postgresql if ctx.conn.dialect.name == "postgresql" else sqlite
    insert = (
        dialect.insert(_FIRINGS)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["stripe_event_id"])
    )
    written = ctx.conn.execute(insert).rowcount
    return "processed" if written else "skipped"
