"""Rating against an independent model of Stripe's rules, on random prices and quantities.

The model here reads nothing of ``adapter.domain.rating`` or ``price_terms``: it is built from
the same random numbers the Stripe Price dict is built from, prices unit by unit (or band by
band for large quantities) with Decimal, and rounds the line total once, half up, as Stripe
does ("Rounding occurs on the line item level", Stripe's decimal amounts guide). At quantity 0
a tiered price costs its first tier's flat amount ("Stripe always bills the first flat rate
tier when quantity=0", Stripe's tiered pricing guide).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapter import rate
from adapter.domain.rating import rating
from tests.price_objects import tiered_price

ZERO = Decimal(0)
#: The unit-by-unit model walks every unit: keep its quantities (and tier edges) small.
SMALL_Q = 5000
#: The band-sum model handles any size.
LARGE_Q = 10**9


@dataclass(frozen=True)
class ModelTier:
    """A tier as the model sees it: inclusive upper bound (None = open) and exact amounts."""

    up_to: int | None
    unit: Decimal
    flat: Decimal


@dataclass(frozen=True)
class Model:
    """A price as the model sees it."""

    scheme: str  # "graduated", "volume" or "per_unit"
    tiers: tuple[ModelTier, ...]
    divide_by: int | None = None
    round_up: bool = True


def _half_up(exact: Decimal) -> int:
    """The line total as Stripe bills it: rounded once, half up, to a whole minor unit."""
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _tier_index_of(tiers: tuple[ModelTier, ...], unit: int) -> int:
    """The index of the tier that holds ``unit`` (bounds inclusive)."""
    return next(i for i, t in enumerate(tiers) if t.up_to is None or unit <= t.up_to)


def graduated_unit_by_unit(model: Model, quantity: int) -> int:
    """Sum, over units 1..q, of the unit amount of the tier holding each unit, plus the flat
    amount of every tier holding at least one unit."""
    if quantity <= 0:
        return _half_up(model.tiers[0].flat)
    total = ZERO
    reached: set[int] = set()
    index = 0
    for unit in range(1, quantity + 1):
        while model.tiers[index].up_to is not None and unit > model.tiers[index].up_to:
            index += 1
        total += model.tiers[index].unit
        reached.add(index)
    return _half_up(total + sum((model.tiers[i].flat for i in reached), ZERO))


def graduated_band_sum(model: Model, quantity: int) -> int:
    """Graduated pricing by bands: each tier's units (its share of 1..q) times its unit
    amount, plus its flat amount when that share is not empty."""
    if quantity <= 0:
        return _half_up(model.tiers[0].flat)
    total = ZERO
    below = 0
    for tier in model.tiers:
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = top - below
        if units > 0:
            total += units * tier.unit + tier.flat
        below = tier.up_to if tier.up_to is not None else below
    return _half_up(total)


def volume_model(model: Model, quantity: int) -> int:
    """Volume pricing: every unit at the tier holding the whole quantity, plus its flat."""
    if quantity <= 0:
        return _half_up(model.tiers[0].flat)
    tier = model.tiers[_tier_index_of(model.tiers, quantity)]
    return _half_up(quantity * tier.unit + tier.flat)


def per_unit_model(model: Model, quantity: int) -> int:
    """Per-unit pricing, in whole packages of ``divide_by`` when it has them."""
    if quantity <= 0:
        return 0
    billed = quantity
    if model.divide_by is not None:
        whole, part = divmod(quantity, model.divide_by)
        billed = whole + (1 if part and model.round_up else 0)
    return _half_up(billed * model.tiers[0].unit)


def model_amount(model: Model, quantity: int) -> int:
    """The model's amount for an integer quantity, by scheme."""
    if model.scheme == "graduated":
        return graduated_band_sum(model, quantity)
    if model.scheme == "volume":
        return volume_model(model, quantity)
    return per_unit_model(model, quantity)


# --- strategies ----------------------------------------------------------------------------


@st.composite
def amounts(
    draw: st.DrawFn, name: str, *, optional: bool = False
) -> tuple[dict[str, Any], Decimal]:
    """A Stripe amount field pair (``name`` and ``name_decimal``) and its exact value."""
    kinds = ["int", "int_only", "decimal", *(["absent"] if optional else [])]
    kind = draw(st.sampled_from(kinds))
    if kind == "absent":
        return {}, ZERO
    if kind in ("int", "int_only"):
        whole = draw(st.integers(0, 10_000))
        # Stripe returns both fields for a whole amount; accept the integer alone too.
        text = str(whole) if kind == "int" else None
        return {name: whole, f"{name}_decimal": text}, Decimal(whole)
    digits = draw(st.integers(0, 10**8))
    places = draw(st.integers(0, 12))
    value = Decimal(digits).scaleb(-places)
    return {name: None, f"{name}_decimal": f"{value:f}"}, value


