"""Reading Stripe objects (customers, subscriptions, invoices, prices, meters, events) as the
plain JSON Stripe sent, for ``metersync sync`` and the mirror's same-second refetch.

Objects come back exactly as Stripe's API returned them (``raw_request``), not as typed
``StripeObject`` s turned back into dicts: ``StripeObject.to_dict(for_json=True)`` would
re-encode decimal strings through ``Decimal`` (``"0.0000001"`` comes back as ``"1E-7"``),
while the raw JSON is byte for byte what a webhook would carry. Lists Stripe truncates
inside an object (invoice ``lines``, subscription ``items``) are fetched whole, and a
price's ``tiers``, which Stripe sends only when asked, are expanded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

from adapter.gateway.errors import PermanentError

if TYPE_CHECKING:
    import stripe

    from adapter.gateway.policy import RetryPolicy
    from config.settings import Settings

JsonObject = dict[str, Any]

#: Where each list lives, and the parameters every listing of it needs.
LIST_PATHS: Mapping[str, str] = {
    "customers": "/v1/customers",
    "subscriptions": "/v1/subscriptions",
    "invoices": "/v1/invoices",
    "prices": "/v1/prices",
    "billing.meters": "/v1/billing/meters",
    "events": "/v1/events",
}
#: Without ``status=all`` Stripe leaves canceled subscriptions out. Subscriptions embed
#: their ``items`` without asking; prices and meters list active and inactive alike. A
#: price's ``tiers`` come only when expanded, and local rating needs them.
#: (stripe-python sends a sequence as ``expand[0]=…``, which Stripe reads as ``expand[]``.)
LIST_PARAMS: Mapping[str, Mapping[str, str | tuple[str, ...]]] = {
    "subscriptions": {"status": "all"},
    "prices": {"expand": ("data.tiers",)},
}
#: Where one object of each ``object`` type is read (the mirror's ``Refetch`` types).
OBJECT_PATHS: Mapping[str, str] = {
    "customer": "/v1/customers/{}",
    "subscription": "/v1/subscriptions/{}",
    "invoice": "/v1/invoices/{}",
    "price": "/v1/prices/{}",
    "billing.meter": "/v1/billing/meters/{}",
}
#: The parameters every read of one object of a type needs: a price's ``tiers``, as above.
OBJECT_PARAMS: Mapping[str, Mapping[str, str | tuple[str, ...]]] = {"price": {"expand": ("tiers",)}}
#: Stripe's largest page.
MAX_LIMIT = 100
#: Stripe's basic per-second limit on reads; the meter event budget
#: (``Settings.effective_rate_limit``, 1,000/s in live mode) is far above it.
READ_LIMIT = {"test": 25, "live": 100}
#: Share of the limit a long read (``metersync sync``) takes, leaving room for workers.
HEADROOM = 0.8


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a Stripe list, newest object first."""

    objects: list[JsonObject]
    has_more: bool
    #: The id to pass as ``starting_after`` for the next page; ``None`` on an empty page.
    last_id: str | None


class Pace:
    """At most ``rate`` calls per second, evenly spaced, in one process (thread-safe): a
    throttle for :meth:`ObjectReader.paced`."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.interval = 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> None:
        """Wait for this call's slot; threads sharing the pace get successive slots."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


def read_pace(settings: Settings) -> Pace:
    """:data:`HEADROOM` of Stripe's read limit, or of a lower ``stripe_rate_limit``."""
    limit = min(settings.effective_rate_limit, READ_LIMIT[settings.effective_stripe_mode])
    return Pace(max(limit * HEADROOM, 1.0))


