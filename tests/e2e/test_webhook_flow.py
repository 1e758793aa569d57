"""End to end through real processes: ``metersync run`` (uvicorn on a loopback port, the
scheduler and a Dramatiq worker) on PostgreSQL and Redis, pushing to the Stripe stand-in
over HTTP. A subscription renews in the middle of a usage stream, and every unit must reach
Stripe once, with a timestamp inside the billing period it was used in.

Timeline (A and B are billing periods, B in the recent past so that timestamps can be
chosen on both sides of the boundary): A = [now-2d, now-1d), B = [now-1d, now+29d).
The stored schedule is paused while usage streams in, so nothing but the renewal can push
a report; resuming it through the ops API lets the scheduler close and push the rest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import UsageEvent, UsageReport, table
from adapter.store.periods import CACHE_SECONDS
from config.settings import Settings
from tests import stripe_events as se
from tests import stripe_standin
from tests.e2e.flow import API_KEY, OPS_TOKEN, Service, start_service, wait_for
from tests.servers import Postgres, Redis
from tests.signing import SECRET

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_REPORTS, _EVENTS, _DELIVERIES = table(UsageReport), table(UsageEvent), table(WebhookDelivery)
DAY = 86_400
#: Seconds any one wait may take (each is normally well under a second or two).
DEADLINE = 20.0
#: Report statuses that mean a push is still to come or under way.
UNFINISHED = ("open", "closed", "sending")


@dataclass
class Stream:
    """The usage sent so far, and what each period should therefore total."""

    a0: int
    b0: int
    b1: int
    items: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Decimal] = field(default_factory=lambda: {"A": Decimal(0), "B": Decimal(0)})
    counts: dict[str, int] = field(default_factory=lambda: {"A": 0, "B": 0})

    def period(self, at: int) -> str:
        """``A`` or ``B``: the billing period holding unix time ``at``."""
        assert self.a0 <= at < self.b1, at
        return "A" if at < self.b0 else "B"

    def item(self, at: int, quantity: str) -> dict[str, Any]:
        """A new usage item at unix time ``at``, counted in its period's totals."""
        key = f"use-{len(self.items) + 1}"
        found = {
            "account": "acct_1",
            "meter": "api_calls",
            "quantity": quantity,
            "timestamp": datetime.fromtimestamp(at, UTC).isoformat(),
            "idempotency_key": key,
        }
        self.items.append(found)
        self.totals[self.period(at)] += Decimal(quantity)
        self.counts[self.period(at)] += 1
        return found

    def batch(self, *uses: tuple[int, str]) -> list[dict[str, Any]]:
        """New usage items, one per ``(unix time, quantity)``."""
        return [self.item(at, quantity) for at, quantity in uses]


@pytest.fixture
def database(postgres_server: Postgres) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of its own, dropped afterwards."""
    url = postgres_server.create_database(prefix="metersync_e2e_flow")
    adapter.connect(Settings(database_url=url, auto_migrate=True)).close()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def clean_redis(redis_server: Redis) -> Iterator[str]:
    """The test Redis with no metersync or Dramatiq keys left by others, before and after."""
    client = redis.Redis.from_url(redis_server.url)

    def wipe() -> None:
        for pattern in ("metersync:*", "dramatiq:*"):
            for key in client.scan_iter(pattern):
                client.delete(key)

    wipe()
    yield redis_server.url
    wipe()
    client.close()


@pytest.fixture
def standin() -> Iterator[stripe_standin.StandinServer]:
    """The Stripe stand-in, serving meter events on a loopback port in this process."""
    server = stripe_standin.start()
    yield server
    server.shutdown()
    server.server_close()


def _settled(ms: Metersync, event_id: str) -> str | None:
    """The delivery's status once the worker is done with it, else None."""
    with ms.engine.connect() as conn:
        status: str | None = conn.execute(
            sa.select(_DELIVERIES.c.status).where(_DELIVERIES.c.event_id == event_id)
        ).scalar_one_or_none()
    return None if status in (None, "received") else status


def _deliver(service: Service, ms: Metersync, event: dict[str, Any], *, wait: bool) -> None:
    """POST a signed event; with ``wait``, until the worker has processed it."""
    answer = service.webhook(event)
    assert answer.status == 200, answer
    assert answer.body == {"received": True, "duplicate": False}, answer
    if wait:
        _processed(ms, event["id"])


