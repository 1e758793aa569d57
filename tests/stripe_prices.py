"""Stripe's price endpoints as the test fakes play them: ``tiers`` are sent only when the
request expands them (``expand[]=tiers`` on one price, ``expand[]=data.tiers`` on a list),
exactly as Stripe does, so a test fails when metersync forgets to ask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Where Stripe serves prices.
PRICES = "/v1/prices"


def expansions(query: Mapping[str, list[str]]) -> set[str]:
    """The paths a parsed query string asks to expand, in each spelling Stripe accepts
    (``expand[]=``, ``expand[0]=``, and a bare ``expand=``)."""
    return {
        value
        for key, values in query.items()
        if key == "expand" or (key.startswith("expand[") and key.endswith("]"))
        for value in values
    }


def as_sent(price: dict[str, Any], *, expanded: bool) -> dict[str, Any]:
    """``price`` as Stripe answers it: without ``tiers`` unless they were expanded."""
    return dict(price) if expanded else {k: v for k, v in price.items() if k != "tiers"}


class PriceBook:
    """Prices held by a stand-in, newest first, answered as Stripe answers them."""

    def __init__(self) -> None:
        self.prices: list[dict[str, Any]] = []

    def add(self, prices: list[dict[str, Any]]) -> int:
        """Hold ``prices`` (each replacing one with its id) ahead of the others."""
        ids = {p["id"] for p in prices}
        self.prices = [*prices, *(p for p in self.prices if p["id"] not in ids)]
        return len(self.prices)

    def answer(self, path: str, query: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
        """The status and body of ``GET path`` (the price list, or one price)."""
        wanted = expansions(query)
        if path == PRICES:
            after = query.get("starting_after", [None])[0]
            ids = [p["id"] for p in self.prices]
            start = ids.index(after) + 1 if after in ids else 0
            limit = int(query.get("limit", ["10"])[0])
            page = self.prices[start : start + limit]
            data = [as_sent(p, expanded="data.tiers" in wanted) for p in page]
            more = start + limit < len(self.prices)
            return 200, {"object": "list", "url": PRICES, "data": data, "has_more": more}
        price_id = path.removeprefix(f"{PRICES}/")
        found = next((p for p in self.prices if p["id"] == price_id), None)
        if found is None:
            message = f"No such price: '{price_id}'"
            error = {"type": "invalid_request_error", "code": "resource_missing"}
            return 404, {"error": {**error, "message": message}}
        return 200, as_sent(found, expanded="tiers" in wanted)
