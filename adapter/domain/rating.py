"""Rating: what Stripe's invoice line carries for a Stripe Price object and a quantity.

Pure and exact: every amount is a :class:`~decimal.Decimal` in the currency's minor unit
until the line total is rounded once, half up, to a whole minor unit, as Stripe rounds
"on the line item level" (Stripe's *Decimal amounts* guide). Float never enters.

The rules, from Stripe's price object and pricing-model guides:

- ``billing_scheme=per_unit``: quantity times ``unit_amount_decimal`` (or ``unit_amount``);
  with ``transform_quantity`` the quantity is first divided by ``divide_by`` and rounded
  ``up`` or ``down`` to a whole number of packages.
- ``billing_scheme=tiered``, ``tiers_mode=graduated``: each band of the quantity is priced at
  its own tier's unit amount, plus that tier's flat amount once any unit reaches it; summed.
- ``tiers_mode=volume``: the tier the whole quantity falls in prices every unit, plus its
  flat amount.
- A tier's ``up_to`` is inclusive; ``null`` (or ``"inf"``) is the last, open tier.
- A negative quantity is invoiced as 0 (Stripe invoices a negative meter total as 0). A zero
  quantity costs the first tier's flat amount and nothing more: "Stripe always bills the
  first flat rate tier when ``quantity=0``" (Stripe's *tiered pricing* guide), in both tier
  modes; a per-unit price, or a first tier without a flat amount, costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from adapter.domain.price_terms import Terms, Tier, parse, quantity_of
from adapter.errors import RatingError

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Band:
    """One tier's share of a rating: its bounds, the units in it and what they cost."""

    tier: int
    #: Units above ``floor`` (exclusive) and up to ``up_to`` (inclusive; ``None`` = inf).
    floor: Decimal
    up_to: Decimal | None
    quantity: Decimal
    unit_amount: Decimal
    flat_amount: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Rating:
    """How a quantity was rated: the bands, the exact total and the rounded amount."""

    price_id: str | None
    currency: str | None
    quantity: Decimal
    #: The quantity the price bills: after ``transform_quantity``, never below zero.
    billed_quantity: Decimal
    bands: tuple[Band, ...]
    exact: Decimal
    amount: int
    #: Units the price gives free: a first tier priced at zero (``None`` when none).
    free_units: Decimal | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: decimals as strings, amounts as integers of minor units."""
        return {
            "price": self.price_id,
            "currency": self.currency,
            "quantity": str(self.quantity),
            "billed_quantity": str(self.billed_quantity),
            "amount": self.amount,
            "exact_amount": str(self.exact),
            "bands": [
                {
                    "tier": b.tier,
                    "from": str(b.floor),
                    "up_to": None if b.up_to is None else str(b.up_to),
                    "quantity": str(b.quantity),
                    "unit_amount": str(b.unit_amount),
                    "flat_amount": str(b.flat_amount),
                    "amount": str(b.amount),
                }
                for b in self.bands
            ],
        }


def rate(price: Mapping[str, Any], quantity: int | Decimal | str) -> int:
    """The amount, in the currency's minor units, of Stripe's invoice line for ``quantity``
    of ``price`` (a Stripe Price object as the API returns it, tiers expanded)."""
    return compile_price(price).amount(quantity)


def rating(price: Mapping[str, Any], quantity: int | Decimal | str) -> Rating:
    """:func:`rate` with its working: the bands, the exact total and the free units."""
    return compile_price(price).rating(quantity)


class Plan(Terms):
    """A price, checked and parsed once (its :class:`Terms`): rate many quantities with it."""

    __slots__ = ()

    @property
    def free_units(self) -> Decimal | None:
        """Units the price gives free: a first tier priced at zero (``None`` when none)."""
        first = self.tiers[0]
        if self.scheme == "per_unit" or first.unit or first.flat:
            return None
        return first.up_to

    def billed(self, quantity: Decimal) -> Decimal:
        """The quantity the price bills: never below zero, in packages when it has them."""
        if quantity <= ZERO:
            return ZERO
        if self.divide_by is None:
            return quantity
        return (quantity / self.divide_by).to_integral_value(rounding=self.rounding)

    def amount(self, quantity: int | Decimal | str) -> int:
        """:func:`rate` for this price (the fast path: no bands are built)."""
        billed = self.billed(quantity_of(self.price_id, quantity))
        exact = ZERO
        if not billed:
            # Stripe bills the first tier's flat amount at quantity 0 (zero for per-unit).
            exact = self.tiers[0].flat
        elif self.scheme == "graduated":
            floor = ZERO
            for tier in self.tiers:
                if billed <= floor:
                    break
                top = billed if tier.up_to is None or billed < tier.up_to else tier.up_to
                exact += (top - floor) * tier.unit + tier.flat
                floor = top
        else:
            tier = self._tier_of(billed)
            exact = billed * tier.unit + tier.flat
        return int(exact.to_integral_value(rounding=ROUND_HALF_UP))

    def rating(self, quantity: int | Decimal | str) -> Rating:
        """The rating with its bands."""
        asked = quantity_of(self.price_id, quantity)
        billed = self.billed(asked)
        if not billed:
            bands = self._nothing_billed()
        elif self.scheme == "graduated":
            bands = self._graduated(billed)
        else:
            bands = self._single(billed)
        exact = sum((b.amount for b in bands), ZERO)
        return Rating(
            price_id=self.price_id,
            currency=self.currency,
            quantity=asked,
            billed_quantity=billed,
            bands=bands,
            exact=exact,
            amount=int(exact.to_integral_value(rounding=ROUND_HALF_UP)),
            free_units=self.free_units,
        )

    def _tier_of(self, quantity: Decimal) -> Tier:
        """The tier a whole quantity falls in (per-unit prices have one open tier)."""
        for tier in self.tiers:
            if tier.up_to is None or quantity <= tier.up_to:
                return tier
        raise AssertionError("unreachable: the last tier is open")  # pragma: no cover

    def _nothing_billed(self) -> tuple[Band, ...]:
        """Quantity 0: the first tier's flat amount as a band of no units (none without one)."""
        first = self.tiers[0]
        if not first.flat:
            return ()
        return (Band(1, ZERO, first.up_to, ZERO, first.unit, first.flat, first.flat),)

    def _single(self, quantity: Decimal) -> tuple[Band, ...]:
        """Volume or per-unit: one band holds every unit (``quantity`` is above zero)."""
        floor = ZERO
        for index, tier in enumerate(self.tiers, start=1):
            if tier.up_to is None or quantity <= tier.up_to:
                amount = quantity * tier.unit + tier.flat
                return (Band(index, floor, tier.up_to, quantity, tier.unit, tier.flat, amount),)
            floor = tier.up_to
        raise AssertionError("unreachable: the last tier is open")  # pragma: no cover

    def _graduated(self, quantity: Decimal) -> tuple[Band, ...]:
        """Each band at its own tier's rate, with the tier's flat amount once reached."""
        bands: list[Band] = []
        floor = ZERO
        for index, tier in enumerate(self.tiers, start=1):
            if quantity <= floor:
                break
            top = quantity if tier.up_to is None or quantity < tier.up_to else tier.up_to
            units = top - floor
            amount = units * tier.unit + tier.flat
            bands.append(Band(index, floor, tier.up_to, units, tier.unit, tier.flat, amount))
            floor = top
        return tuple(bands)


#: Compiled plans by the price fields that decide them (bounded; cleared when full).
_PLANS: dict[tuple[Any, ...], Plan] = {}
_PLANS_MAX = 4096


def compile_price(price: Mapping[str, Any]) -> Plan:
    """Check and parse ``price`` once; the same price fields give the same cached plan."""
    if not isinstance(price, Mapping):
        kind = type(price).__name__
        raise RatingError(f"a price must be a Stripe Price object (a dict), not {kind}")
    key = _fingerprint(price)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = Plan(*parse(price))
        if key is not None:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


def _fingerprint(price: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Every field rating reads, as a hashable key; ``None`` when one is not hashable."""
    get = price.get
    tiers, transform = get("tiers"), get("transform_quantity")
    try:
        key = (
            get("id"),
            get("currency"),
            get("billing_scheme"),
            get("tiers_mode"),
            get("unit_amount"),
            get("unit_amount_decimal"),
            get("custom_unit_amount") is None,
            tuple(transform.items()) if isinstance(transform, Mapping) else transform,
            tuple([tuple(t.items()) for t in tiers]) if isinstance(tiers, list) else tiers,
        )
        hash(key)
    except (TypeError, AttributeError):
        return None
    return key