class ObjectReader:
    """Gateway methods that read Stripe objects; mixed into :class:`Gateway`."""

    if TYPE_CHECKING:  # provided by Gateway
        _client: stripe.StripeClient
        _policy: RetryPolicy

        def throttled(self, throttle: Callable[[], None]) -> Self: ...

    def paced(self, throttle: Callable[[], None]) -> Self:
        """The same gateway calling ``throttle`` before every request, after any throttle
        it already has (``sync`` adds its own pace to a worker's shared rate limit)."""
        before = self._policy.throttle

        def both() -> None:
            if before is not None:
                before()
            throttle()

        return self.throttled(both)

    def list_page(
        self,
        resource: str,
        *,
        starting_after: str | None,
        limit: int = MAX_LIMIT,
        params: Mapping[str, Any] | None = None,
    ) -> Page:
        """One page of ``resource`` (``customers``, ``subscriptions``, ``invoices``,
        ``prices``, ``billing.meters``, ``events``), newest first, nested lists whole."""
        path = LIST_PATHS.get(resource)
        if path is None:
            raise ValueError(f"cannot list {resource!r}; known lists: {', '.join(LIST_PATHS)}")
        query = {**LIST_PARAMS.get(resource, {}), **(params or {}), "limit": limit}
        if starting_after is not None:
            query["starting_after"] = starting_after
        body = self._get(path, query)
        objects = [self._whole(obj) for obj in _data(body, path)]
        last = objects[-1].get("id") if objects else None
        return Page(objects, bool(body.get("has_more")), last if isinstance(last, str) else None)

    def retrieve(self, object_type: str, object_id: str) -> JsonObject | None:
        """One object as Stripe has it now, or ``None`` when Stripe says it does not exist
        (a deleted customer comes back as ``{"id": …, "deleted": true}``)."""
        path = OBJECT_PATHS.get(object_type)
        if path is None:
            known = ", ".join(OBJECT_PATHS)
            raise ValueError(f"cannot read a {object_type!r}; known types: {known}")
        try:
            url = path.format(quote(object_id, safe=""))
            obj = self._get(url, OBJECT_PARAMS.get(object_type, {}))
        except PermanentError as error:
            # Only Stripe's own "no such object": a bare 404 (a wrong base URL) is an error.
            if error.status == 404 and error.code == "resource_missing":
                return None
            raise
        return self._whole(obj)

    def _whole(self, obj: JsonObject) -> JsonObject:
        """``obj`` with the lists Stripe cut short inside it read to the end."""
        kind, object_id = obj.get("object"), obj.get("id")
        if not isinstance(object_id, str):
            return obj
        if kind == "invoice":
            return self._rest(obj, "lines", f"/v1/invoices/{quote(object_id, safe='')}/lines", {})
        if kind == "subscription":
            return self._rest(obj, "items", "/v1/subscription_items", {"subscription": object_id})
        return obj

    def _rest(self, obj: JsonObject, field: str, path: str, params: JsonObject) -> JsonObject:
        """Fetch the remaining pages of the embedded list ``obj[field]``, one call each."""
        nested = obj.get(field)
        if not isinstance(nested, dict) or not nested.get("has_more"):
            return obj
        data: list[JsonObject] = list(nested.get("data") or [])
        while True:
            query = {**params, "limit": MAX_LIMIT}
            if data:
                query["starting_after"] = data[-1]["id"]
            body = self._get(path, query)
            more = _data(body, path)
            data.extend(more)
            if not more or not body.get("has_more"):
                break
        return {**obj, field: {**nested, "data": data, "has_more": False}}

    def _get(self, path: str, query: Mapping[str, Any]) -> JsonObject:
        """``GET path`` through the retry policy; the decoded JSON object."""

        def fetch() -> JsonObject:
            response = self._client.raw_request("get", path, **query)
            body = json.loads(response.body)
            if not isinstance(body, dict):
                raise _not_stripe(path, "a JSON object")
            return body

        return self._policy.call(fetch)


def _data(body: JsonObject, path: str) -> list[JsonObject]:
    """The ``data`` of a list answer, refusing anything else."""
    data = body.get("data")
    if body.get("object") != "list" or not isinstance(data, list):
        raise _not_stripe(path, "a list")
    return data


def _not_stripe(path: str, expected: str) -> PermanentError:
    """The answer was not what Stripe sends: most likely a wrong API base address."""
    return PermanentError(
        f"GET {path} did not answer with {expected} as Stripe does; "
        "check METERSYNC_STRIPE_API_BASE points at Stripe (or a faithful stand-in)"
    )
