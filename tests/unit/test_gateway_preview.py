"""Stripe's invoice preview through the gateway, against Stripe's HTTP API played by
``responses``: the form it posts, the JSON it hands back, retries, and how errors end."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
import tenacity
from responses import matchers

from adapter.gateway import Gateway, PermanentError, TransientError
from tests.gateways import Sleeps, make_gateway

KEY = "sk_test_51FakeKeyForMetersyncPreview00000000"
API = "https://api.stripe.test"
URL = f"{API}/v1/invoices/create_preview"
FORM = {"customer": "cus_1", "subscription": "sub_1"}


@pytest.fixture
def gateway(sleeps: Sleeps) -> Gateway:
    return make_gateway(KEY, api=API, attempts=3, wait=tenacity.wait_fixed(0.25), sleep=sleeps)


def preview(*, has_more: bool = False) -> dict[str, Any]:
    """A preview invoice as Stripe answers it (id prefixed ``upcoming_in``)."""
    line = {
        "id": "il_tmp_1",
        "object": "line_item",
        "amount": 1234,
        "quantity": 1000,
        "pricing": {"price_details": {"price": "price_t"}, "unit_amount_decimal": "1.234"},
    }
    return {
        "id": "upcoming_in_1",
        "object": "invoice",
        "customer": "cus_1",
        "currency": "usd",
        "total": 1234,
        "lines": {"object": "list", "data": [line], "has_more": has_more, "url": "/v1/x"},
    }


def error(message: str, *, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"type": type_, "message": message}}


def posted(http: responses.RequestsMock) -> list[tuple[str | None, dict[str, list[str]]]]:
    """The method and decoded form body of every request made."""
    return [(c.request.method, parse_qs(str(c.request.body or ""))) for c in http.calls]


def test_preview_posts_customer_and_subscription_and_returns_stripes_json(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """One form-encoded POST with exactly ``customer`` and ``subscription``; the answer
    comes back as Stripe's JSON, decimal strings untouched."""
    http.post(URL, match=[matchers.urlencoded_params_matcher(FORM)], json=preview())

    got = gateway.preview_invoice(customer="cus_1", subscription="sub_1")

    assert got == preview()
    assert got["lines"]["data"][0]["pricing"]["unit_amount_decimal"] == "1.234"
    assert posted(http) == [("POST", {"customer": ["cus_1"], "subscription": ["sub_1"]})]


def test_a_server_error_is_retried(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """A 500 is retried after the policy's wait, and the preview then arrives."""
    http.post(URL, status=500, json=error("oops", type_="api_error"))
    http.post(URL, json=preview())

    got = gateway.preview_invoice(customer="cus_1", subscription="sub_1")

    assert (got["id"], sleeps, len(http.calls)) == ("upcoming_in_1", [0.25], 2)


def test_rate_limits_exhaust_into_transient_error(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Three 429s become a TransientError carrying the status and request id."""
    for _ in range(3):
        http.post(
            URL,
            status=429,
            json=error("Too many requests", type_="rate_limit_error"),
            headers={"Request-Id": "req_429"},
        )

    with pytest.raises(TransientError) as caught:
        gateway.preview_invoice(customer="cus_1", subscription="sub_1")

    assert (caught.value.status, caught.value.request_id, len(http.calls)) == (429, "req_429", 3)
    assert "retry it later" in str(caught.value)


def test_a_refusal_is_permanent_and_not_retried(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Stripe's 400 (no such subscription) is one call and a PermanentError quoting it."""
    http.post(
        URL,
        status=400,
        json=error("No such subscription: 'sub_1'"),
        headers={"Request-Id": "req_400"},
    )

    with pytest.raises(PermanentError) as caught:
        gateway.preview_invoice(customer="cus_1", subscription="sub_1")

    assert len(http.calls) == 1
    assert (caught.value.status, caught.value.request_id) == (400, "req_400")
    assert "No such subscription: 'sub_1'" in str(caught.value)


def test_a_bad_key_never_reaches_the_message(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A 401 quoting the key is a PermanentError with the key masked."""
    http.post(URL, status=401, json=error(f"Invalid API Key provided: {KEY}"))

    with pytest.raises(PermanentError) as caught:
        gateway.preview_invoice(customer="cus_1", subscription="sub_1")

    assert KEY not in str(caught.value)
    assert "sk_test_…" in str(caught.value)


def test_more_lines_than_one_page_is_refused(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A preview whose ``lines`` has more cannot be read whole: PermanentError naming the
    subscription and the Dashboard, after one call."""
    http.post(URL, json=preview(has_more=True))

    with pytest.raises(PermanentError, match="sub_1 has more lines than the 1 it sent") as caught:
        gateway.preview_invoice(customer="cus_1", subscription="sub_1")

    assert "Stripe Dashboard" in str(caught.value)
    assert len(http.calls) == 1


def test_an_answer_that_is_not_an_invoice_names_the_base_address(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A proxy answering something other than an invoice is a PermanentError to fix."""
    http.post(URL, json={"object": "list", "data": []})

    with pytest.raises(PermanentError, match="METERSYNC_STRIPE_API_BASE"):
        gateway.preview_invoice(customer="cus_1", subscription="sub_1")


def test_a_paced_gateway_paces_the_preview(http: responses.RequestsMock, gateway: Gateway) -> None:
    """The preview goes through the throttle like every other call, retries included."""
    calls: list[str] = []
    http.post(URL, status=503, json=error("down", type_="api_error"))
    http.post(URL, json=preview())

    gateway.throttled(lambda: calls.append("pace")).preview_invoice(
        customer="cus_1", subscription="sub_1"
    )

    assert calls == ["pace", "pace"]
