"""Reconcile benchmark: ``reconcile()`` comparing 10,000 (customer, meter) pairs with a
rate-limited stand-in for Stripe's meter reads (``tests/bench/standin.py``), running as its
own process.

Run it from the project root::

    python -m tests.bench.reconcile                 # 10,000 pairs x 3 runs, about 6 minutes
    python -m tests.bench.reconcile --quick         # 2,000 pairs x 2 runs, about a minute
    python -m tests.bench.reconcile --read-rate 500 --latency-ms 0  # what metersync itself allows

The world, built once on a fresh PostgreSQL database: ``--pairs`` / 2 accounts, each
linked to a Stripe customer and with a billing period around now, and two meters
(``api_calls``: sum; ``peak``: max, reported to a Stripe ``last`` meter), so every account
has two pairs. Two usage events per pair are recorded two hours ago with
``record_many`` and pushed with ``ms.report_now()`` on the v2 stream to the stand-in,
which keeps what it accepted and answers summaries from it: Stripe holds what was sent,
so every pair must come out ``match``. The settle delay is 0 so every pair is compared.

Each run (``--repeat``, on the same world) times one ``reconcile(ms, gateway,
period="current")``, from the call to its return (listing the pairs, one summary read
per pair, storing every verdict), with the pace it really uses:
``METERSYNC_RECONCILE_READ_RATE`` set to the stand-in's read limit ``--read-rate``
(default 100/s, Stripe's live read limit), and ``METERSYNC_RECONCILE_CONCURRENCY`` reads
in flight (default 8). The stand-in adds ``--latency-ms`` (default 50, about what a
Stripe read takes) to every answer, so one read at a time could not reach the limit. The
default pace (unset: 80 % of Stripe's read limit, leaving room for workers and ``sync``)
reaches 80 % of the limit by design; the target is for the pace set to the limit.

Figures, each the median over runs with the spread beside it:

1. pairs/s, beside the read limit, and their ratio (target: at least 90 % of the limit);
2. Stripe calls per pair and period, counted by the stand-in (target: at most 1): the
   summary reads alone, and every read (the run's one meter listing, retries);
3. 429s the stand-in answered (the pace should leave none);
4. the run's time beyond what the limit itself requires (pairs / limit): listing the
   pairs, the first batch's database read, storing the last batch and the run.

A run whose pairs are not all ``match`` fails the benchmark (exit status 1): a figure
measured on errors says nothing. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.reconciling.run import reconcile
from adapter.store.models import Account, BillingPeriod, table
from config.logging import configure_logging
from config.settings import Settings
from tests.bench import standin as standins
from tests.bench.common import Figure, Target, postgres_database, profile_calls, progress, render

API_KEY = "sk_test_bench"
#: Local meter → its aggregation; the stand-in gets the Stripe formula of each.
METERS = {"api_calls": "sum", "peak": "max"}
STANDIN_METERS = "api_calls=sum,peak=last"
#: Usage events recorded per pair, and items per ``record_many`` call.
EVENTS_PER_PAIR, BATCH = 2, 5_000
#: How long ago the usage happened: its hourly report window is over.
AGO = timedelta(hours=2)
#: The stand-in's read limit by default, Stripe's live one: 10,000 pairs take 100 s a run.
READ_RATE = 100
#: Added to every stand-in answer by default: about a Stripe read's round trip.
LATENCY_MS = 50


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure (see ``--help``)."""

    pairs: int
    repeat: int
    read_rate: float
    latency_ms: float
    quick: bool


@dataclass
class Run:
    """What one reconcile run measured."""

    pairs: int
    elapsed: float
    #: Requests the run says it made, and what the stand-in counted during it.
    calls: int
    reads: int
    summaries: int
    read_429: int
    counts: dict[str, int]

    @property
    def rate(self) -> float:
        """Pairs compared per second."""
        return self.pairs / self.elapsed


def standin(read_rate: float, *, latency_ms: float) -> AbstractContextManager[str]:
    """A stand-in process keeping events for summaries; yields its base URL."""
    return standins.running(
        *("--meters", STANDIN_METERS, "--read-rate", str(read_rate)),
        *("--latency-ms", str(latency_ms)),
        *("--rate", "1000000"),  # the set-up pushes on the stream: no v1 limit needed
    )


