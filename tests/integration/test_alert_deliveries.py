"""Outbound alert webhooks (adapter.alerting.deliver) against a real HTTP receiver on
127.0.0.1 that verifies ``Metersync-Signature`` as a user's endpoint would: posted once,
signed, with the firing's JSON; retried with growing waits, then failed; never posted
twice by concurrent senders; no secret in an error or a log line."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import structlog
from sqlmodel import Session, select

import adapter
from adapter.alerting.deliver import (
    EVENT_TYPE,
    MAX_ATTEMPTS,
    REDACTED,
    TIMEOUT,
    UNSIGNED_ERROR,
    backoff,
    deliver_due,
    payload_of,
)
from adapter.alerting.signing import DELIVERY_HEADER, HEADER, SignatureError, verify
from adapter.client import Metersync
from adapter.store.alert_models import Alert, AlertDelivery, AlertFiring
from adapter.store.models import Account, Meter, table, utcnow
from config.settings import Settings
from workers.alert_deliveries import AlertSweeper, deliver_once

SECRET = "alert-secret-for-tests-0123456789"
SIGNED = Settings(database_url="sqlite://", alert_webhook_secret=SECRET)
UNSIGNED = Settings(database_url="sqlite://")
PERIOD = datetime(2026, 12, 1, tzinfo=UTC)
_DELIVERIES = table(AlertDelivery)
Headers = Mapping[str, str]


# --- the receiver -----------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request the receiver got, and what its signature check said."""

    headers: dict[str, str]
    body: bytes
    verified: str  # "ok", or the SignatureError's code


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint on 127.0.0.1: verifies, records, answers ``status``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[Received] = []
        self.status = 200
        self.answer = b'{"ok": true}'
        self.delay = 0.0
        #: The receiver's clock, unix seconds (a test moving ``now`` moves it too).
        self.clock: Callable[[], int] = lambda: int(time.time())
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        """Where to post."""
        return f"http://127.0.0.1:{self.server_port}/hooks/metersync"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            verify(body, self.headers.get(HEADER), secrets=[SECRET], tolerance=300,
                   now=self.server.clock())  # fmt: skip
            verified = "ok"
        except SignatureError as exc:
            verified = exc.code
        with self.server.lock:
            self.server.received.append(Received(dict(self.headers.items()), body, verified))
        time.sleep(self.server.delay)
        self.send_response(self.server.status)
        if 300 <= self.server.status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", str(len(self.server.answer)))
        self.end_headers()
        self.wfile.write(self.server.answer)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running receiver, stopped after the test."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


# --- rows -------------------------------------------------------------------------------


def add_firings(ms: Metersync, url: str, *, count: int = 1, at: datetime) -> list[int]:
    """An alert on acct_1's api_calls and ``count`` firings of it (one generation each),
    each with a delivery to ``url`` due at ``at``; the delivery ids."""
    with Session(ms.engine) as session:
        account = session.exec(select(Account).where(Account.name == "acct_1")).one()
        meter = session.exec(select(Meter).where(Meter.name == "api_calls")).one()
        alert = Alert(name="big spender", metric="usage", threshold=Decimal("100"),
                      account_id=account.id, meter_id=meter.id, webhook_url=url)  # fmt: skip
        session.add(alert)
        session.flush()
        deliveries = []
        for generation in range(count):
            firing = AlertFiring(
                alert_id=alert.id, account_id=account.id, period_start=PERIOD,
                generation=generation, metric="usage", value=Decimal("150.500"),
                threshold=Decimal("100"), fired_at=at - timedelta(seconds=5),
                detail={"meter": "api_calls"},
            )  # fmt: skip
            session.add(firing)
            session.flush()
            assert firing.id is not None
            deliveries.append(AlertDelivery(firing_id=firing.id, url=url, next_attempt_at=at))
        session.add_all(deliveries)
        session.commit()
        return [d.id for d in deliveries if d.id is not None]


