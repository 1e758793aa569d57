"""Mirrored prices keep the ``tiers`` rating needs, on SQLite and PostgreSQL: ``metersync
sync`` expands them (against ``responses`` and against the HTTP stand-in, which both send
tiers only when expanded, as Stripe does), a ``price.*`` webhook without them keeps the
stored ones, and with a Stripe key a tiered price without stored tiers is read again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
import sqlalchemy as sa
from responses import matchers

from adapter import RatingError, rate
from adapter.client import Metersync
from adapter.mirror import process
from adapter.mirror import sync as syncing
from adapter.store.mirror_models import Price
from adapter.store.models import table
from adapter.store.prices import price_object
from tests import stripe_events as se
from tests import stripe_standin
from tests.gateways import KEY, make_gateway
from tests.mirror_helpers import clear_mirror, deliver, utc
from tests.stripe_lists import API, StripeLists

_PRICES = table(Price)
TIERS = [se.tier(1000, unit=0), se.tier(None, unit=3)]


def tiered(price_id: str = "price_t", **fields: object) -> dict[str, Any]:
    """A graduated price with its tiers expanded, as sync reads it."""
    return se.price(price_id, tiers=TIERS) | fields


def webhook_copy(price: dict[str, Any]) -> dict[str, Any]:
    """``price`` as a ``price.*`` webhook carries it: no ``tiers``."""
    return {k: v for k, v in price.items() if k != "tiers"}


def stored(ms: Metersync, price_id: str = "price_t") -> sa.RowMapping:
    """The mirrored ``price`` row."""
    with ms.engine.connect() as conn:
        return conn.execute(sa.select(_PRICES).where(_PRICES.c.id == price_id)).mappings().one()


class Refetches(list[tuple[str, str]]):
    """A refetch that records what it was asked for and answers from ``objects``."""

    def __init__(self, objects: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.objects = objects or {}

    def __call__(self, object_type: str, object_id: str) -> dict[str, Any] | None:
        self.append((object_type, object_id))
        return self.objects.get(object_id)


@pytest.fixture
def clean(ms: Metersync) -> Metersync:
    """``ms`` with an empty mirror."""
    clear_mirror(ms.engine)
    return ms


@pytest.fixture
def standin() -> Iterator[stripe_standin.StandinServer]:
    """The HTTP stand-in, in a thread of this process."""
    server = stripe_standin.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --- sync ------------------------------------------------------------------------------------


def test_sync_stores_the_tiers_stripe_sends_only_when_expanded(
    clean: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """``sync`` of prices asks for ``data.tiers`` and stores them, with the nickname and
    custom unit amount; the fake leaves tiers out of any list that does not ask."""
    lists = StripeLists(stripe_api)
    custom = {"maximum": None, "minimum": 500, "preset": 1000}
    lists.objects["prices"] = [tiered(nickname="API calls", custom_unit_amount=custom)]

    summary = syncing.sync(
        clean, make_gateway(attempts=1), resources=["prices"], pace=lambda: None, mirror=process
    )

    assert summary.resources[0].statuses == {"processed": 1}
    row = stored(clean)
    assert (row["tiers"], row["tiers_mode"]) == (TIERS, "graduated")
    assert (row["nickname"], row["custom_unit_amount"]) == ("API calls", custom)
    assert "tiers" not in requests.get(f"{API}/v1/prices", timeout=5).json()["data"][0]


def test_sync_through_the_http_standin_stores_tiers(
    clean: Metersync, standin: stripe_standin.StandinServer
) -> None:
    """Against the stand-in over real HTTP, ``sync`` and a refetch bring the tiers, which
    the stand-in sends only when expanded."""
    requests.post(f"{standin.url}/_standin/prices", json=[tiered()], timeout=5).raise_for_status()
    gateway = make_gateway(attempts=1, api=standin.url)
    auth = {"Authorization": f"Bearer {KEY}"}

    syncing.sync(clean, gateway, resources=["prices"], pace=lambda: None, mirror=process)

    assert stored(clean)["tiers"] == TIERS
    fresh = gateway.retrieve("price", "price_t")
    assert fresh is not None
    assert fresh["tiers"] == TIERS
    plain = requests.get(f"{standin.url}/v1/prices/price_t", headers=auth, timeout=5).json()
    listed = requests.get(f"{standin.url}/v1/prices", headers=auth, timeout=5).json()
    assert ("tiers" in plain, "tiers" in listed["data"][0]) == (False, False)
    assert gateway.retrieve("price", "price_gone") is None


# --- webhooks --------------------------------------------------------------------------------


def test_webhook_without_tiers_keeps_synced_tiers_and_reads_nothing(clean: Metersync) -> None:
    """With a key configured, a ``price.updated`` without tiers keeps the tiers sync stored
    (Stripe cannot change them) and makes no call to Stripe; other fields move on."""
    process.sync_object(clean, tiered(), read_at=utc(se.T0))
    refetch = Refetches()
    renamed = webhook_copy(tiered(active=False, nickname="Old plan"))

    result = deliver(clean, se.event("price.updated", renamed, created=se.T0 + 1), refetch=refetch)

    assert (result.status, refetch) == ("processed", [])
    row = stored(clean)
    assert (row["tiers"], row["active"], row["nickname"]) == (TIERS, False, "Old plan")


def test_webhook_without_tiers_is_completed_from_stripe_with_a_key(
    clean: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """A tiered ``price.created`` without tiers, nothing stored: the price is read again
    with ``expand[]=tiers`` and Stripe's copy, tiers included, is mirrored."""
    stripe_api.get(
        f"{API}/v1/prices/price_t",
        match=[matchers.query_param_matcher({"expand[0]": "tiers"})],
        json=tiered(),
    )
    event = se.event("price.created", webhook_copy(tiered()), created=se.T0)

    result = deliver(clean, event, refetch=make_gateway(attempts=1).retrieve)

    assert result.status == "processed"
    (call,) = stripe_api.calls
    assert parse_qs(urlsplit(call.request.url).query) == {"expand[0]": ["tiers"]}
    row = stored(clean)
    assert (row["tiers"], row["last_event_id"]) == (TIERS, event["id"])
    assert rate(price_object(row), 1500) == 1500


