"""The prepaid credit ledger: grants drawn down as usage is rated, in Stripe's order."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
import time_machine

from adapter.client import Metersync
from adapter.errors import InvalidUsage, UnknownMeter
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.models import table
from tests import stripe_events as se
from tests.billing_world import API, NOW
from tests.integration.test_http_api import AUTH, make_client
from tests.mirror_helpers import deliver
from workers.credit_ticks import CreditTicker

_GRANTS, _ENTRIES = table(CreditGrant), table(CreditEntry)
HOUR_AGO = NOW - timedelta(hours=1)


def _entries(ms: Metersync) -> list[sa.Row[object]]:
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(_ENTRIES).order_by(_ENTRIES.c.id)).all())


def test_balance_is_drawn_down_by_the_cost_so_far(billed: Metersync) -> None:
    """A 500.00 USD grant less 255.00 USD of usage leaves 245.00; new usage draws at once."""
    grant = billed.credits.grant("acct_1", 50000, currency="usd", reason="prepaid pack")
    assert (grant.remaining, grant.status) == (50000, "active")
    assert billed.credits.balance("acct_1").amount == 24500
    billed.increment("acct_1", 1000, meter="api_calls", timestamp=HOUR_AGO)  # +1,500 cents
    balance = billed.credits.balance("acct_1")
    assert (balance.amount, balance.currency) == (23000, "usd")
    assert [e.amount for e in _entries(billed)] == [-25500, -1500]


def test_drawdown_is_idempotent(billed: Metersync) -> None:
    """Drawing again with no new usage writes nothing."""
    billed.credits.grant("acct_1", 50000, currency="usd")
    first = billed.credits.draw("acct_1")
    again = billed.credits.draw("acct_1")
    assert first.drawn == {"api_calls": 25500}
    assert again.changed is False
    assert len(_entries(billed)) == 1


def test_credit_never_goes_below_zero_and_the_rest_is_overage(billed: Metersync) -> None:
    """A 100.00 USD grant covers 100.00 of 255.00; the preview bills the remaining 155.00."""
    billed.credits.grant("acct_1", 10000, currency="usd")
    assert billed.credits.balance("acct_1").amount == 0
    p = billed.preview_invoice("acct_1")
    api = p.lines[1]
    assert (api.amount, api.credits, api.due) == (25500, 10000, 15500)
    assert (p.subtotal, p.credits, p.total) == (35300, 10000, 25300)
    assert json.loads(json.dumps(p.to_dict()))["lines"][1]["due"] == 15500


def test_priority_then_soonest_expiry_then_oldest(billed: Metersync) -> None:
    """Grants are drawn as Stripe applies them: priority 0 first, then the soonest expiry."""
    late = billed.credits.grant(
        "acct_1", 10000, currency="usd", expires_at=NOW + timedelta(days=90)
    )
    soon = billed.credits.grant("acct_1", 10000, currency="usd", expires_at=NOW + timedelta(days=9))
    first = billed.credits.grant("acct_1", 1000, currency="usd", priority=0)
    billed.credits.draw("acct_1")
    assert [(e.grant_id, e.amount) for e in _entries(billed)] == [
        (first.id, -1000),
        (soon.id, -10000),
        (late.id, -10000),
    ]


def test_scope_and_currency_limit_what_a_grant_covers(billed: Metersync) -> None:
    """A grant for another meter, price or currency covers none of api_calls' usage."""
    billed.credits.grant("acct_1", 5000, currency="usd", meters=["peak"])
    billed.credits.grant("acct_1", 5000, currency="usd", prices=["price_other"])
    billed.credits.grant("acct_1", 5000, currency="eur")
    billed.credits.draw("acct_1")
    assert _entries(billed) == []
    covered = billed.credits.grant("acct_1", 100, currency="usd", prices=["price_api"])
    billed.credits.draw("acct_1")
    assert [(e.grant_id, e.amount) for e in _entries(billed)] == [(covered.id, -100)]


def test_an_expired_grant_stops_covering_usage(billed: Metersync) -> None:
    """At its expiry a grant's rest is written off; later usage is not covered by it."""
    billed.credits.grant("acct_1", 30000, currency="usd", expires_at=NOW + timedelta(hours=2))
    assert billed.credits.balance("acct_1").amount == 4500
    with time_machine.travel(NOW + timedelta(hours=3), tick=False):
        billed.increment("acct_1", 1000, meter="api_calls")
        balance = billed.credits.balance("acct_1")
    assert balance.amount == 0
    assert balance.grants[0].status == "expired"
    assert [(e.kind, e.amount) for e in _entries(billed)] == [
        ("drawdown", -25500),
        ("expiry", -4500),
    ]


def test_void_cancels_the_rest_once(billed: Metersync) -> None:
    """Voiding takes what is left; a voided grant covers nothing more and cannot be voided again."""
    grant = billed.credits.grant("acct_1", 30000, currency="usd")
    billed.credits.draw("acct_1")
    voided = billed.credits.void(grant.id, reason="refunded")
    assert (voided.status, voided.remaining) == ("voided", 0)
    billed.increment("acct_1", 1000, meter="api_calls", timestamp=HOUR_AGO)
    assert billed.credits.balance("acct_1").amount == 0
    assert [(e.kind, e.amount) for e in _entries(billed)] == [("drawdown", -25500), ("void", -4500)]
    with pytest.raises(InvalidUsage, match="already voided"):
        billed.credits.void(grant.id)
    with pytest.raises(InvalidUsage, match="no credit grant 999999"):
        billed.credits.void(999999)


