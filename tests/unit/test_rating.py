"""Rating a Stripe Price: Stripe's own worked examples, every refusal, currencies and the cache."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from adapter import MetersyncError, RatingError, rate
from adapter.domain.money import format_amount, minor_unit_exponent
from adapter.domain.rating import compile_price, rating
from tests.price_objects import per_unit_price, price_tier, tiered_price

# Stripe's "Typographic" tiers: 1-5 at 7 USD, 6-10 at 6.5 USD, 11+ at 6 USD
# (docs.stripe.com/subscriptions/pricing-models/tiered-pricing, API sample: unit_amount 700,
# 650, 600 with up_to 5, 10, "inf").
TYPOGRAPHIC = [price_tier(5, 700), price_tier(10, 650), price_tier(None, 600)]
# The same page, "Add a flat rate": 1-5 5 USD + 10 USD flat, 6-10 4 USD + 20 USD,
# 10-15 3 USD + 30 USD, 15-20 2 USD + 40 USD, 20+ 1 USD + 50 USD.
FLAT_RATE = [
    price_tier(5, 500, 1000),
    price_tier(10, 400, 2000),
    price_tier(15, 300, 3000),
    price_tier(20, 200, 4000),
    price_tier("inf", 100, 5000),
]
# docs.stripe.com/products-prices/pricing-models, "Fixed fee and overage": "Priced at 200
# USD per month, this model includes 100,000 tokens. They charge any usage above the
# included tokens at an additional rate of 0.001 USD per token." API sample: tiers[0]
# up_to=100000 unit_amount_decimal=0; tiers[1] up_to=inf unit_amount_decimal=0.1.
HYPERNIAN_OVERAGE = [
    {"up_to": 100_000, "unit_amount": None, "unit_amount_decimal": "0"},
    {"up_to": None, "unit_amount": None, "unit_amount_decimal": "0.1"},
]

STRIPE_EXAMPLES = [
    # https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing, "Volume-based
    # pricing" table "Quantity and usage at end of the period | Unit cost | Total monthly
    # cost": 1 | 7 USD | 7 USD; 5 | 7 USD | 35 USD; 6 | 6.5 USD | 39 USD; 20 | 6 USD |
    # 120 USD; 25 | 6 USD | 150 USD. ("a customer with 5 fonts is charged 35 USD (5 x 7 USD)
    # in November ... For December, Typographic charges 39 USD (6 x 6.5 USD).")
    pytest.param(tiered_price("volume", TYPOGRAPHIC), 1, 700, id="typographic-volume-1"),
    pytest.param(tiered_price("volume", TYPOGRAPHIC), 5, 3500, id="typographic-volume-5"),
    pytest.param(tiered_price("volume", TYPOGRAPHIC), 6, 3900, id="typographic-volume-6"),
    pytest.param(tiered_price("volume", TYPOGRAPHIC), 20, 12000, id="typographic-volume-20"),
    pytest.param(tiered_price("volume", TYPOGRAPHIC), 25, 15000, id="typographic-volume-25"),
    # Same page, "Graduated pricing": "They charge a customer with 6 fonts 41.5 USD, 35 USD
    # for the first 5 fonts and 6.5 USD for the 6th font." Table "Total for graduated tiered
    # pricing": 1 → 7 USD; 5 → 35 USD; 6 → 41.5 USD; 20 → 127.5 USD; 25 → 157.5 USD.
    pytest.param(tiered_price("graduated", TYPOGRAPHIC), 1, 700, id="typographic-graduated-1"),
    pytest.param(tiered_price("graduated", TYPOGRAPHIC), 5, 3500, id="typographic-graduated-5"),
    pytest.param(tiered_price("graduated", TYPOGRAPHIC), 6, 4150, id="typographic-graduated-6"),
    pytest.param(tiered_price("graduated", TYPOGRAPHIC), 20, 12750, id="typographic-graduated-20"),
    pytest.param(tiered_price("graduated", TYPOGRAPHIC), 25, 15750, id="typographic-graduated-25"),
    # Same page, "Volume-based pricing flat rate example": "If quantity is 12 and
    # tiers_mode=volume, the total amount billed is: 12 x 3 USD + 30 USD = 66 USD".
    pytest.param(tiered_price("volume", FLAT_RATE), 12, 6600, id="flat-rate-volume-12"),
    # "Graduated pricing flat rate example": "If quantity is 12 and tiers_mode=graduated,
    # the total amount billed is: (5 x 5 USD + 10 USD) + (5 x 4 USD + 20 USD) + (2 x 3 USD
    # + 30 USD) = 111 USD".
    pytest.param(tiered_price("graduated", FLAT_RATE), 12, 11100, id="flat-rate-graduated-12"),
    # "If quantity is 0, the total amount is 10 USD regardless of the tiered pricing model
    # used. Stripe always bills the first flat rate tier when quantity=0."
    pytest.param(tiered_price("volume", FLAT_RATE), 0, 1000, id="flat-rate-volume-0"),
    pytest.param(tiered_price("graduated", FLAT_RATE), 0, 1000, id="flat-rate-graduated-0"),
    # "To bill 0 when there's no usage, set up an up_to=1 tier with an unit_amount equal to
    # the flat rate and omit the flat_amount."
    pytest.param(
        tiered_price("graduated", [price_tier(1, 1000), *FLAT_RATE[1:]]),
        0,
        0,
        id="up-to-1-bills-0-graduated",
    ),
    pytest.param(
        tiered_price("volume", [price_tier(1, 1000), *FLAT_RATE[1:]]),
        0,
        0,
        id="up-to-1-bills-0-volume",
    ),
    # https://docs.stripe.com/billing/subscriptions/quantities, "Quantity transformation":
    # "a productivity software suite that charges 10 USD for every 5 users (or portion
    # thereof)"; table "Number of Users | ... | Total": 1 → 10 USD, 3 → 10 USD, 5 → 10 USD,
    # 6 → 20 USD, 7 → 20 USD. Price: transform_quantity[divide_by]=5, [round]=up,
    # unit_amount=1000 ("6 divided by 5 results in a quantity of 2").
    *(
        pytest.param(
            per_unit_price(1000, transform={"divide_by": 5, "round": "up"}),
            users,
            total,
            id=f"per-5-users-{users}",
        )
        for users, total in [(1, 1000), (3, 1000), (5, 1000), (6, 2000), (7, 2000)]
    ),
    # Same page, "Metered usage": "A marketing email service that creates a metered price to
    # charge 0.10 USD for every 1000 emails sent": divide_by=1000, round=down,
    # unit_amount=10; "bill the customer 0.10 USD for every 1000 emails they send".
    pytest.param(
        per_unit_price(10, transform={"divide_by": 1000, "round": "down"}),
        1000,
        10,
        id="emails-per-1000",
    ),
    # https://docs.stripe.com/products-prices/manage-prices, "Package pricing: Charge by the
    # package, or group of units, such as charging 25 USD for every 5 units. Purchases are
    # rounded up by default, so a customer buying 8 units pays 50 USD."
    pytest.param(
        per_unit_price(2500, transform={"divide_by": 5, "round": "up"}),
        8,
        5000,
        id="package-8-units",
    ),
    # https://docs.stripe.com/billing/subscriptions/usage-based/manage-billing, "Transform
    # quantities": "Charge 10 USD per hour, and round up" (unit_amount=1000, divide_by=60,
    # round=up); "If a customer rents the car for 150 minutes, that customer is charged 30
    # USD for 3 hours of rental (2 hours and 30 minutes, rounded up)."
    pytest.param(
        per_unit_price(1000, transform={"divide_by": 60, "round": "up"}),
        150,
        3000,
        id="car-rental-150-minutes",
    ),
    # https://stripe.com/docs/billing/subscriptions/decimal-amounts, "Rounding" (also on
    # docs.stripe.com/products-prices/manage-prices): "if you create a price with
    # unit_amount_decimal = 0.05 and a monthly subscription for that [price] with quantity =
    # 30 ... the calculated amount for the line item would be 0.05 * 30 = 1.5, which is then
    # rounded up to 2 cents."
    pytest.param(per_unit_price(None, decimal="0.05"), 30, 2, id="decimal-0.05-x-30"),
    # https://docs.stripe.com/products-prices/pricing-models, "Fixed fee and overage": the
    # fixed fee is a licensed price "with a licensed rate of 200 USD" (unit_amount=20000),
    # and of the metered price: "The first tier has a price of 0 USD because the flat rate
    # includes the first 100,000 units."
    pytest.param(per_unit_price(20000), 1, 20000, id="hypernian-fixed-fee"),
    pytest.param(
        tiered_price("graduated", HYPERNIAN_OVERAGE), 100_000, 0, id="hypernian-included-tokens"
    ),
]


@pytest.mark.parametrize(("price", "quantity", "expected"), STRIPE_EXAMPLES)
def test_stripes_worked_examples(price: dict[str, Any], quantity: int, expected: int) -> None:
    """rate() gives the total Stripe's own documentation states for each worked example."""
    assert rate(price, quantity) == expected