def build_world(url: str, base: str, plan: Plan) -> Metersync:
    """The accounts, meters, periods and pushed usage of the module docstring."""
    settings = Settings(
        database_url=url,
        auto_migrate=True,
        stripe_api_key=API_KEY,
        stripe_api_base=base,
        stripe_meter_events_base=base,
        stripe_transport="stream",
        reconcile_settle_seconds=0,
        reconcile_read_rate=plan.read_rate,
    )
    ms = adapter.connect(settings)
    for meter, aggregation in METERS.items():
        ms.meters.upsert(meter, aggregation=aggregation)
    accounts = math.ceil(plan.pairs / len(METERS))
    now = datetime.now(UTC)
    progress(f"creating {accounts:,} linked accounts with a billing period")
    names = [f"acct_{n:05d}" for n in range(accounts)]
    # Plain inserts: the catalog's upsert (a transaction and an audit row each) would
    # take longer than the runs, and what reconcile reads of an account is these rows.
    with ms.engine.begin() as conn:
        rows = [
            {"name": name, "stripe_customer_id": f"cus_{name[5:]}", "free": False, "meta": {}}
            for name in names
        ]
        conn.execute(table(Account).insert().values(created_at=now, updated_at=now), rows)
        ids = conn.execute(sa.select(table(Account).c.id)).scalars().all()
        periods = [{"account_id": i, "period_start": now - timedelta(days=5)} for i in ids]
        conn.execute(
            table(BillingPeriod)
            .insert()
            .values(period_end=now + timedelta(days=25), source="manual"),
            periods,
        )
    record_usage(ms, names, at=now - AGO)
    progress("pushing every report on the stream (ms.report_now())")
    started = time.perf_counter()
    results = ms.report_now()
    statuses = {r.status for r in results}
    progress(f"  {len(results):,} reports pushed in {time.perf_counter() - started:.1f} s")
    if statuses != {"sent"} or len(results) != accounts * len(METERS):
        raise RuntimeError(f"set-up push: {len(results)} reports, statuses {statuses}")
    return ms


def record_usage(ms: Metersync, names: list[str], *, at: datetime) -> None:
    """:data:`EVENTS_PER_PAIR` events for every (account, meter), a second apart."""
    items = [
        {
            "account": name,
            "meter": meter,
            "quantity": 1 + (n + k) % 9,
            "idempotency_key": f"ev-{uuid.uuid4()}",
            "timestamp": at + timedelta(seconds=k),
        }
        for n, name in enumerate(names)
        for meter in METERS
        for k in range(EVENTS_PER_PAIR)
    ]
    progress(f"recording {len(items):,} usage events")
    for first in range(0, len(items), BATCH):
        result = ms.record_many(items[first : first + BATCH])
        if result.accepted != len(items[first : first + BATCH]):
            raise RuntimeError(f"record_many rejected items: {result.rejected[:3]}")


def reconcile_once(ms: Metersync, base: str, plan: Plan) -> Run:
    """One timed ``reconcile()`` at the pace of ``plan.read_rate``."""
    gateway = ms.gateway()
    assert gateway is not None
    before = standins.stats(base)
    started = time.perf_counter()
    summary = reconcile(ms, gateway, period="current")
    elapsed = time.perf_counter() - started
    after = standins.stats(base)
    delta = {key: after[key] - before[key] for key in after}
    return Run(
        pairs=len(summary.pairs),
        elapsed=elapsed,
        calls=summary.calls,
        reads=delta["reads"] + delta["read_429"],
        summaries=delta["summaries"],
        read_429=delta["read_429"],
        counts=summary.counts,
    )


def check(run: Run, plan: Plan, ms: Metersync) -> None:
    """Stop the benchmark unless every pair matched and was compared with one read."""
    expected = math.ceil(plan.pairs / len(METERS)) * len(METERS)
    if run.counts != {"match": expected} or run.pairs != expected:
        with ms.engine.connect() as conn:
            odd = conn.execute(
                sa.text("SELECT verdict, note FROM reconcile_pair WHERE verdict <> 'match' LIMIT 5")
            ).all()
        print(
            f"FAILED: expected {expected:,} pairs all 'match', got {run.counts}; "
            f"examples: {[tuple(row) for row in odd]}",
            file=sys.stderr,
        )
        sys.exit(1)


def ms_concurrency() -> int:
    """Reads reconcile keeps in flight (``METERSYNC_RECONCILE_CONCURRENCY``, else 8)."""
    return Settings().reconcile_concurrency


