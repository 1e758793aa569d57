"""Rating benchmark: how fast metersync rates a price and previews an invoice (issue 11).

Run it from the project root::

    python -m tests.bench.rating             # under a minute (1,000,000 events loaded)
    python -m tests.bench.rating --quick     # smoke run, about 10 s: 100,000 events
    python -m tests.bench.rating --profile   # also a cProfile of preview_invoice

What is measured, each beside a baseline measured in the same run:

1. ``adapter.rate(price, quantity)`` calls/s on a graduated 5-tier price (first 1,000
   free, then decimal unit amounts, the last tier open), over precomputed integer
   quantities spread log-uniformly from 0 to 5,000,000 so that every tier is reached.
   Baseline: an inline graduated loop over the same tiers, parsed to Decimal beforehand
   (the cost floor of the arithmetic); the ratio is rate() / baseline, taken within each
   run. For context: ``compile_price(price).amount(q)`` (the price compiled once) and
   ``rate()`` on the same tiers in volume mode. Target: rate() >= 200,000 calls/s.
2. ``ms.preview_invoice(account)`` p50/p99 latency on a fresh PostgreSQL database, for an
   account linked to ``cus_bench`` whose subscription (a licensed base fee and the
   5-tier metered price, mirrored through webhook events as the receiver and worker apply
   them) has 1,000,000 events of 1 unit in its current 30-day period, loaded through
   ``record_many`` in chronological batches of 10,000 (the load rate is reported).
   Baseline: ``ms.get_usage(account)`` on the same data (the preview reads the same
   reports, plus the mirror). Target: preview p99 <= 10 ms. The preview's metered line
   must hold every unit loaded, rated as ``adapter.rate`` rates them, or the run fails.

Each figure is the median over runs (the rating figures and the two latencies are measured
in interleaved runs, so a noisy moment on this shared machine hits them alike), with the
spread beside it. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from time import perf_counter
from typing import Any

import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.domain.rating import compile_price
from config.logging import configure_logging
from config.settings import Settings
from tests import stripe_events as se
from tests.bench.common import (
    Figure,
    Target,
    percentile,
    postgres_database,
    profile_calls,
    progress,
    render,
)
from tests.mirror_helpers import deliver, link_meter
from tests.servers import NoServer

ACCOUNT, CUSTOMER, METER, STRIPE_METER = "acct_bench", "cus_bench", "api_calls", "mtr_bench"
#: (up_to, unit_amount_decimal in cents): 1,000 free, then cheaper per unit; last open.
TIERS: tuple[tuple[int | None, str], ...] = (
    (1_000, "0"), (10_000, "2"), (100_000, "1.5"), (1_000_000, "0.8"), (None, "0.25"),
)  # fmt: skip
LOAD_BATCH, TARGET_EVENTS, WARMUP = 10_000, 1_000_000, 20
PERIOD_DAYS, ELAPSED_DAYS = 30, 29


def tiered(mode: str, price_id: str = "price_metered") -> dict[str, Any]:
    """The 5-tier metered price as Stripe returns it (decimal amounts: unit_amount null)."""
    tiers = [se.tier(up_to) for up_to, _ in TIERS]
    for tier, (_, unit) in zip(tiers, TIERS, strict=True):
        tier["unit_amount_decimal"] = unit
    return se.price(price_id, meter=STRIPE_METER, tiers=tiers, tiers_mode=mode)


METERED = tiered("graduated")
BASE = se.price("price_base", usage_type="licensed", unit_amount=9900, product="prod_base")


def inline_graduated(tiers: Sequence[tuple[int | None, str]]) -> Callable[[int], int]:
    """The baseline: a graduated loop over tiers parsed to Decimal once, rounded half up."""
    parsed = [(None if up is None else Decimal(up), Decimal(unit)) for up, unit in tiers]
    zero = Decimal(0)

    def amount(quantity: int) -> int:
        billed, exact, floor = Decimal(quantity), zero, zero
        for up_to, unit in parsed:
            if billed <= floor:
                break
            top = billed if up_to is None or billed < up_to else up_to
            exact += (top - floor) * unit
            floor = top
        return int(exact.to_integral_value(rounding=ROUND_HALF_UP))

    return amount


def per_second(work: Callable[[int], int], quantities: Sequence[int]) -> float:
    """Calls/s of ``work`` over ``quantities``."""
    started = perf_counter()
    for quantity in quantities:
        work(quantity)
    return len(quantities) / (perf_counter() - started)


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure (see ``--help``)."""

    rate_calls: int
    events: int
    calls: int
    repeat: int
    profile: bool


