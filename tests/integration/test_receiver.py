"""POST /webhooks/stripe on SQLite and PostgreSQL: verified deliveries are stored once and
enqueued once; anything unverified, unreadable or too large is refused and not stored."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr
from structlog.testing import capture_logs

from adapter.client import Metersync
from adapter.store.mirror_models import Invoice, WebhookDelivery
from adapter.store.models import table
from config import defaults
from tests.servers import Redis
from tests.signing import SECRET, event, sign, signed_headers
from webhooks.app import create_app
from webhooks.signature import FUTURE_SKEW
from workers.actors import declare
from workers.broker import QUEUE, make_broker

_DELIVERIES = table(WebhookDelivery)
URL = "/webhooks/stripe"
LIMIT = defaults.WEBHOOK_MAX_BODY


@pytest.fixture(autouse=True)
def _no_deliveries(ms: Metersync) -> None:
    """The shared PostgreSQL database keeps mirror tables between tests: empty them."""
    with ms.engine.begin() as conn:
        conn.execute(_DELIVERIES.delete())
        conn.execute(table(Invoice).delete())


@pytest.fixture
def enqueued() -> list[int]:
    """Delivery ids handed to the (fake) worker queue."""
    return []


def make_client(
    ms: Metersync,
    enqueue: Callable[[int], object] | None,
    *,
    secret: str | None = SECRET,
    tolerance: int = defaults.WEBHOOK_TOLERANCE,
) -> TestClient:
    """A client of an app on ``ms`` with the given webhook secret(s)."""
    update: dict[str, Any] = {
        "stripe_webhook_secret": SecretStr(secret) if secret else None,
        "webhook_tolerance": tolerance,
    }
    app = create_app(ms.settings.model_copy(update=update), ms=ms, enqueue=enqueue)
    return TestClient(app)


@pytest.fixture
def client(ms: Metersync, enqueued: list[int]) -> Iterator[TestClient]:
    """A client whose app records enqueued delivery ids."""
    with make_client(ms, enqueued.append) as test_client:
        yield test_client


def rows(ms: Metersync) -> list[Any]:
    """Every stored delivery, in insertion order."""
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(_DELIVERIES).order_by(_DELIVERIES.c.id)).all())


def post(client: TestClient, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST ``body`` to the receiver, signed unless headers are given."""
    return client.post(URL, content=body, headers=headers or signed_headers(body))