def figures(plan: Plan) -> dict[str, Figure]:
    """The table rows, empty."""
    limit = f"{plan.read_rate:,.0f}"
    return {
        "rate": Figure(f"reconcile, {plan.pairs:,} pairs, pace = limit", "pairs/s"),
        "limit": Figure("  stand-in read limit", "reads/s"),
        "ratio": Figure(
            f"  pairs/s as share of the {limit}/s limit", "% of limit", [], Target(">=", 90, "%")
        ),
        "summaries": Figure("summary reads per pair and period", "calls", [], Target("<=", 1, "")),
        "calls": Figure("  all Stripe reads per pair (+ meter listing, retries)", "calls"),
        "429": Figure("429s from the stand-in", "calls", [], Target("<=", 0, "")),
        "beyond": Figure("run time beyond pairs / limit (listing, first read, storing)", "s"),
    }


def run(plan: Plan, *, profile: bool) -> tuple[list[Figure], list[str]]:
    """Build the world, reconcile it ``plan.repeat`` times; the figures and notes."""
    table_ = figures(plan)
    notes: list[str] = []
    with (
        postgres_database("metersync_reconcile") as (url, origin),
        standin(plan.read_rate, latency_ms=plan.latency_ms) as base,
    ):
        ms = build_world(url, base, plan)
        try:
            for n in range(1, plan.repeat + 1):
                progress(f"run {n}/{plan.repeat}: reconcile at {plan.read_rate:,.0f} reads/s")
                one = reconcile_once(ms, base, plan)
                check(one, plan, ms)
                progress(
                    f"  {one.pairs:,} pairs in {one.elapsed:.1f} s = {one.rate:,.1f}/s; "
                    f"{one.reads:,} reads, {one.read_429} 429s"
                )
                table_["rate"].runs.append(one.rate)
                table_["limit"].runs.append(plan.read_rate)
                table_["ratio"].runs.append(100 * one.rate / plan.read_rate)
                table_["summaries"].runs.append(one.summaries / one.pairs)
                table_["calls"].runs.append(one.reads / one.pairs)
                table_["429"].runs.append(one.read_429)
                table_["beyond"].runs.append(one.elapsed - one.pairs / plan.read_rate)
                notes.append(
                    f"run {n}: {one.pairs:,} pairs, all match, in {one.elapsed:.2f} s; "
                    f"stand-in counted {one.reads:,} reads ({one.summaries:,} summaries, "
                    f"{one.read_429} 429s), reconcile counted {one.calls:,} calls"
                )
            if profile:
                progress("profiling one more run")
                print(profile_calls({"reconcile": lambda: reconcile_once(ms, base, plan)}))
        finally:
            ms.close()
    notes.append(
        f"PostgreSQL: fresh database on the {origin}; stand-in: its own process, read "
        f"limit {plan.read_rate:,.0f}/s (token bucket, burst 1 s), {plan.latency_ms:g} ms "
        f"added to every answer; pace METERSYNC_RECONCILE_READ_RATE = {plan.read_rate:,.0f}"
        f", {ms_concurrency()} reads in flight; machine: {os.cpu_count()} CPUs"
    )
    if plan.quick:
        notes.append(f"--quick: {plan.pairs:,} pairs (the target is stated for 10,000)")
    return list(table_.values()), notes


def main() -> None:
    """Parse the options, measure, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (tests/bench/reconcile.py) for what is measured.",
    )
    parser.add_argument("--pairs", type=int, help="pairs to reconcile (default 10,000)")
    parser.add_argument("--repeat", type=int, help="runs, median reported (default 3)")
    parser.add_argument(
        "--read-rate",
        type=float,
        default=READ_RATE,
        help=f"the stand-in's read limit and reconcile's pace, reads/s (default {READ_RATE}, "
        "Stripe's live limit: a 10,000-pair run takes 100 s)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=LATENCY_MS,
        help=f"added by the stand-in to every answer (default {LATENCY_MS}, about a Stripe "
        "read's round trip)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2,000 pairs, 2 runs (unless given)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile of one more run")
    args = parser.parse_args()
    plan = Plan(
        pairs=args.pairs or (2_000 if args.quick else 10_000),
        repeat=args.repeat or (2 if args.quick else 3),
        read_rate=args.read_rate,
        latency_ms=args.latency_ms,
        quick=args.quick,
    )
    configure_logging("WARNING")  # one line per run on stderr, not per report pushed
    progress(f"plan {plan}")
    table_, notes = run(plan, profile=args.profile)
    title = "metersync reconcile benchmark (PostgreSQL, stand-in Stripe in its own process)"
    print(render(title, table_, notes))


if __name__ == "__main__":
    main()
