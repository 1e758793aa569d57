"""Properties of the pure preview functions (``adapter.reading.preview``): for random
graduated and volume tier tables, random usage (fractions and negatives too) and optional
allowances, every metered line is what ``adapter.rate`` says, on the quantity Stripe will
bill, with the allowance split consistently. No database: the inputs are built directly."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import adapter
from adapter.domain.aggregation import Aggregation
from adapter.reading.compare import compare
from adapter.reading.preview import InvoicePreview, PreviewLine, base_fee_line, metered_line
from adapter.reading.pricing import MeterPrice
from adapter.reading.usage import MeterUsage
from adapter.store.catalog import MeterInfo
from adapter.store.prices import PricedItem

ZERO = Decimal(0)
PROPERTY = settings(max_examples=200, deadline=None)
ROUNDINGS = ("down", "up", "nearest")
SUM = Aggregation.SUM

# --- inputs ----------------------------------------------------------------------------------


def tier(up_to: int | None, unit: int | str | None, flat: int | None) -> dict[str, Any]:
    """One tier as Stripe returns it; a string ``unit`` is a decimal amount."""
    decimal = unit if isinstance(unit, str) else None if unit is None else str(unit)
    return {
        "up_to": up_to,
        "unit_amount": unit if isinstance(unit, int) else None,
        "unit_amount_decimal": decimal,
        "flat_amount": flat,
        "flat_amount_decimal": None if flat is None else str(flat),
    }


def tiered(mode: str, tiers: list[dict[str, Any]], pid: str = "price_api") -> dict[str, Any]:
    """A metered tiered Stripe Price object, tiers expanded."""
    return {
        "id": pid,
        "object": "price",
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": mode,
        "tiers": tiers,
        "unit_amount": None,
        "unit_amount_decimal": None,
        "transform_quantity": None,
        "custom_unit_amount": None,
        "nickname": None,
        "recurring": {"usage_type": "metered", "interval": "month", "meter": "mtr_api"},
    }


def per_unit(
    unit_amount: int, *, pid: str = "price_base", transform: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A per-unit Stripe Price object (licensed; packages with ``transform``)."""
    usage_type = "licensed" if transform is None else "metered"
    return {
        "id": pid,
        "object": "price",
        "currency": "usd",
        "billing_scheme": "per_unit",
        "tiers_mode": None,
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
        "transform_quantity": transform,
        "custom_unit_amount": None,
        "nickname": None,
        "recurring": {"usage_type": usage_type, "interval": "month", "meter": None},
    }


def item(
    price: dict[str, Any] | None, *, pid: str = "price_api", quantity: int | None = None
) -> PricedItem:
    """A live subscription item of sub_1 billing ``price`` (``None``: not mirrored)."""
    return PricedItem(
        subscription_id="sub_1",
        subscription_status="active",
        item_id=f"si_{pid}",
        price_id=price["id"] if price is not None else pid,
        price=price,
        quantity=quantity,
        stripe_meter_id="mtr_api",
        period_start=None,
        period_end=None,
    )


def meter(rounding: str) -> MeterPrice:
    """The local meter api_calls, sending to mtr_api, whole by ``rounding``."""
    info = MeterInfo(1, "api_calls", "api_calls", SUM, rounding, "mtr_api")
    return MeterPrice(info, None, "mtr_api")


def usage(quantity: Decimal) -> MeterUsage:
    """A period's usage of ``quantity``."""
    return MeterUsage(quantity, ZERO, quantity, 1, SUM)


def billable(quantity: Decimal, rounding: str, *, free: bool) -> Decimal:
    """What Stripe will bill, worked out here: whole by the rule, never below 0, 0 if free."""
    if free:
        return ZERO
    whole = {
        "down": math.floor(quantity),
        "up": math.ceil(quantity),
        "nearest": math.floor(quantity + Decimal("0.5")),
    }[rounding]
    return Decimal(max(whole, 0))