@st.composite
def tier_tables(
    draw: st.DrawFn, *, top: int = SMALL_Q
) -> tuple[list[dict[str, Any]], tuple[ModelTier, ...]]:
    """1-6 tiers with strictly ascending up_to (at most ``top``), the last one open."""
    edges = sorted(draw(st.sets(st.integers(1, top), max_size=5)))
    bounds: list[int | None] = [*edges, None]
    raw: list[dict[str, Any]] = []
    model: list[ModelTier] = []
    for up_to in bounds:
        unit_fields, unit = draw(amounts("unit_amount"))
        flat_fields, flat = draw(amounts("flat_amount", optional=True))
        spelled: int | str | None = up_to
        if up_to is None and draw(st.booleans()):
            spelled = "inf"
        raw.append({"up_to": spelled, **unit_fields, **flat_fields})
        model.append(ModelTier(up_to, unit, flat))
    return raw, tuple(model)


@st.composite
def tiered_prices(
    draw: st.DrawFn, mode: str, *, top: int = SMALL_Q
) -> tuple[dict[str, Any], Model]:
    """A tiered Stripe Price object (``mode`` graduated or volume) and its model."""
    raw, tiers = draw(tier_tables(top=top))
    return tiered_price(mode, raw, pid=f"price_{mode}"), Model(mode, tiers)


@st.composite
def per_unit_prices(draw: st.DrawFn) -> tuple[dict[str, Any], Model]:
    """A per-unit Stripe Price object, with or without packages, and its model."""
    fields, unit = draw(amounts("unit_amount"))
    divide_by = draw(st.none() | st.integers(1, 1000))
    round_up = draw(st.booleans())
    transform = None
    if divide_by is not None:
        transform = {"divide_by": divide_by, "round": "up" if round_up else "down"}
    price = {
        "id": "price_per_unit",
        "object": "price",
        "currency": "usd",
        "billing_scheme": "per_unit",
        "tiers_mode": None,
        "transform_quantity": transform,
        "custom_unit_amount": None,
        **fields,
    }
    return price, Model("per_unit", (ModelTier(None, unit, ZERO),), divide_by, round_up)


ANY_PRICE = st.one_of(
    tiered_prices("graduated", top=LARGE_Q), tiered_prices("volume", top=LARGE_Q), per_unit_prices()
)

PROPERTY = settings(max_examples=150, deadline=None)


# --- properties ----------------------------------------------------------------------------


@PROPERTY
@given(tiered_prices("graduated"), st.integers(0, SMALL_Q))
@example(
    (
        {
            "id": "price_typographic",
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 5, "unit_amount": 700},
                {"up_to": 10, "unit_amount": 650},
                {"up_to": None, "unit_amount": 600},
            ],
        },
        Model(
            "graduated",
            (
                ModelTier(5, Decimal(700), ZERO),
                ModelTier(10, Decimal(650), ZERO),
                ModelTier(None, Decimal(600), ZERO),
            ),
        ),
    ),
    20,
)
def test_graduated_matches_the_unit_by_unit_model(
    priced: tuple[dict[str, Any], Model], quantity: int
) -> None:
    """Graduated: each unit at its own tier's amount plus each reached tier's flat, once."""
    price, model = priced
    assert rate(price, quantity) == graduated_unit_by_unit(model, quantity)


@PROPERTY
@given(tiered_prices("graduated", top=LARGE_Q), st.integers(0, LARGE_Q))
def test_graduated_matches_the_band_sum_model_for_large_quantities(
    priced: tuple[dict[str, Any], Model], quantity: int
) -> None:
    """Graduated over quantities up to 10**9: the sum over bands of units x rate + flat."""
    price, model = priced
    assert rate(price, quantity) == graduated_band_sum(model, quantity)


@PROPERTY
@given(tiered_prices("graduated", top=LARGE_Q), st.integers(1, LARGE_Q))
def test_graduated_rating_bands_add_up(priced: tuple[dict[str, Any], Model], quantity: int) -> None:
    """rating()'s graduated bands cover the quantity and sum to the exact and rated total."""
    price, _ = priced
    found = rating(price, quantity)
    assert sum(b.quantity for b in found.bands) == quantity
    assert sum((b.amount for b in found.bands), ZERO) == found.exact
    assert found.amount == rate(price, quantity)
    assert [b.tier for b in found.bands] == list(range(1, len(found.bands) + 1))


