"""The usage and ops HTTP API, /healthz and /metrics on SQLite and PostgreSQL: token
rules, usage by period and invoice, batches, the schedule with its audit log, health, and
JSON errors everywhere."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapter.client import Metersync
from adapter.store.mirror_models import Invoice, WebhookDelivery
from adapter.store.models import AuditLog, UsageEvent, UsageReport, table, utcnow
from config.settings import Settings
from tests.servers import Redis
from webhooks import api
from webhooks.app import create_app
from webhooks.errors import HttpError

TOKEN = "ops-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_INVOICES, _AUDIT = table(Invoice), table(AuditLog)
_EVENTS, _REPORTS, _DELIVERIES = table(UsageEvent), table(UsageReport), table(WebhookDelivery)
#: The start of the current hour, so that test events sit well inside report windows.
HOUR = utcnow().replace(minute=0, second=0, microsecond=0)


@pytest.fixture(autouse=True)
def _no_mirror_rows(ms: Metersync) -> None:
    """The shared PostgreSQL database keeps mirror tables between tests: empty them."""
    with ms.engine.begin() as conn:
        conn.execute(_DELIVERIES.delete())
        conn.execute(_INVOICES.delete())


def make_client(ms: Metersync, *, token: str | None = TOKEN, **settings: object) -> TestClient:
    """A client of an app on ``ms`` with the given ops token and settings."""
    update = {"ops_token": SecretStr(token) if token else None, **settings}
    app = create_app(ms.settings.model_copy(update=update), ms=ms, enqueue=lambda _id: None)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(ms: Metersync) -> Iterator[TestClient]:
    """A client of an app with the ops token configured."""
    with make_client(ms) as test_client:
        yield test_client


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """The response is a JSON error of this status and type, with a message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == kind
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def stored_events(ms: Metersync) -> int:
    """How many usage events are stored."""
    with ms.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(_EVENTS)).scalar_one())


def audit_rows(ms: Metersync) -> list[Any]:
    """Audit rows about the schedule, oldest first."""
    with ms.engine.connect() as conn:
        query = sa.select(_AUDIT).where(_AUDIT.c.action.startswith("schedule."))
        return list(conn.execute(query.order_by(_AUDIT.c.id)).all())