unit_amounts = st.one_of(
    st.integers(0, 500),
    st.decimals(0, 500, places=3, allow_nan=False, allow_infinity=False).map(str),
)


@st.composite
def tier_prices(draw: st.DrawFn, pid: str = "price_api") -> dict[str, Any]:
    """A graduated or volume price of 1-5 tiers, the first one optionally priced at zero."""
    bounds = sorted(draw(st.sets(st.integers(1, 20000), max_size=4)))
    ups: list[int | None] = [*bounds, None]
    flats = st.none() | st.integers(0, 5000)
    tiers = [tier(up, draw(st.none() | unit_amounts), draw(flats)) for up in ups]
    if draw(st.booleans()):  # a free first tier, as Stripe's "first N units free"
        tiers[0] = tier(ups[0], draw(st.sampled_from([0, None])), draw(st.sampled_from([0, None])))
    return tiered(draw(st.sampled_from(["graduated", "volume"])), tiers, pid)


quantities = st.one_of(
    st.integers(-500, 30000).map(Decimal),
    st.decimals(-500, 30000, places=3, allow_nan=False, allow_infinity=False),
)
allowances = st.none() | st.decimals(0, 25000, places=2, allow_nan=False, allow_infinity=False)


def free_first_tier(price: dict[str, Any]) -> bool:
    """Whether the price's first tier costs nothing (no unit and no flat amount)."""
    first = price["tiers"][0]
    unit = Decimal(first["unit_amount_decimal"] or first["unit_amount"] or 0)
    return not unit and not first["flat_amount"]


def metered(
    price: dict[str, Any],
    quantity: Decimal,
    rounding: str,
    *,
    free: bool,
    allowance: Decimal | None,
) -> PreviewLine:
    """The preview's metered line for ``quantity`` used on the meter billed by ``price``."""
    return metered_line(
        item(price), meter(rounding), usage(quantity), free=free, allowance=allowance
    )


# --- properties ------------------------------------------------------------------------------


@PROPERTY
@given(tier_prices(), quantities, st.sampled_from(ROUNDINGS), st.booleans(), allowances)
def test_amount_is_the_rating_of_the_line_quantity(
    price: dict[str, Any], quantity: Decimal, rounding: str, free: bool, allowance: Decimal | None
) -> None:
    """(a) A metered line's amount is adapter.rate of its price and its own quantity."""
    line = metered(price, quantity, rounding, free=free, allowance=allowance)
    assert line.quantity is not None
    assert line.amount == adapter.rate(price, line.quantity)
    assert line.rating is not None
    assert line.rating.amount == line.amount


@PROPERTY
@given(tier_prices(), quantities, st.sampled_from(ROUNDINGS), st.booleans(), allowances)
def test_quantity_is_what_stripe_will_bill(
    price: dict[str, Any], quantity: Decimal, rounding: str, free: bool, allowance: Decimal | None
) -> None:
    """(b) The line's quantity is the usage made whole by the meter's rounding rule, never
    negative, and 0 for a free account."""
    line = metered(price, quantity, rounding, free=free, allowance=allowance)
    expected = billable(quantity, rounding, free=free)
    assert line.quantity == expected
    assert line.quantity == line.quantity.to_integral_value()
    assert line.quantity >= 0
    if free:
        assert line.quantity == 0
        assert line.amount == adapter.rate(price, 0)


@PROPERTY
@given(tier_prices(), quantities, st.sampled_from(ROUNDINGS), st.booleans(), allowances)
def test_overage_is_what_lies_above_the_included_units(
    price: dict[str, Any], quantity: Decimal, rounding: str, free: bool, allowance: Decimal | None
) -> None:
    """(c) With an included quantity, overage is the billed units above it and costs the
    amount less the rating of the included part; without one, all of it is overage."""
    line = metered(price, quantity, rounding, free=free, allowance=allowance)
    assert line.quantity is not None
    assert line.amount is not None
    if allowance is not None:
        assert line.included == allowance
    if line.included is None:
        assert (line.overage, line.overage_amount) == (line.quantity, line.amount)
    else:
        assert line.overage == max(line.quantity - line.included, ZERO)
        within = adapter.rate(price, min(line.quantity, line.included))
        assert line.overage_amount == line.amount - within
        if price["tiers_mode"] == "graduated":  # volume prices need not rise with quantity
            assert line.overage_amount >= 0