def measure_rating(plan: Plan) -> tuple[list[Figure], list[str]]:
    """Figure 1: rate(), the compiled plan, volume mode and the inline baseline."""
    rnd = random.Random(2026_11)
    quantities = [int(10 ** rnd.uniform(0, 6.7)) - 1 for _ in range(plan.rate_calls)]
    baseline = inline_graduated(TIERS)
    works: dict[str, Callable[[int], int]] = {
        "rate": partial(adapter.rate, METERED),
        "compiled": compile_price(METERED).amount,
        "volume": partial(adapter.rate, tiered("volume", "price_volume")),
        "baseline": baseline,
    }
    wrong = [q for q in quantities[:5000] if works["rate"](q) != baseline(q)]
    if wrong:
        raise RuntimeError(f"rate() and the inline baseline disagree, e.g. at {wrong[0]}")
    figures = {
        "rate": Figure("adapter.rate(price, q), graduated, 5 tiers", "calls/s"),
        "compiled": Figure("compile_price(price).amount(q), compiled once", "calls/s"),
        "volume": Figure("adapter.rate(price, q), volume mode, 5 tiers", "calls/s"),
        "baseline": Figure("baseline: inline Decimal graduated loop", "calls/s"),
        "ratio": Figure("ratio rate() / baseline", "x"),
    }
    figures["rate"].target = Target(">=", 200_000, "")
    for work in works.values():
        per_second(work, quantities[:2000])  # warm-up
    for run in range(1, plan.repeat + 1):
        progress(f"run {run}/{plan.repeat}: rate, compiled, volume, baseline")
        got = {name: per_second(work, quantities) for name, work in works.items()}
        for name, value in got.items():
            figures[name].runs.append(value)
        figures["ratio"].runs.append(got["rate"] / got["baseline"])
    notes = [
        f"rating: {plan.rate_calls:,} calls per run; quantities 0 - 5,000,000 spread "
        "log-uniformly (every tier reached), precomputed ints",
        "rate() = compile_price(price) + amount(q): on every call it builds the price's "
        "cache key (every field rating reads) to find the compiled plan; the compiled row "
        "reuses the plan and shows what that lookup costs",
    ]
    return list(figures.values()), notes


