"""Stripe's ``last`` meter ends at the period's true value, whatever the arrival order.

Hypothesis plays random histories on a ``last`` and a ``max`` meter: events with explicit
timestamps in random windows (many on the same second, many late for windows already
sent, some on the billing period's very last second), pushes in between, and Stripe
answering 500 (before or after taking the event) to some calls. The Stripe stand-in
(``responses``) models what matters: identifier dedup, cancels, and ``last`` = the value
of the live event with the newest timestamp; it refuses to decide between two events of
one second with different values, since Stripe does not document that case. Checked
against an independent model: the newest event by event time (recording order on ties),
or the maximum.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import pytest
import requests
import responses
import stripe
import tenacity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapter
from adapter.client import Metersync
from adapter.gateway import Gateway
from config.settings import Settings

API = "https://api.stripe.com/v1/billing"
#: Seconds into an hour window an event may fall at: edges and a middle, so that many
#: events share a second and some sit on the period's last second.
OFFSETS = (0, 1, 1800, 3598, 3599)
MICROS = (0, 400_000, 900_000)


@dataclass
class FakeStripe:
    """Meter events and cancels as Stripe keeps them, with injectable 500s."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Calls still to fail: "before" fails without taking the event, "after" takes it
    #: and loses the answer (the sender cannot tell the two apart).
    faults: list[str] = field(default_factory=list)

    def install(self, rsps: responses.RequestsMock) -> None:
        """Answer meter events and adjustments on ``rsps``."""
        rsps.add_callback(responses.POST, f"{API}/meter_events", callback=self._event)
        rsps.add_callback(responses.POST, f"{API}/meter_event_adjustments", callback=self._cancel)

    def _fault(self) -> str | None:
        return self.faults.pop(0) if self.faults else None

    def _event(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        fault = self._fault()
        if fault == "before":
            return _server_error()
        identifier = form["identifier"]
        if identifier in self.events:
            message = f"An event already exists with identifier {identifier}."
            error = {"error": {"type": "invalid_request_error", "message": message}}
            return 400, {"Stripe-Should-Retry": "false"}, json.dumps(error)
        self.events[identifier] = {
            "customer": form["payload[stripe_customer_id]"],
            "event_name": form["event_name"],
            "value": int(form["payload[value]"]),
            "timestamp": int(form["timestamp"]),
            "cancelled": False,
        }
        if fault == "after":
            return _server_error()
        return 200, {"Request-Id": "req_ok"}, json.dumps({"identifier": identifier})

    def _cancel(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        if self._fault() == "before":
            return _server_error()
        identifier = form["cancel[identifier]"]
        if identifier not in self.events:
            error = {"error": {"type": "invalid_request_error", "message": "no such event"}}
            return 400, {}, json.dumps(error)
        self.events[identifier]["cancelled"] = True
        answer = {"object": "billing.meter_event_adjustment", "status": "pending"}
        return 200, {}, json.dumps(answer)

    def held(self, customer: str, event_name: str) -> int | None:
        """The value Stripe's ``last`` meter bills for the customer: the live event with
        the newest timestamp. Two live events on that second must agree."""
        live = [
            e
            for e in self.events.values()
            if e["customer"] == customer and e["event_name"] == event_name and not e["cancelled"]
        ]
        if not live:
            return None
        newest = max(e["timestamp"] for e in live)
        values = {e["value"] for e in live if e["timestamp"] == newest}
        assert len(values) == 1, f"two live events at second {newest} disagree: {values}"
        return values.pop()


def _server_error() -> tuple[int, dict[str, str], str]:
    return 500, {}, json.dumps({"error": {"type": "api_error", "message": "try again"}})


def _gateway() -> Gateway:
    client = stripe.StripeClient(
        "sk_test_metersync_tests", http_client=stripe.RequestsClient(), max_network_retries=0
    )
    return Gateway(client=client, attempts=2, wait=tenacity.wait_none(), sleep=lambda _s: None)


@pytest.fixture
def live(db_url: str) -> Iterator[Metersync]:
    """A metersync with a gateway to the fake Stripe and a ``last`` and a ``max`` meter."""
    ms = adapter.connect(Settings(database_url=db_url, auto_migrate=True), gateway=_gateway())
    ms.meters.upsert("gauge", aggregation="last")
    ms.meters.upsert("peak", aggregation="max")
    yield ms
    ms.close()


@dataclass(frozen=True)
class Record:
    """An event of ``value`` at ``offset`` seconds (and ``micro``) into hour ``window``."""

    value: int
    window: int
    offset: int
    micro: int


@dataclass(frozen=True)
class Push:
    """``report_now`` with these faults on the next Stripe calls."""

    faults: tuple[str, ...]


_ops = st.lists(
    st.one_of(
        st.builds(
            Record,
            value=st.integers(0, 30),
            window=st.integers(0, 5),
            offset=st.sampled_from(OFFSETS),
            micro=st.sampled_from(MICROS),
        ),
        st.builds(
            Push, faults=st.lists(st.sampled_from(["before", "after"]), max_size=3).map(tuple)
        ),
    ),
    min_size=1,
    max_size=14,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_ops, meter=st.sampled_from(["gauge", "peak"]), ended=st.booleans())
def test_stripe_holds_the_newest_event_value(
    live: Metersync, ops: list[Record | Push], meter: str, ended: bool
) -> None:
    """After any history of late events, pushes and 500s, Stripe's ``last`` meter holds
    the newest event's value (``max``: the maximum), get_usage's ``sent`` says the same,
    and no second ever holds two live values."""
    name, customer = f"a-{uuid4().hex[:12]}", f"cus_{uuid4().hex[:14]}"
    live.accounts.upsert(name, stripe_customer_id=customer)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(hours=6)
    end = hour if ended else hour + timedelta(hours=6)  # ended: the last second is taken
    live.set_billing_period(name, start, end)
    fake, recorded = FakeStripe(), []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake.install(rsps)
        for op in ops:
            if isinstance(op, Record):
                at = start + timedelta(hours=op.window, seconds=op.offset, microseconds=op.micro)
                live.increment(name, op.value, meter=meter, timestamp=at)
                recorded.append((at, len(recorded), op.value))
            else:
                fake.faults = list(op.faults)
                live.report_now()
        fake.faults = []
        for _ in range(3):  # a cancel may wait for a neighbour still being delivered
            live.report_now()
    if not recorded:
        return
    expected = max(v for _, _, v in recorded) if meter == "peak" else max(recorded)[2]
    assert fake.held(customer, meter) == expected
    usage = live.get_usage(name, period_start=start, period_end=end).meters[meter]
    assert usage.quantity == expected
    assert usage.sent == Decimal(expected)
    assert usage.pending == 0
    assert {r.status for r in live.reports() if r.account == name} <= {"sent", "superseded"}