@PROPERTY
@given(tier_prices(), quantities, st.sampled_from(ROUNDINGS), st.booleans(), allowances)
def test_an_allowance_beyond_the_free_tier_is_noted(
    price: dict[str, Any], quantity: Decimal, rounding: str, free: bool, allowance: Decimal | None
) -> None:
    """An allowance set in metersync is noted exactly when it exceeds the units the price
    gives free, since Stripe bills those."""
    line = metered(price, quantity, rounding, free=free, allowance=allowance)
    assert line.rating is not None
    given_free = line.rating.free_units or ZERO
    assert (line.note is not None) == (allowance is not None and allowance > given_free)
    if line.note is not None:
        assert f"gives {line.rating.free_units or 0} units free" in line.note


@PROPERTY
@given(tier_prices(), quantities, st.sampled_from(ROUNDINGS), st.booleans())
def test_a_free_first_tier_is_the_allowance(
    price: dict[str, Any], quantity: Decimal, rounding: str, free: bool
) -> None:
    """(d) With a zero-priced first tier and no allowance set, the included units are that
    tier's up_to and the whole amount is overage (the included units cost nothing)."""
    line = metered(price, quantity, rounding, free=free, allowance=None)
    first_up_to = price["tiers"][0]["up_to"]
    if free_first_tier(price):
        assert line.included == (None if first_up_to is None else Decimal(first_up_to))
        assert line.overage_amount == line.amount
        assert line.note is None
    else:
        assert line.included is None


@PROPERTY
@given(tier_prices(), quantities, st.sampled_from(ROUNDINGS), st.booleans(), allowances)
def test_bands_add_up_to_the_amount(
    price: dict[str, Any], quantity: Decimal, rounding: str, free: bool, allowance: Decimal | None
) -> None:
    """(f) The line's tier bands, summed exactly and rounded half up once, are its amount;
    the bands hold the billed quantity between them."""
    line = metered(price, quantity, rounding, free=free, allowance=allowance)
    assert line.rating is not None
    bands = line.rating.bands
    exact = sum((b.amount for b in bands), ZERO)
    assert int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)) == line.amount
    assert sum((b.quantity for b in bands), ZERO) == line.quantity
    assert [t["amount"] for t in line.to_dict()["tiers"]] == [str(b.amount) for b in bands]


# --- the whole preview -----------------------------------------------------------------------


@st.composite
def preview_lines(draw: st.DrawFn, index: int) -> tuple[PreviewLine, int | None]:
    """One line of a preview and the amount expected of it (``None``: cannot be rated)."""
    pid = f"price_{index}"
    kind = draw(st.sampled_from(["metered", "base_fee", "no_meter", "unmirrored", "no_tiers"]))
    if kind == "base_fee":
        price = per_unit(draw(st.integers(0, 100_000)), pid=pid)
        seats = draw(st.none() | st.integers(0, 50))
        line = base_fee_line(item(price, pid=pid, quantity=seats))
        return line, adapter.rate(price, 1 if seats is None else seats)
    price = draw(tier_prices(pid))
    quantity, rounding = draw(quantities), draw(st.sampled_from(ROUNDINGS))
    if kind == "metered":
        line = metered(price, quantity, rounding, free=False, allowance=draw(allowances))
        return line, adapter.rate(price, billable(quantity, rounding, free=False))
    if kind == "no_meter":
        return metered_line(item(price, pid=pid), None, None, free=False, allowance=None), None
    bare = None if kind == "unmirrored" else {k: v for k, v in price.items() if k != "tiers"}
    line = metered_line(
        item(bare, pid=pid), meter(rounding), usage(quantity), free=False, allowance=None
    )
    return line, None


