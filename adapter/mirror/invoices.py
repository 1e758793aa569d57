"""Invoices and their lines.

Both shapes are read: the subscription at ``parent.subscription_details.subscription``
(since 2025-03-31) or top-level ``subscription`` (before); a line's price at
``pricing.price_details.price`` or ``price``, its subscription item at
``parent.subscription_item_details.subscription_item`` or ``subscription_item``. Newer
lines do not carry the price's meter: it is looked up in the mirrored prices, then in the
mirrored subscription items.

A ``draft`` invoice of a subscription cycle is the moment to make the final push of the
ended period: once it is stored, ``effects.invoice_drafted`` is called, unless metersync
already flushed for it (``flushed_at``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from adapter.mirror import ordering, shapes, subscriptions
from adapter.mirror.context import Apply
from adapter.store.mirror_models import Invoice, InvoiceLine, Price, SubscriptionItem
from adapter.store.models import table

INVOICES, LINES = table(Invoice), table(InvoiceLine)
_PRICES, _ITEMS = table(Price), table(SubscriptionItem)
#: Where each status sits in an invoice's life (``paid`` and ``void`` are both final).
STATUS_ORDER = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


def to_row(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``invoice`` columns (``flushed_at`` belongs to the usage effects)."""
    row = shapes.base_row(obj)
    if shapes.is_stub(obj):
        return row
    subscription = shapes.dig(obj, "parent", "subscription_details", "subscription")
    return row | {
        "customer_id": shapes.ref(obj.get("customer")) or "",
        "subscription_id": shapes.ref(subscription) or shapes.ref(obj.get("subscription")),
        "status": shapes.text(obj.get("status"), limit=32) or "unknown",
        "billing_reason": shapes.text(obj.get("billing_reason"), limit=64),
        "currency": shapes.text(obj.get("currency"), limit=8),
        "period_start": shapes.timestamp(obj.get("period_start")),
        "period_end": shapes.timestamp(obj.get("period_end")),
        "total": shapes.integer(obj.get("total")),
    }


def line_rows(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``invoice_line`` columns of each line listed in the invoice."""
    lines, _complete = shapes.listed(obj, "lines")
    return [_line(obj["id"], line) for line in lines]


def _line(invoice_id: str, line: dict[str, Any]) -> dict[str, Any]:
    new_price = shapes.dig(line, "pricing", "price_details", "price")
    item = shapes.dig(line, "parent", "subscription_item_details", "subscription_item")
    quantity = shapes.decimal(line.get("quantity_decimal"))
    meter = (
        shapes.dig(line, "price", "recurring", "meter")
        or shapes.dig(new_price, "recurring", "meter")
        or shapes.dig(line, "plan", "meter")
    )
    return {
        "id": shapes.object_id(line),
        "invoice_id": invoice_id,
        "price_id": shapes.ref(new_price)
        or shapes.ref(line.get("price"))
        or shapes.ref(line.get("plan")),
        "stripe_meter_id": meter if isinstance(meter, str) and meter else None,
        "subscription_item_id": shapes.ref(item) or shapes.ref(line.get("subscription_item")),
        "period_start": shapes.timestamp(shapes.dig(line, "period", "start")),
        "period_end": shapes.timestamp(shapes.dig(line, "period", "end")),
        "quantity": quantity if quantity is not None else shapes.decimal(line.get("quantity")),
        "amount": shapes.integer(line.get("amount")),
        "currency": shapes.text(line.get("currency"), limit=8),
        "description": shapes.text(line.get("description"), limit=5000),
    }


def rank(row: Mapping[str, Any]) -> tuple[bool, int]:
    """Lifecycle order for same-second ties: deleted, then further along draft → paid."""
    return (bool(row.get("deleted")), STATUS_ORDER.get(row.get("status") or "", -1))


RESOURCE = ordering.Resource(
    INVOICES, "invoice", to_row, rank, {"customer_id": "", "status": "deleted"}
)


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Mirror an invoice and its lines; a cycle's draft triggers the final flush."""
    applied = ordering.apply_object(ctx, RESOURCE, obj, kind=kind)
    if applied is None:
        return "skipped"
    admitted, saved = applied.obj, applied.saved
    if not shapes.is_stub(admitted) and isinstance(admitted.get("lines"), dict):
        _replace_lines(ctx, admitted)
    if drafted(saved._asdict()):
        subscriptions.effects().invoice_drafted(ctx, invoice_id=saved.id)
    return "processed"


def drafted(row: Mapping[str, Any]) -> bool:
    """Is this stored invoice a live subscription-cycle draft not flushed for yet?"""
    return (
        not row["deleted"]
        and row["status"] == "draft"
        and row["billing_reason"] == "subscription_cycle"
        and row["flushed_at"] is None
    )


def _replace_lines(ctx: Apply, obj: dict[str, Any]) -> None:
    """Store the listed lines; drop the invoice's other lines when the list is complete."""
    rows = line_rows(obj)
    _fill_meters(ctx.conn, rows)
    ordering.upsert_many(ctx.conn, LINES, rows)
    _lines, complete = shapes.listed(obj, "lines")
    if complete:
        ctx.conn.execute(
            LINES.delete()
            .where(LINES.c.invoice_id == obj["id"])
            .where(LINES.c.id.not_in([r["id"] for r in rows]))
        )


def _fill_meters(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Give lines without a meter the one of their price, else of their item."""
    for column, table_, key in (
        ("price_id", _PRICES, _PRICES.c.id),
        ("subscription_item_id", _ITEMS, _ITEMS.c.id),
    ):
        wanted = {r[column] for r in rows if r["stripe_meter_id"] is None and r[column]}
        if not wanted:
            continue
        found = {
            row.id: row.stripe_meter_id
            for row in conn.execute(
                sa.select(key, table_.c.stripe_meter_id)
                .where(key.in_(wanted))
                .where(table_.c.stripe_meter_id.is_not(None))
            )
        }
        for r in rows:
            if r["stripe_meter_id"] is None and r[column] in found:
                r["stripe_meter_id"] = found[r[column]]