PROTECTED = [
    ("GET", "/v1/accounts/acct_1/usage", None),
    ("GET", "/v1/schedule", None),
    ("PUT", "/v1/schedule", {"paused": True}),
    ("POST", "/v1/usage", {"items": [{"account": "acct_1", "quantity": 1}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_no_token_configured_refuses_with_403(
    ms: Metersync, method: str, path: str, body: object
) -> None:
    """Without METERSYNC_OPS_TOKEN every /v1 route answers 403 naming the variable, even
    to a request carrying a token, and changes nothing."""
    with make_client(ms, token=None) as client:
        response = client.request(method, path, json=body, headers=AUTH)
    error = assert_error(response, 403, "ops_api_disabled")
    assert "METERSYNC_OPS_TOKEN" in error["message"]
    assert stored_events(ms) == 0
    assert audit_rows(ms) == []


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_token_is_401_with_bearer_challenge(
    client: TestClient, ms: Metersync, method: str, path: str, body: object
) -> None:
    """No Authorization header: 401 with WWW-Authenticate: Bearer, nothing changed."""
    response = client.request(method, path, json=body)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"
    assert stored_events(ms) == 0
    assert audit_rows(ms) == []


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_wrong_token_is_401_invalid_token(
    client: TestClient, ms: Metersync, method: str, path: str, body: object
) -> None:
    """A wrong bearer token (or another scheme) answers 401 and never echoes the token."""
    wrong = {"Authorization": f"Bearer {TOKEN}x"}
    response = client.request(method, path, json=body, headers=wrong)
    assert_error(response, 401, "invalid_token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert TOKEN not in response.text
    basic = client.request(method, path, json=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert_error(basic, 401, "unauthorized")
    assert stored_events(ms) == 0


def test_healthz_and_metrics_need_no_token(ms: Metersync) -> None:
    """/healthz and /metrics stay open even with no token configured."""
    with make_client(ms, token=None) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_usage_by_dates(client: TestClient, ms: Metersync) -> None:
    """period_start/period_end select the period; per-meter values come back as strings."""
    ms.increment("acct_1", 5, meter="api_calls", timestamp=HOUR - timedelta(hours=30))
    ms.increment("acct_1", 2, meter="api_calls", timestamp=HOUR - timedelta(hours=3))
    params = {
        "period_start": (HOUR - timedelta(hours=10)).isoformat(),
        "period_end": (HOUR + timedelta(hours=1)).isoformat(),
    }
    body = client.get("/v1/accounts/acct_1/usage", params=params, headers=AUTH).json()
    assert body["period_source"] == "requested"
    assert datetime.fromisoformat(body["period_start"]) == HOUR - timedelta(hours=10)
    assert body["meters"]["api_calls"] == {
        "quantity": "2",
        "sent": "0",
        "pending": "2",
        "events": 1,
        "aggregation": "sum",
        "amount": None,
        "currency": None,
        "price": None,
        "rating_error": None,
    }
    assert body["meters"]["peak"]["events"] == 0


def test_usage_defaults_to_the_current_billing_period(client: TestClient, ms: Metersync) -> None:
    """With no dates the account's current billing period from the mirror is used."""
    start, end = HOUR - timedelta(days=3), HOUR + timedelta(days=27)
    ms.set_billing_period("acct_1", start, end)
    ms.increment("acct_1", 7, meter="api_calls", timestamp=HOUR - timedelta(hours=2))
    body = client.get("/v1/accounts/acct_1/usage", headers=AUTH).json()
    assert body["period_source"] == "billing_period"
    assert datetime.fromisoformat(body["period_start"]) == start
    assert datetime.fromisoformat(body["period_end"]) == end
    assert body["meters"]["api_calls"]["quantity"] == "7"


def add_invoice(
    ms: Metersync, invoice_id: str, customer: str, start: datetime, end: datetime
) -> None:
    """Mirror an invoice row as the webhook handlers would."""
    with ms.engine.begin() as conn:
        conn.execute(
            _INVOICES.insert().values(
                id=invoice_id,
                livemode=False,
                meta={},
                deleted=False,
                updated_at=utcnow(),
                customer_id=customer,
                status="draft",
                period_start=start,
                period_end=end,
            )
        )


def test_usage_by_invoice_uses_the_invoice_period(client: TestClient, ms: Metersync) -> None:
    """invoice=in_… answers the usage over the mirrored invoice's period."""
    start, end = HOUR - timedelta(hours=48), HOUR - timedelta(hours=24)
    add_invoice(ms, "in_1", "cus_123", start, end)
    ms.increment("acct_1", 4, meter="api_calls", timestamp=HOUR - timedelta(hours=30))
    ms.increment("acct_1", 9, meter="api_calls", timestamp=HOUR - timedelta(hours=2))
    body = client.get("/v1/accounts/acct_1/usage?invoice=in_1", headers=AUTH).json()
    assert body["invoice"] == "in_1"
    assert datetime.fromisoformat(body["period_start"]) == start
    assert datetime.fromisoformat(body["period_end"]) == end
    assert body["meters"]["api_calls"]["quantity"] == "4"


def test_usage_by_invoice_errors(client: TestClient, ms: Metersync) -> None:
    """Unknown invoices and other customers' invoices are 404; invoice with dates is 422."""
    ms.accounts.upsert("acct_2", stripe_customer_id="cus_other")
    add_invoice(ms, "in_theirs", "cus_other", HOUR - timedelta(days=2), HOUR)
    url = "/v1/accounts/acct_1/usage"
    assert_error(client.get(f"{url}?invoice=in_nope", headers=AUTH), 404, "not_found")
    assert_error(client.get(f"{url}?invoice=in_theirs", headers=AUTH), 404, "not_found")
    mixed = f"{url}?invoice=in_theirs&period_start=2026-01-01&period_end=2026-02-01"
    assert_error(client.get(mixed, headers=AUTH), 422, "validation_error")


def test_usage_bad_input(client: TestClient) -> None:
    """Unknown accounts are 404; a reversed or half period is 422."""
    assert_error(client.get("/v1/accounts/nobody/usage", headers=AUTH), 404, "not_found")
    url = "/v1/accounts/acct_1/usage"
    reversed_ = f"{url}?period_start=2026-02-01&period_end=2026-01-01"
    assert_error(client.get(reversed_, headers=AUTH), 422, "invalid_usage")
    assert_error(client.get(f"{url}?period_start=2026-02-01", headers=AUTH), 422, "invalid_usage")
    assert_error(client.get(f"{url}?meter=nope", headers=AUTH), 404, "not_found")


def test_post_usage_mixed_batch(client: TestClient, ms: Metersync) -> None:
    """Valid items are stored, invalid ones come back with index and reason; a repeated
    key is a duplicate."""
    items = [
        {"account": "acct_1", "meter": "api_calls", "quantity": 3, "idempotency_key": "k1"},
        {"account": "acct_1", "meter": "api_calls", "quantity": -1},
        {"account": "acct_1", "meter": "api_calls", "quantity": 3, "idempotency_key": "k1"},
        {"account": "nobody", "meter": "api_calls", "quantity": 1},
    ]
    response = client.post("/v1/usage", json={"items": items}, headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (1, 1)
    assert [r["index"] for r in body["rejected"]] == [1, 3]
    assert "negative" in body["rejected"][0]["error"]
    assert "nobody" in body["rejected"][1]["error"]
    first = body["receipts"][0]
    assert (first["account"], first["meter"], first["quantity"]) == ("acct_1", "api_calls", "3")
    assert body["receipts"][2]["duplicate"] is True
    assert body["receipts"][1] is None
    assert stored_events(ms) == 1


def test_post_usage_bare_list_and_decimal_quantity(client: TestClient, ms: Metersync) -> None:
    """A bare list works like {"items": …}; 0.1 stays exactly 0.1."""
    response = client.post(
        "/v1/usage",
        json=[{"account": "acct_1", "meter": "api_calls", "quantity": 0.1}],
        headers=AUTH,
    )
    assert response.json()["accepted"] == 1
    assert response.json()["receipts"][0]["quantity"] == "0.1"
    assert ms.get_usage("acct_1").meters["api_calls"].quantity == Decimal("0.1")


def test_post_usage_all_rejected_is_422_and_stores_nothing(
    client: TestClient, ms: Metersync
) -> None:
    """When every item is rejected the answer is 422 with the per-item reasons."""
    items = [{"account": "acct_1", "quantity": "lots"}, {"account": "acct_1", "colour": "red"}]
    response = client.post("/v1/usage", json=items, headers=AUTH)
    assert_error(response, 422, "invalid_usage")
    assert [r["index"] for r in response.json()["rejected"]] == [0, 1]
    assert stored_events(ms) == 0


@pytest.mark.parametrize(
    ("content", "status", "kind"),
    [
        (b'{"items": [', 400, "invalid_json"),
        (b'{"items": {"account": "acct_1"}}', 422, "validation_error"),
        (b'{"items": [], "extra": 1}', 422, "validation_error"),
        (b'"acct_1"', 422, "validation_error"),
    ],
)
def test_post_usage_malformed_body(
    client: TestClient, ms: Metersync, content: bytes, status: int, kind: str
) -> None:
    """Bodies that are not JSON or not a batch are refused whole."""
    response = client.post("/v1/usage", content=content, headers=AUTH)
    assert_error(response, status, kind)
    assert stored_events(ms) == 0


def test_post_usage_batch_cap(client: TestClient, ms: Metersync) -> None:
    """More than MAX_BATCH items answers 413 and stores nothing."""
    items = [{"account": "acct_1", "quantity": 1}] * (api.MAX_BATCH + 1)
    assert_error(client.post("/v1/usage", json=items, headers=AUTH), 413, "batch_too_large")
    assert stored_events(ms) == 0


def test_schedule_get(client: TestClient) -> None:
    """GET /v1/schedule shows the seeded schedule, running, with a next tick."""
    body = client.get("/v1/schedule", headers=AUTH).json()
    assert (body["expression"], body["paused"], body["updated_by"]) == (
        "every 1h",
        False,
        "settings",
    )
    assert datetime.fromisoformat(body["next_tick"]) > datetime.now(UTC)
    assert body["history"] == []


def test_schedule_put_changes_and_audits(client: TestClient, ms: Metersync) -> None:
    """PUT sets the expression and pauses; each change is audited with the API actor."""
    response = client.put(
        "/v1/schedule",
        json={"expression": "every 15m", "paused": True},
        headers=AUTH | {"X-Metersync-Actor": "alice"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["expression"], body["paused"], body["changed"]) == ("every 15m", True, True)
    assert body["next_tick"] is None
    assert ms.schedule.state().expression == "every 15m"
    assert [(r.actor, r.action) for r in audit_rows(ms)] == [
        ("api:alice", "schedule.set"),
        ("api:alice", "schedule.paused"),
    ]
    resumed = client.put("/v1/schedule", json={"paused": False}, headers=AUTH).json()
    assert resumed["paused"] is False
    assert resumed["history"][0]["actor"] == "api"
    again = client.put("/v1/schedule", json={"paused": False}, headers=AUTH).json()
    assert again["changed"] is False
    assert len(audit_rows(ms)) == 3


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"expression": "every 7m"}, 422, "invalid_schedule"),
        ({"expression": "every 15m", "paused": "yes"}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"expression": "every 15m", "colour": "red"}, 422, "validation_error"),
        ([], 400, "invalid_request"),
    ],
)
def test_schedule_put_bad_input_changes_nothing(
    client: TestClient, ms: Metersync, body: object, status: int, kind: str
) -> None:
    """A bad expression or body is refused whole: nothing stored, nothing audited."""
    response = client.put("/v1/schedule", json=body, headers=AUTH)
    assert_error(response, status, kind)
    assert ms.schedule.state().expression == "every 1h"
    assert audit_rows(ms) == []


def test_healthz_ok(client: TestClient) -> None:
    """With a working database and no Redis URL: ok, broker embedded (not checked)."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "embedded"}


@pytest.mark.redis
def test_healthz_pings_configured_redis(ms: Metersync, redis_server: Redis) -> None:
    """With METERSYNC_REDIS_URL set, the broker is pinged."""
    with make_client(ms, redis_url=redis_server.url) as client:
        assert client.get("/healthz").json()["broker"] == "ok"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_healthz_reports_an_unreachable_broker(ms: Metersync) -> None:
    """A Redis URL on a closed loopback port answers 503 naming the broker."""
    url = f"redis://127.0.0.1:{_closed_port()}/15"
    with make_client(ms, redis_url=url) as client:
        response = client.get("/healthz")
    error = assert_error(response, 503, "unhealthy")
    body = response.json()
    assert (body["status"], body["database"]) == ("error", "ok")
    assert body["broker"].startswith("error:")
    assert error["message"].startswith("broker error")


def test_healthz_reports_an_unreachable_database() -> None:
    """A database that cannot be reached answers 503 naming the database, without the
    password of its URL."""
    url = f"postgresql+psycopg://ops:hunter2@127.0.0.1:{_closed_port()}/nothing"
    with TestClient(create_app(Settings(database_url=url), enqueue=lambda _id: None)) as client:
        response = client.get("/healthz")
    assert_error(response, 503, "unhealthy")
    assert response.json()["database"].startswith("error:")
    assert "hunter2" not in response.text


def mark_sent(ms: Metersync, meter: str, *, closed_ago: float, sent_ago: float) -> None:
    """Mark the report of ``meter`` sent, closed and sent that many seconds ago."""
    now = utcnow()
    meter_id = ms.meters.get(meter).id
    with ms.engine.begin() as conn:
        conn.execute(
            _REPORTS.update()
            .where(_REPORTS.c.meter_id == meter_id)
            .values(
                status="sent",
                closed_at=now - timedelta(seconds=closed_ago),
                sent_at=now - timedelta(seconds=sent_ago),
            )
        )


def test_metrics_exposes_gauges_from_the_database(client: TestClient, ms: Metersync) -> None:
    """/metrics shows reports and events by status, deliveries, webhook lag and push
    latency quantiles over the last hour, computed from the rows, in Prometheus text."""
    for meter in ("api_calls", "requests", "peak", "seats"):
        ms.increment("acct_1", 5, meter=meter)
    ms.increment("acct_1", 1, meter="api_calls")
    mark_sent(ms, "api_calls", closed_ago=10, sent_ago=8)  # 2 s
    mark_sent(ms, "requests", closed_ago=10, sent_ago=4)  # 6 s
    mark_sent(ms, "peak", closed_ago=200, sent_ago=100)  # 100 s
    mark_sent(ms, "seats", closed_ago=9000, sent_ago=7200)  # sent two hours ago: left out
    with ms.engine.begin() as conn:
        conn.execute(
            _DELIVERIES.insert().values(
                event_id="evt_m",
                type="invoice.created",
                created=utcnow() - timedelta(seconds=120),
                payload={},
                status="received",
                received_at=utcnow(),
            )
        )
    client.post("/v1/usage", json=[{"account": "acct_1", "quantity": 2}], headers=AUTH)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    lines = dict(
        line.rsplit(" ", 1) for line in response.text.splitlines() if not line.startswith("#")
    )
    assert lines['metersync_reports{status="sent"}'] == "4.0"
    assert lines['metersync_reports{status="open"}'] == "1.0"  # the default meter's
    assert lines['metersync_reports{status="failed"}'] == "0.0"
    assert lines['metersync_reports{status="unlinked"}'] == "0.0"  # always present
    assert lines['metersync_usage_events{report_status="sent"}'] == "5.0"
    assert lines['metersync_usage_events{report_status="open"}'] == "1.0"
    assert lines['metersync_webhook_deliveries{status="received"}'] == "1.0"
    assert lines['metersync_webhook_deliveries{status="processed"}'] == "0.0"
    assert 119 <= float(lines["metersync_webhook_lag_seconds"]) < 180
    latency = {
        q: float(lines[f'metersync_push_latency_seconds{{quantile="{q}"}}'])
        for q in ["0.5", "0.99", "1"]
    }
    assert latency == pytest.approx({"0.5": 6, "0.99": 100, "1": 100}, abs=0.5)
    assert lines["metersync_push_latency_reports"] == "3.0"
    assert lines["metersync_usage_events_recorded_total"] == "1.0"
    assert lines["metersync_database_up"] == "1.0"


def test_metrics_without_a_database_says_so(ms: Metersync) -> None:
    """When the database cannot be read, the scrape still answers with database_up 0."""
    url = f"postgresql+psycopg://ops@127.0.0.1:{_closed_port()}/nothing"
    with TestClient(create_app(Settings(database_url=url), enqueue=lambda _id: None)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "metersync_database_up 0.0" in response.text
    assert "metersync_reports{" not in response.text


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("DELETE", "/v1/schedule", 405, "method_not_allowed"),
        ("GET", "/webhooks/stripe", 405, "method_not_allowed"),
        ("GET", "/v1/accounts/acct_1/usage?invoice=" + "x" * 300, 422, "validation_error"),
    ],
)
def test_framework_errors_are_json(
    client: TestClient, method: str, path: str, status: int, kind: str
) -> None:
    """Unknown routes, wrong methods and query validation answer the JSON error shape."""
    assert_error(client.request(method, path, headers=AUTH), status, kind)


def test_unexpected_error_is_500_json_without_details(
    client: TestClient, ms: Metersync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug answers 500 JSON that reveals nothing of the exception."""

    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("internal detail /etc/secret")

    monkeypatch.setattr(ms, "get_usage", broken)
    response = client.get("/v1/accounts/acct_1/usage", headers=AUTH)
    assert_error(response, 500, "internal_error")
    assert "secret" not in response.text


def test_app_builds_without_connecting_and_reports_bad_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """create_app() reads and connects nothing; invalid settings stop the app at startup,
    and (without a startup) answer a 500 JSON error naming the field, never its value."""
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("METERSYNC_DATABASE_URL", "mysql://root:hunter2@127.0.0.1/x")
    app = create_app()
    with pytest.raises(HttpError, match="database_url"), TestClient(app):
        pass
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan
    response = client.get("/v1/schedule", headers=AUTH)
    health = client.get("/healthz")
    error = assert_error(response, 500, "configuration_error")
    assert "database_url" in error["message"]
    assert "hunter2" not in response.text + health.text
    assert health.status_code == 503
