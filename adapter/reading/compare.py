"""Line by line: does metersync's rating agree with Stripe's invoice, to the cent?

Stripe's lines are matched to ours by price (and subscription item when Stripe names it).
For a metered line two questions are kept apart: does our rating of *Stripe's* quantity
give Stripe's amount (the rating check: ``agree``), and does Stripe hold the quantity we
recorded (``quantity_differs``: usage still pending, or drift for ``metersync reconcile``)?
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from adapter.domain.rating import rate
from adapter.errors import RatingError
from adapter.reading.preview import InvoicePreview, PreviewLine


@dataclass(frozen=True, slots=True)
class LineComparison:
    """One price's line at metersync and at Stripe."""

    price: str | None
    description: str
    kind: str
    quantity: Decimal | None
    amount: int | None
    stripe_quantity: Decimal | None
    stripe_amount: int | None
    #: Our rating of Stripe's quantity (what ``agree`` checks); ``None`` when not rated.
    rated_stripe_quantity: int | None
    agree: bool
    note: str | None = None

    @property
    def quantity_differs(self) -> bool:
        """Stripe holds another quantity than metersync recorded (pending usage or drift)."""
        return self.kind == "metered" and self.quantity != self.stripe_quantity

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "price": self.price,
            "description": self.description,
            "kind": self.kind,
            "quantity": None if self.quantity is None else str(self.quantity),
            "amount": self.amount,
            "stripe_quantity": None if self.stripe_quantity is None else str(self.stripe_quantity),
            "stripe_amount": self.stripe_amount,
            "rated_stripe_quantity": self.rated_stripe_quantity,
            "agree": self.agree,
            "quantity_differs": self.quantity_differs,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """The preview beside Stripe's invoice preview."""

    preview: InvoicePreview
    lines: tuple[LineComparison, ...]
    stripe_total: int | None
    stripe_invoice: str | None

    @property
    def agree(self) -> bool:
        """Every line's rating matches Stripe's amount to the cent."""
        return all(line.agree for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "preview": self.preview.to_dict(),
            "stripe_invoice": self.stripe_invoice,
            "stripe_total": self.stripe_total,
            "agree": self.agree,
            "lines": [line.to_dict() for line in self.lines],
        }


def stripe_line_price(line: Mapping[str, Any]) -> str | None:
    """The price of a Stripe invoice line: ``pricing.price_details.price`` since
    2025-03-31, ``price.id`` (or ``plan.id``) before."""
    details = (line.get("pricing") or {}).get("price_details") or {}
    price = details.get("price") or line.get("price") or line.get("plan")
    if isinstance(price, Mapping):
        price = price.get("id")
    return price if isinstance(price, str) else None


def compare(
    preview: InvoicePreview, stripe_invoice: Mapping[str, Any], prices: Mapping[str, dict[str, Any]]
) -> Comparison:
    """Compare ``preview`` with Stripe's ``stripe_invoice`` (an ``invoices.create_preview``
    answer); ``prices`` are the mirrored Price objects by id, to rate Stripe's quantities."""
    stripe_lines = list(((stripe_invoice.get("lines") or {}).get("data")) or [])
    by_price: dict[str | None, list[Mapping[str, Any]]] = {}
    for line in stripe_lines:
        by_price.setdefault(stripe_line_price(line), []).append(line)
    rows = [_row(ours, by_price.pop(ours.price, []), prices) for ours in preview.lines]
    for price, theirs in by_price.items():
        rows.append(_stripe_only(price, theirs))
    total = stripe_invoice.get("total")
    invoice_id = stripe_invoice.get("id")
    return Comparison(
        preview=preview,
        lines=tuple(rows),
        stripe_total=total if isinstance(total, int) else None,
        stripe_invoice=invoice_id if isinstance(invoice_id, str) else None,
    )


def _row(
    ours: PreviewLine, theirs: Sequence[Mapping[str, Any]], prices: Mapping[str, dict[str, Any]]
) -> LineComparison:
    if not theirs:
        return LineComparison(
            ours.price, ours.description, ours.kind, ours.quantity, ours.amount,
            None, None, None, agree=not ours.amount, note="no such line in Stripe's preview",
        )  # fmt: skip
    quantity = _stripe_quantity(theirs)
    amount = sum(int(line.get("amount") or 0) for line in theirs)
    price = prices.get(ours.price or "")
    rated, note = None, None
    if price is None:
        note = f"price {ours.price} is not mirrored: run `metersync sync`"
    elif quantity is None:
        note = "Stripe's line carries no quantity"
    else:
        try:
            rated = rate(price, quantity)
        except RatingError as error:
            note = str(error)
    if len(theirs) > 1:
        note = f"{len(theirs)} Stripe lines for this price (prorations?), summed"
    return LineComparison(
        ours.price, ours.description, ours.kind, ours.quantity, ours.amount,
        quantity, amount, rated, agree=rated == amount, note=note,
    )  # fmt: skip


def _stripe_only(price: str | None, theirs: Sequence[Mapping[str, Any]]) -> LineComparison:
    amount = sum(int(line.get("amount") or 0) for line in theirs)
    description = str(theirs[0].get("description") or price or "(no price)")
    return LineComparison(
        price, description, "stripe_only", None, None, _stripe_quantity(theirs), amount, None,
        agree=amount == 0, note="only in Stripe's preview (an invoice item or proration?)",
    )  # fmt: skip


def _stripe_quantity(lines: Sequence[Mapping[str, Any]]) -> Decimal | None:
    """The summed quantity of Stripe's lines (``quantity_decimal`` when present)."""
    total = Decimal(0)
    for line in lines:
        raw = line.get("quantity_decimal") or line.get("quantity")
        if raw is None:
            return None
        try:
            total += Decimal(str(raw))
        except InvalidOperation:
            return None
    return total