# Worked from a price Stripe documents, where the page states the rate but not this total:
# the arithmetic is ours, so these are kept apart from the table above.
DERIVED_FROM_STRIPE_PRICES = [
    # Hypernian overage: 1,000 tokens above the included 100,000 at "0.001 USD per token"
    # (unit_amount_decimal 0.1 cents) = 1 USD.
    pytest.param(
        tiered_price("graduated", HYPERNIAN_OVERAGE), 101_000, 100, id="hypernian-overage"
    ),
    # The email price rounds down ("you don't want to charge for a portion of usage, ... you
    # can also pass down"): 1,999 emails bill one package of 1,000; 999 bill none.
    pytest.param(
        per_unit_price(10, transform={"divide_by": 1000, "round": "down"}),
        1999,
        10,
        id="emails-round-down-1999",
    ),
    pytest.param(
        per_unit_price(10, transform={"divide_by": 1000, "round": "down"}),
        999,
        0,
        id="emails-round-down-999",
    ),
    # "you can set unit_amount_decimal = 105.5 in USD to represent 105.5 cents, or $1.055"
    # (decimal-amounts guide): one unit is a 105.5-cent line, rounded half up to 106.
    pytest.param(per_unit_price(None, decimal="105.5"), 1, 106, id="decimal-105.5-x-1"),
]