def test_a_cost_that_falls_gives_credit_back(billed: Metersync) -> None:
    """When the price rates the usage lower than before, the difference is released."""
    billed.credits.grant("acct_1", 50000, currency="usd")
    billed.credits.draw("acct_1")
    cheaper = dict(API, tiers=[se.tier(1000, unit=0), se.tier(None, unit=1)])  # 14,000 cents
    created = int(NOW.timestamp())
    deliver(billed, se.event("price.updated", cheaper, created=created))
    result = billed.credits.draw("acct_1")
    assert result.released == {"api_calls": 25500 - 14000}
    assert billed.credits.balance("acct_1").amount == 50000 - 14000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amount": 0, "currency": "usd"}, "positive integer"),
        ({"amount": 10, "currency": "dollars"}, "three-letter"),
        ({"amount": 10, "currency": "usd", "priority": 101}, r"0 \(highest\) to 100"),
        ({"amount": 10, "currency": "usd", "category": "gift"}, "category"),
        ({"amount": 10, "currency": "usd", "meters": ["a"], "prices": ["b"]}, "not both"),
        (
            {"amount": 10, "currency": "usd", "effective_at": NOW, "expires_at": NOW},
            "must be after",
        ),
    ],
)
def test_bad_grants_are_refused_and_store_nothing(
    billed: Metersync, kwargs: dict[str, object], message: str
) -> None:
    """Every malformed grant raises InvalidUsage naming the problem; nothing is stored."""
    kwargs = dict(kwargs)
    amount = kwargs.pop("amount")
    with pytest.raises(InvalidUsage, match=message):
        billed.credits.grant("acct_1", amount, **kwargs)  # type: ignore[arg-type]
    assert billed.credits.history("acct_1").grants == ()


def test_unknown_meter_in_scope_is_refused(billed: Metersync) -> None:
    """A grant naming a meter that does not exist is refused."""
    with pytest.raises(UnknownMeter):
        billed.credits.grant("acct_1", 10, currency="usd", meters=["nope"])


def test_idempotency_key_loads_once(billed: Metersync) -> None:
    """The same idempotency key returns the first grant and loads nothing more."""
    a = billed.credits.grant("acct_1", 1000, currency="usd", idempotency_key="pack-1")
    b = billed.credits.grant("acct_1", 1000, currency="usd", idempotency_key="pack-1")
    assert a.id == b.id
    assert len(billed.credits.history("acct_1").grants) == 1


def test_history_lists_grants_and_entries(billed: Metersync) -> None:
    """history shows each grant and the ledger, newest entry first, as JSON too."""
    grant = billed.credits.grant("acct_1", 30000, currency="usd")
    billed.credits.draw("acct_1")
    billed.credits.void(grant.id)
    found = billed.credits.history("acct_1")
    assert [e.kind for e in found.entries] == ["void", "drawdown"]
    assert found.entries[1].meter == "api_calls"
    data = json.loads(json.dumps(found.to_dict()))
    assert data["grants"][0]["status"] == "voided"


def test_http_credits(billed: Metersync) -> None:
    """POST /v1/accounts/{a}/credits grants (201, audited as the API); GET shows the balance."""
    body = {"amount": 50000, "currency": "usd", "reason": "pack", "idempotency_key": "k1"}
    with make_client(billed) as http:
        assert http.post("/v1/accounts/acct_1/credits", json=body).status_code == 401
        created = http.post("/v1/accounts/acct_1/credits", json=body, headers=AUTH)
        bad = http.post(
            "/v1/accounts/acct_1/credits", json={"amount": -1, "currency": "usd"}, headers=AUTH
        )
        shown = http.get("/v1/accounts/acct_1/credits", headers=AUTH).json()
    assert created.status_code == 201
    assert created.json()["created_by"].startswith("api")
    assert bad.status_code == 422
    assert (shown["amount"], shown["currency"]) == (24500, "usd")


def test_the_scheduler_draws_every_account_once_per_interval(billed: Metersync) -> None:
    """CreditTicker draws accounts with grants when the interval passed, not before."""
    clock = [100.0]
    ticker = CreditTicker(billed, monotonic=lambda: clock[0])
    billed.credits.grant("acct_1", 50000, currency="usd")
    assert ticker.run_once() == 1
    assert [e.amount for e in _entries(billed)] == [-25500]
    billed.increment("acct_1", 1000, meter="api_calls", timestamp=HOUR_AGO)
    clock[0] += billed.settings.credit_interval / 2
    assert ticker.run_once() is None  # not yet: the interval has not passed
    clock[0] += billed.settings.credit_interval
    assert ticker.run_once() == 1
    assert [e.amount for e in _entries(billed)] == [-25500, -1500]
    clock[0] += billed.settings.credit_interval
    assert ticker.run_once() == 0  # nothing new to draw


def test_credit_released_to_a_voided_grant_is_written_off(billed: Metersync) -> None:
    """A cost that falls after its grant was voided gives nothing back to spend."""
    grant = billed.credits.grant("acct_1", 50000, currency="usd")
    billed.credits.draw("acct_1")
    billed.credits.void(grant.id)
    cheaper = dict(API, tiers=[se.tier(1000, unit=0), se.tier(None, unit=1)])  # 14,000 cents
    deliver(billed, se.event("price.updated", cheaper, created=int(NOW.timestamp())))
    assert billed.credits.draw("acct_1").released == {"api_calls": 11500}
    assert [(e.kind, e.amount) for e in _entries(billed)][-2:] == [
        ("release", 11500),
        ("writeoff", -11500),
    ]
    found = billed.credits.history("acct_1").grants[0]
    assert (found.status, found.remaining) == ("voided", 0)
    assert billed.credits.balance("acct_1").amount == 0
