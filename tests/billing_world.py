"""A billed account for the rating tests: a base fee and a graduated metered price on one
subscription of cus_123, mirrored through webhooks, and Stripe's preview of its invoice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import adapter
from adapter.client import Metersync
from config.settings import Settings
from tests import stripe_events as se
from tests.mirror_helpers import deliver, link_meter

NOW = datetime.now(UTC).replace(microsecond=0)
PERIOD = (int((NOW - timedelta(days=10)).timestamp()), int((NOW + timedelta(days=20)).timestamp()))
#: The first 1,000 calls free, then 2 cents each up to 10,000, then 1.5 cents.
API_TIERS = [se.tier(1000, unit=0), se.tier(10000, unit=2), se.tier(None)]
API_TIERS[2]["unit_amount_decimal"] = "1.5"
BASE = se.price("price_base", usage_type="licensed", unit_amount=4900, product="prod_base")
API = se.price("price_api", meter="mtr_api", tiers=API_TIERS)


def mirror(
    ms: Metersync, *prices: dict[str, Any], items: list[dict[str, Any]] | None = None
) -> None:
    """Mirror ``prices`` and a subscription of cus_123 holding them, through webhooks."""
    created = int(NOW.timestamp()) - 3600
    for price in prices:
        deliver(ms, se.event("price.created", price, created=created))
    listed = items if items is not None else [
        se.item("si_base", price_obj=BASE, period=PERIOD, quantity=2),
        se.item("si_api", price_obj=API, period=PERIOD),
    ]  # fmt: skip
    sub = se.subscription("sub_1", period=PERIOD, items=listed)
    deliver(ms, se.event("customer.subscription.created", sub, created=created + 1))


def stripe_preview(api_amount: int, api_quantity: int = 15000) -> dict[str, Any]:
    """Stripe's create_preview answer for sub_1 (basil shape: price under pricing)."""

    def line(price: str, quantity: int, amount: int) -> dict[str, Any]:
        return {
            "id": f"il_{price}",
            "object": "line_item",
            "amount": amount,
            "quantity": quantity,
            "pricing": {"type": "price_details", "price_details": {"price": price}},
        }

    lines = [line("price_base", 2, 9800), line("price_api", api_quantity, api_amount)]
    return {
        "object": "invoice",
        "id": "upcoming_in_1",
        "total": sum(x["amount"] for x in lines),
        "lines": {"object": "list", "data": lines, "has_more": False},
    }


def bill(ms: Metersync, *, units: int = 15000) -> None:
    """acct_1 (cus_123) on the base fee and the graduated API price, with ``units`` calls
    an hour ago (15,000 cost 25,500 cents). The meters ``api_calls`` must exist."""
    link_meter(ms, "api_calls", "mtr_api")
    mirror(ms, BASE, API)
    ms.increment("acct_1", units, meter="api_calls", timestamp=NOW - timedelta(hours=1))


def billed_database(path: str) -> str:
    """A fresh SQLite file at ``path`` holding :func:`bill`'s world; its URL."""
    url = f"sqlite:///{path}"
    ms = adapter.connect(Settings(database_url=url))
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.meters.upsert("api_calls", aggregation="sum")
    bill(ms)
    ms.close()
    return url