@pytest.mark.parametrize(("price", "quantity", "expected"), DERIVED_FROM_STRIPE_PRICES)
def test_totals_worked_from_stripes_documented_prices(
    price: dict[str, Any], quantity: int, expected: int
) -> None:
    """Documented Stripe prices rate other quantities by the same documented rule."""
    assert rate(price, quantity) == expected


def test_volume_total_can_drop_as_the_quantity_rises() -> None:
    """Volume pricing is not monotonic: one more unit can move every unit to a cheaper tier."""
    # Stripe's tiered-pricing guide: "Because the tier price applies to the entire quantity
    # (or usage), the total might decrease when calculating the final cost." Its own
    # Typographic numbers happen to rise at each edge (5 → 35 USD, 6 → 39 USD; 10 → 65 USD,
    # 11 → 66 USD), so the drop is shown with steeper tiers.
    typographic = tiered_price("volume", TYPOGRAPHIC)
    assert (rate(typographic, 5), rate(typographic, 6)) == (3500, 3900)
    assert (rate(typographic, 10), rate(typographic, 11)) == (6500, 6600)
    steep = tiered_price("volume", [price_tier(5, 1000), price_tier(None, 100)])
    assert rate(steep, 5) == 5000
    assert rate(steep, 6) == 600
    assert rate(steep, 6) < rate(steep, 5)


# --- refusals ------------------------------------------------------------------------------


def _refusal(price: object, quantity: object = 1) -> RatingError:
    """The RatingError rate() raises for ``price`` and ``quantity``."""
    with pytest.raises(RatingError) as caught:
        rate(price, quantity)  # type: ignore[arg-type]
    return caught.value