@PROPERTY
@given(tiered_prices("volume", top=LARGE_Q), st.integers(0, LARGE_Q))
def test_volume_prices_every_unit_at_one_tier(
    priced: tuple[dict[str, Any], Model], quantity: int
) -> None:
    """Volume: the tier holding the whole quantity prices all of it, plus its flat."""
    price, model = priced
    assert rate(price, quantity) == volume_model(model, quantity)
    found = rating(price, quantity)
    if quantity:
        (band,) = found.bands
        tier = model.tiers[_tier_index_of(model.tiers, quantity)]
        assert (band.quantity, band.unit_amount, band.flat_amount) == (
            quantity,
            tier.unit,
            tier.flat,
        )


@PROPERTY
@given(per_unit_prices(), st.integers(0, LARGE_Q))
def test_per_unit_and_package_rounding(priced: tuple[dict[str, Any], Model], quantity: int) -> None:
    """Per-unit prices bill q units, or ceil/floor(q / divide_by) packages, at the unit amount."""
    price, model = priced
    assert rate(price, quantity) == per_unit_model(model, quantity)


@PROPERTY
@given(
    tiered_prices("graduated") | per_unit_prices(), st.integers(0, SMALL_Q), st.integers(0, SMALL_Q)
)
def test_graduated_and_per_unit_totals_never_fall_as_quantity_rises(
    priced: tuple[dict[str, Any], Model], a: int, b: int
) -> None:
    """With non-negative amounts, graduated, per-unit and package totals are non-decreasing."""
    price, _ = priced
    low, high = sorted((a, b))
    assert rate(price, low) <= rate(price, high)


@PROPERTY
@given(
    tiered_prices("graduated") | per_unit_prices(),
    st.decimals(0, SMALL_Q, places=3),
    st.decimals(0, SMALL_Q, places=3),
)
def test_monotonic_for_fractional_quantities_too(
    priced: tuple[dict[str, Any], Model], a: Decimal, b: Decimal
) -> None:
    """Fractional quantities keep graduated and per-unit totals non-decreasing."""
    price, _ = priced
    low, high = sorted((a, b))
    assert rate(price, low) <= rate(price, high)


def test_volume_is_not_monotonic() -> None:
    """Volume totals can fall as the quantity rises, so monotonicity is not a volume property."""
    # Stripe's Typographic volume example (docs.stripe.com/subscriptions/pricing-models/
    # tiered-pricing): 5 fonts 35 USD, 6 fonts 39 USD. Those rise, but the same page warns
    # "the total might decrease": 10 units at 10 USD cost more than 11 at 5 USD.
    typographic = {
        "id": "price_typographic_volume",
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": "volume",
        "tiers": [
            {"up_to": 5, "unit_amount": 700},
            {"up_to": 10, "unit_amount": 650},
            {"up_to": None, "unit_amount": 600},
        ],
    }
    assert (rate(typographic, 5), rate(typographic, 6)) == (3500, 3900)
    steep = {
        **typographic,
        "id": "price_steep_volume",
        "tiers": [{"up_to": 10, "unit_amount": 1000}, {"up_to": None, "unit_amount": 500}],
    }
    assert rate(steep, 10) == 10_000
    assert rate(steep, 11) == 5_500
    assert rate(steep, 11) < rate(steep, 10)


@PROPERTY
@given(ANY_PRICE, st.integers(-LARGE_Q, -1) | st.decimals(-LARGE_Q, "-0.001", places=3))
def test_negative_quantity_rates_as_zero(
    priced: tuple[dict[str, Any], Model], quantity: int | Decimal
) -> None:
    """A negative quantity is billed as 0 units: what quantity 0 costs, by the model too."""
    price, model = priced
    assert rate(price, quantity) == rate(price, 0) == model_amount(model, 0)
    assert rating(price, quantity).billed_quantity == 0


@PROPERTY
@given(ANY_PRICE, st.integers(-1000, LARGE_Q))
def test_result_is_an_int_and_spellings_agree(
    priced: tuple[dict[str, Any], Model], quantity: int
) -> None:
    """rate() returns an int, the same for an int, its string and its Decimal."""
    price, model = priced
    amount = rate(price, quantity)
    assert type(amount) is int
    assert amount == rate(price, str(quantity)) == rate(price, Decimal(quantity))
    assert amount == model_amount(model, quantity)


@PROPERTY
@given(ANY_PRICE, st.decimals(-1000, LARGE_Q, places=6, allow_nan=False, allow_infinity=False))
def test_decimal_quantities_and_their_strings_agree(
    priced: tuple[dict[str, Any], Model], quantity: Decimal
) -> None:
    """A fractional quantity rates the same as a Decimal and as its string."""
    price, _ = priced
    amount = rate(price, quantity)
    assert type(amount) is int
    assert amount == rate(price, str(quantity)) == rating(price, quantity).amount
