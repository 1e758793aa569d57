"""Webhook benchmark: the receiver under uvicorn on a loopback port, PostgreSQL, Redis,
and real worker processes applying deliveries to the mirror.

Run it from the project root::

    python -m tests.bench.webhooks            # about 2 minutes
    python -m tests.bench.webhooks --quick    # smoke run

What is measured (one run; progress to stderr, results to stdout):

1. **Ceiling.** ``POST /_baseline`` on the same server answers 200 without verifying or
   storing: requests/s with the same clients, the most this server could acknowledge.
2. **Acknowledged deliveries/s.** Signed ``customer.subscription.updated`` and
   ``customer.updated`` events, each with a new event id, posted by the same closed-loop
   clients to ``POST /webhooks/stripe``: verified, stored once and enqueued per request.
3. **Latency at 200 deliveries/s.** An open-loop client sends at a fixed 200/s; each
   request's latency runs from its scheduled send time (so a stall counts in full).
4. **Events applied/s, end to end.** Every delivery stored above is processed by
   ``metersync worker --processes 2`` (started afterwards, the queue already full):
   deliveries applied to the mirror per second, first to last ``processed_at``.

Clients, server, database and workers share this machine's CPUs; the table says how
many there are.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tests.bench.common import Figure, Target, percentile, postgres_database, progress, render
from tests.bench.push import private_redis

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

SECRET = "whsec_metersync_bench_secret"
#: Closed-loop client processes and threads per process.
CLIENT_PROCESSES, CLIENT_THREADS = 2, 8
#: Uvicorn worker processes serving the app.
SERVER_WORKERS = 2
#: Subscriptions the events are spread over.
SUBSCRIPTIONS = 200


@dataclass
class Plan:
    """How long each phase runs."""

    seconds: float
    open_loop_seconds: float
    open_loop_rate: float = 200.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sign(body: bytes, *, secret: str = SECRET) -> str:
    """A ``Stripe-Signature`` header for ``body``, signed now."""
    stamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return f"t={stamp},v1={digest.hexdigest()}"


def event(n: int, *, tag: str) -> bytes:
    """The ``n``-th event: mostly subscription updates, every tenth a customer update.
    Each object's events have increasing ``created``, so each one is applied."""
    sub = n % SUBSCRIPTIONS
    created = 1_790_000_000 + n
    customer = f"cus_bench{sub}"
    if n % 10 == 0:
        obj: dict[str, Any] = {
            "id": customer,
            "object": "customer",
            "created": 1_780_000_000,
            "livemode": False,
            "email": f"{customer}@example.test",
            "name": f"Bench {sub}",
            "metadata": {"metersync_account": f"acct_bench{sub}"},
        }
        kind = "customer.updated"
    else:
        start = 1_790_000_000 - 3600
        obj = {
            "id": f"sub_bench{sub}",
            "object": "subscription",
            "created": 1_780_000_000,
            "livemode": False,
            "customer": customer,
            "status": "active",
            "cancel_at_period_end": False,
            "metadata": {},
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": f"si_bench{sub}",
                        "object": "subscription_item",
                        "created": 1_780_000_000,
                        "quantity": 1,
                        "current_period_start": start,
                        "current_period_end": start + 30 * 86_400,
                        "metadata": {},
                        "price": {
                            "id": "price_bench",
                            "object": "price",
                            "recurring": {
                                "interval": "month",
                                "usage_type": "metered",
                                "meter": "mtr_bench",
                            },
                        },
                    }
                ],
            },
        }
        kind = "customer.subscription.updated"
    payload = {
        "id": f"evt_{tag}_{n}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created,
        "livemode": False,
        "pending_webhooks": 1,
        "type": kind,
        "data": {"object": obj},
    }
    return json.dumps(payload).encode()


def connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle off: http.client writes headers and body
    separately, and Nagle holding the body for the server's delayed ACK would add 40 ms
    to every request (Stripe's senders do not wait like that)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, signed: bool) -> int:
    headers = {"Content-Type": "application/json"}
    if signed:
        headers["Stripe-Signature"] = sign(body)
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def _closed_loop_process(  # noqa: PLR0913  process entry point: Process(args=...) passes them in order
    port: int,
    path: str,
    tag: str,
    seconds: float,
    threads: int,
    go: Event,
    out: Queue[tuple[int, int]],
) -> None:
    """Process entry point: ``threads`` keep-alive clients posting for ``seconds``."""
    counts: list[tuple[int, int]] = []

    def client(k: int) -> None:
        conn = connect(port)
        ok = bad = n = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = _post(conn, path, event(n * 1000 + k, tag=tag), path != "/_baseline")
            ok, bad, n = ok + (status == 200), bad + (status != 200), n + 1
        counts.append((ok, bad))
        conn.close()

    go.wait()
    pool = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put((sum(c[0] for c in counts), sum(c[1] for c in counts)))


def closed_loop(port: int, path: str, *, tag: str, seconds: float) -> tuple[float, int]:
    """Requests/s answered 200 by ``path`` under closed-loop load; and the non-200 count."""
    spawn = multiprocessing.get_context("spawn")
    go, out = spawn.Event(), spawn.Queue()
    procs = [
        spawn.Process(
            target=_closed_loop_process,
            args=(port, path, f"{tag}{p}", seconds, CLIENT_THREADS, go, out),
        )
        for p in range(CLIENT_PROCESSES)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # let the interpreters start before the clock does
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    ok = sum(r[0] for r in results)
    return ok / seconds, sum(r[1] for r in results)


def open_loop(port: int, *, rate: float, seconds: float, tag: str) -> tuple[list[float], int]:
    """Latencies (ms) of requests sent at a fixed ``rate``, from their scheduled time."""
    total = int(rate * seconds)
    start = time.monotonic() + 0.5
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    slots = iter(range(total))

    def client() -> None:
        nonlocal failures
        conn = connect(port)
        while True:
            with lock:
                n = next(slots, None)
            if n is None:
                break
            due = start + n / rate
            time.sleep(max(0.0, due - time.monotonic()))
            status = _post(conn, "/webhooks/stripe", event(n, tag=tag), True)
            with lock:
                latencies.append((time.monotonic() - due) * 1000)
                failures += status != 200
        conn.close()

    pool = [threading.Thread(target=client) for _ in range(16)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, failures


@contextmanager
def serve(env: dict[str, str], port: int, log: Path) -> Iterator[None]:
    """The app under uvicorn on ``port`` until the block ends."""
    command = [sys.executable, "-m", "tests.bench.webhook_server", "--port", str(port)]
    command += ["--workers", str(SERVER_WORKERS)]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:]
                    raise RuntimeError(f"server did not start:\n{tail}") from None
                time.sleep(0.2)
        time.sleep(1.0)  # every uvicorn worker up
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def apply_all(env: dict[str, str], url: str, log: Path) -> tuple[float, dict[str, int]]:
    """Start workers on a full queue; deliveries applied per second, and the statuses."""
    engine = sa.create_engine(url)
    command = [sys.executable, "-m", "adapter.cli", "--database-url", url, "worker"]
    command += ["--processes", "2", "--threads", "8"]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    query = sa.text("SELECT status, count(*) FROM webhook_delivery GROUP BY status")
    try:
        deadline = time.monotonic() + 900
        while True:
            with engine.connect() as conn:
                statuses = {str(s): int(n) for s, n in conn.execute(query)}
            if statuses.get("received", 0) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with engine.connect() as conn:
            first, last, done = conn.execute(
                sa.text(
                    "SELECT min(processed_at), max(processed_at), count(*) FROM webhook_delivery"
                    " WHERE processed_at IS NOT NULL"
                )
            ).one()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        engine.dispose()
    span = (last - first).total_seconds() if first and last else math.nan
    return (done / span if span else math.nan), statuses


def run(plan: Plan, log_dir: Path) -> tuple[list[Figure], list[str]]:
    """Every phase; the figures and the notes under the table."""
    figures = {
        "ceiling": Figure("baseline endpoint (no verify, no store)", "req/s", []),
        "acked": Figure(
            "verified deliveries acknowledged", "deliveries/s", [], Target(">=", 1000, "")
        ),
        "p50": Figure(f"  p50 latency at {plan.open_loop_rate:.0f}/s offered", "ms", []),
        "p99": Figure(
            f"  p99 latency at {plan.open_loop_rate:.0f}/s offered",
            "ms",
            [],
            Target("<=", 20, "ms"),
        ),
        "applied": Figure("events applied to the mirror", "events/s", [], Target(">=", 500, "")),
    }
    notes: list[str] = []
    with postgres_database("metersync_hooks") as (url, origin), private_redis() as redis_url:
        env = dict(
            os.environ,
            METERSYNC_DATABASE_URL=url,
            METERSYNC_AUTO_MIGRATE="true",
            METERSYNC_REDIS_URL=redis_url,
            METERSYNC_STRIPE_WEBHOOK_SECRET=SECRET,
            METERSYNC_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        env.pop("METERSYNC_STRIPE_API_KEY", None)
        env.pop("STRIPE_API_KEY", None)
        port = _free_port()
        with serve(env, port, log_dir / "server.log"):
            progress(f"ceiling: /_baseline for {plan.seconds:.0f}s")
            rate, bad = closed_loop(port, "/_baseline", tag="base", seconds=plan.seconds)
            figures["ceiling"].runs.append(rate)
            progress(f"  {rate:,.0f}/s ({bad} non-200)")
            progress(f"receiver: /webhooks/stripe for {plan.seconds:.0f}s")
            rate, bad = closed_loop(port, "/webhooks/stripe", tag="ack", seconds=plan.seconds)
            figures["acked"].runs.append(rate)
            notes.append(f"acknowledged: {bad} non-200 answers under closed-loop load")
            progress(f"  {rate:,.0f}/s ({bad} non-200)")
            progress(f"open loop: {plan.open_loop_rate:.0f}/s for {plan.open_loop_seconds:.0f}s")
            latencies, failures = open_loop(
                port, rate=plan.open_loop_rate, seconds=plan.open_loop_seconds, tag="open"
            )
            figures["p50"].runs.append(percentile(latencies, 50))
            figures["p99"].runs.append(percentile(latencies, 99))
            notes.append(
                f"open loop: {len(latencies):,} requests, {failures} non-200, max "
                f"{max(latencies):.1f} ms"
            )
        progress("applying every stored delivery with 2 worker processes")
        applied, statuses = apply_all(env, url, log_dir / "worker.log")
        figures["applied"].runs.append(applied)
        notes.append(f"deliveries after applying: {statuses}")
        notes.append(
            f"server: uvicorn, {SERVER_WORKERS} worker processes; clients: "
            f"{CLIENT_PROCESSES} processes x {CLIENT_THREADS} keep-alive threads; "
            f"PostgreSQL: {origin}; machine: {os.cpu_count()} CPUs shared by all of them"
        )
    return list(figures.values()), notes


def main() -> None:
    """Parse arguments, run, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    args = parser.parse_args()
    plan = Plan(seconds=4 if args.quick else 15, open_loop_seconds=5 if args.quick else 20)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "metersync-bench-webhooks"
    log_dir.mkdir(parents=True, exist_ok=True)
    progress(f"plan {plan}; logs in {log_dir}")
    figures, notes = run(plan, log_dir)
    print(render("metersync webhook benchmark (uvicorn, PostgreSQL, Redis)", figures, notes))


if __name__ == "__main__":
    main()
