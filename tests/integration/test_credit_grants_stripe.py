"""Credit grants at Stripe: each local grant sent once as a Stripe credit grant (or marked
``dry_run`` without a key), retried while Stripe cannot take it or the account is unlinked,
scoped to the prices billing its meters, voided at Stripe after a local void, and kept in
step by the ``billing.credit_grant.*`` webhooks. Stripe's HTTP API is played by
``responses``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
import sqlalchemy as sa

from adapter.client import Metersync
from adapter.crediting import stripe_grants
from adapter.store.credit_models import CreditGrant
from adapter.store.models import Installation, table
from tests import stripe_events as se
from tests.billing_world import API, BASE, NOW, mirror
from tests.gateways import make_gateway
from tests.mirror_helpers import clear_mirror, deliver, link_meter
from workers.credit_ticks import CreditTicker

GRANTS_URL = "https://api.stripe.com/v1/billing/credit_grants"
_GRANTS = table(CreditGrant)


@pytest.fixture
def live(ms: Metersync, stripe_api: responses.RequestsMock) -> Iterator[Metersync]:
    """``ms`` with a Stripe gateway (one attempt per call) whose calls ``stripe_api`` plays."""
    ms.use_gateway(make_gateway(attempts=1))
    yield ms
    clear_mirror(ms.engine)


def stripe_grant(
    grant_id: int, *, id: str = "credgr_1", voided_at: int | None = None
) -> dict[str, Any]:
    """A ``billing.credit_grant`` as Stripe sends it, naming local grant ``grant_id``."""
    return {
        "id": id,
        "object": "billing.credit_grant",
        "amount": {"type": "monetary", "monetary": {"currency": "usd", "value": 5000}},
        "applicability_config": {"scope": {"price_type": "metered"}},
        "category": "paid",
        "customer": "cus_123",
        "metadata": {"metersync_grant_id": str(grant_id)},
        "priority": 50,
        "voided_at": voided_at,
    }


def answer(http: responses.RequestsMock, *, id: str = "credgr_1") -> None:
    """Stripe creating the grant the request names (its metadata echoed back)."""

    def create(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        named = parse_qs(str(request.body or ""))["metadata[metersync_grant_id]"][0]
        return 200, {"Request-Id": "req_grant"}, json.dumps(stripe_grant(int(named), id=id))

    http.add_callback(responses.POST, GRANTS_URL, callback=create)


def forms(http: responses.RequestsMock) -> list[dict[str, list[str]]]:
    """The decoded form of every call made to Stripe."""
    return [parse_qs(str(c.request.body or "")) for c in http.calls]


def row(ms: Metersync, grant_id: int) -> sa.Row[Any]:
    """The stored grant."""
    with ms.engine.connect() as conn:
        return conn.execute(sa.select(_GRANTS).where(_GRANTS.c.id == grant_id)).one()


def namespace(ms: Metersync) -> str:
    """This installation's namespace."""
    with ms.engine.connect() as conn:
        return str(conn.execute(sa.select(table(Installation).c.namespace)).scalar_one())