def _processed(ms: Metersync, event_id: str) -> None:
    status = wait_for(
        lambda: _settled(ms, event_id),
        timeout=DEADLINE,
        what=f"delivery {event_id} processed",
    )
    assert status == "processed", (event_id, status)


def _record(service: Service, items: list[dict[str, Any]], *, duplicates: int = 0) -> None:
    answer = service.ops("POST", "/v1/usage", {"items": items})
    assert answer.status == 200, answer
    assert (answer.body["accepted"], answer.body["duplicates"], answer.body["rejected"]) == (
        len(items) - duplicates,
        duplicates,
        [],
    ), answer.body


def _stripe_totals(standin: stripe_standin.StandinServer, stream: Stream) -> dict[str, int]:
    """What the stand-in received per period, by the events' timestamps."""
    totals = {"A": 0, "B": 0}
    for event in standin.recorded.summary()["events"]:
        totals[stream.period(event["timestamp"])] += int(event["value"])
    return totals


def _statuses(ms: Metersync) -> dict[str, int]:
    with ms.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_REPORTS.c.status, sa.func.count()).group_by(_REPORTS.c.status)
        ).all()
    return {str(r[0]): int(r[1]) for r in rows}


def _subscription_event(
    kind: str, period: tuple[int, int], *, shape: se.Shape, created: int
) -> dict[str, Any]:
    price = se.price("price_api", meter="mtr_api")
    item = se.item("si_api", price_obj=price, period=period, shape=shape, created=created)
    sub = se.subscription(
        "sub_1", customer_id="cus_1", period=period, items=[item], shape=shape, created=created
    )
    return se.event(kind, sub, created=created, shape=shape)


@dataclass
class Running:
    """The service, a library connection to its database, and the usage stream."""

    service: Service
    ms: Metersync
    standin: stripe_standin.StandinServer
    stream: Stream
    shape: se.Shape

    def renewal(self) -> dict[str, Any]:
        """Stripe's event for the subscription entering period B."""
        stream = self.stream
        return _subscription_event(
            "customer.subscription.updated",
            (stream.b0, stream.b1),
            shape=self.shape,
            created=stream.b0 + 1,
        )

    def resume(self) -> None:
        """Resume the schedule through the ops API: the scheduler ticks within a second."""
        resumed = self.service.ops("PUT", "/v1/schedule", {"paused": False})
        assert resumed.status == 200, resumed
        assert resumed.body["paused"] is False, resumed


@pytest.fixture
def running(
    request: pytest.FixtureRequest,
    database: str,
    clean_redis: str,
    standin: stripe_standin.StandinServer,
    tmp_path: Path,
) -> Iterator[Running]:
    """``metersync run`` with its schedule paused, after Stripe linked ``cus_1`` to
    ``acct_1`` (creating the account) and subscribed it in period A. The payload shape is
    the test's ``shape`` parameter, else the current one. On teardown the process must
    stop cleanly on SIGTERM."""
    shape: se.Shape = getattr(request, "param", se.BASIL)
    now = int(time.time())
    # Off the 30 s report grid on purpose, so that windows are cut at the boundary.
    stream = Stream(a0=now - 2 * DAY + 7, b0=now - DAY + 13, b1=now + 29 * DAY + 13)
    ms = adapter.connect(Settings(database_url=database))
    ms.meters.upsert("api_calls", event_name="api_calls", aggregation="sum")
    ms.schedule.set("every 30s", actor="e2e")
    ms.schedule.pause(actor="e2e")  # only the renewal may push until the test resumes
    service = start_service(
        {
            "METERSYNC_DATABASE_URL": database,
            "METERSYNC_REDIS_URL": clean_redis,
            "METERSYNC_STRIPE_WEBHOOK_SECRET": SECRET,
            "METERSYNC_OPS_TOKEN": OPS_TOKEN,
            "METERSYNC_STRIPE_API_KEY": API_KEY,
            "METERSYNC_STRIPE_API_BASE": standin.url,
        },
        workdir=tmp_path,
    )
    try:
        customer = se.customer("cus_1", account="acct_1", created=stream.a0 - DAY)
        created = se.event("customer.created", customer, created=stream.a0 - DAY)
        _deliver(service, ms, created, wait=True)
        first = _subscription_event(
            "customer.subscription.created", (stream.a0, stream.b0), shape=shape, created=stream.a0
        )
        _deliver(service, ms, first, wait=True)
        yield Running(service, ms, standin, stream, shape)
    finally:
        code = service.stop(timeout=DEADLINE)
        ms.close()
    assert code == 0, service.output()


