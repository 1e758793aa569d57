"""The hybrid invoice preview: one subscription's current period, rated locally.

Base-fee lines are the subscription's licensed prices times the item quantity; metered
lines rate each metered price on what Stripe will bill for the period (see
:mod:`adapter.reading.pricing`), with the included allowance, the overage above it and the
tier breakdown. Amounts are integers in the currency's minor unit, as Stripe's are.

Allowance: what the price's tiers give free (a first tier priced at zero), unless an
allowance is set for the price in metersync (``metersync prices allowance``), which wins.
An allowance set in metersync does not change what Stripe bills: when the price does not
give those units free, the line says so in ``note``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from adapter.domain.rating import Rating, rate, rating
from adapter.errors import RatingError
from adapter.reading.pricing import MeterPrice, billable_quantity
from adapter.reading.usage import MeterUsage
from adapter.store.prices import PricedItem


@dataclass(frozen=True, slots=True)
class PreviewLine:
    """One line of the preview; ``amount`` is ``None`` when it cannot be rated (``note``)."""

    kind: str  # "base_fee" or "metered"
    price: str | None
    subscription_item: str
    description: str
    quantity: Decimal | None
    amount: int | None
    meter: str | None = None
    included: Decimal | None = None
    overage: Decimal | None = None
    overage_amount: int | None = None
    rating: Rating | None = None
    note: str | None = None
    #: Prepaid credit drawn for this line's usage in the period (minor units).
    credits: int = 0

    @property
    def due(self) -> int | None:
        """What is left to pay after credits: the overage Stripe bills at cycle end."""
        return None if self.amount is None else self.amount - self.credits

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings, amounts as integers of minor units."""
        text = _text
        return {
            "kind": self.kind,
            "price": self.price,
            "subscription_item": self.subscription_item,
            "description": self.description,
            "meter": self.meter,
            "quantity": text(self.quantity),
            "included": text(self.included),
            "overage": text(self.overage),
            "amount": self.amount,
            "overage_amount": self.overage_amount,
            "credits": self.credits,
            "due": self.due,
            "tiers": self.rating.to_dict()["bands"] if self.rating is not None else [],
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class InvoicePreview:
    """The current period's invoice of one subscription, as metersync rates it."""

    account: str
    customer: str | None
    subscription: str | None
    currency: str | None
    period_start: datetime
    period_end: datetime
    period_source: str
    lines: tuple[PreviewLine, ...] = ()
    generated_at: datetime | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def subtotal(self) -> int:
        """The sum of the lines that could be rated."""
        return sum(line.amount for line in self.lines if line.amount is not None)

    @property
    def credits(self) -> int:
        """Prepaid credit drawn for the period's usage (see ``ms.credits``)."""
        return sum(line.credits for line in self.lines)

    @property
    def total(self) -> int:
        """The subtotal less credits applied (discounts and taxes are not applied)."""
        return self.subtotal - self.credits

    @property
    def complete(self) -> bool:
        """Whether every line could be rated."""
        return all(line.amount is not None for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, used by the HTTP API and ``--json``."""
        return {
            "account": self.account,
            "customer": self.customer,
            "subscription": self.subscription,
            "currency": self.currency,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "period_source": self.period_source,
            "generated_at": self.generated_at.isoformat() if self.generated_at else None,
            "lines": [line.to_dict() for line in self.lines],
            "subtotal": self.subtotal,
            "credits": self.credits,
            "total": self.total,
            "complete": self.complete,
            "notes": list(self.notes),
        }


def base_fee_line(item: PricedItem) -> PreviewLine:
    """A licensed price times the item's quantity."""
    quantity = Decimal(item.quantity if item.quantity is not None else 1)
    if item.price is None:
        return _unrated(item, "base_fee", quantity, f"price {item.price_id} is not mirrored yet")
    try:
        found = rating(item.price, quantity)
    except RatingError as error:
        return _unrated(item, "base_fee", quantity, str(error))
    return PreviewLine(
        "base_fee", item.price_id, item.item_id, _describe(item), quantity, found.amount,
        rating=found,
    )  # fmt: skip


def metered_line(
    item: PricedItem,
    priced: MeterPrice | None,
    usage: MeterUsage | None,
    *,
    free: bool,
    allowance: Decimal | None,
) -> PreviewLine:
    """A metered price rated on the usage of the local meter that sends to its meter."""
    if priced is None or usage is None:
        note = f"no local meter sends to Stripe meter {item.stripe_meter_id}"
        return _unrated(item, "metered", None, note)
    quantity = billable_quantity(usage, priced.meter, free=free)
    meter = priced.meter.name
    if item.price is None:
        return _unrated(
            item, "metered", quantity, f"price {item.price_id} is not mirrored yet", meter
        )
    try:
        found = rating(item.price, quantity)
        return _with_allowance(item, meter, found, allowance)
    except RatingError as error:
        return _unrated(item, "metered", quantity, str(error), meter)


def _with_allowance(
    item: PricedItem, meter: str, found: Rating, allowance: Decimal | None
) -> PreviewLine:
    """The metered line with what is included, the overage and what the overage costs."""
    assert item.price is not None  # checked by the caller
    free_units = found.free_units
    included = allowance if allowance is not None else free_units
    note = None
    if allowance is not None and (free_units or 0) < allowance:
        note = (
            f"allowance {allowance} is set in metersync, but Stripe's price "
            f"gives {free_units or 0} units free: Stripe bills the rest"
        )
    # Units, as Stripe's line and the allowance count them (not packages: the bands do).
    quantity = found.quantity
    if included is None:
        overage, overage_amount = quantity, found.amount
    else:
        overage = max(quantity - included, Decimal(0))
        overage_amount = found.amount - rate(item.price, min(quantity, included))
    return PreviewLine(
        "metered", item.price_id, item.item_id, _describe(item, meter), quantity, found.amount,
        meter=meter, included=included, overage=overage, overage_amount=overage_amount,
        rating=found, note=note,
    )  # fmt: skip


def _unrated(
    item: PricedItem, kind: str, quantity: Decimal | None, note: str, meter: str | None = None
) -> PreviewLine:
    return PreviewLine(
        kind, item.price_id, item.item_id, _describe(item, meter), quantity, None,
        meter=meter, note=note,
    )  # fmt: skip


def _describe(item: PricedItem, meter: str | None = None) -> str:
    """The price's nickname, else the local meter (metered lines), else the price id."""
    price: Mapping[str, Any] = item.price or {}
    return str(price.get("nickname") or meter or item.price_id or item.item_id)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