def test_without_a_key_a_grant_is_a_dry_run(
    ms: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """No Stripe key: the grant is marked dry_run at once and nothing is sent."""
    grant = ms.credits.grant("acct_1", 5000, currency="usd")
    assert (grant.stripe_status, grant.stripe_credit_grant_id) == ("dry_run", None)
    assert ms.credits.sync_stripe().pushed == {}
    assert len(stripe_api.calls) == 0


def test_a_grant_is_created_at_stripe_once(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """The grant goes out right after commit with Stripe's fields, our metadata and a key
    of namespace and grant id; pushing again and sweeping send nothing more."""
    answer(stripe_api)
    grant = live.credits.grant("acct_1", 5000, currency="usd", reason="pack", priority=10)

    assert (grant.stripe_status, grant.stripe_credit_grant_id) == ("created", "credgr_1")
    again = stripe_grants.push_grant(live.engine, grant.id, gateway=live.gateway())
    assert again == "created"
    assert live.credits.sync_stripe().pushed == {}
    assert len(stripe_api.calls) == 1
    key = stripe_api.calls[0].request.headers["Idempotency-Key"]
    assert key == f"metersync-credit-grant:{namespace(live)}:{grant.id}"
    sent = forms(stripe_api)[0]
    assert {k: v[0] for k, v in sent.items() if not k.startswith("metadata")} == {
        "customer": "cus_123",
        "amount[type]": "monetary",
        "amount[monetary][value]": "5000",
        "amount[monetary][currency]": "usd",
        "applicability_config[scope][price_type]": "metered",
        "category": "paid",
        "priority": "10",
        "name": "pack",
    }
    assert sent["metadata[metersync_grant_id]"] == [str(grant.id)]
    assert sent["metadata[metersync_installation]"] == [namespace(live)]
    assert sent["metadata[metersync_account]"] == ["acct_1"]


def test_a_refused_grant_is_failed_with_stripes_message(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """A 400 marks the grant failed with Stripe's message; sweeps do not send it again."""
    refusal = {"error": {"type": "invalid_request_error", "message": "Invalid currency: zzz"}}
    stripe_api.post(GRANTS_URL, status=400, json=refusal)

    grant = live.credits.grant("acct_1", 5000, currency="usd")

    assert grant.stripe_status == "failed"
    assert grant.stripe_error is not None
    assert "Invalid currency: zzz" in grant.stripe_error
    live.credits.sync_stripe()
    assert len(stripe_api.calls) == 1


def test_a_grant_stripe_could_not_take_is_sent_by_the_next_tick(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """A 500 leaves the grant pending with the error; the scheduler's credit tick sends it
    again with the same key, and it is created."""
    stripe_api.post(GRANTS_URL, status=500, json={"error": {"type": "api_error", "message": "x"}})
    answer(stripe_api)

    grant = live.credits.grant("acct_1", 5000, currency="usd")
    assert grant.stripe_status == "pending"
    assert "retry it later" in (grant.stripe_error or "")

    CreditTicker(live).run_once()

    stored = row(live, grant.id)
    assert (stored.stripe_status, stored.stripe_credit_grant_id) == ("created", "credgr_1")
    assert stored.stripe_error is None
    keys = {c.request.headers["Idempotency-Key"] for c in stripe_api.calls}
    assert (len(stripe_api.calls), len(keys)) == (2, 1)


def test_an_unlinked_accounts_grant_waits_then_goes_out_once_linked(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """No Stripe customer: the grant stays pending (saying why) and sweeps send nothing;
    once the account is linked the next sweep creates it for that customer."""
    live.accounts.upsert("acct_2")
    grant = live.credits.grant("acct_2", 700, currency="usd")
    assert grant.stripe_status == "pending"
    assert "no Stripe customer yet" in (grant.stripe_error or "")
    assert live.credits.sync_stripe().pushed == {}
    assert len(stripe_api.calls) == 0

    live.accounts.upsert("acct_2", stripe_customer_id="cus_456")
    answer(stripe_api, id="credgr_2")
    swept = live.credits.sync_stripe()

    assert swept.pushed == {"created": 1}
    assert row(live, grant.id).stripe_credit_grant_id == "credgr_2"
    assert forms(stripe_api)[0]["customer"] == ["cus_456"]


def test_a_grant_for_meters_is_scoped_to_the_prices_billing_them(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """api_calls is billed by price_api (meter mtr_api): the grant is scoped to that price;
    a meter no live item bills cannot be said to Stripe and fails with the reason."""
    link_meter(live, "api_calls", "mtr_api")
    mirror(live, BASE, API)
    answer(stripe_api)

    scoped = live.credits.grant("acct_1", 5000, currency="usd", meters=["api_calls"])
    unbilled = live.credits.grant("acct_1", 5000, currency="usd", meters=["peak"])

    assert scoped.stripe_status == "created"
    sent = forms(stripe_api)[0]
    assert sent["applicability_config[scope][prices][0][id]"] == ["price_api"]
    assert "applicability_config[scope][price_type]" not in sent
    assert unbilled.stripe_status == "failed"
    assert "covers meters peak, but no live subscription item" in (unbilled.stripe_error or "")
    assert len(stripe_api.calls) == 1


def test_a_local_void_voids_the_grant_at_stripe(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """Voiding a created grant voids it at Stripe; a 503 first leaves it created (with the
    error) and the next sweep voids it with the same key."""
    answer(stripe_api)
    grant = live.credits.grant("acct_1", 5000, currency="usd")
    void_url = f"{GRANTS_URL}/credgr_1/void"
    stripe_api.post(void_url, status=503, json={"error": {"type": "api_error", "message": "x"}})
    stripe_api.post(void_url, json=stripe_grant(grant.id, voided_at=int(NOW.timestamp())))

    voided = live.credits.void(grant.id)
    assert (voided.status, voided.stripe_status) == ("voided", "created")
    assert live.credits.sync_stripe().voided == 1

    stored = row(live, grant.id)
    assert (stored.stripe_status, stored.meta["stripe_void_status"]) == ("voided", "voided")
    keys = [c.request.headers["Idempotency-Key"] for c in stripe_api.calls[1:]]
    assert keys == [f"metersync-credit-grant-void:{namespace(live)}:{grant.id}"] * 2
    assert live.credits.sync_stripe().voided == 0
    assert len(stripe_api.calls) == 3


def test_a_grant_voided_before_it_reached_stripe_is_never_sent(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """A pending grant (unlinked account) voided locally is skipped at once, and is not
    sent once the account is linked."""
    live.accounts.upsert("acct_2")
    grant = live.credits.grant("acct_2", 700, currency="usd")
    voided = live.credits.void(grant.id)
    live.accounts.upsert("acct_2", stripe_customer_id="cus_456")

    assert (voided.stripe_status, voided.stripe_error) == (
        "skipped",
        "voided before it reached Stripe; nothing was sent",
    )
    assert live.credits.sync_stripe().pushed == {}
    assert len(stripe_api.calls) == 0


def test_webhooks_record_stripes_status_and_never_undo_a_void(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """A created event ties Stripe's grant to a pending one (its answer was lost); an
    updated event with voided_at marks it voided; a late created event is skipped."""
    stripe_api.post(GRANTS_URL, status=500, json={"error": {"type": "api_error", "message": "x"}})
    grant = live.credits.grant("acct_1", 5000, currency="usd")
    at = int(NOW.timestamp())

    created = se.event("billing.credit_grant.created", stripe_grant(grant.id), created=at)
    assert deliver(live, created).status == "processed"
    stored = row(live, grant.id)
    assert (stored.stripe_status, stored.stripe_credit_grant_id) == ("created", "credgr_1")
    assert stored.stripe_error is None

    gone = stripe_grant(grant.id, voided_at=at + 5)
    updated = se.event("billing.credit_grant.updated", gone, created=at + 5)
    assert deliver(live, updated).status == "processed"
    late = se.event("billing.credit_grant.created", stripe_grant(grant.id), created=at - 5)
    assert deliver(live, late).status == "skipped"

    assert row(live, grant.id).stripe_status == "voided"
    assert live.credits.sync_stripe().pushed == {}
    assert len(stripe_api.calls) == 1


def test_a_dashboard_grant_is_acknowledged_but_not_drawn_locally(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """A Stripe grant naming no local grant (or another installation's) is processed and
    writes nothing to the ledger."""
    dashboard = stripe_grant(0, id="credgr_dash")
    dashboard["metadata"] = {}
    other = stripe_grant(1, id="credgr_other")
    other["metadata"]["metersync_installation"] = "someone-else"
    at = int(NOW.timestamp())

    for obj in (dashboard, other):
        event = se.event("billing.credit_grant.created", obj, created=at)
        assert deliver(live, event).status == "processed"

    with live.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(_GRANTS)).scalar() == 0
    assert live.credits.balance("acct_1").amount == 0
