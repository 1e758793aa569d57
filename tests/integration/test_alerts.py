"""Usage alerts: thresholds on usage, cost and credit balance, fired once per period."""

from __future__ import annotations

import threading
from datetime import timedelta

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.rate_limits.backends import StubBackend

from adapter.alerting.evaluate import Fired
from adapter.client import Metersync
from adapter.errors import InvalidUsage, UnknownMeter
from adapter.store.alert_models import AlertDelivery, AlertFiring
from adapter.store.models import table
from tests import stripe_events as se
from tests.billing_world import NOW
from tests.mirror_helpers import deliver
from workers.actors import ALERT_ACTOR, ALERT_QUEUE, declare
from workers.broker import BrokerHandle
from workers.credit_ticks import CreditTicker

HOUR_AGO = NOW - timedelta(hours=1)


def _firings(ms: Metersync) -> list[sa.Row[object]]:
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(table(AlertFiring))).all())


def test_a_usage_alert_fires_once_per_period(billed: Metersync) -> None:
    """Reaching 10,000 calls fires once; checking again fires nothing more."""
    alert = billed.alerts.add(
        "10k calls", metric="usage", threshold=10000, account="acct_1", meter="api_calls"
    )
    seen: list[Fired] = []
    fired = billed.alerts.check(on_fire=seen.append)
    assert [(f.alert_id, f.account, f.value) for f in fired] == [(alert.id, "acct_1", 15000)]
    assert seen == fired
    assert billed.alerts.check() == []
    assert len(_firings(billed)) == 1


def test_rearm_lets_it_fire_once_more(billed: Metersync) -> None:
    """After a re-arm the alert fires again in the same period, once."""
    alert = billed.alerts.add("10k", metric="usage", threshold=10000, meter="api_calls")
    assert len(billed.alerts.check()) == 1
    assert billed.alerts.rearm(alert.id).generation == 1
    again = billed.alerts.check()
    assert [f.generation for f in again] == [1]
    assert billed.alerts.check() == []
    assert [f.generation for f in billed.alerts.history(account="acct_1")] == [1, 0]


def test_below_the_threshold_nothing_fires(billed: Metersync) -> None:
    """15,000 calls do not reach 20,000; a cost of 255.00 does not reach 300.00."""
    billed.alerts.add("20k", metric="usage", threshold=20000, meter="api_calls")
    billed.alerts.add("300 USD", metric="cost", threshold=30000, account="acct_1")
    assert billed.alerts.check() == []


def test_cost_and_credit_balance_alerts(billed: Metersync) -> None:
    """Cost fires at or above its threshold; credit balance at or below (going down)."""
    billed.credits.grant("acct_1", 50000, currency="usd")  # 245.00 left after 255.00
    cost = billed.alerts.add("200 USD", metric="cost", threshold=20000, account="acct_1")
    low = billed.alerts.add("credit low", metric="credit_balance", threshold=30000)
    fired = {f.alert_id: f.value for f in billed.alerts.check()}
    assert fired == {cost.id: 25500, low.id: 24500}


def test_a_credit_alert_ignores_accounts_without_credit(billed: Metersync) -> None:
    """An every-account credit alert does not fire for an account that never had credit."""
    billed.alerts.add("credit low", metric="credit_balance", threshold=100)
    assert billed.alerts.check() == []


def test_a_removed_alert_stops_firing(billed: Metersync) -> None:
    """remove() keeps the alert, inactive, and it fires no more."""
    alert = billed.alerts.add("10k", metric="usage", threshold=10000, meter="api_calls")
    assert billed.alerts.remove(alert.id).active is False
    assert billed.alerts.check() == []
    assert [a.id for a in billed.alerts.list(include_removed=True)] == [alert.id]
    assert billed.alerts.list() == []


def test_a_firing_queues_its_webhook(billed: Metersync) -> None:
    """An alert with a webhook URL gets one pending delivery per firing."""
    billed.alerts.add(
        "10k",
        metric="usage",
        threshold=10000,
        meter="api_calls",
        webhook_url="http://127.0.0.1:9/hook",
    )
    billed.alerts.check()
    with billed.engine.connect() as conn:
        rows = conn.execute(sa.select(table(AlertDelivery))).all()
    assert [(r.url, r.status) for r in rows] == [("http://127.0.0.1:9/hook", "pending")]
    assert billed.alerts.history()[0].deliveries == {"pending": 1}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"metric": "usage", "threshold": 1}, "names the meter"),
        ({"metric": "credit_balance", "threshold": 1, "meter": "api_calls"}, "not a meter"),
        ({"metric": "speed", "threshold": 1}, "metric must be one of"),
        ({"metric": "cost", "threshold": "10.5"}, "whole minor units"),
        ({"metric": "cost", "threshold": -1}, "negative"),
        ({"metric": "cost", "threshold": 1, "webhook_url": "ftp://x"}, "http"),
    ],
)
def test_bad_alerts_are_refused(billed: Metersync, kwargs: dict[str, object], error: str) -> None:
    """A malformed alert raises InvalidUsage saying what is wrong; nothing is stored."""
    with pytest.raises(InvalidUsage, match=error):
        billed.alerts.add("bad", **kwargs)  # type: ignore[arg-type]
    assert billed.alerts.list(include_removed=True) == []