class PreviewBench:
    """One fresh database: an account on a mirrored subscription, with its usage."""

    def __init__(self, url: str) -> None:
        self.ms: Metersync = adapter.connect(Settings(database_url=url, auto_migrate=True))
        with self.ms.engine.connect() as conn:
            self.version = f"PostgreSQL {conn.exec_driver_sql('SHOW server_version').scalar()}"
        self.ms.accounts.upsert(ACCOUNT, stripe_customer_id=CUSTOMER)
        self.ms.meters.upsert(METER, aggregation="sum")
        link_meter(self.ms, METER, STRIPE_METER)
        now = datetime.now(UTC)
        self.start = now.replace(minute=0, second=0, microsecond=0) - timedelta(days=ELAPSED_DAYS)
        period = (int(self.start.timestamp()), int(self.start.timestamp()) + PERIOD_DAYS * 86400)
        created = int(now.timestamp()) - 3600
        for price in (BASE, METERED):
            deliver(self.ms, se.event("price.created", price, created=created))
        items = [
            se.item("si_base", price_obj=BASE, period=period, quantity=1),
            se.item("si_metered", price_obj=METERED, period=period),
        ]
        sub = se.subscription("sub_bench", customer_id=CUSTOMER, period=period, items=items)
        deliver(self.ms, se.event("customer.subscription.created", sub, created=created + 1))

    def load(self, events: int) -> float:
        """``events`` events of 1 unit, evenly from the period's start to a minute ago,
        through ``record_many``; return the seconds spent in record_many."""
        step = (datetime.now(UTC) - timedelta(minutes=1) - self.start) / events
        elapsed = 0.0
        for first in range(0, events, LOAD_BATCH):
            at, key = self.start, "load-"
            batch = [
                dict(account=ACCOUNT, meter=METER, quantity=1, idempotency_key=f"{key}{n}",
                     timestamp=at + step * n)
                for n in range(first, min(first + LOAD_BATCH, events))
            ]  # fmt: skip
            started = perf_counter()
            result = self.ms.record_many(batch)
            elapsed += perf_counter() - started
            if result.accepted != len(batch):
                raise RuntimeError(f"record_many accepted {result.accepted} of {len(batch)}")
            if first and first % (LOAD_BATCH * 20) == 0:
                progress(f"loaded {first:,} of {events:,} ({first / elapsed:,.0f} events/s)")
        return elapsed

    def reports(self) -> int:
        """How many usage reports hold the account's events."""
        with self.ms.engine.connect() as conn:
            sql = "SELECT count(*) FROM usage_report r JOIN account a ON a.id = r.account_id "
            count = conn.execute(sa.text(sql + "WHERE a.name = :a"), {"a": ACCOUNT}).scalar()
        return int(count or 0)

    def check(self, events: int) -> None:
        """Fail loudly unless the preview and get_usage see every unit, rated as rate()."""
        preview = self.ms.preview_invoice(ACCOUNT)
        metered = [line for line in preview.lines if line.kind == "metered"]
        expected = adapter.rate(METERED, events)
        got = [(line.quantity, line.amount) for line in metered]
        if got != [(Decimal(events), expected)]:
            raise RuntimeError(
                f"preview lines {preview.lines!r}: expected one metered line of {events:,} "
                f"units for {expected}"
            )
        usage = self.ms.get_usage(ACCOUNT)
        if usage.meters[METER].quantity != events or usage.period_source != "billing_period":
            raise RuntimeError(f"get_usage saw {usage.meters[METER]!r} ({usage.period_source})")

    def latencies(self, call: Callable[[str], object], calls: int) -> list[float]:
        """Per-call latencies (s) of ``calls`` calls for the account."""
        out = []
        for _ in range(calls):
            started = perf_counter()
            call(ACCOUNT)
            out.append(perf_counter() - started)
        return out


def measure_preview(bench: PreviewBench, plan: Plan) -> tuple[list[Figure], list[str]]:
    """Figure 2: load the account, check the preview, time it beside get_usage."""
    n = plan.events
    progress(f"loading {n:,} events over {ELAPSED_DAYS} days through record_many")
    began = perf_counter()
    spent = bench.load(n)
    wall = perf_counter() - began
    bench.check(n)
    where = f"{n:,} events, {bench.reports():,} reports"
    figures = {
        "p50": Figure(f"preview_invoice p50 ({where})", "ms"),
        "p99": Figure(f"preview_invoice p99 ({where})", "ms", target=Target("<=", 10, "ms")),
        "u50": Figure("baseline: get_usage p50 (same data)", "ms"),
        "u99": Figure("baseline: get_usage p99 (same data)", "ms"),
        "ratio": Figure("ratio preview p50 / get_usage p50", "x"),
        "load": Figure(f"load: record_many, batches of {LOAD_BATCH:,}", "events/s"),
    }
    figures["p99"].target_applies = n >= TARGET_EVENTS
    figures["load"].runs.append(n / spent)
    bench.latencies(bench.ms.preview_invoice, WARMUP)
    bench.latencies(bench.ms.get_usage, WARMUP)
    for run in range(1, plan.repeat + 1):
        progress(f"run {run}/{plan.repeat}: preview_invoice x {plan.calls}, get_usage x same")
        preview = bench.latencies(bench.ms.preview_invoice, plan.calls)
        usage = bench.latencies(bench.ms.get_usage, plan.calls)
        for name, values in (("p", preview), ("u", usage)):
            figures[f"{name}50"].runs.append(1000 * percentile(values, 50))
            figures[f"{name}99"].runs.append(1000 * percentile(values, 99))
        figures["ratio"].runs.append(percentile(preview, 50) / percentile(usage, 50))
    notes = [
        f"preview and get_usage: {plan.calls} calls each per run after {WARMUP} warm-ups; "
        f"checked: the metered line holds all {n:,} units at adapter.rate's amount",
        f"load: {wall:.1f} s wall ({spent:.1f} s in record_many), one load, not a median",
    ]
    if not figures["p99"].target_applies:
        notes.append(f"{n:,} events, fewer than the target's {TARGET_EVENTS:,}: verdict n/a")
    return list(figures.values()), notes


