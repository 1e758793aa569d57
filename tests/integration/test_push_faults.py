"""Pushing under faults: real PostgreSQL, real Redis, real worker processes and the Stripe
stand-in (tests/stripe_standin.py) as its own process. Whatever goes wrong on the wire,
Stripe ends up with every report's event exactly once and the totals add up."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.pushing.outbox import close_reports, pushable_ids
from adapter.pushing.pusher import PUSHABLE
from adapter.store.models import Account, Meter, UsageReport, table
from config.settings import Settings
from tests import stripe_standin
from tests.servers import Postgres, Redis
from workers.actors import Actors, declare, mutex_ttl_ms
from workers.broker import BrokerHandle, make_broker

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

_REPORTS, _ACCOUNTS, _METERS = table(UsageReport), table(Account), table(Meter)
_ROOT = Path(__file__).resolve().parents[2]
_API_KEY = "sk_test_standin"
_CLI = (sys.executable, "-m", "adapter.cli")
#: Statuses that mean a push is not finished yet.
_UNFINISHED = frozenset(PUSHABLE)
#: Seconds between re-enqueues of unfinished reports (the scheduler's outbox sweep).
_SWEEP = 3.0


def _faults(**faults: float) -> pytest.MarkDecorator:
    """The stand-in's faults for one test (see ``tests.stripe_standin.Faults``)."""
    return pytest.mark.parametrize("setup", [faults], indirect=True, ids=["faults"])


#: Per-scenario deadline for every report to leave closed/sending.
_DEADLINE = 40.0


@dataclass
class Setup:
    """One scenario's database, broker, stand-in and usage recorded."""

    url: str
    redis_url: str
    standin: str
    ms: Metersync
    handle: BrokerHandle
    actors: Actors
    logs: Path
    recorded: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        result: dict[str, Any] = json.load(response)
    return result