REFUSED_PRICES = [
    pytest.param(
        {**per_unit_price(None), "custom_unit_amount": {"minimum": 100, "maximum": None}},
        "custom_unit_amount",
        id="custom-unit-amount",
    ),
    pytest.param(
        {**per_unit_price(100), "billing_scheme": "metered"}, "billing_scheme", id="scheme"
    ),
    pytest.param(
        {**tiered_price("volume", TYPOGRAPHIC), "tiers_mode": "stairstep"}, "tiers_mode", id="mode"
    ),
    pytest.param(
        {**tiered_price("volume", TYPOGRAPHIC), "tiers_mode": None}, "tiers_mode", id="no-mode"
    ),
    pytest.param(
        {k: v for k, v in tiered_price("graduated", TYPOGRAPHIC).items() if k != "tiers"},
        "tiers",
        id="tiers-not-expanded",
    ),
    pytest.param(tiered_price("graduated", []), "tiers", id="tiers-empty"),
    pytest.param(
        {**tiered_price("graduated", TYPOGRAPHIC), "tiers": "inf"}, "tiers", id="tiers-string"
    ),
    pytest.param(
        tiered_price("graduated", [price_tier(5, 700), "oops", price_tier(None, 600)]),
        "tiers[1]",
        id="tier-not-object",
    ),
    pytest.param(
        tiered_price("graduated", [price_tier(None, 700), price_tier(None, 600)]),
        "tiers[0].up_to",
        id="non-last-tier-open",
    ),
    pytest.param(
        tiered_price("graduated", [price_tier(5, 700), price_tier(10, 600)]),
        "tiers[1].up_to",
        id="last-tier-closed",
    ),
    pytest.param(
        tiered_price("volume", [price_tier(10, 700), price_tier(10, 650), price_tier(None, 600)]),
        "tiers[1].up_to",
        id="up-to-repeated",
    ),
    pytest.param(
        tiered_price("volume", [price_tier(10, 700), price_tier(5, 650), price_tier(None, 600)]),
        "tiers[1].up_to",
        id="up-to-descending",
    ),
    pytest.param(
        tiered_price("volume", [price_tier(0, 700), price_tier(None, 600)]),
        "tiers[0].up_to",
        id="up-to-0",
    ),
    pytest.param(
        tiered_price("volume", [price_tier("5", 700), price_tier(None, 600)]),
        "tiers[0].up_to",
        id="up-to-text",
    ),
    pytest.param(
        tiered_price("volume", [price_tier(True, 700), price_tier(None, 600)]),
        "tiers[0].up_to",
        id="up-to-bool",
    ),
    pytest.param(per_unit_price(-1), "unit_amount", id="negative-unit-amount"),
    pytest.param(
        tiered_price("graduated", [price_tier(5, 700, -100), price_tier(None, 600)]),
        "tiers[0].flat_amount_decimal",
        id="negative-flat-amount",
    ),
    pytest.param(
        tiered_price("graduated", [price_tier(5, 700), price_tier(None, -600)]),
        "tiers[1].unit_amount_decimal",
        id="negative-tier-unit-amount",
    ),
    pytest.param(per_unit_price(None), "unit_amount", id="unit-amount-missing"),
    pytest.param(per_unit_price("700"), "unit_amount", id="unit-amount-text"),  # type: ignore[arg-type]
    pytest.param(
        per_unit_price(None, decimal="five"), "unit_amount_decimal", id="decimal-not-number"
    ),
    pytest.param(per_unit_price(None, decimal="NaN"), "unit_amount_decimal", id="decimal-nan"),
    pytest.param(per_unit_price(None, decimal="Infinity"), "unit_amount_decimal", id="decimal-inf"),
    pytest.param(
        {**per_unit_price(None), "unit_amount_decimal": 0.5},
        "unit_amount_decimal",
        id="decimal-float",
    ),
    pytest.param(
        per_unit_price(None, decimal="0.0000000000001"),
        "unit_amount_decimal",
        id="decimal-13-places",
    ),
    pytest.param(
        tiered_price("graduated", [{"up_to": None, "flat_amount_decimal": "1.0000000000001"}]),
        "tiers[0].flat_amount_decimal",
        id="flat-decimal-13-places",
    ),
    pytest.param(
        per_unit_price(100, transform={"divide_by": 0, "round": "up"}),
        "transform_quantity.divide_by",
        id="divide-by-0",
    ),
    pytest.param(
        per_unit_price(100, transform={"divide_by": -5, "round": "up"}),
        "transform_quantity.divide_by",
        id="divide-by-negative",
    ),
    pytest.param(
        per_unit_price(100, transform={"divide_by": "5", "round": "up"}),
        "transform_quantity.divide_by",
        id="divide-by-text",
    ),
    pytest.param(
        per_unit_price(100, transform={"divide_by": 2.5, "round": "up"}),
        "transform_quantity.divide_by",
        id="divide-by-float",
    ),
    pytest.param(
        per_unit_price(100, transform={"divide_by": True, "round": "up"}),
        "transform_quantity.divide_by",
        id="divide-by-bool",
    ),
    pytest.param(
        per_unit_price(100, transform={"divide_by": 5, "round": "nearest"}),
        "transform_quantity.round",
        id="round-unknown",
    ),
    pytest.param(
        per_unit_price(100, transform={"divide_by": 5}),
        "transform_quantity.round",
        id="round-missing",
    ),
    pytest.param(
        {**per_unit_price(100), "transform_quantity": [5, "up"]},
        "transform_quantity",
        id="transform-not-object",
    ),
    pytest.param(
        {
            **tiered_price("graduated", TYPOGRAPHIC),
            "transform_quantity": {"divide_by": 5, "round": "up"},
        },
        "transform_quantity",
        id="transform-with-tiers",
    ),
]


@pytest.mark.parametrize(("price", "field"), REFUSED_PRICES)
def test_unrateable_prices_are_refused_naming_price_and_field(
    price: dict[str, Any], field: str
) -> None:
    """A price Stripe would not rate as given raises RatingError naming its id and field."""
    error = _refusal(price)
    assert error.price == price["id"]
    assert error.field == field
    assert str(error).startswith(f"cannot rate price {price['id']}: {field}: ")


def test_tiers_missing_says_how_to_expand_them() -> None:
    """An unexpanded tiered price points at `metersync sync` and expand[]=tiers."""
    price = {
        k: v for k, v in tiered_price("volume", TYPOGRAPHIC, pid="price_x").items() if k != "tiers"
    }
    message = str(_refusal(price))
    assert "price_x" in message
    assert "expand[]=tiers" in message
    assert "metersync sync" in message


def test_unknown_values_are_quoted_in_the_message() -> None:
    """The refused value itself appears in the message, with what was expected."""
    assert "'metered'; expected per_unit or tiered" in str(
        _refusal({**per_unit_price(100), "billing_scheme": "metered"})
    )
    assert "'stairstep'; expected graduated or volume" in str(
        _refusal({**tiered_price("volume", TYPOGRAPHIC), "tiers_mode": "stairstep"})
    )
    assert "'nearest'; expected up or down" in str(
        _refusal(per_unit_price(100, transform={"divide_by": 5, "round": "nearest"}))
    )