def test_unknown_meter_or_alert(billed: Metersync) -> None:
    """An unknown meter, or an alert id that does not exist, is a clear error."""
    with pytest.raises(UnknownMeter):
        billed.alerts.add("x", metric="usage", threshold=1, meter="nope")
    with pytest.raises(InvalidUsage, match="no alert 4242"):
        billed.alerts.remove(4242)


def test_concurrent_checks_fire_exactly_once(billed: Metersync) -> None:
    """Eight threads checking at once (while usage is recorded) write one firing between them."""
    billed.alerts.add("10k", metric="usage", threshold=10000, meter="api_calls")
    barrier = threading.Barrier(9)
    results: list[list[Fired]] = []
    errors: list[BaseException] = []

    def checker() -> None:
        barrier.wait()
        try:
            results.append(billed.alerts.check())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def recorder() -> None:
        barrier.wait()
        for n in range(5):
            billed.increment("acct_1", 1, meter="api_calls", idempotency_key=f"c{n}")

    threads = [threading.Thread(target=checker) for _ in range(8)]
    threads.append(threading.Thread(target=recorder))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(len(r) for r in results) == 1
    assert len(_firings(billed)) == 1


def _stripe_alert_event(event_id: str) -> dict[str, object]:
    """A billing.alert.triggered event for cus_123 (Stripe's billing.alert_triggered object)."""
    alert = {
        "id": "alrt_1", "object": "billing.alert", "alert_type": "usage_threshold",
        "title": "API calls over 12k", "status": "active", "livemode": False,
        "usage_threshold": {"gte": 12000, "meter": "mtr_api", "recurrence": "one_time"},
    }  # fmt: skip
    obj = {"object": "billing.alert_triggered", "alert": alert, "created": 1_767_225_600,
           "customer": "cus_123", "livemode": False, "value": 12500}  # fmt: skip
    return se.event("billing.alert.triggered", obj, created=int(NOW.timestamp()), id=event_id)


def test_stripe_alerts_are_shown_beside_local_ones(billed: Metersync) -> None:
    """A billing.alert.triggered event is kept once as a Stripe firing of the linked account."""
    billed.alerts.add("10k", metric="usage", threshold=10000, meter="api_calls")
    billed.alerts.check()
    event = _stripe_alert_event("evt_alert_1")
    assert deliver(billed, event).status == "processed"
    deliver(billed, event)  # the same event again: nothing new
    history = billed.alerts.history(account="acct_1")
    assert [(f.source, f.stripe_alert_id, f.value) for f in history] == [
        ("stripe", "alrt_1", 12500),
        ("local", None, 15000),
    ]
    assert history[0].threshold == 12000


def test_an_app_actor_receives_the_alert_hook(billed: Metersync) -> None:
    """The scheduler's tick sends each firing to the app's own `alert_fired` actor."""
    handle = BrokerHandle(StubBroker(), StubBackend(), "stub")
    try:
        actors = declare(handle, billed)
        received: list[dict[str, object]] = []

        def alert_fired(fired: dict[str, object]) -> None:  # what an app declares
            received.append(fired)

        dramatiq.actor(broker=handle.broker, queue_name=ALERT_QUEUE, actor_name=ALERT_ACTOR)(
            alert_fired
        )
        alert = billed.alerts.add("10k", metric="usage", threshold=10000, meter="api_calls")
        assert CreditTicker(billed, on_fire=actors.alert_fired).run_once() == 0
        worker = Worker(handle.broker, worker_timeout=50)
        worker.start()
        try:
            handle.broker.join(ALERT_QUEUE, timeout=10_000)
        finally:
            worker.stop()
    finally:
        handle.close()
    assert [(r["alert_id"], r["account"], r["value"]) for r in received] == [
        (alert.id, "acct_1", "15000")
    ]
