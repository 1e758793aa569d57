"""The rating side of ``explain`` (``adapter.reading.explain_rating``): every priced line of a
mirrored invoice rated from its mirrored price and Stripe's quantity, beside Stripe's
amount, on SQLite and PostgreSQL. Prices are mirrored through ``price.created`` webhooks."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

import adapter
from adapter.client import Metersync
from adapter.domain.rating import rating
from adapter.errors import RatingError
from adapter.reading.explain import explain_invoice
from tests import stripe_events as se
from tests.billing_world import API, BASE, NOW
from tests.mirror_helpers import clear_mirror, deliver, mirror_invoice

#: A tiered price mirrored without its tiers (a webhook payload never expands them).
BARE = {k: v for k, v in se.price("price_bare", meter="mtr_bare", tiers=[]).items() if k != "tiers"}
PERIOD = (NOW - timedelta(days=30), NOW)
#: Stripe's lines: quantity, amount. API's graduated tiers rate 15,000 calls at 25,500.
LINES: list[dict[str, Any]] = [
    {"id": "il_1_api", "price_id": "price_api", "quantity": Decimal(15000), "amount": 25500},
    {"id": "il_2_base", "price_id": "price_base", "quantity": Decimal(2), "amount": 9801},
    {"id": "il_3_ghost", "price_id": "price_ghost", "quantity": Decimal(3), "amount": 300},
    {"id": "il_4_bare", "price_id": "price_bare", "quantity": Decimal(5), "amount": 10},
    {"id": "il_5_api_small", "price_id": "price_api", "quantity": Decimal(1001), "amount": 2},
    {"id": "il_6_noqty", "price_id": "price_base", "quantity": None, "amount": 4900},
    {"id": "il_7_fee", "price_id": None, "quantity": Decimal(1), "amount": 100},
]


@pytest.fixture
def invoiced(ms: Metersync) -> Metersync:
    """API (graduated), BASE (licensed, 49.00) and BARE (tiered, no tiers) mirrored by
    webhook, and in_1 of cus_123 with :data:`LINES` (in usd)."""
    clear_mirror(ms.engine)
    created = int(NOW.timestamp()) - 3600
    for price in (API, BASE, BARE):
        deliver(ms, se.event("price.created", price, created=created))
    lines = [{"currency": "usd", "description": f"line {x['id']}", **x} for x in LINES]
    mirror_invoice(ms, period=PERIOD, lines=lines, status="open")
    return ms


def by_id(ms: Metersync) -> dict[str, Any]:
    """The ratings of in_1 by line id."""
    return {r.line_id: r for r in explain_invoice(ms.engine, "in_1").ratings}


def test_one_rating_per_priced_line_in_line_order(invoiced: Metersync) -> None:
    """Every line naming a price is rated, in line id order; a line without a price is not."""
    ratings = explain_invoice(invoiced.engine, "in_1").ratings
    assert [r.line_id for r in ratings] == [x["id"] for x in LINES if x["price_id"]]
    assert [r.price_id for r in ratings] == [x["price_id"] for x in LINES if x["price_id"]]
    assert [r.stripe_amount for r in ratings] == [x["amount"] for x in LINES if x["price_id"]]
    assert {r.currency for r in ratings} == {"usd"}
    assert ratings[0].description == "line il_1_api"


def test_agreeing_lines_rate_as_adapter_rate(invoiced: Metersync) -> None:
    """A line whose amount is Stripe's rating of its quantity agrees, with no note; the
    rated amount and bands are adapter.rate / adapter.rating of the price and quantity."""
    api = by_id(invoiced)["il_1_api"]
    assert api.quantity == Decimal(15000)
    assert api.rated_amount == adapter.rate(API, 15000) == 25500
    assert (api.agree, api.note) == (True, None)
    assert list(api.bands) == rating(API, 15000).to_dict()["bands"]
    assert [b["amount"] for b in api.bands] == ["0", "18000", "7500.0"]


def test_a_one_cent_difference_is_flagged_with_a_note(invoiced: Metersync) -> None:
    """Stripe's 98.01 against metersync's 2 x 49.00 disagrees, and the note names both."""
    base = by_id(invoiced)["il_2_base"]
    assert base.rated_amount == adapter.rate(BASE, 2) == 9800
    assert base.stripe_amount == 9801
    assert base.agree is False
    assert base.note == (
        "Stripe billed 9801, metersync rates 9800: a proration, a discount on the line, "
        "or a price changed since the invoice was made?"
    )
    small = by_id(invoiced)["il_5_api_small"]  # 1,001 calls: one at 2 cents past the free tier
    assert (small.rated_amount, small.agree, small.note) == (adapter.rate(API, 1001), True, None)


def test_stripe_amount_off_by_one_either_way_disagrees(invoiced: Metersync) -> None:
    """Both one cent more and one cent less than the rating are disagreements."""
    for amount in (25499, 25501):
        lines = [{**LINES[0], "id": "il_off", "amount": amount, "currency": "usd"}]
        mirror_invoice(invoiced, period=PERIOD, lines=lines, invoice_id="in_2")
        (api,) = explain_invoice(invoiced.engine, "in_2").ratings
        assert (api.rated_amount, api.stripe_amount, api.agree) == (25500, amount, False)
        assert api.note is not None
        assert api.note.startswith(f"Stripe billed {amount}, metersync rates 25500")


def test_a_price_not_mirrored_says_run_sync(invoiced: Metersync) -> None:
    """A line whose price the mirror lacks is not rated and says to run metersync sync."""
    ghost = by_id(invoiced)["il_3_ghost"]
    assert (ghost.rated_amount, ghost.agree, ghost.bands) == (None, None, ())
    assert ghost.stripe_amount == 300
    assert ghost.note == "price price_ghost is not mirrored: run `metersync sync`"


def test_a_tiered_price_without_tiers_gives_the_rating_error(invoiced: Metersync) -> None:
    """A tiered price mirrored without tiers is not rated; the note is RatingError's message."""
    with pytest.raises(RatingError) as raised:
        adapter.rate(BARE, 5)
    bare = by_id(invoiced)["il_4_bare"]
    assert (bare.rated_amount, bare.agree, bare.bands) == (None, None, ())
    assert bare.note == str(raised.value)
    assert "metersync sync" in bare.note