def _ago(seconds: int) -> int:
    """Unix time ``seconds`` ago (60 s ago lies in a 30 s report window that has ended)."""
    return int(time.time()) - seconds


def _wait_finished(running: Running, expected: dict[str, int]) -> None:
    """Until the stand-in holds ``expected`` per period and no report is unfinished."""
    wait_for(
        lambda: (
            _stripe_totals(running.standin, running.stream) == expected
            and not set(UNFINISHED) & set(_statuses(running.ms))
        ),
        timeout=DEADLINE,
        what=f"Stripe to hold {expected} and every report to be finished",
    )


@pytest.mark.parametrize("running", [se.BASIL, se.LEGACY], indirect=True)
def test_renewal_mid_stream_bills_every_unit_once_in_its_period(running: Running) -> None:
    """With usage recorded over HTTP before, during and after a renewal webhook (late
    units for the old period included), the renewal pushes the old period at once, and in
    the end Stripe holds each period's exact total, every event timestamped inside the
    period its units belong to and sent once, and the usage API agrees."""
    service, ms, stream = running.service, running.ms, running.stream
    a0, b0 = stream.a0, stream.b0
    # Usage in A; then more of A and the first units of B, before Stripe says B began.
    # (Units of B recorded while the renewal is being applied are whole: see
    # test_usage_recorded_with_a_stale_period_copy_keeps_its_fraction for why.)
    _record(service, stream.batch((a0 + 10, "3"), (a0 + 3600, "5"), (a0 + 43_200, "2.5")))
    _record(service, stream.batch((b0 - 20, "4.5"), (b0 - 1, "1"), (b0, "2")))
    _record(service, stream.batch((b0 + 5, "1"), (b0 + 3600, "6")))
    before_renewal = stream.totals["A"]

    # The renewal arrives mid-stream: the next batches race the worker applying it.
    renewal = running.renewal()
    _deliver(service, ms, renewal, wait=False)
    _record(service, stream.batch((a0 + 7200, "7"), (b0 - 10, "1"), (b0 + 10, "3")))
    _record(service, stream.batch((b0 + 7200, "4")))
    _processed(ms, renewal["id"])

    # The schedule is paused, so only the renewal can have pushed: A went out at once,
    # and nothing of B did.
    wait_for(
        lambda: (
            _stripe_totals(running.standin, stream)["A"] >= before_renewal
            and not {"closed", "sending"} & set(_statuses(ms))
        ),
        timeout=DEADLINE,
        what=f"the renewal to push period A (at least {before_renewal} units)",
    )
    assert _stripe_totals(running.standin, stream)["B"] == 0, running.standin.recorded.summary()

    # Late units of A (into windows already sent), fractions of B, and a retried item.
    retried = dict(stream.items[0])
    items = stream.batch((a0 + 10_800, "0.5"), (b0 - 5, "0.5"), (b0 + 10_800, "1.25"))
    _record(service, [*items, retried, *stream.batch((_ago(60), "0.75"))], duplicates=1)
    running.resume()

    # Whole totals per period, so no fraction is left to carry at the end.
    assert stream.totals == {"A": Decimal(25), "B": Decimal(18)}
    _wait_finished(running, {"A": 25, "B": 18})
    _check_events_against_reports(ms, running.standin, stream)
    _check_usage_api(service, stream)