def _set_faults(standin: str, **faults: float) -> None:
    request = urllib.request.Request(
        f"{standin}/_standin/faults", data=json.dumps(faults).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def _start_standin(faults: dict[str, float]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.stripe_standin",
            "--port",
            "0",
            "--faults",
            json.dumps(faults),
        ],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("listening on http://127.0.0.1:"), line
    return proc, line.removeprefix("listening on ")


@pytest.fixture
def setup(
    request: pytest.FixtureRequest,
    postgres_server: Postgres,
    redis_server: Redis,
    tmp_path: Path,
) -> Iterator[Setup]:
    """A fresh database with usage recorded and closed, a flushed broker, and a stand-in
    with the faults given as the indirect parameter."""
    standin_proc, standin = _start_standin(request.param)
    url = postgres_server.create_database()
    ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
    handle = make_broker(Settings(redis_url=redis_server.url))
    state = Setup(url, redis_server.url, standin, ms, handle, declare(handle, ms), tmp_path)
    _reset_redis(handle)
    state.recorded = _record_usage(ms)
    try:
        yield state
    finally:
        for proc in state.workers:
            proc.kill()
            proc.wait(timeout=10)
        standin_proc.kill()
        standin_proc.wait(timeout=10)
        _reset_redis(handle)
        handle.close()
        ms.close()
        postgres_server.drop_database(url)


def _reset_redis(handle: BrokerHandle) -> None:
    """Empty the test Redis db of queued messages, (customer, meter) slots and the unacked
    messages of killed workers, so no test inherits another's leftovers."""
    handle.broker.flush_all()  # the declared queues: declare before calling this
    assert handle.client is not None
    for pattern in ("metersync:*", "dramatiq:__acks__.*", "dramatiq:__heartbeats__"):
        for key in handle.client.scan_iter(pattern):
            handle.client.delete(key)


def _record_usage(ms: Metersync) -> dict[tuple[str, str], Decimal]:
    """Fractional usage for 3 customers x 2 sum meters x 4 past hours, closed; returns
    the total recorded per (customer, event_name)."""
    rng = random.Random(20261122)  # fixed: a red run can be replayed
    meters = {"api_calls": "api_calls", "storage_gb": "storage_gb_hours"}
    for name, event_name in meters.items():
        ms.meters.upsert(name, event_name=event_name, aggregation="sum")
    top = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    recorded: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for n in range(3):
        customer = f"cus_standin{n}"
        ms.accounts.upsert(f"acct_{n}", stripe_customer_id=customer)
        for name, event_name in meters.items():
            for hours_ago in range(2, 6):
                for _ in range(3):
                    quantity = Decimal(rng.randint(1, 450)) / 100
                    at = top - timedelta(hours=hours_ago, minutes=-rng.randint(1, 58))
                    ms.increment(f"acct_{n}", quantity, meter=name, timestamp=at)
                    recorded[customer, event_name] += quantity
    assert close_reports(ms.engine, now=datetime.now(UTC), due_only=False) == 24
    return dict(recorded)


def _worker(
    state: Setup, *, threads: int = 4, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `metersync worker` process pointed at the stand-in (``env`` adds settings)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(state.logs),
        "TMPDIR": str(state.logs),
        "METERSYNC_REDIS_URL": state.redis_url,
        "METERSYNC_STRIPE_API_KEY": _API_KEY,
        "METERSYNC_STRIPE_API_BASE": state.standin,
        "METERSYNC_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log = (state.logs / f"worker-{len(state.workers)}.log").open("wb")
    proc = subprocess.Popen(
        [*_CLI, "--database-url", state.url, "worker", "--threads", str(threads)],
        cwd=_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    state.workers.append(proc)
    return proc


def _enqueue(state: Setup, ids: list[int] | None = None) -> None:
    for report_id in pushable_ids(state.ms.engine) if ids is None else ids:
        state.actors.push_report.send(report_id)


def _statuses(ms: Metersync) -> dict[str, int]:
    with ms.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_REPORTS.c.status, sa.func.count()).group_by(_REPORTS.c.status)
        ).all()
    return {status: count for status, count in rows}


def _settle(state: Setup, *, deadline: float = _DEADLINE) -> None:
    """Wait until no report is closed or sending, re-enqueueing the unfinished ones every
    few seconds as the scheduler's outbox sweep does."""
    until = time.monotonic() + deadline
    next_sweep = time.monotonic() + _SWEEP
    while not _UNFINISHED.isdisjoint(statuses := _statuses(state.ms)):
        if time.monotonic() > until:
            logs = "\n".join(p.read_text()[-2000:] for p in state.logs.glob("worker-*.log"))
            pytest.fail(f"reports still unfinished after {deadline}s: {statuses}\n{logs}")
        if time.monotonic() > next_sweep:
            _enqueue(state)
            next_sweep = time.monotonic() + _SWEEP
        time.sleep(0.2)


def _reports(ms: Metersync) -> list[Any]:
    with ms.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    _REPORTS,
                    _ACCOUNTS.c.stripe_customer_id.label("customer"),
                    _METERS.c.event_name,
                )
                .join(_ACCOUNTS, _ACCOUNTS.c.id == _REPORTS.c.account_id)
                .join(_METERS, _METERS.c.id == _REPORTS.c.meter_id)
                .order_by(_REPORTS.c.id)
            ).all()
        )


def _assert_exactly_once(state: Setup) -> dict[str, Any]:
    """Every report sent; the stand-in accepted each sent identifier once with the stored
    decision; per (customer, event_name) accepted == sent, and recorded - sent is the
    pending fraction in [0, 1). Returns the stand-in's summary."""
    seen = _get(f"{state.standin}/_standin/events")
    reports = _reports(state.ms)
    assert [r.status for r in reports] == ["sent"] * 24, [(r.id, r.last_error) for r in reports]
    accepted = [event["identifier"] for event in seen["events"]]
    assert len(accepted) == len(set(accepted))
    expected = {r.identifier: r for r in reports if r.sent_value > 0}
    assert sorted(accepted) == sorted(expected)
    accepted_total: dict[tuple[str, str], int] = defaultdict(int)
    for event in seen["events"]:
        report = expected[event["identifier"]]
        assert (event["customer"], event["event_name"]) == (report.customer, report.event_name)
        assert int(event["value"]) == report.sent_value
        assert event["timestamp"] == int(report.sent_timestamp.timestamp())
        accepted_total[event["customer"], event["event_name"]] += int(event["value"])
    sent_total: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for report in reports:
        sent_total[report.customer, report.event_name] += report.sent_value
    assert set(sent_total) == set(state.recorded)
    for key, recorded in state.recorded.items():
        assert accepted_total[key] == sent_total[key], key
        assert Decimal(0) <= recorded - sent_total[key] < 1, (key, recorded, sent_total[key])
    return seen


