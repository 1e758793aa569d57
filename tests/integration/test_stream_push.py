"""The v2 stream transport and the outbox sweep (Stripe HTTP intercepted with ``responses``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import responses
import sqlalchemy as sa
import stripe
import tenacity
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.rate_limits.backends import StubBackend

import adapter
from adapter.client import Metersync
from adapter.gateway import Gateway
from adapter.pushing.outbox import claim_for_push, close_reports
from adapter.pushing.stream import StreamPusher
from adapter.store.models import UsageReport, table
from config.settings import Settings
from workers.actors import declare
from workers.broker import QUEUE, BrokerHandle

API = "https://api.stripe.com"
EVENTS_BASE = "https://meter-events.stripe.com"
SESSION = f"{API}/v2/billing/meter_event_session"
STREAM = f"{EVENTS_BASE}/v2/billing/meter_event_stream"
_REPORTS = table(UsageReport)


def _gateway() -> Gateway:
    client = stripe.StripeClient(
        "sk_test_metersync_tests",
        http_client=stripe.RequestsClient(),
        base_addresses={"api": API, "meter_events": EVENTS_BASE},
        max_network_retries=0,
    )
    return Gateway(client=client, attempts=2, wait=tenacity.wait_none(), sleep=lambda _s: None)


@pytest.fixture
def live(db_url: str) -> Iterator[Metersync]:
    """A metersync on the stream transport with intercepted HTTP and two linked accounts."""
    settings = Settings(database_url=db_url, auto_migrate=True, stripe_transport="stream")
    ms = adapter.connect(settings, gateway=_gateway())
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_1")
    ms.accounts.upsert("acct_2", stripe_customer_id="cus_2")
    ms.meters.upsert("api_calls", aggregation="sum")
    yield ms
    ms.close()


def _hour(ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=ago)


def _closed_reports(ms: Metersync, quantities: list[tuple[str, int, str]]) -> list[int]:
    for account, hours_ago, quantity in quantities:
        ms.increment(account, quantity, meter="api_calls", timestamp=_hour(hours_ago))
    close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(_REPORTS.c.id).order_by(_REPORTS.c.id)).scalars())


def _session(http: responses.RequestsMock) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=15)
    http.post(
        SESSION,
        json={
            "id": "mes_1",
            "object": "v2.billing.meter_event_session",
            "authentication_token": "tok_1",
            "created": datetime.now(UTC).isoformat(),
            "expires_at": expires.isoformat(),
            "livemode": False,
        },
    )


def _rows(ms: Metersync) -> list[sa.Row[tuple[object, ...]]]:
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(_REPORTS).order_by(_REPORTS.c.id)).all())


def test_stream_sends_every_decided_report_in_one_call(live: Metersync) -> None:
    """Three reports of two customers go out in one stream request, with the stored
    identifiers and values, and end ``sent``."""
    ids = _closed_reports(live, [("acct_1", 3, "2"), ("acct_1", 2, "5"), ("acct_2", 2, "7")])
    with responses.RequestsMock() as http:
        _session(http)
        http.post(STREAM, json={})
        results = StreamPusher(live.engine, gateway=live.gateway()).push_many(ids)
        bodies = [json.loads(c.request.body) for c in http.calls if c.request.url == STREAM]
    assert [r.status for r in results] == ["sent"] * 3
    assert len(bodies) == 1
    rows = _rows(live)
    sent = {(e["identifier"], e["payload"]["value"]) for e in bodies[0]["events"]}
    assert sent == {(r.identifier, str(int(r.sent_value))) for r in rows}
    assert [r.status for r in rows] == ["sent"] * 3


def test_stream_failure_keeps_decisions_and_a_resend_reuses_them(live: Metersync) -> None:
    """A 500 leaves the batch ``sending`` with its decisions; the resend sends the same
    identifiers and values, so Stripe can drop any it already has."""
    ids = _closed_reports(live, [("acct_1", 3, "2.5"), ("acct_2", 2, "7")])
    pusher = StreamPusher(live.engine, gateway=live.gateway())
    with responses.RequestsMock() as http:
        _session(http)
        http.post(STREAM, status=500, json={"error": {"type": "api_error", "message": "boom"}})
        http.post(STREAM, status=500, json={"error": {"type": "api_error", "message": "boom"}})
        first = pusher.push_many(ids)
        failed_body = json.loads(http.calls[-1].request.body)
    assert [r.status for r in first] == ["sending", "sending"]
    assert all("did not take the call" in (r.last_error or "") for r in _rows(live))
    with responses.RequestsMock() as http:
        http.post(STREAM, json={})
        second = pusher.push_many(ids)
        resent_body = json.loads(http.calls[-1].request.body)
    assert [r.status for r in second] == ["sent", "sent"]
    assert resent_body == failed_body
    assert [int(r.sent_value) for r in _rows(live)] == [2, 7]


def test_stream_dry_run_and_already_sent_reports_make_no_call(live: Metersync) -> None:
    """Without a gateway reports end ``dry_run``; pushing them again changes nothing."""
    ids = _closed_reports(live, [("acct_1", 3, "4")])
    pusher = StreamPusher(live.engine, gateway=None)
    assert [r.status for r in pusher.push_many(ids)] == ["dry_run"]
    assert [r.status for r in pusher.push_many(ids)] == ["dry_run"]
    assert [r.attempts for r in _rows(live)] == [1]


def test_push_batch_actor_sends_batches_on_the_stream(live: Metersync) -> None:
    """With ``METERSYNC_STRIPE_TRANSPORT=stream`` the actors enqueue batches of report ids
    and the batch actor sends them on the stream."""
    ids = _closed_reports(live, [("acct_1", 3, "1"), ("acct_2", 3, "2"), ("acct_2", 2, "3")])
    handle = BrokerHandle(StubBroker(), StubBackend(), "stub")
    actors = declare(handle, live)
    with responses.RequestsMock() as http:
        _session(http)
        http.post(STREAM, json={})
        assert actors.enqueue_pushes(ids) == 3
        assert handle.broker.queues[QUEUE].qsize() == 1  # one message for the batch
        worker = Worker(handle.broker, worker_timeout=50, worker_threads=1)
        worker.start()
        try:
            handle.broker.join(QUEUE, timeout=20_000)
            worker.join()
        finally:
            worker.stop()
            handle.close()
        stream_calls = [c for c in http.calls if c.request.url == STREAM]
    assert len(stream_calls) == 1
    assert [r.status for r in _rows(live)] == ["sent"] * 3


def test_sweep_hands_each_report_over_once_per_grace_period(ms: Metersync) -> None:
    """The outbox sweep returns closed reports oldest window first, then leaves them alone
    until the grace period has passed, and never returns finished reports."""
    ms.increment("acct_1", 1, meter="api_calls", timestamp=_hour(2))
    ms.increment("acct_1", 1, meter="api_calls", timestamp=_hour(3))
    close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
    now, grace = datetime.now(UTC), timedelta(minutes=10)
    first = claim_for_push(ms.engine, now=now, grace=grace)
    with ms.engine.connect() as conn:
        starts = dict(conn.execute(sa.select(_REPORTS.c.id, _REPORTS.c.window_start)).all())
    assert len(first) == 2
    assert starts[first[0]] < starts[first[1]]
    assert claim_for_push(ms.engine, now=now + timedelta(minutes=9), grace=grace) == []
    assert sorted(
        claim_for_push(ms.engine, now=now + timedelta(minutes=11), grace=grace)
    ) == sorted(first)
    ms.report_now()  # dry run: both finish
    assert claim_for_push(ms.engine, now=now + timedelta(hours=1), grace=grace) == []


def test_report_now_on_the_stream_transport_sends_one_batch(live: Metersync) -> None:
    """``report_now`` with the stream transport closes and sends everything in one call."""
    live.increment("acct_1", 3, meter="api_calls", timestamp=_hour(2))
    live.increment("acct_2", 4, meter="api_calls", timestamp=_hour(2))
    with responses.RequestsMock() as http:
        _session(http)
        http.post(STREAM, json={})
        results = live.report_now()
        calls = [c for c in http.calls if c.request.url == STREAM]
    assert sorted((r.account, r.value, r.status) for r in results) == [
        ("acct_1", 3, "sent"),
        ("acct_2", 4, "sent"),
    ]
    assert len(calls) == 1