#: Sizes on the command line: (option, default, with --quick, help).
_SIZES = (
    ("--rate-calls", 200_000, 20_000, "rate() calls per run"),
    ("--events", TARGET_EVENTS, 100_000, "events loaded into the previewed account"),
    ("--calls", 200, 100, "preview_invoice and get_usage calls per run"),
    ("--repeat", 5, 3, "runs per figure; the median over runs is reported"),
)


def parse_args(argv: list[str] | None) -> Plan:
    """The command line, as a plan."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.rating",
        description="adapter.rate() calls/s beside an inline Decimal loop, and "
        "preview_invoice latency beside get_usage on a fresh PostgreSQL database. "
        "Results go to stdout, progress to stderr.",
    )
    for option, default, quick, text in _SIZES:
        parser.add_argument(
            option, type=int, metavar="N", help=f"{text} (default {default:,}; quick {quick:,})"
        )
    parser.add_argument("--quick", action="store_true", help="smoke run (smaller sizes)")
    parser.add_argument(
        "--profile", action="store_true", help="also print a cProfile of preview_invoice x 50"
    )
    args = parser.parse_args(argv)
    sizes: dict[str, int] = {}
    for option, default, quick, _ in _SIZES:
        name = option[2:].replace("-", "_")
        given = getattr(args, name)
        sizes[name] = given if given is not None else quick if args.quick else default
        if sizes[name] < 1:
            parser.error(f"{option} must be at least 1, got {sizes[name]}")
    return Plan(**sizes, profile=args.profile)


def run_postgres(url: str, origin: str, plan: Plan) -> str:
    """Figure 2 on one fresh database, as a printed table (plus a profile if asked)."""
    bench = PreviewBench(url)
    try:
        figures, notes = measure_preview(bench, plan)
        work: dict[str, Callable[[], object]] = {
            "preview_invoice x 50": lambda: bench.latencies(bench.ms.preview_invoice, 50)
        }
        profiled = "\n\n" + profile_calls(work) if plan.profile else ""
    finally:
        bench.ms.close()
    notes.append(f"load average {os.getloadavg()[0]:.2f} at end")
    return render(f"{bench.version} ({origin}): median of {plan.repeat} runs", figures, notes) + (
        profiled
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when no PostgreSQL server could be had."""
    plan = parse_args(argv)
    configure_logging("WARNING")  # the mirror's info lines would land on stdout otherwise
    load = os.getloadavg()[0]
    figures, notes = measure_rating(plan)
    notes.append(f"load average {load:.2f} at start, {os.cpu_count()} CPUs")
    print(render(f"Rating: median of {plan.repeat} runs", figures, notes), end="\n\n", flush=True)
    progress("postgres: fresh database")
    try:
        with postgres_database() as (url, origin):
            print(run_postgres(url, origin, plan), end="\n\n", flush=True)
    except NoServer as exc:
        print(f"PostgreSQL skipped: {exc}\n", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
