"""Stripe gateways for tests: a real ``StripeClient`` over ``requests``, so ``responses``
intercepts every call, with no retries of its own (the gateway owns the retry policy) and
waits recorded or skipped instead of slept."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import requests
import stripe
import tenacity

from adapter.gateway import Gateway

#: Stripe's meter events endpoint at its default address.
EVENTS_URL = "https://api.stripe.com/v1/billing/meter_events"
#: A test-mode key for gateways whose calls ``responses`` intercepts.
KEY = "sk_test_metersync_tests"


class Sleeps(list[float]):
    """Records the waits the retry policy asks for, instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def stripe_client(
    key: str, *, api: str | None = None, meter_events: str | None = None
) -> stripe.StripeClient:
    """A Stripe client that never retries on its own; ``api`` and ``meter_events`` replace
    Stripe's base addresses."""
    given = {"api": api, "meter_events": meter_events}
    # Only the addresses given: a None would replace Stripe's default with nothing.
    bases: Any = {name: url for name, url in given.items() if url is not None}
    return stripe.StripeClient(
        key,
        http_client=stripe.RequestsClient(),
        base_addresses=bases,
        max_network_retries=0,
    )


def make_gateway(
    key: str = KEY,
    *,
    attempts: int,
    wait: tenacity.wait.WaitBaseT | None = None,
    sleep: Sleeps | None = None,
    api: str | None = None,
) -> Gateway:
    """A gateway over :func:`stripe_client` making ``attempts`` tries per call; by default
    it does not wait between them (``sleep`` records the waits asked for)."""
    return Gateway(
        client=stripe_client(key, api=api),
        attempts=attempts,
        wait=tenacity.wait_none() if wait is None else wait,
        sleep=Sleeps() if sleep is None else sleep,
    )


def accept_meter_event(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
    """Stripe accepting a meter event (a ``responses`` callback)."""
    body = parse_qs(request.body)
    answer = {"object": "billing.meter_event", "identifier": body["identifier"][0]}
    return 200, {"Request-Id": "req_ok"}, json.dumps(answer)