def row(ms: Metersync, delivery_id: int) -> sa.Row[Any]:
    """The delivery's row as stored."""
    with ms.engine.connect() as conn:
        return conn.execute(_DELIVERIES.select().where(_DELIVERIES.c.id == delivery_id)).one()


# --- delivering -------------------------------------------------------------------------


def test_a_due_delivery_is_posted_once_signed_with_the_firings_json(
    ms: Metersync, receiver: Receiver
) -> None:
    """A due delivery reaches the receiver once, with a valid signature, its id in
    Metersync-Delivery and the firing as JSON; it is then delivered and not sent again."""
    now = utcnow()
    [delivery_id] = add_firings(ms, receiver.url, at=now)
    [result] = deliver_due(ms.engine, settings=SIGNED, now=now)
    assert deliver_due(ms.engine, settings=SIGNED, now=now + timedelta(hours=1)) == []
    [got] = receiver.received
    assert got.verified == "ok"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers[DELIVERY_HEADER] == str(delivery_id)
    body = json.loads(got.body)
    firing_id = body["data"]["firing_id"]
    assert body == {
        "id": f"alrt_fire_{firing_id}",
        "type": EVENT_TYPE,
        "created": int((now - timedelta(seconds=5)).timestamp()),
        "data": {
            "firing_id": firing_id, "alert_id": body["data"]["alert_id"],
            "alert": "big spender", "account": "acct_1", "meter": "api_calls",
            "metric": "usage", "value": "150.5", "threshold": "100",
            "period_start": "2026-12-01T00:00:00+00:00", "generation": 0, "source": "local",
            "fired_at": (now - timedelta(seconds=5)).isoformat(),
        },
    }  # fmt: skip
    stored = row(ms, delivery_id)
    assert (result.status, result.attempts, result.last_status) == ("delivered", 1, 200)
    assert (stored.status, stored.attempts, stored.last_status) == ("delivered", 1, 200)
    assert stored.last_error is None
    assert stored.delivered_at is not None
    assert now <= stored.delivered_at < now + timedelta(seconds=5)


def test_a_failing_receiver_is_retried_with_growing_waits_then_failed(
    ms: Metersync, receiver: Receiver
) -> None:
    """A 500 leaves the delivery pending with one attempt and a retry 10-11 s ahead, not
    sent again before then; each retry waits about twice as long (capped at an hour);
    after MAX_ATTEMPTS the delivery is failed with the last status and error kept."""
    receiver.status, receiver.answer = 500, b"database\n  unavailable"
    now = utcnow()
    [delivery_id] = add_firings(ms, receiver.url, at=now)
    [first] = deliver_due(ms.engine, settings=SIGNED, now=now)
    stored = row(ms, delivery_id)
    assert (stored.status, stored.attempts, stored.last_status) == ("pending", 1, 500)
    assert stored.last_error == "HTTP 500: database unavailable"
    assert now + timedelta(seconds=10) <= stored.next_attempt_at < now + timedelta(seconds=12)
    assert first.next_attempt_at == stored.next_attempt_at
    assert deliver_due(ms.engine, settings=SIGNED, now=now + timedelta(seconds=9)) == []
    waits = []
    while stored.status == "pending":
        at = stored.next_attempt_at
        receiver.clock = lambda at=at: int(at.timestamp())  # type: ignore[misc]
        deliver_due(ms.engine, settings=SIGNED, now=at)
        stored = row(ms, delivery_id)
        waits.append((stored.next_attempt_at - at).total_seconds())
    assert (stored.status, stored.attempts, stored.last_status) == ("failed", MAX_ATTEMPTS, 500)
    assert stored.last_error == "HTTP 500: database unavailable"
    assert stored.delivered_at is None
    assert len(receiver.received) == MAX_ATTEMPTS
    assert {r.verified for r in receiver.received} == {"ok"}
    assert {r.headers[DELIVERY_HEADER] for r in receiver.received} == {str(delivery_id)}
    assert 20 <= waits[0] < 23  # after the second attempt
    assert 3600 <= waits[-2] < 3961  # capped at an hour (plus jitter)
    assert waits[-1] < 1  # failed: no next attempt