def assert_error(response: httpx.Response, status: int, kind: str) -> None:
    """The response is a JSON error of this status and type, with a message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == kind
    assert isinstance(error["message"], str)
    assert error["message"]


def test_good_delivery_is_stored_once_and_enqueued_once(
    client: TestClient, ms: Metersync, enqueued: list[int]
) -> None:
    """A signed event answers 200 not-duplicate, is stored as received and enqueued by id."""
    body = event("evt_good", "customer.subscription.updated")
    response = post(client, body)
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    [row] = rows(ms)
    assert (row.event_id, row.type, row.status, row.source) == (
        "evt_good",
        "customer.subscription.updated",
        "received",
        "webhook",
    )
    assert row.object_id == "sub_1"
    assert row.payload == json.loads(body)
    assert enqueued == [row.id]


def test_duplicate_answers_200_and_is_not_enqueued(
    client: TestClient, ms: Metersync, enqueued: list[int]
) -> None:
    """The same event id again answers duplicate, stores nothing and enqueues nothing."""
    body = event("evt_dup")
    assert post(client, body).json()["duplicate"] is False
    again = post(client, body)
    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    assert len(rows(ms)) == 1
    assert len(enqueued) == 1


def test_two_copies_at_once_store_one_row_and_enqueue_once(
    ms: Metersync, enqueued: list[int]
) -> None:
    """Copies of one event racing in parallel threads: one row, one enqueue, the others
    answer duplicate."""
    body = event("evt_race")
    copies = 8
    barrier = threading.Barrier(copies)
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def send(client: TestClient) -> None:
        barrier.wait()
        answer = post(client, body).json()
        with lock:
            answers.append(answer)

    with make_client(ms, enqueued.append) as client:
        threads = [threading.Thread(target=send, args=(client,)) for _ in range(copies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(a["duplicate"] for a in answers) == [False] + [True] * (copies - 1)
    assert len(rows(ms)) == 1
    assert enqueued == [rows(ms)[0].id]


def _stale() -> str:
    return sign(event("evt_bad"), SECRET, timestamp=int(time.time()) - 301)


def _future() -> str:
    return sign(event("evt_bad"), SECRET, timestamp=int(time.time()) + FUTURE_SKEW + 60)


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        (lambda: sign(event("evt_bad"), "whsec_wrong"), "signature_mismatch"),
        (lambda: sign(event("evt_other"), SECRET), "signature_mismatch"),  # another body
        (_stale, "signature_too_old"),
        (_future, "signature_in_future"),
        (lambda: None, "signature_missing"),
        (lambda: "t=now,v1=abc", "signature_malformed"),
    ],
    ids=["wrong-secret", "tampered", "stale", "future", "missing", "malformed"],
)
def test_unverified_delivery_is_400_and_not_stored(
    client: TestClient,
    ms: Metersync,
    enqueued: list[int],
    header: Callable[[], str | None],
    kind: str,
) -> None:
    """Bad, stale, future, missing or malformed signatures answer 400 and store nothing."""
    value = header()
    headers = {"Content-Type": "application/json"}
    if value is not None:
        headers["Stripe-Signature"] = value
    response = post(client, event("evt_bad"), headers)
    assert_error(response, 400, kind)
    assert SECRET not in response.text
    assert rows(ms) == []
    assert enqueued == []


def test_tolerance_comes_from_settings(ms: Metersync, enqueued: list[int]) -> None:
    """METERSYNC_WEBHOOK_TOLERANCE widens the accepted age of a signature."""
    body = event("evt_old_ok")
    headers = signed_headers(body, timestamp=int(time.time()) - 600)
    with make_client(ms, enqueued.append, tolerance=900) as client:
        assert post(client, body, headers).status_code == 200
    assert len(rows(ms)) == 1


def test_rotated_secrets_either_one_verifies(ms: Metersync, enqueued: list[int]) -> None:
    """With two comma-separated secrets, a delivery signed by the second is accepted."""
    body = event("evt_rotated")
    with make_client(ms, enqueued.append, secret="whsec_old, whsec_new") as client:
        response = post(client, body, signed_headers(body, "whsec_new"))
    assert response.status_code == 200
    assert [r.event_id for r in rows(ms)] == ["evt_rotated"]


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b'{"id": "evt_x", "type": ', "invalid_json"),
        (b"\xff\xfe not utf-8", "invalid_json"),
        (b'["evt_x"]', "invalid_event"),
        (b'{"id": "evt_x", "created": 1767225600}', "invalid_event"),
        (b'{"id": "evt_x", "type": "invoice.paid", "created": "yesterday"}', "invalid_event"),
    ],
    ids=["truncated", "not-utf8", "list", "no-type", "bad-created"],
)
def test_signed_but_unreadable_body_is_400(
    client: TestClient, ms: Metersync, enqueued: list[int], body: bytes, kind: str
) -> None:
    """Malformed JSON, or JSON that is not a Stripe event, answers 400 and stores nothing."""
    assert_error(post(client, body), 400, kind)
    assert rows(ms) == []
    assert enqueued == []


def test_unknown_event_type_is_stored_and_enqueued(
    client: TestClient, ms: Metersync, enqueued: list[int]
) -> None:
    """Types metersync does not mirror are still stored (the worker marks them ignored)."""
    body = event("evt_radar", "radar.early_fraud_warning.created", obj={"id": "issfr_1"})
    assert post(client, body).json() == {"received": True, "duplicate": False}
    [row] = rows(ms)
    assert (row.type, row.status) == ("radar.early_fraud_warning.created", "received")
    assert enqueued == [row.id]


def padded_event(size: int) -> bytes:
    """A valid event of exactly ``size`` bytes."""
    base = event("evt_big", obj={"id": "sub_1", "pad": ""})
    body = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(base)) + b'"')
    assert len(body) == size
    return body


def test_body_of_exactly_the_limit_is_accepted(client: TestClient, ms: Metersync) -> None:
    """A body of exactly WEBHOOK_MAX_BODY bytes is within the limit."""
    assert post(client, padded_event(LIMIT)).status_code == 200
    assert len(rows(ms)) == 1


def test_oversized_body_with_content_length_is_413(client: TestClient, ms: Metersync) -> None:
    """A declared Content-Length past the limit answers 413 and stores nothing."""
    response = post(client, padded_event(LIMIT + 1))
    assert_error(response, 413, "payload_too_large")
    assert rows(ms) == []


def _chunks(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("declared", [None, "100"], ids=["chunked", "lying-length"])
def test_oversized_streamed_body_is_413(
    client: TestClient, ms: Metersync, declared: str | None
) -> None:
    """A body streamed in chunks, with no Content-Length or one that understates it, is
    counted as it arrives and refused past the limit."""
    body = padded_event(LIMIT + 1024)
    headers = signed_headers(body)
    if declared is not None:
        headers["Content-Length"] = declared
    response = client.post(URL, content=_chunks(body), headers=headers)
    assert_error(response, 413, "payload_too_large")
    assert rows(ms) == []


def test_chunked_body_over_real_http_is_413(ms: Metersync, enqueued: list[int]) -> None:
    """Under uvicorn on a loopback port, a chunked upload past the limit is cut off with
    413 before all of it is read."""
    app = create_app(
        ms.settings.model_copy(update={"stripe_webhook_secret": SecretStr(SECRET)}),
        ms=ms,
        enqueue=enqueued.append,
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        body = padded_event(3 * LIMIT)
        # The server may answer and close before the upload ends.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", URL, body=_chunks(body), headers=signed_headers(body))
        response = conn.getresponse()
        payload = json.loads(response.read())
        conn.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert response.status == 413
    assert payload["error"]["type"] == "payload_too_large"
    assert rows(ms) == []


def test_no_secret_configured_is_503_and_stores_nothing(ms: Metersync, enqueued: list[int]) -> None:
    """Without METERSYNC_STRIPE_WEBHOOK_SECRET nothing can be verified: 503 naming the
    variable (Stripe retries), and nothing stored."""
    body = event("evt_unconfigured")
    with make_client(ms, enqueued.append, secret=None) as client:
        response = post(client, body)
    assert_error(response, 503, "webhook_not_configured")
    assert "METERSYNC_STRIPE_WEBHOOK_SECRET" in response.json()["error"]["message"]
    assert rows(ms) == []
    assert enqueued == []


def test_enqueue_failure_still_answers_200_and_keeps_the_row(ms: Metersync) -> None:
    """A broker failure after the row is committed answers 200: the row is the outbox,
    left received for the sweep."""

    def broken(_delivery_id: int) -> None:
        raise ConnectionError("broker down")

    body = event("evt_outbox")
    with make_client(ms, broken) as client, capture_logs() as logs:
        response = post(client, body)
    assert response.json() == {"received": True, "duplicate": False}
    assert [(r.event_id, r.status) for r in rows(ms)] == [("evt_outbox", "received")]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["webhook.enqueue_failed"]


def test_one_log_line_per_delivery_without_body_or_secret(
    client: TestClient, ms: Metersync
) -> None:
    """Each delivery logs one webhook.received line with its id and type, never the
    payload or the secret."""
    body = event("evt_logged", "invoice.created", obj={"id": "in_1", "secret_note": "s3cr3t"})
    with capture_logs() as logs:
        post(client, body)
        post(client, body)
    received = [e for e in logs if e["event"] == "webhook.received"]
    assert [(e["event_id"], e["event_type"], e["duplicate"]) for e in received] == [
        ("evt_logged", "invoice.created", False),
        ("evt_logged", "invoice.created", True),
    ]
    text = repr(logs)
    assert "s3cr3t" not in text
    assert SECRET not in text


def _queued_webhook_ids(redis_url: str) -> list[int]:
    """Delivery ids of the process_webhook messages waiting in the Redis broker."""
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hvals(f"dramatiq:{QUEUE}.msgs")
    finally:
        client.close()
    messages = [json.loads(value) for value in raw]
    return [m["args"][0] for m in messages if m["actor_name"] == "process_webhook"]


@pytest.mark.redis
def test_default_enqueue_sends_process_webhook_to_the_broker(
    ms: Metersync, redis_server: Redis
) -> None:
    """With no enqueue given, the app sends process_webhook(delivery_id) on the broker the
    settings name, built on first use."""
    settings = ms.settings.model_copy(
        update={"stripe_webhook_secret": SecretStr(SECRET), "redis_url": redis_server.url}
    )
    handle = make_broker(settings)
    declare(handle, ms)  # flush_all empties declared queues only
    handle.broker.flush_all()
    try:
        with TestClient(create_app(settings, ms=ms)) as client:
            assert post(client, event("evt_queued")).json()["duplicate"] is False
        assert _queued_webhook_ids(redis_server.url) == [rows(ms)[0].id]
    finally:
        handle.broker.flush_all()
        handle.close()
