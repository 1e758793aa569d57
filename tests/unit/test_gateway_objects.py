"""Reading Stripe objects through the gateway, against Stripe's HTTP API played by
``responses``: pages, cursors, whole nested lists, 404s, retries and pacing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import responses
import tenacity
from responses import matchers

from adapter.gateway import Gateway, Page, PermanentError, TransientError, read_pace
from adapter.gateway.objects import Pace
from config.settings import Settings
from tests.gateways import Sleeps, make_gateway

KEY = "sk_test_51FakeKeyForMetersyncObjects000000000"
API = "https://api.stripe.test"


@pytest.fixture
def gateway(sleeps: Sleeps) -> Gateway:
    return make_gateway(KEY, api=API, attempts=3, wait=tenacity.wait_fixed(0.25), sleep=sleeps)


def listing(*objects: dict[str, Any], has_more: bool = False, url: str = "/v1/x") -> dict[str, Any]:
    return {"object": "list", "url": url, "has_more": has_more, "data": list(objects)}


def query(**params: str) -> list[Any]:
    return [matchers.query_param_matcher(params)]


def customer(n: int) -> dict[str, Any]:
    return {"id": f"cus_{n}", "object": "customer", "created": 1_760_000_000 + n, "metadata": {}}


def line(n: int) -> dict[str, Any]:
    return {"id": f"il_{n}", "object": "line_item", "amount": n, "quantity": n}


def error(
    message: str, *, code: str | None = None, type_: str = "invalid_request_error"
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type_, "message": message}
    if code:
        body["code"] = code
    return {"error": body}


# --- list_page ---------------------------------------------------------------------------


def test_first_page_asks_for_100_and_returns_plain_dicts(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A first page asks for 100 objects with no cursor and hands back Stripe's JSON."""
    http.get(
        f"{API}/v1/customers",
        match=query(limit="100"),
        json=listing(customer(3), customer(2), has_more=True),
    )

    page = gateway.list_page("customers", starting_after=None)

    assert page == Page([customer(3), customer(2)], has_more=True, last_id="cus_2")
    assert type(page.objects[0]) is dict


def test_next_page_passes_starting_after(http: responses.RequestsMock, gateway: Gateway) -> None:
    """The cursor goes out as ``starting_after``; the last page says there is no more."""
    http.get(
        f"{API}/v1/customers",
        match=query(limit="100", starting_after="cus_2"),
        json=listing(customer(1)),
    )

    page = gateway.list_page("customers", starting_after="cus_2")

    assert (page.has_more, page.last_id, [o["id"] for o in page.objects]) == (
        False,
        "cus_1",
        ["cus_1"],
    )


def test_empty_page_has_no_cursor(http: responses.RequestsMock, gateway: Gateway) -> None:
    """An empty list gives no cursor to continue from."""
    http.get(f"{API}/v1/billing/meters", json=listing())

    assert gateway.list_page("billing.meters", starting_after=None) == Page([], False, None)