def test_a_receiver_that_cannot_be_reached_is_retried_with_the_error_kept(
    ms: Metersync, receiver: Receiver
) -> None:
    """A refused connection counts as a failed attempt: no status, the error named."""
    url = receiver.url
    receiver.shutdown()
    receiver.server_close()
    now = utcnow()
    [delivery_id] = add_firings(ms, url, at=now)
    [result] = deliver_due(ms.engine, settings=SIGNED, now=now)
    stored = row(ms, delivery_id)
    assert (stored.status, stored.attempts, stored.last_status) == ("pending", 1, None)
    assert stored.last_error is not None
    assert stored.last_error.startswith("ConnectError: ")
    assert result.error == stored.last_error


def test_a_redirect_is_not_followed(ms: Metersync, receiver: Receiver) -> None:
    """A 3xx answer is a failed attempt: the body is not re-posted where it points."""
    receiver.status = 302
    now = utcnow()
    [delivery_id] = add_firings(ms, receiver.url, at=now)
    deliver_due(ms.engine, settings=SIGNED, now=now)
    stored = row(ms, delivery_id)
    assert (stored.status, stored.last_status, len(receiver.received)) == ("pending", 302, 1)


def test_the_secret_never_appears_in_errors_or_logs(ms: Metersync, receiver: Receiver) -> None:
    """A receiver echoing the secret in its 500 body, and a sender failing with the secret
    in its exception, leave "[redacted]" in last_error; no log line holds the secret."""
    receiver.status, receiver.answer = 500, f"bad config: secret={SECRET}".encode()
    now = utcnow()
    [echoed] = add_firings(ms, receiver.url, at=now)

    def leaky(url: str, *, content: bytes, headers: Headers, timeout: float) -> httpx.Response:
        raise RuntimeError(f"could not sign with {SECRET}")

    with structlog.testing.capture_logs() as logs:
        deliver_due(ms.engine, settings=SIGNED, now=now)
        [raised] = add_firings(ms, receiver.url, at=now)
        deliver_due(ms.engine, settings=SIGNED, now=now, post=leaky)
    assert row(ms, echoed).last_error == f"HTTP 500: bad config: secret={REDACTED}"
    assert row(ms, raised).last_error == f"RuntimeError: could not sign with {REDACTED}"
    assert [e["event"] for e in logs] == ["alert.delivery_retry", "alert.delivery_retry"]
    assert SECRET not in repr(logs)


def test_an_overlong_error_is_cut(ms: Metersync, receiver: Receiver) -> None:
    """A receiver's long error page is kept as its first 500 characters."""
    receiver.status, receiver.answer = 503, b"x" * 10_000
    now = utcnow()
    [delivery_id] = add_firings(ms, receiver.url, at=now)
    deliver_due(ms.engine, settings=SIGNED, now=now)
    error = row(ms, delivery_id).last_error
    assert error is not None
    assert len(error) == 500
    assert error.startswith("HTTP 503: xxx")
    assert error.endswith("…")


def test_the_post_gets_the_timeout_and_the_signed_headers(ms: Metersync) -> None:
    """The injected sender is called with the URL, a 10 s timeout and all four headers."""
    calls: list[dict[str, Any]] = []

    def fake(url: str, *, content: bytes, headers: Headers, timeout: float) -> httpx.Response:
        calls.append({"url": url, "content": content, "headers": headers, "timeout": timeout})
        return httpx.Response(204)

    now = utcnow()
    [delivery_id] = add_firings(ms, "https://hooks.example.com/a?b=c", at=now)
    [result] = deliver_due(ms.engine, settings=SIGNED, now=now, post=fake)
    [call] = calls
    assert (call["url"], call["timeout"], TIMEOUT) == ("https://hooks.example.com/a?b=c", 10, 10)
    headers = call["headers"]
    assert sorted(headers) == sorted(
        ["Content-Type", "User-Agent", HEADER, DELIVERY_HEADER]
    )  # fmt: skip
    assert verify(call["content"], headers[HEADER], secrets=[SECRET], tolerance=0,
                  now=int(now.timestamp())) == int(now.timestamp())  # fmt: skip
    assert (result.status, result.last_status) == ("delivered", 204)
    assert row(ms, delivery_id).status == "delivered"


