"""Stripe's list endpoints for tests, played by ``responses`` over in-memory objects."""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import requests
import responses

from tests.stripe_prices import as_sent, expansions

#: Stripe's API at its default address.
API = "https://api.stripe.com"


def error(
    status: int, message: str, *, type_: str = "invalid_request_error", **fields: object
) -> tuple[int, dict[str, Any]]:
    """A Stripe error answer for :attr:`StripeLists.fail`: the HTTP status and the body."""
    return status, {"error": {"type": type_, "message": message, **fields}}


class StripeLists:
    """Stripe's list endpoints at ``base`` over in-memory objects, newest first, ``size``
    per page (Stripe may send fewer than ``limit``); prices carry their ``tiers`` only when
    the request expands ``data.tiers``, as at Stripe. ``fail[(resource, starting_after)]``
    answers that page once with an error (see :func:`error`). Each answer carries the
    request id ``{request_ids}{n}`` for the n-th request."""

    PATHS: ClassVar[dict[str, str]] = {
        "/v1/billing/meters": "meters",
        "/v1/prices": "prices",
        "/v1/customers": "customers",
        "/v1/subscriptions": "subscriptions",
        "/v1/invoices": "invoices",
        "/v1/events": "events",
    }

    def __init__(
        self,
        http: responses.RequestsMock,
        *,
        base: str = API,
        size: int = 2,
        request_ids: str = "req_",
    ) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {name: [] for name in self.PATHS.values()}
        self.size = size
        #: (resource, starting_after) → (status, Stripe error body); used once.
        self.fail: dict[tuple[str, str | None], tuple[int, dict[str, Any]]] = {}
        #: (resource, starting_after) of every page request, in order.
        self.requests: list[tuple[str, str | None]] = []
        #: The Authorization header of every page request, in order.
        self.auth: list[str | None] = []
        self._request_ids = request_ids
        for path in self.PATHS:
            http.add_callback(responses.GET, f"{base}{path}", callback=self._answer)

    def _answer(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        url = urlsplit(request.url)
        resource = self.PATHS[url.path]
        query = parse_qs(url.query)
        after = query.get("starting_after", [None])[0]
        self.requests.append((resource, after))
        self.auth.append(request.headers.get("Authorization"))
        headers = {"Request-Id": f"{self._request_ids}{len(self.requests)}"}
        if (resource, after) in self.fail:
            status, body = self.fail.pop((resource, after))
            return status, headers, json.dumps(body)
        objects = self.objects[resource]
        start = next(i + 1 for i, obj in enumerate(objects) if obj["id"] == after) if after else 0
        page = objects[start : start + self.size]
        if resource == "prices":
            page = [as_sent(p, expanded="data.tiers" in expansions(query)) for p in page]
        more = start + self.size < len(objects)
        body = {"object": "list", "url": url.path, "data": page, "has_more": more}
        return 200, headers, json.dumps(body)