def test_price_without_id_is_named_as_such() -> None:
    """A price with no id is refused as '(no id)' and .price is None."""
    price = {**per_unit_price(-5), "id": None}
    error = _refusal(price)
    assert error.price is None
    assert error.field == "unit_amount"
    assert str(error) == "cannot rate price (no id): unit_amount: negative amount -5"


def test_a_price_that_is_not_a_mapping_is_refused() -> None:
    """rate() refuses anything but a dict-like Stripe Price object."""
    error = _refusal(["price_1"])
    assert str(error) == "a price must be a Stripe Price object (a dict), not list"
    assert (error.price, error.field) == (None, None)


@pytest.mark.parametrize(
    ("quantity", "problem"),
    [
        pytest.param(1.5, "not a float", id="float"),
        pytest.param(0.0, "not a float", id="float-zero"),
        pytest.param(True, "not a float", id="bool"),
        pytest.param(float("nan"), "not a float", id="float-nan"),
        pytest.param(Decimal("NaN"), "not finite", id="decimal-nan"),
        pytest.param(Decimal("sNaN"), "not finite", id="decimal-snan"),
        pytest.param(Decimal("Infinity"), "not finite", id="decimal-inf"),
        pytest.param("-Infinity", "not finite", id="text-minus-inf"),
        pytest.param("nan", "not finite", id="text-nan"),
        pytest.param("twelve", "not a number", id="text-word"),
        pytest.param("", "not a number", id="text-empty"),
        pytest.param("1,000", "not a number", id="text-thousands"),
        pytest.param(None, "got NoneType", id="none"),
        pytest.param([12], "got list", id="list"),
    ],
)
def test_bad_quantities_are_refused_naming_the_price(quantity: object, problem: str) -> None:
    """Floats, non-finite values and non-numbers are refused as the `quantity` field."""
    error = _refusal(per_unit_price(100, pid="price_q"), quantity)
    assert error.price == "price_q"
    assert error.field == "quantity"
    assert str(error).startswith("cannot rate price price_q: quantity: ")
    assert problem in str(error)


def test_rating_errors_are_metersync_errors() -> None:
    """RatingError is catchable as the package's base error."""
    assert issubclass(RatingError, MetersyncError)


# --- quantities ----------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", [7, "7", Decimal(7), Decimal("7.000"), " 7 ", "7e0"])
def test_quantity_spellings_rate_alike(quantity: object) -> None:
    """An int, a numeric string and a Decimal for the same number give the same amount."""
    assert rate(tiered_price("graduated", TYPOGRAPHIC), quantity) == 4800  # type: ignore[arg-type]


@pytest.mark.parametrize("quantity", [-1, "-25", Decimal("-0.5"), -(10**12)])
def test_negative_quantity_rates_as_zero(quantity: object) -> None:
    """A negative total is invoiced as 0 units: nothing per unit, the first flat amount if any."""
    assert rate(tiered_price("graduated", TYPOGRAPHIC), quantity) == 0  # type: ignore[arg-type]
    assert rate(per_unit_price(100), quantity) == 0  # type: ignore[arg-type]
    assert rate(tiered_price("volume", FLAT_RATE), quantity) == 1000  # type: ignore[arg-type]
    found = rating(per_unit_price(100), quantity)  # type: ignore[arg-type]
    assert found.quantity == Decimal(quantity)  # type: ignore[arg-type]
    assert found.billed_quantity == 0


@pytest.mark.parametrize(
    "price",
    [
        pytest.param(per_unit_price(100), id="per-unit"),
        pytest.param(per_unit_price(100, transform={"divide_by": 5, "round": "up"}), id="package"),
        pytest.param(tiered_price("graduated", TYPOGRAPHIC), id="graduated"),
        pytest.param(tiered_price("volume", TYPOGRAPHIC), id="volume"),
    ],
)
def test_zero_quantity_without_flat_amount_costs_nothing(price: dict[str, Any]) -> None:
    """Quantity 0 costs 0 unless the first tier carries a flat amount."""
    assert rate(price, 0) == 0
    assert rating(price, 0).bands == ()


def test_fractional_quantity_is_rated_exactly() -> None:
    """A fractional quantity is priced exactly and the line is rounded once, half up."""
    # 2.5 units at 0.3 cents = 0.75 → 1 cent; 1.5 units = 0.45 → 0 cents.
    assert rate(per_unit_price(None, decimal="0.3"), "2.5") == 1
    assert rate(per_unit_price(None, decimal="0.3"), "1.5") == 0
    # Graduated across the 5-unit edge: 5 x 700 + 0.5 x 650 = 3825.
    assert rate(tiered_price("graduated", TYPOGRAPHIC), Decimal("5.5")) == 3825
    # Volume: 5.5 units fall in the 6-10 tier (above 5): 5.5 x 650 = 3575.
    assert rate(tiered_price("volume", TYPOGRAPHIC), Decimal("5.5")) == 3575