def test_without_a_secret_nothing_is_posted_and_the_delivery_fails_saying_why(
    ms: Metersync, receiver: Receiver
) -> None:
    """No METERSYNC_ALERT_WEBHOOK_SECRET: no request at all; the delivery is failed with
    an error naming the setting."""
    now = utcnow()
    [delivery_id] = add_firings(ms, receiver.url, at=now)
    [result] = deliver_due(ms.engine, settings=UNSIGNED, now=now)
    stored = row(ms, delivery_id)
    assert receiver.received == []
    assert (stored.status, stored.last_status) == ("failed", None)
    assert stored.last_error == UNSIGNED_ERROR
    assert "set METERSYNC_ALERT_WEBHOOK_SECRET" in UNSIGNED_ERROR
    assert result.status == "failed"


def test_a_url_that_is_not_http_fails_without_a_post(ms: Metersync) -> None:
    """A stored ``ftp://`` URL fails at once: retrying cannot help."""
    now = utcnow()
    [delivery_id] = add_firings(ms, "ftp://127.0.0.1/hook", at=now)
    deliver_due(ms.engine, settings=SIGNED, now=now, post=_never)
    stored = row(ms, delivery_id)
    assert stored.status == "failed"
    assert stored.last_error == "not sent: the URL must be http:// or https://"


def _never(url: str, *, content: bytes, headers: Headers, timeout: float) -> httpx.Response:
    raise AssertionError(f"posted to {url}")


def test_a_delivery_not_yet_due_or_not_pending_is_left_alone(ms: Metersync) -> None:
    """Only pending deliveries whose next_attempt_at has come are sent."""
    now = utcnow()
    [later] = add_firings(ms, "http://127.0.0.1:9/", at=now + timedelta(seconds=1))
    [done] = add_firings(ms, "http://127.0.0.1:9/", at=now)
    with ms.engine.begin() as conn:
        conn.execute(_DELIVERIES.update().where(_DELIVERIES.c.id == done).values(status="failed"))
    assert deliver_due(ms.engine, settings=SIGNED, now=now, post=_never) == []
    assert (row(ms, later).attempts, row(ms, done).attempts) == (0, 0)


# --- several senders --------------------------------------------------------------------


def test_concurrent_senders_post_each_delivery_exactly_once(
    ms: Metersync, receiver: Receiver
) -> None:
    """Four senders started together on 24 due deliveries post each exactly once, and
    between them report each delivery once."""
    receiver.delay = 0.02
    now = utcnow()
    ids = add_firings(ms, receiver.url, count=24, at=now)
    start = threading.Barrier(4)

    def sender() -> list[int]:
        start.wait()
        return [r.delivery_id for r in deliver_due(ms.engine, settings=SIGNED, now=now)]

    with ThreadPoolExecutor(4) as pool:
        reported = [i for found in pool.map(lambda _: sender(), range(4)) for i in found]
    posted = [int(r.headers[DELIVERY_HEADER]) for r in receiver.received]
    assert sorted(posted) == sorted(ids)
    assert sorted(reported) == sorted(ids)
    assert {row(ms, i).status for i in ids} == {"delivered"}
    assert {row(ms, i).attempts for i in ids} == {1}


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_delivery_locked_by_another_sender_is_skipped_not_waited_for(
    ms: Metersync, receiver: Receiver
) -> None:
    """While another transaction holds one delivery's row lock (a sender mid-claim), a
    sweep sends the others at once and leaves that one (SKIP LOCKED)."""
    now = utcnow()
    held, free = add_firings(ms, receiver.url, count=2, at=now)
    done: list[list[int]] = []
    with ms.engine.connect() as other, other.begin():
        other.execute(_DELIVERIES.select().where(_DELIVERIES.c.id == held).with_for_update())
        sweep = threading.Thread(
            target=lambda: done.append(
                [r.delivery_id for r in deliver_due(ms.engine, settings=SIGNED, now=now)]
            )
        )
        sweep.start()
        sweep.join(10)
        finished_while_locked = not sweep.is_alive()
    sweep.join(10)
    assert finished_while_locked
    assert done == [[free]]
    assert (row(ms, held).status, row(ms, held).attempts) == ("pending", 0)


