"""Closing and pushing reports to Stripe (meter events intercepted with ``responses``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs

import pytest
import responses
import sqlalchemy as sa
import stripe
import tenacity

import adapter
from adapter.client import Metersync
from adapter.gateway import Gateway
from adapter.pushing.outbox import close_reports
from adapter.store.models import UsageReport, table
from config.settings import Settings
from tests.conftest import _empty
from tests.servers import Postgres

EVENTS_URL = "https://api.stripe.com/v1/billing/meter_events"
_REPORTS = table(UsageReport)


def _gateway() -> Gateway:
    client = stripe.StripeClient(
        "sk_test_metersync_tests", http_client=stripe.RequestsClient(), max_network_retries=0
    )
    return Gateway(client=client, attempts=3, wait=tenacity.wait_none(), sleep=lambda _s: None)


@pytest.fixture
def live(db_url: str) -> Iterator[Metersync]:
    """A metersync with a Stripe gateway (HTTP intercepted) and a linked account."""
    ms = adapter.connect(Settings(database_url=db_url, auto_migrate=True), gateway=_gateway())
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.meters.upsert("api_calls", aggregation="sum")
    ms.meters.upsert("peak", aggregation="max")
    yield ms
    ms.close()


def _hour(ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=ago)


def _ok(request: object) -> tuple[int, dict[str, str], str]:
    body = parse_qs(request.body)  # type: ignore[attr-defined]
    answer = {"object": "billing.meter_event", "identifier": body["identifier"][0]}
    return 200, {"Request-Id": "req_ok"}, json.dumps(answer)


def _sent_bodies() -> list[dict[str, list[str]]]:
    return [parse_qs(call.request.body) for call in responses.calls]  # type: ignore[arg-type]


def _statuses(ms: Metersync) -> list[str]:
    with ms.engine.connect() as conn:
        query = sa.select(_REPORTS.c.status).order_by(_REPORTS.c.id)
        return list(conn.execute(query).scalars())


@responses.activate
def test_fractions_carry_within_a_period_and_nothing_is_sent_twice(live: Metersync) -> None:
    """2.5 then 3.7 in one period send 2 then 4; 0.2 stays pending; a second flush sends
    nothing again."""
    live.set_billing_period("acct_1", _hour(30), _hour(-30))
    responses.add_callback(responses.POST, EVENTS_URL, callback=_ok)
    live.increment("acct_1", "2.5", meter="api_calls", timestamp=_hour(3) + timedelta(minutes=1))
    first = live.report_now()
    live.increment("acct_1", "3.7", meter="api_calls", timestamp=_hour(2) + timedelta(minutes=1))
    second = live.report_now()
    assert [r.value for r in first + second] == [2, 4]
    assert [r.status for r in first + second] == ["sent", "sent"]
    bodies = _sent_bodies()
    assert [b["payload[value]"] for b in bodies] == [["2"], ["4"]]
    assert {b["payload[stripe_customer_id]"][0] for b in bodies} == {"cus_123"}
    assert [b["identifier"][0] for b in bodies] == [first[0].identifier, second[0].identifier]
    sent_at = int(bodies[0]["timestamp"][0])
    assert _hour(3).timestamp() <= sent_at < _hour(2).timestamp()
    assert live.report_now() == []
    usage = live.get_usage("acct_1", meter="api_calls").meters["api_calls"]
    assert (usage.quantity, usage.sent, usage.pending) == (Decimal("6.2"), 6, Decimal("0.2"))


@responses.activate
def test_duplicate_identifier_counts_as_delivered(live: Metersync) -> None:
    """Stripe's 'event already exists' rejection proves an earlier send: the report is sent."""
    responses.add(
        responses.POST,
        EVENTS_URL,
        status=400,
        headers={"Stripe-Should-Retry": "false"},
        json={
            "error": {
                "type": "invalid_request_error",
                "message": "An event already exists with identifier ms-x.",
            }
        },
    )
    live.increment("acct_1", 3, meter="api_calls")
    [result] = live.report_now()
    assert (result.status, result.duplicate, result.value) == ("sent", True, 3)


