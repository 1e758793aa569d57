"""Ingest benchmark: how fast metersync records and reads usage, against two baselines.

Run it from the project root::

    python -m tests.bench.ingest                    # both databases, about 5 minutes
    python -m tests.bench.ingest --quick            # smoke run, about a minute
    python -m tests.bench.ingest --only postgres --repeat 5 --profile
    python -m tests.bench.ingest --only postgres --credits   # credits and alerts, ~4 min

Each database is fresh: PostgreSQL gets a new database on the local server (or on a
throwaway embedded one, see ``tests/servers.py``), dropped at the end; SQLite gets a
file in a temporary directory. What is measured on each:

1. ``increment``: ``ms.increment(account, 1, meter=…, idempotency_key=<unique>)``, one
   call at a time in one process: events/s, and p50/p99 latency per call.
2. ``record_many``: batches of 1,000 items, each with its own idempotency key, spread over
   four accounts and over the last hour (the realistic case): events/s.
3. Baseline, Gravity-style counter: a table ``(account, meter, quantity)`` and one
   ``UPDATE … SET quantity = quantity + x`` per call, committed per call, through the raw
   driver (psycopg in autocommit, sqlite3): events/s and p50. No event log, no keys.
4. Baseline, the ceiling: the very rows ``record_many`` wrote (the columns of
   ``usage_event``) written into an unindexed table, one transaction per 1,000 rows. On
   PostgreSQL that is psycopg's ``COPY … FROM STDIN``; SQLite has no COPY, so there it is
   an ``executemany`` INSERT, and the table says so.
5. ``get_usage(account)`` latency, p50/p99 over 200 calls, for an account with 1,000,000
   events in its billing period, spread evenly over 30 days of hourly report windows
   (about 720 reports). The events are loaded through ``record_many`` in chronological
   batches of 5,000, the fastest path the public API offers; that load rate is reported.

Figures 1-4 are measured in interleaved runs (1, 2, 3, 4, then again), so a noisy moment
on this shared machine hits them alike; each is reported as the median over runs with the
spread beside it, and each ratio is computed within a run and then its median taken.
Targets are those of the issue, stated for PostgreSQL on this 2-core machine; SQLite is
held against the same numbers for comparison only. Progress goes to stderr, results to
stdout.

``--credits`` runs, instead of the figures above, ingest with prepaid credits and usage
alerts active beside the same ingest without them (``tests/bench/ingest_credits.py``):
single increments on 1 and 8 threads and ``record_many`` on 1 and 2 threads, each timed
for ``--credit-seconds`` per side and run while the credit tick (drawdown of every
credited account, every alert checked) runs every second beside ingest, 10x the default
interval: in a thread of the recording process (as ``metersync run``), in a process of
its own (as ``metersync scheduler``), or both (``--credit-ticker``, default both).
Targets: credits+alerts at least 80 % of plain, ``record_many`` 50,000 events/s. It is a
flag, not part of the default run, because it takes about 4 minutes per database
(``--quick``: about a minute).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from time import perf_counter
from typing import Any

import sqlalchemy as sa

import adapter
from adapter import BatchResult
from config.settings import Settings
from tests.bench import ingest_credits
from tests.bench.common import (
    Figure,
    RawPostgres,
    RawSqlite,
    Rows,
    Target,
    percentile,
    postgres_database,
    profile_calls,
    progress,
    render,
    sqlite_database,
)
from tests.servers import NoServer

#: Items per ``record_many`` call, and rows per baseline transaction.
BATCH = 1_000
#: Items per ``record_many`` call when loading the account read by ``get_usage``.
LOAD_BATCH = 5_000
#: Days of hourly report windows the ``get_usage`` account's events are spread over.
USAGE_DAYS = 30
#: The event count the ``get_usage`` target is stated for.
USAGE_TARGET_EVENTS = 1_000_000
METER = "api_calls"
INCREMENT_ACCOUNT = "acct_increment"
#: Threads for the one-process throughput of single increments (request threads).
THREADS = 8
#: Threads for the one-process throughput of batches: two overlap Python with the server.
BATCH_THREADS = 2
BATCH_ACCOUNTS = tuple(f"acct_batch_{i}" for i in range(4))
#: Accounts of the threaded runs: one per increment thread, a group of four per batch thread.
THREAD_ACCOUNTS = tuple(f"acct_thread_{i}" for i in range(8))
GROUP_ACCOUNTS = tuple(tuple(f"acct_group_{g}_{i}" for i in range(4)) for g in range(4))
USAGE_ACCOUNT = "acct_1m"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure (see ``--help``)."""

    calls: int
    events: int
    repeat: int
    usage_events: int
    usage_calls: int
    credit_seconds: int
    profile: bool
    credits: bool = False
    credit_ticker: str = "both"