def test_package_rounding_up_and_down() -> None:
    """transform_quantity divides and rounds up or down to whole packages."""
    up = per_unit_price(1000, transform={"divide_by": 5, "round": "up"})
    down = per_unit_price(1000, transform={"divide_by": 5, "round": "down"})
    assert [rate(up, q) for q in (0, 1, 4, 5, 6, 10, 11)] == [0, 1000, 1000, 1000, 2000, 2000, 3000]
    assert [rate(down, q) for q in (0, 1, 4, 5, 6, 10, 11)] == [0, 0, 0, 1000, 1000, 2000, 2000]
    assert rating(up, "5.01").billed_quantity == 2
    assert rating(down, "9.99").billed_quantity == 1


def test_line_total_rounds_half_up_once_not_per_band() -> None:
    """Bands keep their fractions; only the line total is rounded (half up, not to even)."""
    price = tiered_price(
        "graduated",
        [
            {"up_to": 1, "unit_amount_decimal": "0.5"},
            {"up_to": None, "unit_amount_decimal": "0.5"},
        ],
    )
    # Per band: round(0.5) + round(0.5) would be 2 (half up) or 0 (half even); the line is 1.
    assert rate(price, 2) == 1
    # 0.5 rounds half up to 1, and 2.5 to 3 (banker's rounding would give 0 and 2).
    assert rate(per_unit_price(None, decimal="0.5"), 1) == 1
    assert rate(per_unit_price(None, decimal="0.5"), 5) == 3
    assert rate(per_unit_price(None, decimal="0.499999999999"), 1) == 0


# --- amounts -------------------------------------------------------------------------------


def test_unit_amount_decimal_takes_precedence_over_unit_amount() -> None:
    """When both are set, the exact unit_amount_decimal prices the units."""
    price = {**per_unit_price(5), "unit_amount_decimal": "5.4"}
    assert rate(price, 10) == 54
    tiered = tiered_price(
        "volume", [{"up_to": None, "unit_amount": 5, "unit_amount_decimal": "5.4"}]
    )
    assert rate(tiered, 10) == 54


def test_flat_amount_decimal_prices_the_flat_fee() -> None:
    """A tier's flat_amount_decimal is its flat fee, ahead of flat_amount."""
    price = tiered_price(
        "graduated",
        [
            {"up_to": 10, "unit_amount": 0, "flat_amount": 999, "flat_amount_decimal": "150.25"},
            {"up_to": None, "unit_amount_decimal": "0.25"},
        ],
    )
    assert rate(price, 0) == 150
    assert rate(price, 10) == 150
    assert rate(price, 12) == 151  # 150.25 + 2 x 0.25 = 150.75
    assert rating(price, 12).exact == Decimal("150.75")


def test_twelve_decimal_places_are_accepted_and_kept() -> None:
    """unit_amount_decimal may carry Stripe's maximum of 12 places, kept exactly."""
    price = per_unit_price(None, decimal="0.000000000001")
    assert rate(price, 10**12) == 1
    assert rating(price, 3).exact == Decimal("0.000000000003")
    assert rate(per_unit_price(None, decimal="1E+2"), 3) == 300


def test_tier_without_amounts_is_free() -> None:
    """A tier with neither unit nor flat amount prices its units at zero."""
    price = tiered_price("graduated", [{"up_to": 100}, price_tier(None, 2)])
    assert rate(price, 100) == 0
    assert rate(price, 101) == 2


@pytest.mark.parametrize("up_to", [None, "inf"])
def test_last_tier_may_be_null_or_inf(up_to: str | None) -> None:
    """The open last tier may be spelled null (as Stripe returns it) or "inf" (as sent)."""
    price = tiered_price(
        "graduated", [price_tier(5, 700), price_tier(10, 650), price_tier(up_to, 600)]
    )
    assert rate(price, 25) == 15750
    assert compile_price(price).tiers[-1].up_to is None


def test_single_openprice_tier() -> None:
    """One open tier prices every unit alike in both modes."""
    for mode in ("graduated", "volume"):
        assert rate(tiered_price(mode, [price_tier(None, 3, 10)]), 7) == 31


def test_huge_quantities_stay_exact() -> None:
    """Amounts stay exact far beyond float precision."""
    big = 10**20 + 1
    assert rate(per_unit_price(None, decimal="0.000000000001"), big) == 100_000_000
    assert rate(tiered_price("graduated", TYPOGRAPHIC), big) == 3500 + 3250 + (big - 10) * 600


# --- currencies ----------------------------------------------------------------------------