@_faults(fail_after_record_every=3)
def test_500_after_record_and_duplicate_messages_bill_once(setup: Setup) -> None:
    """Recorded-then-500 every third call, every message twice: each event lands once."""
    _worker(setup)
    _worker(setup)
    _enqueue(setup)
    _enqueue(setup)
    _settle(setup)
    seen = _assert_exactly_once(setup)
    assert seen["failed_after_record"] >= 5
    assert seen["duplicates"] >= seen["failed_after_record"]


@_faults(rate_limit_burst=0.6, rate_limit_period=1.5, latency=0.02)
def test_429_bursts_delay_but_do_not_lose_or_double(setup: Setup) -> None:
    """429 windows (nothing recorded) are retried until every event lands exactly once."""
    _worker(setup)
    _worker(setup)
    _enqueue(setup)
    _settle(setup)
    seen = _assert_exactly_once(setup)
    assert seen["rate_limited"] >= 1
    assert seen["duplicates"] == 0  # a 429 records nothing, so no resend is a duplicate


@_faults(slow_every=4, delay=2.5)
def test_responses_slower_than_the_client_timeout_bill_once(setup: Setup) -> None:
    """Recorded calls answered after the client's timeout are resent once, as duplicates."""
    _worker(setup, env={"METERSYNC_STRIPE_TIMEOUT": "1"})
    _enqueue(setup)
    _settle(setup)
    seen = _assert_exactly_once(setup)
    assert seen["slow"] >= 3
    assert seen["duplicates"] >= seen["slow"]


@_faults(slow_every=1, delay=30)
def test_worker_killed_mid_push_then_replaced_bills_once(setup: Setup) -> None:
    """A worker SIGKILLed mid-call is replaced; the resent decisions land exactly once."""
    first = _worker(setup)
    # Window order across (customer, meter)s, so the four threads do not all queue for one
    # (customer, meter) slot; wait for two calls in flight.
    _enqueue(setup, [r.id for r in sorted(_reports(setup.ms), key=lambda r: r.window_start)])
    until = time.monotonic() + 15
    while _get(f"{setup.standin}/_standin/events")["in_flight"] < 2:
        assert time.monotonic() < until, "the worker never got two calls in flight"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    time.sleep(0.3)  # a request already on the wire still lands
    _set_faults(setup.standin)  # Stripe is healthy again
    landed = {event["identifier"] for event in _get(f"{setup.standin}/_standin/events")["events"]}
    sending = {r.identifier for r in _reports(setup.ms) if r.status == "sending"}
    assert len(landed) >= 2
    assert landed <= sending  # recorded by Stripe, but the worker never heard back
    # The dead worker still holds each of those (customer, meter) slots until their TTL
    # (about 2 min with the default 20 s Stripe timeout): too long to wait here, so
    # expire them by hand once their TTL is shown.
    ttl = mutex_ttl_ms(Settings(stripe_timeout=20.0))  # the worker's default
    client = setup.handle.client
    assert client is not None
    held = [key for key in client.scan_iter("metersync:push:*") if int(client.get(key) or 0)]
    assert len(held) == len(sending)
    for key in held:
        assert ttl - 60_000 < client.pttl(key) <= ttl
        client.delete(key)
    _worker(setup)
    _enqueue(setup)
    _settle(setup)
    seen = _assert_exactly_once(setup)
    assert seen["duplicates"] >= len(landed)  # each was resent and rejected as a repeat


def test_standin_rejects_a_repeated_identifier_like_stripe() -> None:
    """The stand-in answers a repeat with Stripe's 400, message and Should-Retry header."""
    server = stripe_standin.start()
    try:
        body = b"event_name=api_calls&identifier=id-1&payload[stripe_customer_id]=cus_1"
        body += b"&payload[value]=3&timestamp=1700000000"
        answers: list[tuple[int, Any, str | None]] = []
        for _ in range(2):
            request = urllib.request.Request(
                f"{server.url}/v1/billing/meter_events",
                data=body,
                headers={"Authorization": f"Bearer {_API_KEY}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    answers.append((response.status, json.load(response), None))
            except urllib.error.HTTPError as error:
                retry = error.headers.get("Stripe-Should-Retry")
                answers.append((error.code, json.load(error), retry))
        assert answers[0][0] == 200
        assert answers[0][1]["value"] == "3"
        assert answers[1] == (
            400,
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": "An event already exists with identifier id-1.",
                }
            },
            "false",
        )
        assert [e["identifier"] for e in server.recorded.summary()["events"]] == ["id-1"]
    finally:
        server.shutdown()
        server.server_close()