def test_usage_recorded_with_a_stale_period_copy_keeps_its_fraction(running: Running) -> None:
    """An application process that recorded usage just before the renewal (so its copy
    of the periods is within the documented freshness) records half a unit of B right
    after it; with the other half recorded through the service, Stripe gets the whole
    unit and the report carries period B."""
    app, stream, b0 = running.ms, running.stream, running.stream.b0
    app.increment("acct_1", 1, meter="api_calls", timestamp=stream.a0 + 10)  # reads periods
    warmed = time.monotonic()
    renewal = running.renewal()
    _deliver(running.service, app, renewal, wait=True)
    if time.monotonic() - warmed >= CACHE_SECONDS - 0.2:
        pytest.fail("the renewal took too long to apply; the app's period copy was refreshed")
    stale = app.increment("acct_1", "0.5", meter="api_calls", timestamp=b0 + 100)
    _record(running.service, stream.batch((b0 + 200, "0.5")))
    running.resume()
    wait_for(
        lambda: not set(UNFINISHED) & set(_statuses(app)),
        timeout=DEADLINE,
        what="every report to be finished",
    )
    assert _stripe_totals(running.standin, stream) == {"A": 1, "B": 1}
    with app.engine.connect() as conn:
        period = conn.execute(
            sa.select(_REPORTS.c.period_start).where(_REPORTS.c.id == stale.report_id)
        ).scalar_one()
    assert period == datetime.fromtimestamp(b0, UTC)


def _check_events_against_reports(
    ms: Metersync, standin: stripe_standin.StandinServer, stream: Stream
) -> None:
    """Each stand-in event is one report's decision, sent once, timestamped inside the
    report's window and billing period, and every unit of that report lies in the same
    period."""
    summary = standin.recorded.summary()
    assert summary["duplicates"] == 0, summary  # no decision was sent twice
    received = {e["identifier"]: e for e in summary["events"]}
    assert len(received) == len(summary["events"])
    with ms.engine.connect() as conn:
        reports = conn.execute(sa.select(_REPORTS)).all()
        occurred = conn.execute(sa.select(_EVENTS.c.report_id, _EVENTS.c.occurred_at)).all()
    assert {r.status for r in reports} == {"sent"}, [
        (r.id, r.status, r.last_error) for r in reports
    ]
    units: dict[int, set[str]] = {}
    for row in occurred:
        units.setdefault(row.report_id, set()).add(stream.period(int(row.occurred_at.timestamp())))
    called = {r.identifier for r in reports if r.sent_value != 0}
    assert set(received) == called  # every non-zero decision reached Stripe, nothing else
    for report in reports:
        period = stream.period(int(report.window_start.timestamp()))
        assert units[report.id] == {period}, (report.id, units[report.id])
        bounds = (stream.a0, stream.b0) if period == "A" else (stream.b0, stream.b1)
        if report.identifier not in received:
            continue
        event = received[report.identifier]
        assert (event["customer"], event["event_name"]) == ("cus_1", "api_calls")
        assert event["value"] == str(int(report.sent_value))
        assert event["timestamp"] == int(report.sent_timestamp.timestamp())
        assert bounds[0] <= event["timestamp"] < bounds[1], (report.id, event)
        assert report.window_start.timestamp() <= event["timestamp"] < report.window_end.timestamp()


def _check_usage_api(service: Service, stream: Stream) -> None:
    """``GET /v1/accounts/acct_1/usage``: B by default (the current period), A on request;
    each with every unit counted and sent, nothing pending."""
    current = service.ops("GET", "/v1/accounts/acct_1/usage")
    earlier = service.ops(
        "GET",
        "/v1/accounts/acct_1/usage",
        period_start=datetime.fromtimestamp(stream.a0, UTC).isoformat(),
        period_end=datetime.fromtimestamp(stream.b0, UTC).isoformat(),
    )
    for answer, name, (start, end) in (
        (current, "B", (stream.b0, stream.b1)),
        (earlier, "A", (stream.a0, stream.b0)),
    ):
        assert answer.status == 200, answer
        body = answer.body
        span = (
            datetime.fromisoformat(body["period_start"]),
            datetime.fromisoformat(body["period_end"]),
        )
        assert (span[0].timestamp(), span[1].timestamp()) == (start, end), body
        usage = body["meters"]["api_calls"]
        total = stream.totals[name]
        got = tuple(Decimal(usage[k]) for k in ("quantity", "sent", "pending"))
        assert got == (total, total, Decimal(0)), (name, body)
        assert usage["events"] == stream.counts[name], (name, body)
    assert current.body["period_source"] == "billing_period", current.body