def test_zero_decimal_currency_amounts_are_whole_units() -> None:
    """JPY amounts are whole yen: 500 is ¥500, shown as '500 JPY'."""
    # https://docs.stripe.com/currencies#zero-decimal: "For zero-decimal currencies, still
    # provide amounts as an integer but without multiplying by 100. For example, to charge
    # ¥500, provide an amount value of 500."
    price = per_unit_price(500, currency="jpy", pid="price_jpy")
    amount = rate(price, 1)
    assert amount == 500
    assert format_amount(amount, "jpy") == "500 JPY"
    assert minor_unit_exponent("jpy") == 0
    assert minor_unit_exponent("JPY") == 0
    # Half up to a whole yen, like cents: 3 x 0.5 yen = 1.5 → 2 yen.
    assert rate(per_unit_price(None, decimal="0.5", currency="jpy"), 3) == 2


def test_three_decimal_currency_amounts_are_fils() -> None:
    """KWD amounts are thousandths: 5124 is shown as '5.124 KWD'."""
    # https://docs.stripe.com/currencies#three-decimal lists KWD and uses "5.124 KWD" (5124)
    # as its example; its rule that payment calls round to a multiple of ten ("5120 or 5130")
    # is about charging, not about what an invoice line of a price comes to.
    price = per_unit_price(5124, currency="kwd", pid="price_kwd")
    amount = rate(price, 1)
    assert amount == 5124
    assert format_amount(amount, "kwd") == "5.124 KWD"
    assert minor_unit_exponent("kwd") == 3


def test_two_decimal_currency_formatting() -> None:
    """USD amounts are cents, shown with two decimals and thousands separators."""
    # https://docs.stripe.com/currencies#zero-decimal: "to charge 10 USD, provide an amount
    # value of 1000 (that is, 1000 cents)."
    assert format_amount(1000, "usd") == "10.00 USD"
    assert format_amount(1234, "usd") == "12.34 USD"
    assert format_amount(5, "eur") == "0.05 EUR"
    assert format_amount(123_456_789, "usd") == "1,234,567.89 USD"
    assert format_amount(-250, "usd") == "-2.50 USD"
    assert minor_unit_exponent("usd") == 2
    assert minor_unit_exponent(None) == 2


def test_format_amount_without_amount_or_currency() -> None:
    """No amount shows as '-', and no currency shows the number alone."""
    assert format_amount(None, "usd") == "-"
    assert format_amount(1234, None) == "12.34"
    assert format_amount(500, "") == "5.00"


# --- rating() ------------------------------------------------------------------------------


def test_graduated_rating_bands() -> None:
    """rating() shows each graduated band: bounds, units, rates and amount."""
    found = rating(tiered_price("graduated", FLAT_RATE, pid="price_flat"), 12)
    assert [
        (b.tier, b.floor, b.up_to, b.quantity, b.unit_amount, b.flat_amount, b.amount)
        for b in found.bands
    ] == [
        (1, 0, 5, 5, 500, 1000, 3500),
        (2, 5, 10, 5, 400, 2000, 4000),
        (3, 10, 15, 2, 300, 3000, 3600),
    ]
    assert found.exact == Decimal(11100)
    assert found.amount == 11100
    assert (found.price_id, found.currency) == ("price_flat", "usd")
    assert (found.quantity, found.billed_quantity) == (12, 12)
    assert found.free_units is None


def test_graduated_rating_reaching_the_openprice_tier() -> None:
    """The open tier's band has no upper bound and holds every unit above the last edge."""
    found = rating(tiered_price("graduated", TYPOGRAPHIC), 25)
    assert [(b.tier, b.floor, b.up_to, b.quantity, b.amount) for b in found.bands] == [
        (1, 0, 5, 5, 3500),
        (2, 5, 10, 5, 3250),
        (3, 10, None, 15, 9000),
    ]
    assert found.amount == rate(tiered_price("graduated", TYPOGRAPHIC), 25) == 15750


def test_volume_rating_has_one_band() -> None:
    """rating() of a volume price is one band: the tier the whole quantity falls in."""
    found = rating(tiered_price("volume", FLAT_RATE), 12)
    assert len(found.bands) == 1
    band = found.bands[0]
    assert (band.tier, band.floor, band.up_to, band.quantity) == (3, 10, 15, 12)
    assert (band.unit_amount, band.flat_amount, band.amount) == (300, 3000, 6600)
    assert found.amount == 6600


def test_zero_quantity_rating_shows_the_first_flat_amount() -> None:
    """At quantity 0, the first tier's flat amount is one band of no units."""
    found = rating(tiered_price("graduated", FLAT_RATE), 0)
    assert [(b.tier, b.quantity, b.flat_amount, b.amount) for b in found.bands] == [
        (1, 0, 1000, 1000)
    ]
    assert found.amount == 1000


def test_package_rating_bills_packages() -> None:
    """rating() of a package price reports the asked units and the billed packages."""
    found = rating(per_unit_price(2500, transform={"divide_by": 5, "round": "up"}), 8)
    assert (found.quantity, found.billed_quantity) == (8, 2)
    assert [(b.tier, b.quantity, b.unit_amount, b.amount) for b in found.bands] == [
        (1, 2, 2500, 5000)
    ]
    assert found.amount == 5000