# --- the scheduler's sweep --------------------------------------------------------------


def test_the_scheduler_sweep_delivers_in_the_background(db_url: str, receiver: Receiver) -> None:
    """AlertSweeper starts deliver_once in a thread, not twice within its interval, and
    the due delivery is delivered with the secret from the settings."""
    client = adapter.connect(
        Settings(database_url=db_url, auto_migrate=True, alert_webhook_secret=SECRET)
    )
    try:
        client.accounts.upsert("acct_1", stripe_customer_id="cus_123")
        client.meters.upsert("api_calls", aggregation="sum")
        [delivery_id] = add_firings(client, receiver.url, at=utcnow())
        sweeper = AlertSweeper(client)
        assert sweeper.run_once() is True
        assert sweeper.run_once() is False
        sweeper.join(10)
        assert row(client, delivery_id).status == "delivered"
        assert [r.verified for r in receiver.received] == ["ok"]
        assert deliver_once(client) == 0
    finally:
        client.close()


def test_a_failing_sweep_is_logged_and_the_next_one_still_starts() -> None:
    """An exception in a sweep is logged, not raised, and does not stop later sweeps."""
    ticks = iter([0.0, 5.0])
    calls: list[int] = []

    def broken(_ms: Metersync) -> int:
        calls.append(1)
        raise RuntimeError("database down")

    sweeper = AlertSweeper(None, deliver=broken, monotonic=lambda: next(ticks))  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        assert sweeper.run_once() is True
        sweeper.join(5)
        assert sweeper.run_once() is True
        sweeper.join(5)
    assert len(calls) == 2
    assert [e["event"] for e in logs] == ["scheduler.alert_deliveries_failed"] * 2


# --- pure parts -------------------------------------------------------------------------


def test_backoff_doubles_from_ten_seconds_to_an_hour() -> None:
    """10 s after the first failure, doubling, never more than an hour; jitter adds at
    most a tenth."""
    waits = [backoff(n).total_seconds() for n in range(1, 13)]
    assert waits[:5] == [10, 20, 40, 80, 160]
    assert max(waits) == 3600
    assert waits[-1] == 3600
    assert backoff(1, jitter=0.999).total_seconds() == pytest.approx(10.999)


def test_a_stripe_firing_without_a_local_alert_carries_stripes_ids() -> None:
    """A firing from Stripe's billing alert has no local alert; the body names Stripe's
    alert and event instead."""
    fired = datetime(2026, 12, 7, 12, tzinfo=UTC)
    firing = AlertFiring(id=7, source="stripe", metric="usage", value=Decimal("1E+3"),
                         threshold=Decimal("1000.00"), fired_at=fired,
                         stripe_alert_id="alrt_123", stripe_event_id="evt_456")  # fmt: skip
    body = payload_of(firing, None, "acct_1", None)
    assert body["id"] == "alrt_fire_7"
    assert body["created"] == int(fired.timestamp())
    data = body["data"]
    assert (data["alert_id"], data["alert"], data["period_start"]) == (None, None, None)
    assert (data["value"], data["threshold"]) == ("1000", "1000")
    assert (data["stripe_alert_id"], data["stripe_event_id"]) == ("alrt_123", "evt_456")
