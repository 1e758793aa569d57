"""The gateway: sends meter events to Stripe and reads its meters."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from http.cookiejar import DefaultCookiePolicy
from typing import TYPE_CHECKING, Self
from urllib.request import getproxies

import requests
import stripe
import tenacity
from requests.adapters import HTTPAdapter

from adapter.errors import ConfigurationError
from adapter.gateway.adjust import Adjusting
from adapter.gateway.credit_grants import CreditGranting
from adapter.gateway.objects import ObjectReader
from adapter.gateway.policy import RetryPolicy, Sleep, classify, idempotency_key
from adapter.gateway.preview import Previewing
from adapter.gateway.stream import Clock, MeterEventStream
from adapter.gateway.types import Delivery, StripeMeter, aware, whole

if TYPE_CHECKING:
    from stripe.params.billing import MeterEventCreateParams

    from config.settings import Settings

#: Keep-alive connections kept per host by the shared session: one per worker thread
#: (``metersync worker --threads`` goes up to 64); more are opened when needed.
POOL_SIZE = 64
#: What requests reads from the environment besides proxies; set, the shared session
#: (which ignores the environment) is not used.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class Gateway(ObjectReader, Adjusting, Previewing, CreditGranting):
    """Sends meter events to Stripe and reads its meters and objects, one briefly-retried call
    at a time; reads meter event summaries and cancels meter events (reconciliation); asks
    for an invoice preview (rating's reference); creates and voids credit grants."""

    def __init__(  # noqa: PLR0913  independent keyword-only options of the public constructor
        self,
        *,
        client: stripe.StripeClient,
        attempts: int = 4,
        max_wait: float = 8.0,
        wait: tenacity.wait.WaitBaseT | None = None,
        sleep: Sleep = time.sleep,
        throttle: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._policy = RetryPolicy(
            attempts=attempts, max_wait=max_wait, wait=wait, sleep=sleep, throttle=throttle
        )

    def throttled(self, throttle: Callable[[], None]) -> Self:
        """The same gateway, calling ``throttle`` before every request (workers pass the
        shared Stripe rate limit here, so retries after a 429 are paced too)."""
        policy = self._policy
        return type(self)(
            client=self._client,
            attempts=policy.attempts,
            max_wait=policy.max_wait,
            wait=policy.wait,
            sleep=policy.sleep,
            throttle=throttle,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, attempts: int = 4, max_wait: float = 8.0
    ) -> Gateway:
        """A gateway on a fresh ``StripeClient`` built from settings; we own the retries."""
        if settings.stripe_api_key is None:
            raise ConfigurationError(
                "no Stripe API key configured: set METERSYNC_STRIPE_API_KEY, "
                "or leave it unset to run in dry-run mode without a gateway"
            )
        client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            http_client=http_client(timeout=settings.stripe_timeout),
            base_addresses={
                "api": settings.stripe_api_base,
                "meter_events": settings.stripe_meter_events_base,
            },
            max_network_retries=0,
        )
        return cls(client=client, attempts=attempts, max_wait=max_wait)

    def __repr__(self) -> str:
        return f"Gateway(attempts={self._policy.attempts}, max_wait={self._policy.max_wait})"

    def send_meter_event(  # noqa: PLR0913  a meter event's fields, by keyword: public API
        self,
        *,
        event_name: str,
        stripe_customer_id: str,
        value: int,
        timestamp: datetime,
        identifier: str,
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
    ) -> Delivery:
        """Post one v1 meter event; a duplicate-identifier rejection counts as delivered."""
        params: MeterEventCreateParams = {
            "event_name": event_name,
            "payload": {customer_key: stripe_customer_id, value_key: whole(value)},
            "timestamp": int(aware(timestamp).timestamp()),
            "identifier": identifier,
        }

        def attempt() -> Delivery:
            try:
                event = self._client.v1.billing.meter_events.create(
                    params=params, options={"idempotency_key": idempotency_key(identifier)}
                )
            except stripe.InvalidRequestError as error:
                if classify(error) != "delivered":
                    raise
                return Delivery(identifier, error.request_id, duplicate=True)
            response = event.last_response
            return Delivery(identifier, response.request_id if response else None, False)

        return self._policy.call(attempt)

    def list_meters(self) -> list[StripeMeter]:
        """Every meter on the account, all pages (a failed page restarts the listing)."""

        def fetch() -> list[StripeMeter]:
            page = self._client.v1.billing.meters.list(params={"limit": 100})
            return [
                StripeMeter(
                    id=meter.id,
                    event_name=meter.event_name,
                    status=meter.status,
                    formula=meter.default_aggregation.formula,
                    customer_key=meter.customer_mapping.event_payload_key,
                    value_key=meter.value_settings.event_payload_key,
                )
                for meter in page.auto_paging_iter()
            ]

        return self._policy.call(fetch)

    def stream(self, *, clock: Clock | None = None) -> MeterEventStream:
        """A v2 high-volume stream on this gateway's client and retry policy."""
        return MeterEventStream(self._client, self._policy, clock=clock)


def http_client(*, timeout: float) -> stripe.RequestsClient:
    """stripe-python's requests client for the gateway.

    With no proxy in the environment: one keep-alive session shared by all threads, which
    never looks at the environment. requests would otherwise read every variable (for
    proxies) and ``~/.netrc`` on each call, about a sixth of the CPU of a meter event
    call. The session keeps no cookies, so threads share no state through it. With
    ``HTTPS_PROXY`` and the like, or a CA bundle (``REQUESTS_CA_BUNDLE``,
    ``CURL_CA_BUNDLE``) set: stripe-python's default client, which applies them per call
    as before."""
    if getproxies() or any(os.environ.get(name) for name in CA_BUNDLE_VARIABLES):
        return stripe.RequestsClient(timeout=timeout)
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    pool = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
    session.mount("https://", pool)
    session.mount("http://", pool)
    return stripe.RequestsClient(timeout=timeout, session=session)