def test_a_line_without_quantity_is_not_rated(invoiced: Metersync) -> None:
    """A priced line Stripe sent without a quantity says so and compares nothing."""
    noqty = by_id(invoiced)["il_6_noqty"]
    assert (noqty.quantity, noqty.rated_amount, noqty.agree) == (None, None, None)
    assert noqty.note == "Stripe's line carries no quantity"


def test_fractional_quantity_is_rated_exactly(invoiced: Metersync) -> None:
    """A decimal quantity survives the round trip through the database and is rated as is."""
    half = {"id": "il_half", "quantity": Decimal("1000.5"), "amount": 1, "currency": "usd"}
    lines = [{**LINES[0], **half}]
    mirror_invoice(invoiced, period=PERIOD, lines=lines, invoice_id="in_3")
    (api,) = explain_invoice(invoiced.engine, "in_3").ratings
    assert api.quantity == Decimal("1000.5")
    assert api.rated_amount == adapter.rate(API, Decimal("1000.5")) == 1  # 0.5 x 2 cents
    assert api.agree is True


def test_to_dict_carries_the_ratings_as_json(invoiced: Metersync) -> None:
    """Explanation.to_dict round-trips through JSON and holds every rating, decimals as
    strings and amounts as integers."""
    data = json.loads(json.dumps(explain_invoice(invoiced.engine, "in_1").to_dict()))
    ratings = {r["line_id"]: r for r in data["ratings"]}
    assert list(ratings) == [x["id"] for x in LINES if x["price_id"]]
    api, base, ghost = ratings["il_1_api"], ratings["il_2_base"], ratings["il_3_ghost"]
    assert (api["quantity"], api["stripe_amount"], api["rated_amount"], api["agree"]) == (
        "15000", 25500, 25500, True,
    )  # fmt: skip
    assert api["bands"] == rating(API, 15000).to_dict()["bands"]
    assert (base["rated_amount"], base["agree"]) == (9800, False)
    assert base["note"].startswith("Stripe billed 9801")
    assert (ghost["rated_amount"], ghost["agree"], ghost["bands"]) == (None, None, [])
    assert ratings["il_6_noqty"]["quantity"] is None