def test_subscriptions_include_canceled_ones(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Subscriptions are listed with ``status=all``, or Stripe leaves canceled ones out."""
    sub = {"id": "sub_1", "object": "subscription", "status": "canceled", "items": listing()}
    http.get(f"{API}/v1/subscriptions", match=query(status="all", limit="10"), json=listing(sub))

    page = gateway.list_page("subscriptions", starting_after=None, limit=10)

    assert page.objects == [sub]


def test_extra_params_reach_stripe(http: responses.RequestsMock, gateway: Gateway) -> None:
    """Caller params (such as an event type filter) are sent with the page request."""
    event = {"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1}
    http.get(
        f"{API}/v1/events",
        match=query(limit="100", delivery_success="false"),
        json=listing(event),
    )

    page = gateway.list_page("events", starting_after=None, params={"delivery_success": "false"})

    assert page.objects == [event]


def test_decimal_strings_come_back_exactly(http: responses.RequestsMock, gateway: Gateway) -> None:
    """A price's decimal string is Stripe's text, not a Decimal re-rendered (``1E-7``)."""
    price = {"id": "price_1", "object": "price", "unit_amount_decimal": "0.0000001"}
    http.get(f"{API}/v1/prices", json=listing(price))

    (got,) = gateway.list_page("prices", starting_after=None).objects

    assert got["unit_amount_decimal"] == "0.0000001"


def test_prices_are_listed_with_their_tiers_expanded(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A price list asks for ``data.tiers`` (Stripe sends tiers only when expanded), in
    stripe-python's indexed spelling of ``expand[]``; nothing else is added."""
    tiers = [{"up_to": 10, "unit_amount": 5}, {"up_to": None, "unit_amount": 1}]
    price = {"id": "price_t", "object": "price", "billing_scheme": "tiered", "tiers": tiers}
    http.get(
        f"{API}/v1/prices",
        match=query(limit="100", starting_after="price_u", **{"expand[0]": "data.tiers"}),
        json=listing(price),
    )

    page = gateway.list_page("prices", starting_after="price_u")

    assert page.objects == [price]


def test_other_lists_ask_for_no_expansion(http: responses.RequestsMock, gateway: Gateway) -> None:
    """Only prices expand: a meter list carries just its page size."""
    http.get(f"{API}/v1/billing/meters", match=query(limit="100"), json=listing())

    assert gateway.list_page("billing.meters", starting_after=None).objects == []


def test_unknown_resource_is_refused(gateway: Gateway) -> None:
    """A list the gateway does not know is a programming error naming the known ones."""
    with pytest.raises(ValueError, match="known lists: customers"):
        gateway.list_page("charges", starting_after=None)


def test_an_answer_that_is_not_a_list_names_the_base_address(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A proxy answering something other than a Stripe list is a PermanentError to fix."""
    http.get(f"{API}/v1/customers", json={"hello": "world"})

    with pytest.raises(PermanentError, match="METERSYNC_STRIPE_API_BASE"):
        gateway.list_page("customers", starting_after=None)


# --- nested lists read whole ---------------------------------------------------------------


def test_invoice_lines_are_read_to_the_end(http: responses.RequestsMock, gateway: Gateway) -> None:
    """An invoice whose ``lines`` has more is completed from the invoice lines endpoint."""
    invoice = {
        "id": "in_1",
        "object": "invoice",
        "lines": listing(line(1), line(2), has_more=True, url="/v1/invoices/in_1/lines"),
    }
    http.get(f"{API}/v1/invoices", json=listing(invoice))
    lines = f"{API}/v1/invoices/in_1/lines"
    http.get(
        lines, match=query(limit="100", starting_after="il_2"), json=listing(line(3), has_more=True)
    )
    http.get(lines, match=query(limit="100", starting_after="il_3"), json=listing(line(4)))

    (got,) = gateway.list_page("invoices", starting_after=None).objects

    assert [item["id"] for item in got["lines"]["data"]] == ["il_1", "il_2", "il_3", "il_4"]
    assert got["lines"]["has_more"] is False
    assert got["lines"]["url"] == "/v1/invoices/in_1/lines"


def test_subscription_items_are_read_to_the_end(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A subscription with more than the embedded items gets the rest by subscription."""
    item = {"id": "si_1", "object": "subscription_item"}
    sub = {"id": "sub_1", "object": "subscription", "items": listing(item, has_more=True)}
    http.get(f"{API}/v1/subscriptions", json=listing(sub))
    http.get(
        f"{API}/v1/subscription_items",
        match=query(subscription="sub_1", limit="100", starting_after="si_1"),
        json=listing({"id": "si_2", "object": "subscription_item"}),
    )

    (got,) = gateway.list_page("subscriptions", starting_after=None).objects

    assert [i["id"] for i in got["items"]["data"]] == ["si_1", "si_2"]


# --- retrieve ------------------------------------------------------------------------------


def test_retrieve_returns_the_object(http: responses.RequestsMock, gateway: Gateway) -> None:
    """An object that exists comes back as Stripe's JSON."""
    meter = {"id": "mtr_1", "object": "billing.meter", "status": "active"}
    http.get(f"{API}/v1/billing/meters/mtr_1", json=meter)

    assert gateway.retrieve("billing.meter", "mtr_1") == meter


def test_retrieve_price_expands_its_tiers(http: responses.RequestsMock, gateway: Gateway) -> None:
    """A price is read with ``expand[]=tiers``, so a refetch brings the tiers rating needs."""
    price = {"id": "price_t", "object": "price", "tiers": [{"up_to": None, "unit_amount": 3}]}
    http.get(f"{API}/v1/prices/price_t", match=query(**{"expand[0]": "tiers"}), json=price)

    assert gateway.retrieve("price", "price_t") == price


def test_retrieve_other_objects_asks_for_no_expansion(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A customer is read with no query parameters at all."""
    http.get(f"{API}/v1/customers/cus_1", match=query(), json=customer(1))

    assert gateway.retrieve("customer", "cus_1") == customer(1)


def test_retrieve_completes_invoice_lines(http: responses.RequestsMock, gateway: Gateway) -> None:
    """A refetched invoice has all its lines, like a listed one."""
    invoice = {"id": "in_9", "object": "invoice", "lines": listing(line(1), has_more=True)}
    http.get(f"{API}/v1/invoices/in_9", json=invoice)
    http.get(f"{API}/v1/invoices/in_9/lines", json=listing(line(2)))

    got = gateway.retrieve("invoice", "in_9")

    assert got is not None
    assert [item["id"] for item in got["lines"]["data"]] == ["il_1", "il_2"]


def test_missing_object_is_none(http: responses.RequestsMock, gateway: Gateway) -> None:
    """Stripe's 404 ``resource_missing`` means the object does not exist: None, no retry."""
    http.get(
        f"{API}/v1/subscriptions/sub_gone",
        status=404,
        json=error("No such subscription: 'sub_gone'", code="resource_missing"),
    )

    assert gateway.retrieve("subscription", "sub_gone") is None
    assert len(http.calls) == 1


def test_deleted_customer_comes_back_marked_deleted(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Stripe answers a deleted customer with a stub saying so; it is not None."""
    http.get(
        f"{API}/v1/customers/cus_1", json={"id": "cus_1", "object": "customer", "deleted": True}
    )

    assert gateway.retrieve("customer", "cus_1") == {
        "id": "cus_1",
        "object": "customer",
        "deleted": True,
    }


def test_a_bare_404_is_an_error_not_a_missing_object(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A 404 without Stripe's code (a wrong base address) must not read as "deleted"."""
    http.get(f"{API}/v1/prices/price_1", status=404, json=error("Unrecognized request URL"))

    with pytest.raises(PermanentError) as caught:
        gateway.retrieve("price", "price_1")

    assert caught.value.status == 404


def test_object_ids_are_quoted_into_the_path(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """An id cannot reach another endpoint: it is percent-encoded as one path segment."""
    http.get(f"{API}/v1/customers/cus_1%2F..%2Fx", json={"id": "cus_1/../x", "object": "customer"})

    assert gateway.retrieve("customer", "cus_1/../x") == {"id": "cus_1/../x", "object": "customer"}


def test_unknown_object_type_is_refused(gateway: Gateway) -> None:
    """An object type the mirror never asks for is a programming error."""
    with pytest.raises(ValueError, match="known types: customer"):
        gateway.retrieve("charge", "ch_1")


# --- errors and retries --------------------------------------------------------------------


def test_server_error_is_retried(
    http: responses.RequestsMock, gateway: Gateway, sleeps: Sleeps
) -> None:
    """A 500 on a page is retried after a wait, and the page then arrives."""
    http.get(f"{API}/v1/customers", status=500, json=error("oops", type_="api_error"))
    http.get(f"{API}/v1/customers", json=listing(customer(1)))

    page = gateway.list_page("customers", starting_after=None)

    assert page.last_id == "cus_1"
    assert sleeps == [0.25]


def test_server_errors_exhaust_into_transient_error(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Three 503s become a TransientError carrying the status and request id."""
    for _ in range(3):
        http.get(
            f"{API}/v1/invoices",
            status=503,
            json=error("down", type_="api_error"),
            headers={"Request-Id": "req_503"},
        )

    with pytest.raises(TransientError) as caught:
        gateway.list_page("invoices", starting_after=None)

    assert (caught.value.status, caught.value.request_id) == (503, "req_503")


def test_bad_key_is_permanent_and_masked(http: responses.RequestsMock, gateway: Gateway) -> None:
    """A 401 is not retried; the error keeps the request id and never shows the key."""
    http.get(
        f"{API}/v1/customers",
        status=401,
        json=error(f"Invalid API Key provided: {KEY}"),
        headers={"Request-Id": "req_401"},
    )

    with pytest.raises(PermanentError) as caught:
        gateway.list_page("customers", starting_after=None)

    assert len(http.calls) == 1
    assert caught.value.request_id == "req_401"
    assert "req_401" in str(caught.value)
    assert KEY not in str(caught.value)
    assert "sk_test_…" in str(caught.value)


# --- pacing --------------------------------------------------------------------------------


def test_paced_gateway_calls_throttle_before_every_request(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """Every HTTP request of a paced gateway, retries and line pages included, is paced."""
    calls: list[str] = []
    invoice = {"id": "in_1", "object": "invoice", "lines": listing(line(1), has_more=True)}
    http.get(f"{API}/v1/invoices", status=500, json=error("oops", type_="api_error"))
    http.get(f"{API}/v1/invoices", json=listing(invoice))
    http.get(f"{API}/v1/invoices/in_1/lines", json=listing(line(2)))

    gateway.paced(lambda: calls.append("pace")).list_page("invoices", starting_after=None)

    assert calls == ["pace"] * 3


def test_pace_is_added_after_an_existing_throttle(
    http: responses.RequestsMock, gateway: Gateway
) -> None:
    """A gateway that already has a throttle keeps it; the new pace runs after it; the
    original gateway is left unpaced."""
    calls: list[str] = []
    throttled = gateway.throttled(lambda: calls.append("shared"))
    http.get(f"{API}/v1/prices", json=listing())
    http.get(f"{API}/v1/prices", json=listing())

    throttled.paced(lambda: calls.append("local")).list_page("prices", starting_after=None)
    gateway.list_page("prices", starting_after=None)

    assert calls == ["shared", "local"]


def test_pace_spaces_calls_at_the_rate() -> None:
    """Calls closer than 1/rate wait out the rest of the interval; later ones do not."""
    now = [100.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))
        now[0] += seconds

    pace = Pace(20, clock=lambda: now[0], sleep=sleep)
    pace()
    pace()
    now[0] += 0.01
    pace()
    now[0] += 1.0
    pace()

    assert waits == [0.05, 0.04]


def test_pace_shared_by_threads_gives_each_call_its_own_slot() -> None:
    """Threads calling one pace at once (reconcile's reads in flight) are spread over
    successive slots, 1/rate apart: the rate holds for them together."""
    slots: list[float] = []
    lock = threading.Lock()
    start = 50.0

    def sleep(seconds: float) -> None:
        with lock:
            slots.append(round(start + seconds, 6))

    pace = Pace(10, clock=lambda: start, sleep=sleep)
    threads = [threading.Thread(target=pace) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # One call goes at once (no sleep); the other 39 wait for distinct slots.
    assert sorted(slots) == [round(start + n / 10, 6) for n in range(1, 40)]


def test_read_pace_leaves_headroom_under_the_read_limit() -> None:
    """Test mode paces at 80 % of 25/s; live mode at 80 % of the 100/s read limit."""
    assert read_pace(Settings(_env_file=None)).interval == pytest.approx(1 / 20)
    live = Settings(_env_file=None, stripe_mode="live")
    assert read_pace(live).interval == pytest.approx(1 / 80)
    low = Settings(_env_file=None, stripe_rate_limit=5)
    assert read_pace(low).interval == pytest.approx(1 / 4)