def preview_of(lines: tuple[PreviewLine, ...]) -> InvoicePreview:
    """sub_1's March 2026 preview holding ``lines``."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    return InvoicePreview(
        account="acct_1",
        customer="cus_123",
        subscription="sub_1",
        currency="usd",
        period_start=start,
        period_end=start.replace(month=4),
        period_source="subscription",
        lines=lines,
    )


def one_line_preview(line: PreviewLine) -> InvoicePreview:
    """A preview of ``line`` alone."""
    return preview_of((line,))


@st.composite
def previews(draw: st.DrawFn) -> tuple[InvoicePreview, list[int | None]]:
    """A preview of 0-6 lines and the amount expected of each."""
    drawn = [draw(preview_lines(i)) for i in range(draw(st.integers(0, 6)))]
    return preview_of(tuple(line for line, _ in drawn)), [amount for _, amount in drawn]


@PROPERTY
@given(previews())
def test_subtotal_sums_the_rated_lines_and_complete_says_if_all_are(
    drawn: tuple[InvoicePreview, list[int | None]],
) -> None:
    """(e) Each line carries the amount rated independently (None when it cannot be rated,
    with a note); the subtotal and total are the sum of the rated amounts; complete is
    False exactly when some line is unrated."""
    preview, expected = drawn
    assert [line.amount for line in preview.lines] == expected
    for line in preview.lines:
        assert (line.amount is None) == (line.note is not None and line.rating is None)
    rated = sum(amount for amount in expected if amount is not None)
    assert preview.subtotal == rated
    assert preview.complete is all(amount is not None for amount in expected)
    data = preview.to_dict()
    assert (data["subtotal"], data["complete"]) == (rated, preview.complete)


# --- package prices ------------------------------------------------------------------------


@PROPERTY
@given(
    st.integers(1, 10_000),
    st.integers(1, 1000),
    st.sampled_from(["up", "down"]),
    quantities,
    st.sampled_from(ROUNDINGS),
    allowances,
)
def test_a_package_price_line_counts_units_not_packages(  # noqa: PLR0913  one drawn input each
    unit_amount: int,
    divide_by: int,
    package_rounding: str,
    quantity: Decimal,
    rounding: str,
    allowance: Decimal | None,
) -> None:
    """(a)-(c) for a per-unit price with transform_quantity: the line's quantity is the
    units used (what Stripe's line carries), its amount is the rating of that quantity, the
    allowance is split in units, not packages, and compare sees no quantity difference."""
    transform = {"divide_by": divide_by, "round": package_rounding}
    price = per_unit(unit_amount, pid="price_pkg", transform=transform)
    line = metered(price, quantity, rounding, free=False, allowance=allowance)
    units = billable(quantity, rounding, free=False)
    assert line.quantity == units
    assert line.amount == adapter.rate(price, units)
    assert line.rating is not None
    packages = math.ceil(units / divide_by) if package_rounding == "up" else units // divide_by
    assert line.rating.billed_quantity == packages
    if allowance is None:
        assert (line.included, line.overage, line.overage_amount) == (None, units, line.amount)
    else:
        assert line.overage == max(units - allowance, ZERO)
        assert line.overage_amount == line.amount - adapter.rate(price, min(units, allowance))
    stripe_line = {"amount": line.amount, "quantity": int(units), "price": {"id": "price_pkg"}}
    stripe = {"id": "upcoming_in_1", "total": line.amount, "lines": {"data": [stripe_line]}}
    (compared,) = compare(one_line_preview(line), stripe, {"price_pkg": price}).lines
    assert (compared.agree, compared.quantity_differs) == (True, False)