@responses.activate
def test_permanent_error_fails_the_report_and_retry_resends_the_same_event(
    live: Metersync,
) -> None:
    """A 400 marks the report failed with Stripe's message; retry sends the same identifier."""
    responses.add(
        responses.POST,
        EVENTS_URL,
        status=400,
        json={"error": {"type": "invalid_request_error", "message": "No active meter found"}},
    )
    live.increment("acct_1", 5, meter="api_calls")
    [failed] = live.report_now()
    assert failed.status == "failed"
    assert "No active meter found" in (failed.error or "")
    responses.replace(responses.POST, EVENTS_URL, status=200, json={})
    retried = live.retry(failed.report_id)
    assert (retried.status, retried.identifier, retried.value) == ("sent", failed.identifier, 5)
    assert len(responses.calls) == 2


@responses.activate
def test_transient_errors_leave_the_report_in_flight_until_a_later_flush(
    live: Metersync,
) -> None:
    """500s past the retry budget keep the report 'sending'; the next flush delivers it once."""
    responses.add(responses.POST, EVENTS_URL, status=500, json={"error": {"message": "boom"}})
    live.increment("acct_1", 7, meter="api_calls")
    [stuck] = live.report_now()
    assert stuck.status == "sending"
    assert len(responses.calls) == 3  # the gateway's attempts
    responses.replace(responses.POST, EVENTS_URL, status=200, json={})
    [done] = live.report_now()
    assert (done.status, done.identifier, done.value) == ("sent", stuck.identifier, 7)
    assert _statuses(live) == ["sent"]


@responses.activate
def test_free_accounts_and_dry_runs_never_call_stripe(live: Metersync, db_url: str) -> None:
    """A free account's reports close as skipped_free; without a key they are dry_run."""
    live.accounts.upsert("free_1", free=True)
    live.increment("free_1", 4, meter="api_calls")
    assert [r.status for r in live.report_now()] == ["skipped_free"]
    dry = adapter.connect(Settings(database_url=db_url))
    try:
        dry.increment("acct_1", 2, meter="api_calls")
        [result] = dry.report_now()
        assert (result.status, result.value) == ("dry_run", 2)
        assert dry.get_usage("acct_1").meters["api_calls"].sent == 0
    finally:
        dry.close()
    assert len(responses.calls) == 0


@responses.activate
def test_account_without_stripe_customer_waits_unlinked_until_linked(live: Metersync) -> None:
    """Usage of an unlinked account is not sent and not failed: it waits, and linking the
    account sends it with no operator action."""
    responses.add_callback(responses.POST, EVENTS_URL, callback=_ok)
    live.accounts.upsert("acct_2")
    live.increment("acct_2", 3, meter="api_calls")
    [result] = live.report_now()
    assert result.status == "unlinked"
    assert "stripe_customer_id" in (result.error or "")
    assert len(responses.calls) == 0
    assert [r.status for r in live.reports()] == ["unlinked"]
    assert live.get_usage("acct_2").meters["api_calls"].pending == 3
    live.accounts.upsert("acct_2", stripe_customer_id="cus_late")
    assert [r.status for r in live.reports()] == ["closed"]
    [result] = live.report_now()
    assert result.status == "sent"
    [body] = _sent_bodies()
    assert body["payload[stripe_customer_id]"] == ["cus_late"]
    assert body["payload[value]"] == ["3"]
    assert live.get_usage("acct_2").meters["api_calls"].pending == 0


@responses.activate
def test_max_meter_sends_the_running_maximum(live: Metersync) -> None:
    """A max meter sends the period's running maximum, and nothing when Stripe holds it."""
    live.set_billing_period("acct_1", _hour(30), _hour(-30))
    responses.add_callback(responses.POST, EVENTS_URL, callback=_ok)
    live.increment("acct_1", 5, meter="peak", timestamp=_hour(4) + timedelta(minutes=1))
    live.increment("acct_1", 9, meter="peak", timestamp=_hour(3) + timedelta(minutes=1))
    live.report_now()
    live.increment("acct_1", 7, meter="peak", timestamp=_hour(2) + timedelta(minutes=1))
    live.report_now()
    # The first report already sends the period's maximum (9, from the next report); the
    # next two find Stripe holding it and need no call.
    assert [b["payload[value]"][0] for b in _sent_bodies()] == ["9"]
    assert [r.status for r in live.reports()] == ["sent"] * 3
    assert live.get_usage("acct_1").meters["peak"].pending == 0


