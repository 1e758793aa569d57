"""Stripe credit grants through the gateway, against Stripe's HTTP API played by
``responses``: the exact form it posts, the idempotency key, voiding, and how errors end."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
import tenacity

from adapter.gateway import Gateway, PermanentError, TransientError
from tests.gateways import Sleeps, make_gateway

KEY = "sk_test_51FakeKeyForMetersyncGrants00000000"
API = "https://api.stripe.test"
URL = f"{API}/v1/billing/credit_grants"
EXPIRES = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.fixture
def gateway(sleeps: Sleeps) -> Gateway:
    return make_gateway(KEY, api=API, attempts=3, wait=tenacity.wait_fixed(0.5), sleep=sleeps)


def grant(**fields: object) -> dict[str, Any]:
    """A credit grant as Stripe answers it."""
    return {
        "id": "credgr_test_1",
        "object": "billing.credit_grant",
        "amount": {"type": "monetary", "monetary": {"currency": "usd", "value": 5000}},
        "applicability_config": {"scope": {"price_type": "metered"}},
        "category": "paid",
        "customer": "cus_1",
        "voided_at": None,
        **fields,
    }


def create(gateway: Gateway, **fields: object) -> dict[str, Any]:
    """Create a 50.00 USD grant for cus_1; ``fields`` replace the defaults."""
    given: dict[str, Any] = {
        "customer": "cus_1",
        "amount": 5000,
        "currency": "USD",
        "category": "paid",
        "priority": 40,
        "effective_at": None,
        "expires_at": EXPIRES,
        "name": "prepaid pack",
        "prices": None,
        "metadata": {"metersync_grant_id": "7", "metersync_installation": "ns1"},
        "idempotency_key": "metersync-credit-grant:ns1:7",
        **fields,
    }
    return gateway.create_credit_grant(**given)


def form(http: responses.RequestsMock, index: int = 0) -> dict[str, list[str]]:
    """The decoded form body of one request."""
    return parse_qs(str(http.calls[index].request.body or ""))


def error(message: str, *, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"type": type_, "message": message}}


def test_a_grant_for_every_metered_price_posts_exactly_stripes_fields(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """All-metered scope: price_type=metered; amount, category, priority, expiry (unix
    seconds), name and metadata as Stripe names them; no effective_at when not given."""
    http.post(URL, json=grant())

    got = create(gateway)

    assert got["id"] == "credgr_test_1"
    assert form(http) == {
        "customer": ["cus_1"],
        "amount[type]": ["monetary"],
        "amount[monetary][value]": ["5000"],
        "amount[monetary][currency]": ["usd"],
        "applicability_config[scope][price_type]": ["metered"],
        "category": ["paid"],
        "priority": ["40"],
        "expires_at": [str(int(EXPIRES.timestamp()))],
        "name": ["prepaid pack"],
        "metadata[metersync_grant_id]": ["7"],
        "metadata[metersync_installation]": ["ns1"],
    }


def test_a_grant_scoped_to_prices_lists_each_price_id(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Price scope: applicability_config[scope][prices][i][id] per price, no price_type;
    effective_at sent when given, expires_at left out when not."""
    http.post(URL, json=grant())
    start = datetime(2026, 12, 1, tzinfo=UTC)

    create(gateway, prices=["price_a", "price_b"], effective_at=start, expires_at=None)

    body = form(http)
    assert body["applicability_config[scope][prices][0][id]"] == ["price_a"]
    assert body["applicability_config[scope][prices][1][id]"] == ["price_b"]
    assert "applicability_config[scope][price_type]" not in body
    assert body["effective_at"] == [str(int(start.timestamp()))]
    assert "expires_at" not in body


def test_the_callers_idempotency_key_is_sent_on_every_attempt(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """A 500 is retried with the same Idempotency-Key, so Stripe replays, never doubles."""
    http.post(URL, status=500, json=error("oops", type_="api_error"))
    http.post(URL, json=grant())

    create(gateway)

    keys = [c.request.headers["Idempotency-Key"] for c in http.calls]
    assert keys == ["metersync-credit-grant:ns1:7"] * 2
    assert sleeps == [0.5]


def test_void_posts_to_the_grants_void_path_with_its_key(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Void is POST /v1/billing/credit_grants/{id}/void with no form fields; Stripe's
    answer (with voided_at) comes back."""
    http.post(f"{URL}/credgr_test_1/void", json=grant(voided_at=1767225600))

    got = gateway.void_credit_grant("credgr_test_1", idempotency_key="void-key-1")

    assert got["voided_at"] == 1767225600
    assert http.calls[0].request.headers["Idempotency-Key"] == "void-key-1"
    assert form(http) == {}


def test_a_refusal_is_permanent_with_stripes_message(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A 400 ends at once as PermanentError quoting Stripe's message."""
    http.post(URL, status=400, json=error("No such price: 'price_x'"))

    with pytest.raises(PermanentError) as caught:
        create(gateway, prices=["price_x"])

    assert (caught.value.status, caught.value.stripe_message) == (400, "No such price: 'price_x'")
    assert len(http.calls) == 1


def test_stripe_trouble_past_the_retries_is_transient(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Three 503s end as TransientError after three attempts (retry later)."""
    for _ in range(3):
        http.post(f"{URL}/credgr_test_1/void", status=503, json=error("down", type_="api_error"))

    with pytest.raises(TransientError) as caught:
        gateway.void_credit_grant("credgr_test_1", idempotency_key="k")

    assert (caught.value.status, len(http.calls)) == (503, 3)


def test_an_answer_that_is_not_a_credit_grant_is_refused(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A base address that does not answer like Stripe is a PermanentError naming it."""
    http.post(URL, json={"object": "list", "data": []})

    with pytest.raises(PermanentError, match="METERSYNC_STRIPE_API_BASE"):
        create(gateway)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"amount": 0}, "positive whole number"), ({"prices": []}, "1 to 20")],
)
def test_bad_grants_are_refused_before_any_call(
    http: responses.RequestsMock, gateway: Gateway, fields: dict[str, Any], message: str
) -> None:
    """A zero amount or an empty price list raises ValueError and sends nothing."""
    with pytest.raises(ValueError, match=message):
        create(gateway, **fields)

    assert len(http.calls) == 0