class IngestBench:
    """metersync and the raw baselines on one fresh database."""

    def __init__(self, url: str) -> None:
        self.ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
        postgres = self.ms.engine.dialect.name == "postgresql"
        raw = RawPostgres if postgres else RawSqlite
        self.raw: RawPostgres | RawSqlite = raw(url, counter=(INCREMENT_ACCOUNT, METER))
        self.meter_id = self.ms.meters.upsert(METER, aggregation="sum").id
        names = (INCREMENT_ACCOUNT, *BATCH_ACCOUNTS, USAGE_ACCOUNT, *THREAD_ACCOUNTS)
        names += tuple(a for group in GROUP_ACCOUNTS for a in group)
        self.account_ids = {name: self.ms.accounts.upsert(name).id for name in names}
        self._random = random.Random(20_26)

    def close(self) -> None:
        """Release every connection."""
        self.raw.close()
        self.ms.close()

    def increments(self, calls: int) -> tuple[float, list[float]]:
        """Events/s and per-call latencies (s) of ``calls`` single increments."""
        keys = [f"req-{uuid.uuid4()}" for _ in range(calls)]
        latencies = []
        started = perf_counter()
        for key in keys:
            call = perf_counter()
            receipt = self.ms.increment(INCREMENT_ACCOUNT, 1, meter=METER, idempotency_key=key)
            latencies.append(perf_counter() - call)
            if receipt.duplicate:
                raise RuntimeError(f"increment with fresh key {key} came back a duplicate")
        return calls / (perf_counter() - started), latencies

    def increments_threaded(self, calls: int, threads: int) -> float:
        """Events/s of ``calls`` single increments spread over ``threads`` threads of this
        process, each thread recording for its own account, as a web server's request
        threads serving many customers would. Threads on one account would queue behind
        its open report's row lock, like the Gravity counter's single row."""
        per_thread = calls // threads

        def work(account: str) -> None:
            for _ in range(per_thread):
                key = f"req-{uuid.uuid4()}"
                if self.ms.increment(account, 1, meter=METER, idempotency_key=key).duplicate:
                    raise RuntimeError(f"increment with fresh key {key} came back a duplicate")

        started = perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for future in [pool.submit(work, a) for a in THREAD_ACCOUNTS[:threads]]:
                future.result()
        return per_thread * threads / (perf_counter() - started)

    def record_many_threaded(self, batches: list[list[dict[str, Any]]], threads: int) -> float:
        """Events/s of recording the batches from ``threads`` threads of this process."""
        started = perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(self.ms.record_many, batches))
        elapsed = perf_counter() - started
        for batch, result in zip(batches, results, strict=True):
            _check_accepted(batch, result)
        return sum(map(len, batches)) / elapsed

    def batches(self, events: int, *, groups: int = 1) -> list[list[dict[str, Any]]]:
        """``events`` fresh items over four accounts and the last hour, in batches. With
        ``groups`` > 1, consecutive batches use disjoint groups of four accounts, so that
        batches recorded at the same time do not queue on the same open reports."""
        now, rnd = _now(), self._random
        items = [
            {
                "account": rnd.choice(
                    BATCH_ACCOUNTS if groups == 1 else GROUP_ACCOUNTS[(n // BATCH) % groups]
                ),
                "meter": METER,
                "quantity": rnd.randint(1, 100),
                "idempotency_key": f"req-{uuid.uuid4()}",
                "timestamp": now - timedelta(seconds=rnd.uniform(0, 3600)),
            }
            for n in range(events)
        ]
        return [items[i : i + BATCH] for i in range(0, events, BATCH)]

    def record_many(self, batches: list[list[dict[str, Any]]]) -> tuple[float, list[Rows]]:
        """Events/s of recording the batches, and the rows they wrote (for the ceiling)."""
        results: list[BatchResult] = []
        started = perf_counter()
        for batch in batches:
            results.append(self.ms.record_many(batch))
        elapsed = perf_counter() - started
        written = [self._written(b, r) for b, r in zip(batches, results, strict=True)]
        return sum(map(len, batches)) / elapsed, written

    def _written(self, batch: list[dict[str, Any]], result: BatchResult) -> Rows:
        """The ``usage_event`` rows one batch wrote, as the baseline driver takes them."""
        _check_accepted(batch, result)
        received = _now()
        rows: Rows = []
        for item, receipt in zip(batch, result.receipts, strict=True):
            assert receipt is not None  # every item was accepted
            account_id = self.account_ids[receipt.account]
            key = item["idempotency_key"]
            at, quantity = receipt.occurred_at, receipt.quantity
            rows.append(
                (account_id, self.meter_id, receipt.report_id, quantity, at, received, key, None)
            )
        return self.raw.prepare(rows)

    def load_usage(self, events: int) -> float:
        """Give the usage account ``events`` events over 30 days; return the load rate."""
        start = _now().replace(minute=0, second=0, microsecond=0) - timedelta(days=USAGE_DAYS)
        self.ms.set_billing_period(USAGE_ACCOUNT, start, start + timedelta(days=USAGE_DAYS + 1))
        step = (_now() - timedelta(minutes=1) - start) / events
        elapsed = 0.0
        for first in range(0, events, LOAD_BATCH):
            batch = [
                {
                    "account": USAGE_ACCOUNT,
                    "meter": METER,
                    "quantity": 1,
                    "idempotency_key": f"load-{uuid.uuid4()}",
                    "timestamp": start + step * n,
                }
                for n in range(first, min(first + LOAD_BATCH, events))
            ]
            started = perf_counter()
            result = self.ms.record_many(batch)
            elapsed += perf_counter() - started
            _check_accepted(batch, result)
            if first and first % (LOAD_BATCH * 40) == 0:
                progress(f"loaded {first:,} of {events:,} ({first / elapsed:,.0f} events/s)")
        return events / elapsed

    def usage_reports(self) -> int:
        """How many reports hold the usage account's events."""
        with self.ms.engine.connect() as conn:
            sql = "SELECT count(*) FROM usage_report WHERE account_id = :a"
            count = conn.execute(sa.text(sql), {"a": self.account_ids[USAGE_ACCOUNT]}).scalar()
        return int(count or 0)

    def get_usage(self, calls: int, *, expected: int) -> list[float]:
        """Latencies (s) of ``calls`` reads of the usage account's current period."""
        latencies = []
        for _ in range(calls):
            started = perf_counter()
            usage = self.ms.get_usage(USAGE_ACCOUNT)
            latencies.append(perf_counter() - started)
        counted = usage.meters[METER]
        if counted.events != expected or counted.quantity != expected:
            raise RuntimeError(
                f"get_usage saw {counted.events} events / {counted.quantity}, expected {expected}"
            )
        return latencies


def _check_accepted(batch: list[dict[str, Any]], result: BatchResult) -> None:
    if result.accepted != len(batch):
        raise RuntimeError(
            f"record_many accepted {result.accepted} of {len(batch)} items "
            f"({result.duplicates} duplicates); first rejections: {result.rejected[:3]}"
        )


def _ingest_figures() -> dict[str, Figure]:
    return {
        "inc_rate": Figure("increment, 1 process, 1 thread", "events/s"),
        "inc_threads": Figure(
            f"increment, 1 process, {THREADS} threads, 1 account each",
            "events/s",
            target=Target(">=", 2000, ""),
        ),
        "inc_p50": Figure("increment latency p50", "ms", target=Target("<=", 1, "ms")),
        "inc_p99": Figure("increment latency p99", "ms"),
        "rm_rate": Figure(
            f"record_many, batches of {BATCH:,}, 1 thread",
            "events/s",
            target=Target(">=", 50_000, ""),
        ),
        "rm_threads": Figure(
            f"record_many, batches of {BATCH:,}, {BATCH_THREADS} threads, own accounts",
            "events/s",
            target=Target(">=", 50_000, ""),
        ),
        "grav_rate": Figure("baseline: Gravity counter (UPDATE+commit)", "events/s"),
        "grav_p50": Figure("baseline: Gravity counter latency p50", "ms"),
        "ceiling": Figure("baseline: ceiling", "events/s"),
        "rm_ratio": Figure("ratio record_many / ceiling", "x"),
        "inc_ratio": Figure("ratio increment / Gravity counter", "x"),
    }


def measure_ingest(bench: IngestBench, plan: Plan) -> list[Figure]:
    """Figures 1-4, in interleaved runs, after a warm-up that is not counted."""
    figures = _ingest_figures()
    figures["ceiling"].label = bench.raw.ceiling_label
    progress("warming up")
    bench.increments(50)
    bench.raw.gravity(50)
    bench.raw.ceiling(bench.record_many(bench.batches(2 * BATCH))[1])
    for run in range(1, plan.repeat + 1):
        progress(f"run {run}/{plan.repeat}: increment, Gravity counter, record_many, ceiling")
        inc_rate, inc_latencies = bench.increments(plan.calls)
        inc_threads = bench.increments_threaded(plan.calls, THREADS)
        grav_rate, grav_latencies = bench.raw.gravity(plan.calls)
        rm_rate, written = bench.record_many(bench.batches(plan.events))
        rm_threads = bench.record_many_threaded(
            bench.batches(plan.events, groups=BATCH_THREADS), BATCH_THREADS
        )
        ceiling = sum(map(len, written)) / bench.raw.ceiling(written)
        for name, value in (
            ("inc_rate", inc_rate),
            ("inc_threads", inc_threads),
            ("rm_threads", rm_threads),
            ("inc_p50", 1000 * percentile(inc_latencies, 50)),
            ("inc_p99", 1000 * percentile(inc_latencies, 99)),
            ("rm_rate", rm_rate),
            ("grav_rate", grav_rate),
            ("grav_p50", 1000 * percentile(grav_latencies, 50)),
            ("ceiling", ceiling),
            ("rm_ratio", rm_rate / ceiling),
            ("inc_ratio", inc_rate / grav_rate),
        ):
            figures[name].runs.append(value)
    return list(figures.values())


def measure_get_usage(bench: IngestBench, plan: Plan) -> tuple[list[Figure], list[str]]:
    """Figure 5: load the big account, then time ``get_usage`` in several runs."""
    n = plan.usage_events
    progress(f"loading {n:,} events over {USAGE_DAYS} days through record_many")
    load_rate = bench.load_usage(n)
    reports = bench.usage_reports()
    where = f"{n:,} events, {reports:,} reports"
    p50 = Figure(f"get_usage p50 ({where})", "ms")
    p99 = Figure(f"get_usage p99 ({where})", "ms", target=Target("<=", 5, "ms"))
    p99.target_applies = n >= USAGE_TARGET_EVENTS
    load = Figure(f"load: record_many, batches of {LOAD_BATCH:,}, {USAGE_DAYS} days", "events/s")
    load.runs.append(load_rate)
    bench.get_usage(20, expected=n)  # warm-up
    for run in range(1, plan.repeat + 1):
        progress(f"run {run}/{plan.repeat}: get_usage x {plan.usage_calls}")
        latencies = bench.get_usage(plan.usage_calls, expected=n)
        p50.runs.append(1000 * percentile(latencies, 50))
        p99.runs.append(1000 * percentile(latencies, 99))
    notes = [
        f"get_usage: {plan.usage_calls} calls per run, period = the account's billing period; "
        f"its {n:,} events were loaded through record_many (load row: one load, not a median)"
    ]
    if not p99.target_applies:
        notes.append(
            f"get_usage ran with {n:,} events, fewer than the target's "
            f"{USAGE_TARGET_EVENTS:,}: verdict n/a (use --usage-events {USAGE_TARGET_EVENTS})"
        )
    return [p50, p99, load], notes


def profile(bench: IngestBench, *, calls: int = 500, batches: int = 10, reads: int = 50) -> str:
    """cProfile of ``increment``, of ``record_many`` over fresh batches and of ``get_usage``
    on the big account."""
    data = bench.batches(batches * BATCH)
    return profile_calls(
        {
            f"increment x {calls}": lambda: bench.increments(calls),
            f"record_many, {batches} batches of {BATCH:,}": lambda: [
                bench.ms.record_many(b) for b in data
            ],
            f"get_usage x {reads}": lambda: [
                bench.ms.get_usage(USAGE_ACCOUNT) for _ in range(reads)
            ],
        }
    )


def run_database(url: str, origin: str, plan: Plan) -> str:
    """Every figure on one database, as a printed table (plus a profile if asked)."""
    load_before = os.getloadavg()[0]
    bench = IngestBench(url)
    try:
        figures = measure_ingest(bench, plan)
        usage_figures, notes = measure_get_usage(bench, plan)
        profiled = profile(bench) if plan.profile else ""
    finally:
        bench.close()
    title = f"{bench.raw.version} ({origin}): median of {plan.repeat} runs"
    notes = [
        f"increment and Gravity counter: {plan.calls:,} calls per run; record_many and "
        f"ceiling: {plan.events:,} events per run, one transaction per {BATCH:,}",
        "ratios are taken within each run, then the median of the ratios is shown",
        f"load average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end, "
        f"{os.cpu_count()} CPUs (a busy machine lowers every figure)",
        *notes,
    ]
    if not bench.raw.version.startswith("PostgreSQL"):
        notes.append("targets are stated for PostgreSQL; SQLite is held to them for comparison")
    return render(title, [*figures, *usage_figures], notes) + (
        "\n\n" + profiled if profiled else ""
    )


#: Sizes on the command line: (option, default, with --quick, help).
_SIZES = (
    ("--events", 20_000, 5_000, "record_many and ceiling events per run"),
    ("--calls", 2_000, 500, "increment and Gravity counter calls per run"),
    ("--repeat", 5, 3, "runs per figure; the median over runs is reported"),
    ("--usage-events", USAGE_TARGET_EVENTS, 50_000, "events in the account get_usage reads"),
    ("--usage-calls", 200, 200, "get_usage calls per run"),
    ("--credit-seconds", 3, 1, "with --credits: seconds each figure is timed per side and run"),
)


def parse_args(argv: list[str] | None) -> tuple[Plan, list[str]]:
    """The command line, as a plan and the databases to run on."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.ingest",
        description="Events/s of increment and record_many, get_usage latency, and two "
        "baselines measured in the same run (a Gravity-style counter, a raw COPY into an "
        "unindexed table) on fresh PostgreSQL and SQLite databases. Results go to "
        "stdout, progress to stderr. The default run takes about 5 minutes.",
    )
    for option, default, quick, text in _SIZES:
        parser.add_argument(
            option, type=int, metavar="N", help=f"{text} (default {default:,}; quick {quick:,})"
        )
    parser.add_argument("--only", choices=("postgres", "sqlite"), help="one database only")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run of about a minute (smaller sizes)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print a cProfile of increment (500 calls), record_many (10 batches of "
        "1,000) and get_usage (50 calls); with --credits, of one credit tick, and of "
        "increment and record_many with the ticker running",
    )
    parser.add_argument(
        "--credits",
        action="store_true",
        help="instead of the figures above: increment and record_many with prepaid credits "
        "and usage alerts active (a grant and 3 alerts per account, accounts billed by a "
        "mirrored graduated price, the credit tick running every 1 s beside ingest, 10x "
        "the default) beside the same ingest without them; about 4 minutes per database "
        "(--quick: about a minute)",
    )
    parser.add_argument(
        "--credit-ticker",
        choices=("thread", "process", "both"),
        default="both",
        help="with --credits: run the tick in a thread of the recording process (as "
        "`metersync run` does), in a process of its own (as `metersync scheduler`), or "
        "both, each its own side of the comparison (default both)",
    )
    args = parser.parse_args(argv)
    sizes: dict[str, int] = {}
    for option, default, quick, _ in _SIZES:
        name = option[2:].replace("-", "_")
        given = getattr(args, name)
        sizes[name] = given if given is not None else quick if args.quick else default
        if sizes[name] < 1:
            parser.error(f"{option} must be at least 1, got {sizes[name]}")
    databases = [args.only] if args.only else ["postgres", "sqlite"]
    plan = Plan(
        **sizes, profile=args.profile, credits=args.credits, credit_ticker=args.credit_ticker
    )
    return plan, databases


def _run(url: str, where: str, plan: Plan) -> str:
    if plan.credits:
        credit_plan = ingest_credits.CreditPlan(
            plan.repeat, plan.credit_seconds, plan.credit_ticker, plan.profile
        )
        return ingest_credits.run_credits(url, where, credit_plan)
    return run_database(url, where, plan)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when a database asked for by name was not available."""
    plan, databases = parse_args(argv)
    status = 0
    for kind in databases:
        progress(f"{kind}: fresh database")
        try:
            with postgres_database() if kind == "postgres" else sqlite_database() as (url, where):
                print(_run(url, where, plan), end="\n\n", flush=True)
        except NoServer as exc:
            print(f"PostgreSQL skipped: {exc}\n", flush=True)
            status = 1 if len(databases) == 1 else status
    return status


if __name__ == "__main__":
    sys.exit(main())