@responses.activate
def test_report_too_old_for_stripe_expires_loudly(live: Metersync) -> None:
    """A closed report whose window Stripe can no longer accept becomes expired."""
    live.increment("acct_1", 1, meter="api_calls")
    old = datetime.now(UTC) - timedelta(days=40)
    with live.engine.begin() as conn:
        conn.execute(
            _REPORTS.update().values(window_start=old, window_end=old + timedelta(hours=1))
        )
    [result] = live.report_now()
    assert result.status == "expired"
    assert "35 days" in (result.error or "")
    assert len(responses.calls) == 0


@pytest.mark.postgres
def test_increments_racing_closes_are_counted_in_exactly_one_report(
    postgres_server: object,
) -> None:
    """Threads incrementing while another closes reports over and over: every unit lands
    in exactly one report, and every event points at a report that holds it."""
    assert isinstance(postgres_server, Postgres)
    url = postgres_server.create_database()
    ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
    try:
        ms.accounts.upsert("acct_1")
        ms.meters.upsert("api_calls", aggregation="sum")
        stop = threading.Event()

        def writer(n: int) -> None:
            for i in range(150):
                ms.increment("acct_1", 1, meter="api_calls", idempotency_key=f"{n}-{i}")

        def closer() -> None:
            while not stop.is_set():
                close_reports(ms.engine, now=datetime.now(UTC), due_only=False)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        closing = threading.Thread(target=closer)
        closing.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        closing.join()
        with ms.engine.connect() as conn:
            reports = conn.execute(sa.select(_REPORTS.c.total, _REPORTS.c.events)).all()
            orphans = conn.exec_driver_sql(
                "SELECT count(*) FROM usage_event e LEFT JOIN usage_report r "
                "ON r.id = e.report_id WHERE r.id IS NULL"
            ).scalar_one()
            per_report = conn.exec_driver_sql(
                "SELECT count(*) FROM usage_report r WHERE r.events <> "
                "(SELECT count(*) FROM usage_event e WHERE e.report_id = r.id)"
            ).scalar_one()
        assert sum(r.total for r in reports) == 600
        assert sum(r.events for r in reports) == 600
        assert len(reports) > 1  # the closer really did cut reports mid-stream
        assert orphans == 0
        assert per_report == 0
    finally:
        ms.close()
        postgres_server.drop_database(url)


@pytest.mark.postgres
@responses.activate
def test_a_v1_push_is_a_handful_of_statements_on_postgresql(postgres_url: str) -> None:
    """One v1 push of a report in a known billing period: load and lock (with the pair's
    decision lock), history, decision, and the finish after Stripe answers: 4 statements
    (plus BEGIN/COMMIT; the installation namespace is read once per process). A guard
    against round trips creeping back into the hot path."""
    _empty(postgres_url)
    ms = adapter.connect(Settings(database_url=postgres_url), gateway=_gateway())
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.meters.upsert("api_calls", aggregation="sum")
    ms.set_billing_period("acct_1", _hour(30), _hour(-30))
    ms.increment("acct_1", 3, meter="api_calls", timestamp=_hour(3) + timedelta(minutes=1))
    close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
    with ms.engine.connect() as conn:
        report_id = conn.execute(sa.select(_REPORTS.c.id)).scalar_one()
    responses.add_callback(responses.POST, EVENTS_URL, callback=_ok)
    pusher = ms.pusher()
    with ms.engine.connect() as conn:
        pusher.installation(conn)  # read once per process, then kept
    statements: list[str] = []

    def count(_conn: sa.Connection, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(" ".join(statement.split())[:60])

    sa.event.listen(ms.engine, "before_cursor_execute", count)
    try:
        result = pusher.push(report_id)
    finally:
        sa.event.remove(ms.engine, "before_cursor_execute", count)
        ms.close()

    assert (result.status, result.value) == ("sent", 3)
    assert len(statements) <= 4, statements