def test_free_units_are_a_first_tier_priced_at_zero() -> None:
    """free_units is the first tier's up_to when it has neither unit nor flat amount."""
    assert rating(tiered_price("graduated", HYPERNIAN_OVERAGE), 5).free_units == 100_000
    assert rating(tiered_price("graduated", TYPOGRAPHIC), 5).free_units is None
    assert (
        rating(
            tiered_price("graduated", [price_tier(10, 0, 100), price_tier(None, 5)]), 5
        ).free_units
        is None
    )
    assert rating(per_unit_price(0), 5).free_units is None


def test_rating_to_dict_shape() -> None:
    """to_dict() gives JSON-ready strings for decimals and integers for amounts."""
    price = tiered_price(
        "graduated",
        [price_tier(5, 700), {"up_to": None, "unit_amount_decimal": "6.5"}],
        pid="price_td",
    )
    assert rating(price, "6.5").to_dict() == {
        "price": "price_td",
        "currency": "usd",
        "quantity": "6.5",
        "billed_quantity": "6.5",
        "amount": 3510,
        "exact_amount": "3509.75",
        "bands": [
            {
                "tier": 1,
                "from": "0",
                "up_to": "5",
                "quantity": "5",
                "unit_amount": "700",
                "flat_amount": "0",
                "amount": "3500",
            },
            {
                "tier": 2,
                "from": "5",
                "up_to": None,
                "quantity": "1.5",
                "unit_amount": "6.5",
                "flat_amount": "0",
                "amount": "9.75",
            },
        ],
    }


# --- compile_price cache -------------------------------------------------------------------


def test_compile_price_reuses_the_plan_for_the_same_fields() -> None:
    """Equal price dicts share one compiled plan."""
    first = compile_price(tiered_price("graduated", TYPOGRAPHIC, pid="price_cache_same"))
    again = compile_price(tiered_price("graduated", TYPOGRAPHIC, pid="price_cache_same"))
    assert again is first


def test_mutating_a_tier_after_rating_changes_the_result() -> None:
    """The cache keys on every field read: a changed tier amount is rated afresh."""
    price = tiered_price(
        "graduated", [price_tier(5, 700), price_tier(None, 600)], pid="price_cache_tier"
    )
    assert rate(price, 6) == 4100
    price["tiers"][1]["unit_amount"] = 100
    price["tiers"][1]["unit_amount_decimal"] = "100"
    assert rate(price, 6) == 3600
    price["tiers"][0]["up_to"] = 2
    assert rate(price, 6) == 1800


def test_mutating_other_fields_after_rating_changes_the_result() -> None:
    """Changes to the mode, the unit amount or the package size are all seen."""
    price = tiered_price("graduated", TYPOGRAPHIC, pid="price_cache_mode")
    assert rate(price, 6) == 4150
    price["tiers_mode"] = "volume"
    assert rate(price, 6) == 3900

    unit = per_unit_price(100, transform={"divide_by": 5, "round": "up"}, pid="price_cache_unit")
    assert rate(unit, 6) == 200
    unit["transform_quantity"]["round"] = "down"
    assert rate(unit, 6) == 100
    unit["unit_amount_decimal"] = "250"
    assert rate(unit, 6) == 250
    unit["custom_unit_amount"] = {"minimum": 1}
    assert _refusal(unit, 6).field == "custom_unit_amount"


def test_unhashable_price_fields_are_rated_without_the_cache() -> None:
    """A price whose fields cannot be hashed is still rated, fresh each time."""
    price = tiered_price(
        "graduated",
        [{**price_tier(5, 700), "metadata": {"a": [1]}}, price_tier(None, 600)],
        pid="price_nh",
    )
    assert rate(price, 6) == 4100
    price["tiers"][0]["unit_amount"] = 0
    price["tiers"][0]["unit_amount_decimal"] = "0"
    assert rate(price, 6) == 600
    assert compile_price(price) is not compile_price(price)


def test_compile_price_parses_the_terms() -> None:
    """compile_price() exposes the parsed scheme, tiers and package terms."""
    plan = compile_price(
        per_unit_price(1000, transform={"divide_by": 60, "round": "up"}, pid="p_car")
    )
    assert (plan.price_id, plan.currency, plan.scheme, plan.divide_by) == (
        "p_car",
        "usd",
        "per_unit",
        60,
    )
    assert [(t.up_to, t.unit, t.flat) for t in plan.tiers] == [(None, 1000, 0)]
    assert plan.amount(150) == 3000
    volume = compile_price(tiered_price("volume", FLAT_RATE))
    assert volume.scheme == "volume"
    assert [t.up_to for t in volume.tiers] == [5, 10, 15, 20, None]
    assert [t.flat for t in volume.tiers] == [1000, 2000, 3000, 4000, 5000]