def test_without_a_key_a_tiered_price_stays_without_tiers(clean: Metersync) -> None:
    """No key, nothing stored: the price is mirrored without tiers, and rating it says to
    run ``metersync sync``."""
    deliver(clean, se.event("price.created", webhook_copy(tiered()), created=se.T0))

    row = stored(clean)
    assert (row["billing_scheme"], row["tiers"]) == ("tiered", None)
    with pytest.raises(RatingError, match="metersync sync"):
        rate(price_object(row), 10)


def test_a_price_mirrored_without_tiers_gets_them_once_a_key_is_configured(
    clean: Metersync,
) -> None:
    """A price first mirrored with no key (no tiers) is read from Stripe on its next
    webhook once a key is configured, and its tiers are stored."""
    deliver(clean, se.event("price.created", webhook_copy(tiered()), created=se.T0))
    refetch = Refetches({"price_t": tiered(active=False)})

    renamed = webhook_copy(tiered(active=False))
    deliver(clean, se.event("price.updated", renamed, created=se.T0 + 1), refetch=refetch)

    assert refetch == [("price", "price_t")]
    row = stored(clean)
    assert (row["tiers"], row["active"]) == (TIERS, False)


@pytest.mark.parametrize(
    ("kind", "price"),
    [
        ("price.updated", webhook_copy(se.price("price_p"))),
        ("price.created", tiered("price_p")),
        ("price.deleted", webhook_copy(tiered("price_p"))),
    ],
    ids=["per-unit", "tiers-in-payload", "deleted"],
)
def test_no_refetch_when_the_payload_needs_none(
    clean: Metersync, kind: str, price: dict[str, Any]
) -> None:
    """A per-unit price, a payload that carries its tiers, and a deletion are mirrored
    as they come, without a call to Stripe."""
    refetch = Refetches()

    result = deliver(clean, se.event(kind, price, created=se.T0), refetch=refetch)

    assert (result.status, refetch) == ("processed", [])
    row = stored(clean, "price_p")
    assert (row["tiers"], row["deleted"]) == (
        price.get("tiers"),
        kind == "price.deleted",
    )


def test_a_price_stripe_no_longer_has_is_mirrored_as_deleted(clean: Metersync) -> None:
    """When the refetch finds nothing, the price is stored as deleted, not left half-read."""
    refetch = Refetches()

    deliver(
        clean, se.event("price.updated", webhook_copy(tiered()), created=se.T0), refetch=refetch
    )

    assert refetch == [("price", "price_t")]
    assert stored(clean)["deleted"] is True


def test_price_object_returns_nickname_and_custom_unit_amount(clean: Metersync) -> None:
    """The Price object rebuilt from the row carries the two new columns."""
    custom = {"maximum": 5000, "minimum": None, "preset": None}
    price = se.price("price_c", unit_amount=None) | {
        "nickname": "Pay what you want",
        "custom_unit_amount": custom,
    }
    deliver(clean, se.event("price.created", price, created=se.T0))

    got = price_object(stored(clean, "price_c"))

    assert (got["nickname"], got["custom_unit_amount"]) == ("Pay what you want", custom)
