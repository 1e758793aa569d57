"""Cost so far in get_usage and the hybrid invoice preview, on mirrored Stripe prices."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import responses

from adapter.client import Metersync
from adapter.errors import ConfigurationError, InvalidUsage
from tests import stripe_events as se
from tests.billing_world import API, BASE, NOW, PERIOD, mirror, stripe_preview
from tests.gateways import make_gateway
from tests.integration.test_http_api import AUTH, make_client
from tests.mirror_helpers import clear_mirror, link_meter


@pytest.fixture
def billed(ms: Metersync) -> Iterator[Metersync]:
    """acct_1 on a base fee of 2 x 49.00 USD and graduated API calls, with 15,000 calls."""
    clear_mirror(ms.engine)
    link_meter(ms, "api_calls", "mtr_api")
    mirror(ms, BASE, API)
    ms.increment("acct_1", 15000, meter="api_calls", timestamp=NOW - timedelta(hours=1))
    yield ms
    clear_mirror(ms.engine)


def test_get_usage_carries_the_cost_so_far(billed: Metersync) -> None:
    """get_usage rates each meter by the current subscription's price: 9,000 x 2 + 5,000 x 1.5."""
    u = billed.get_usage("acct_1")
    api = u.meters["api_calls"]
    assert (api.amount, api.currency, api.price) == (25500, "usd", "price_api")
    assert u.to_dict()["meters"]["api_calls"]["amount"] == 25500
    assert u.meters["peak"].amount is None  # no price bills it


def test_preview_has_base_fee_and_metered_lines(billed: Metersync) -> None:
    """The preview: 2 x 4,900 base fee, 25,500 metered with 1,000 included, subtotal 35,300."""
    p = billed.preview_invoice("acct_1")
    assert (p.subscription, p.currency, p.period_source) == ("sub_1", "usd", "subscription")
    base, api = p.lines
    assert (base.kind, base.quantity, base.amount) == ("base_fee", Decimal(2), 9800)
    assert (api.kind, api.meter, api.quantity, api.amount) == ("metered", "api_calls", 15000, 25500)
    assert (api.included, api.overage, api.overage_amount) == (1000, 14000, 25500)
    assert (p.subtotal, p.total, p.complete) == (35300, 35300, True)
    data = json.loads(json.dumps(p.to_dict()))
    assert [t["amount"] for t in data["lines"][1]["tiers"]] == ["0", "18000", "7500.0"]
    assert datetime.fromtimestamp(PERIOD[0], UTC) == p.period_start


def test_an_allowance_set_in_metersync_splits_overage(billed: Metersync) -> None:
    """An allowance of 5,000 makes the first 8,000 cents included and says Stripe bills them."""
    billed.allowances.set("price_api", 5000, actor="test")
    api = billed.preview_invoice("acct_1").lines[1]
    assert (api.included, api.overage, api.amount) == (5000, 10000, 25500)
    assert api.overage_amount == 25500 - 8000  # units 1,001-5,000 at 2 cents are included
    assert api.note is not None
    assert "Stripe bills the rest" in api.note
    assert billed.allowances.remove("price_api", actor="test") is True
    assert billed.preview_invoice("acct_1").lines[1].included == 1000


def test_bad_allowance_changes_nothing(billed: Metersync) -> None:
    """A negative allowance is refused and nothing is stored."""
    with pytest.raises(InvalidUsage, match="negative"):
        billed.allowances.set("price_api", -1)
    assert billed.allowances.all() == {}


def test_price_without_tiers_is_not_rated_and_says_why(ms: Metersync) -> None:
    """A tiered price mirrored without tiers leaves amount None with a RatingError message."""
    clear_mirror(ms.engine)
    link_meter(ms, "api_calls", "mtr_api")
    bare = {k: v for k, v in API.items() if k != "tiers"}
    item = se.item("si_api", price_obj=bare, period=PERIOD)
    mirror(ms, bare, items=[item])
    ms.increment("acct_1", 5, meter="api_calls", timestamp=NOW - timedelta(hours=1))
    api = ms.get_usage("acct_1").meters["api_calls"]
    assert api.amount is None
    assert api.rating_error is not None
    assert "tiers" in api.rating_error
    assert "metersync sync" in api.rating_error
    line = ms.preview_invoice("acct_1").lines[0]
    assert line.amount is None
    assert line.note == api.rating_error
    assert ms.preview_invoice("acct_1").complete is False


def test_free_account_is_billed_nothing(billed: Metersync) -> None:
    """A free account's usage is never sent, so its metered line rates 0 units."""
    billed.accounts.upsert("acct_1", free=True)
    p = billed.preview_invoice("acct_1")
    assert (p.lines[1].quantity, p.lines[1].amount) == (0, 0)
    assert any("free account" in n for n in p.notes)


def test_no_subscription_is_a_clear_error(ms: Metersync) -> None:
    """An unlinked account or one without a live subscription gets an error saying what to do."""
    clear_mirror(ms.engine)
    ms.accounts.upsert("acct_2")
    with pytest.raises(InvalidUsage, match="not linked to a Stripe customer"):
        ms.preview_invoice("acct_2")
    with pytest.raises(InvalidUsage, match="metersync sync"):
        ms.preview_invoice("acct_1")


def test_compare_needs_a_stripe_key(billed: Metersync) -> None:
    """Without a key, comparing with Stripe is refused with what to set."""
    billed.use_gateway(None)
    with pytest.raises(ConfigurationError, match="METERSYNC_STRIPE_API_KEY"):
        billed.compare_invoice("acct_1")


@pytest.mark.parametrize(("stripe_amount", "agree"), [(25500, True), (25501, False)])
def test_compare_agrees_to_the_cent(
    billed: Metersync, stripe_api: responses.RequestsMock, stripe_amount: int, agree: bool
) -> None:  # fmt: skip
    """--compare rates Stripe's quantity and flags a one-cent difference."""
    billed.use_gateway(make_gateway(attempts=1))
    stripe_api.post(
        "https://api.stripe.com/v1/invoices/create_preview", json=stripe_preview(stripe_amount)
    )
    result = billed.compare_invoice("acct_1")
    body = stripe_api.calls[-1].request.body
    assert "customer=cus_123" in str(body)
    assert "subscription=sub_1" in str(body)
    assert result.agree is agree
    base, api = result.lines
    assert (base.agree, base.stripe_amount) == (True, 9800)
    assert (api.rated_stripe_quantity, api.stripe_amount, api.agree) == (
        25500,
        stripe_amount,
        agree,
    )
    assert api.quantity_differs is False


def test_compare_rates_stripes_quantity_not_ours(
    billed: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """With usage still pending Stripe holds less: its 12,000 units are rated (21,000) and agree."""
    billed.use_gateway(make_gateway(attempts=1))
    preview = stripe_preview(21000, api_quantity=12000)
    stripe_api.post("https://api.stripe.com/v1/invoices/create_preview", json=preview)
    api = billed.compare_invoice("acct_1").lines[1]
    assert (api.quantity, api.stripe_quantity, api.rated_stripe_quantity) == (15000, 12000, 21000)
    assert api.agree is True
    assert api.quantity_differs is True


# --- over HTTP ---------------------------------------------------------------------------


def test_http_invoice_preview(billed: Metersync) -> None:
    """GET /v1/accounts/{a}/invoice-preview answers the preview's to_dict, behind the token."""
    with make_client(billed) as http:
        assert http.get("/v1/accounts/acct_1/invoice-preview").status_code == 401
        body = http.get("/v1/accounts/acct_1/invoice-preview", headers=AUTH).json()
    assert body == json.loads(json.dumps(billed.preview_invoice("acct_1").to_dict())) | {
        "generated_at": body["generated_at"]
    }
    assert (body["subtotal"], body["total"], body["currency"]) == (35300, 35300, "usd")
    assert [line["amount"] for line in body["lines"]] == [9800, 25500]


def test_http_invoice_preview_errors(billed: Metersync) -> None:
    """Unknown account and a subscription the account lacks are 404s with a JSON error."""
    with make_client(billed) as http:
        missing = http.get("/v1/accounts/nobody/invoice-preview", headers=AUTH)
        no_sub = http.get(
            "/v1/accounts/acct_1/invoice-preview", params={"subscription": "sub_x"}, headers=AUTH
        )
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    assert no_sub.status_code == 404
    assert no_sub.json()["error"]["type"] == "no_subscription"
    assert "sub_x" in no_sub.json()["error"]["message"]
