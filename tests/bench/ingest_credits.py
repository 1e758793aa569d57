"""Ingest with prepaid credits and usage alerts active, beside the same ingest without them
(``python -m tests.bench.ingest --credits``; issue 12 item 6).

Drawdown is not in the recording path: ``increment`` and ``record_many`` run the same code
whether an account has credit or not. What credits and alerts cost ingest is the database
and CPU work of the credit tick running beside it. So, on one fresh database:

* two cohorts of 16 accounts (8 for single increments, two groups of 4 for batches), each
  account linked to its own Stripe customer whose mirrored subscription bills ``api_calls``
  by a graduated price (first 1,000 free, then 2 cents, then 1.5 cents), so drawdown
  really rates the usage and draws it;
* the *credited* cohort: every account has a credit grant and three alerts of its own
  (usage of ``api_calls``, cost, credit balance); the *plain* cohort has none;
* while the credited cohort records, :class:`workers.credit_ticks.CreditTicker` runs every
  :data:`INTERVAL` s (10x as often as the default ``METERSYNC_CREDIT_INTERVAL`` of 10 s),
  on an engine of its own, at 0.5, 1.5, 2.5 … s into the timed section, so a section of N
  seconds holds N ticks: every tick draws every account with credit and checks every
  alert (which draws each credited account once more, reading its balance). The tick
  runs in a thread of the recording process, as ``metersync run`` runs the scheduler
  (``--credit-ticker thread``), or in a process of its own, as ``metersync scheduler``
  runs it (``process``); by default both, each a side of its own. While the plain
  cohort records, nothing else runs.

Each figure is timed over a fixed time (``--credit-seconds``), the sides alternate (their
order rotates from figure to figure and run to run), and each ratio is taken within a
run; the table shows medians over runs. The ticks' work during the timed sections
(ticks, drawdowns, alert evaluations, ledger entries, firings) is counted, the entries
and firings from the database, and a run whose ticks wrote no ledger entry fails.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from random import Random
from time import perf_counter
from typing import Any

import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from config.logging import configure_logging
from config.settings import Settings
from tests import stripe_events as se
from tests.bench.common import Figure, Target, percentile, profile_calls, progress, render
from tests.billing_world import API, NOW, PERIOD
from tests.mirror_helpers import deliver, link_meter
from workers.credit_ticks import CreditTicker

#: The meter recorded (as in ``tests.bench.ingest``) and the Stripe meter its price bills.
METER = "api_calls"
STRIPE_METER = "mtr_api"
#: Items per ``record_many`` call (as in ``tests.bench.ingest``).
BATCH = 1_000
#: Seconds between credit ticks: 10x as often as the default ``credit_interval`` (10 s).
INTERVAL = 1.0
DEFAULT_INTERVAL = 10
THREADS = 8
BATCH_THREADS = 2
#: Minor units granted to each credited account: more than a run can draw.
GRANT = 10_000_000_000
#: Alert thresholds, each account's own: a usage alert, a cost alert, a balance alert.
USAGE_THRESHOLD = 5_000
COST_THRESHOLD = 10_000_000
BALANCE_THRESHOLD = GRANT - 30_000_000
#: The ratio credited / plain the issue asks for, and record_many's rate.
RATIO_TARGET = Target(">=", 80, "%")
BATCH_TARGET = Target(">=", 50_000, "")


@dataclass(frozen=True, slots=True)
class Cohort:
    """The accounts one side of the comparison records for."""

    kind: str
    #: One per increment thread; the first also serves the single-thread figure.
    singles: tuple[str, ...]
    #: One group of four per batch thread; the first also serves the single-thread figure.
    groups: tuple[tuple[str, ...], ...]

    @property
    def accounts(self) -> tuple[str, ...]:
        """Every account of the cohort."""
        return (*self.singles, *(a for g in self.groups for a in g))


def _cohort(kind: str) -> Cohort:
    singles = tuple(f"acct_{kind}_inc_{i}" for i in range(THREADS))
    groups = tuple(
        tuple(f"acct_{kind}_batch_{g}_{i}" for i in range(4)) for g in range(BATCH_THREADS)
    )
    return Cohort(kind, singles, groups)


PLAIN, CREDITED = _cohort("plain"), _cohort("credited")


class Ticking:
    """``CreditTicker.run_once`` on an engine of its own, as the scheduler has, ticking at
    0.5, 1.5, 2.5 … :data:`INTERVAL` s after :meth:`run` starts, so a section of N seconds
    holds N ticks. The ticker's clock is the tick count, so each call is due exactly when
    this schedule says; a tick that starts late (the last one ran long) runs at once."""

    def __init__(self, url: str) -> None:
        self.ms = adapter.connect(Settings(database_url=url, credit_interval=INTERVAL))
        self._clock = 0.0
        self._ticker = CreditTicker(self.ms, monotonic=lambda: self._clock)

    def tick(self) -> float:
        """Run one tick now; how long it took (s)."""
        self._clock += INTERVAL
        started = perf_counter()
        if self._ticker.run_once() is None:
            raise RuntimeError("the credit ticker skipped a tick that was due")
        return perf_counter() - started

    def run(self, stopped: Callable[[float], bool]) -> list[float]:
        """Tick on schedule until ``stopped(timeout)`` (it waits up to ``timeout`` s for
        the signal to stop) says so; the durations of the ticks."""
        begun, durations = perf_counter(), list[float]()
        while not stopped(max(0.0, begun + (len(durations) + 0.5) * INTERVAL - perf_counter())):
            durations.append(self.tick())
        return durations

    def close(self) -> None:
        """Release its connections."""
        self.ms.close()


class ThreadTicker:
    """The tick in a thread of the recording process, as ``metersync run`` runs it (the
    scheduler beside the HTTP API): it shares the process's GIL with ingest."""

    side = "thread"
    label = "credits+alerts, tick in a thread"

    def __init__(self, url: str) -> None:
        self._ticking = Ticking(url)
        self._stop = threading.Event()

    @contextmanager
    def running(self) -> Iterator[list[float]]:
        """Tick in the background for the body; it gets the tick durations once done."""
        durations: list[float] = []
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                durations.extend(self._ticking.run(self._stop.wait))
            except BaseException as exc:  # noqa: BLE001  raised again below, in the caller
                errors.append(exc)

        self._stop.clear()
        thread = threading.Thread(target=loop, name="credit-ticker", daemon=True)
        thread.start()
        try:
            yield durations
        finally:
            self._stop.set()
            thread.join()
        if errors:
            raise RuntimeError("the credit ticker failed") from errors[0]

    def tick(self) -> float:
        """One tick now, in the calling thread (for the profile)."""
        return self._ticking.tick()

    def close(self) -> None:
        """Release its connections."""
        self._ticking.close()


def _serve(url: str, conn: Connection) -> None:
    """The ticker process: tick from each ``start`` to the next ``stop``, then send back
    the tick durations (and the error, if a tick failed)."""
    configure_logging("WARNING")
    ticking = Ticking(url)
    conn.send("ready")
    try:
        while conn.recv() == "start":
            durations: list[float] = []
            error = ""
            try:
                durations = ticking.run(conn.poll)
            except Exception:  # noqa: BLE001  sent to the parent, which raises it
                error = traceback.format_exc()
            conn.recv()  # "stop"
            conn.send((durations, error))
    finally:
        ticking.close()


class ProcessTicker:
    """The tick in a process of its own, as ``metersync scheduler`` runs it: it competes
    with ingest for the cores and the database, not for a GIL."""

    side = "process"
    label = "credits+alerts, tick in its own process"

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(url, child), daemon=True)
        self._process.start()
        child.close()
        if self._conn.recv() != "ready":
            raise RuntimeError("the ticker process did not start")

    @contextmanager
    def running(self) -> Iterator[list[float]]:
        """Tick in the other process for the body; it gets the tick durations once done."""
        durations: list[float] = []
        self._conn.send("start")
        try:
            yield durations
        finally:
            self._conn.send("stop")
            got, error = self._conn.recv()
        if error:
            raise RuntimeError(f"the credit ticker process failed:\n{error}")
        durations.extend(got)

    def close(self) -> None:
        """Stop the process."""
        self._conn.send("quit")
        self._process.join(30)


Ticker = ThreadTicker | ProcessTicker


@dataclass(slots=True)
class Work:
    """What the ticker did during the timed sections of one side."""

    ticks: int = 0
    durations: list[float] = field(default_factory=list)
    entries: int = 0
    firings: int = 0
    seconds: float = 0.0


class CreditsBench:
    """Both cohorts on one fresh database, and the ticker beside the credited one."""

    def __init__(self, url: str, tickers: Sequence[str]) -> None:
        self.ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
        self.ms.meters.upsert(METER, aggregation="sum")
        link_meter(self.ms, METER, STRIPE_METER)
        created = int(NOW.timestamp()) - 3600
        deliver(self.ms, se.event("price.created", API, created=created))
        for cohort in (PLAIN, CREDITED):
            for name in cohort.accounts:
                self._bill(name, created)
        for name in CREDITED.accounts:
            self.ms.credits.grant(name, GRANT, currency="usd", reason="bench")
            self.ms.alerts.add(
                f"{name} usage", metric="usage", threshold=USAGE_THRESHOLD, account=name,
                meter=METER,
            )  # fmt: skip
            self.ms.alerts.add(
                f"{name} cost", metric="cost", threshold=COST_THRESHOLD, account=name
            )
            self.ms.alerts.add(
                f"{name} balance", metric="credit_balance", threshold=BALANCE_THRESHOLD,
                account=name,
            )  # fmt: skip
        made: dict[str, Callable[[str], Ticker]] = {
            "thread": ThreadTicker,
            "process": ProcessTicker,
        }
        self.tickers = {side: made[side](url) for side in tickers}
        self.alerts = len(self.ms.alerts.list())
        self._random = Random(20_26)
        #: The fastest record_many rate per thread seen, per thread count: it sizes the
        #: batches made for a timed section.
        self.batch_rate: dict[int, float] = {}
        #: Timed record_many sections whose batches ran out before their time was up.
        self.short = 0

    def _bill(self, name: str, created: int) -> None:
        """Link the account to its own customer, billed by the graduated price."""
        customer, sub = f"cus_{name}", f"sub_{name}"
        self.ms.accounts.upsert(name, stripe_customer_id=customer)
        item = se.item(f"si_{name}", subscription=sub, price_obj=API, period=PERIOD)
        body = se.subscription(sub, customer_id=customer, period=PERIOD, items=[item])
        deliver(self.ms, se.event("customer.subscription.created", body, created=created + 1))

    def close(self) -> None:
        """Release every connection."""
        for ticker in self.tickers.values():
            ticker.close()
        self.ms.close()

    def counts(self) -> tuple[int, int]:
        """Ledger entries and local alert firings in the database now."""
        with self.ms.engine.connect() as conn:
            entries = conn.execute(sa.text("SELECT count(*) FROM credit_entry")).scalar()
            firings = conn.execute(sa.text("SELECT count(*) FROM alert_firing")).scalar()
        return int(entries or 0), int(firings or 0)

    @contextmanager
    def side(self, side: str, work: Work) -> Iterator[None]:
        """The body runs plain, or with a ticker beside it (its work added to ``work``)."""
        if side == "plain":
            yield
            return
        entries, firings = self.counts()
        started = perf_counter()
        with self.tickers[side].running() as durations:
            yield
        work.seconds += perf_counter() - started
        work.ticks += len(durations)
        work.durations += durations
        after = self.counts()
        work.entries += after[0] - entries
        work.firings += after[1] - firings

    # -- timed sections: each runs for ``seconds`` and returns events/s ----------------------

    def increments(self, account: str, seconds: float) -> tuple[float, list[float]]:
        """Single increments on this thread for ``seconds``: events/s and latencies (s)."""
        latencies: list[float] = []
        started = perf_counter()
        deadline = started + seconds
        while (call := perf_counter()) < deadline:
            key = f"req-{uuid.uuid4()}"
            receipt = self.ms.increment(account, 1, meter=METER, idempotency_key=key)
            latencies.append(perf_counter() - call)
            if receipt.duplicate:
                raise RuntimeError(f"increment with fresh key {key} came back a duplicate")
        return len(latencies) / (perf_counter() - started), latencies

    def increments_threaded(self, accounts: tuple[str, ...], seconds: float) -> float:
        """Single increments from one thread per account for ``seconds``: events/s."""
        started = perf_counter()
        deadline = started + seconds

        def work(account: str) -> int:
            done = 0
            while perf_counter() < deadline:
                key = f"req-{uuid.uuid4()}"
                if self.ms.increment(account, 1, meter=METER, idempotency_key=key).duplicate:
                    raise RuntimeError(f"increment with fresh key {key} came back a duplicate")
                done += 1
            return done

        with ThreadPoolExecutor(len(accounts)) as pool:
            done = sum(f.result() for f in [pool.submit(work, a) for a in accounts])
        return done / (perf_counter() - started)

    def enough(self, seconds: float, threads: int) -> int:
        """Batches each of ``threads`` threads needs for ``seconds`` at 1.3 x the fastest
        rate seen so far (100,000 events/s before any was seen)."""
        rate = self.batch_rate.get(threads, 100_000 / threads)
        return max(2, math.ceil(rate * seconds * 1.3 / BATCH))

    def batches(self, accounts: tuple[str, ...], count: int) -> list[list[dict[str, Any]]]:
        """``count`` fresh batches over ``accounts`` and the last hour, made as
        ``tests.bench.ingest`` makes them."""
        now, rnd = datetime.now(UTC), self._random
        return [
            [
                {
                    "account": rnd.choice(accounts),
                    "meter": METER,
                    "quantity": rnd.randint(1, 100),
                    "idempotency_key": f"req-{uuid.uuid4()}",
                    "timestamp": now - timedelta(seconds=rnd.uniform(0, 3600)),
                }
                for _ in range(BATCH)
            ]
            for _ in range(count)
        ]

    def record_many(self, per_thread: list[list[list[dict[str, Any]]]], seconds: float) -> float:
        """Each thread records its batches, one after another, until ``seconds`` passed or
        its batches ran out: events/s over all threads."""
        started = perf_counter()
        deadline = started + seconds

        def work(batches: list[list[dict[str, Any]]]) -> int:
            done = 0
            for n, batch in enumerate(batches):
                if perf_counter() >= deadline:
                    break
                if n == len(batches) - 1:
                    self.short += 1
                result = self.ms.record_many(batch)
                if result.accepted != len(batch):
                    raise RuntimeError(f"record_many accepted {result.accepted} of {len(batch)}")
                done += len(batch)
            return done

        if len(per_thread) == 1:
            done = work(per_thread[0])
        else:
            with ThreadPoolExecutor(len(per_thread)) as pool:
                done = sum(pool.map(work, per_thread))
        rate = done / (perf_counter() - started)
        threads = len(per_thread)
        self.batch_rate[threads] = max(self.batch_rate.get(threads, 0.0), rate / threads)
        return rate


#: The compared figures: key, label, target of the absolute figure.
_PAIRS = (
    ("inc", "increment, 1 thread", None),
    ("inc_threads", f"increment, {THREADS} threads, 1 account each", None),
    ("rm", f"record_many, batches of {BATCH:,}, 1 thread", BATCH_TARGET),
    ("rm_threads", f"record_many, batches of {BATCH:,}, {BATCH_THREADS} threads", BATCH_TARGET),
)
_LABELS = {"plain": "plain", "thread": ThreadTicker.label, "process": ProcessTicker.label}
_SHORT = {"thread": "thread", "process": "own process"}


def _figures(tickers: Sequence[str]) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    sides = ("plain", *tickers)
    for key, label, target in _PAIRS:
        for side in sides:
            figures[f"{key}_{side}"] = Figure(
                f"{label}: {_LABELS[side]}", "events/s", target=target
            )
        for side in tickers:
            figures[f"{key}_ratio_{side}"] = Figure(
                f"ratio {label}: tick in {_SHORT[side]} / plain", "%", target=RATIO_TARGET
            )
        if key == "inc":
            for q in (50, 99):
                for side in sides:
                    figures[f"p{q}_{side}"] = Figure(
                        f"increment latency p{q}, 1 thread: {_LABELS[side]}", "ms"
                    )
    for side in tickers:
        figures[f"tick_{side}"] = Figure(f"tick duration p50, tick in {_SHORT[side]}", "ms")
        figures[f"entries_{side}"] = Figure(
            f"ledger entries written per run, tick in {_SHORT[side]}", "entries"
        )
    return figures


def _section(
    bench: CreditsBench, key: str, cohort: Cohort, seconds: float
) -> Callable[[], tuple[float, list[float]]]:
    """One timed section of figure ``key`` for ``cohort``, ready to run: it returns
    events/s (and the latencies of single increments). Batches are made here, untimed."""
    if key == "inc":
        return lambda: bench.increments(cohort.singles[0], seconds)
    if key == "inc_threads":
        return lambda: (bench.increments_threaded(cohort.singles, seconds), [])
    groups = cohort.groups[:1] if key == "rm" else cohort.groups
    per_thread = [bench.batches(g, bench.enough(seconds, len(groups))) for g in groups]
    return lambda: (bench.record_many(per_thread, seconds), [])


def measure(
    bench: CreditsBench, tickers: Sequence[str], *, repeat: int, seconds: float
) -> tuple[list[Figure], dict[str, Work]]:
    """Every figure in ``repeat`` runs, after a warm-up of each section on each side that
    is not counted (its first tick draws what was recorded before it). The sides' order
    rotates from figure to figure and from run to run."""
    figures = _figures(tickers)
    sides = ("plain", *tickers)
    progress(f"warming up ({', '.join(sides)}; every section)")
    for key, _, _ in _PAIRS:
        for side in sides:
            timed = _section(bench, key, PLAIN if side == "plain" else CREDITED, min(seconds, 1))
            with bench.side(side, Work()):
                timed()
    total = {side: Work() for side in tickers}
    for run in range(1, repeat + 1):
        progress(f"run {run}/{repeat}: {len(_PAIRS)} figures x ({', '.join(sides)})")
        work = {side: Work() for side in tickers}
        for n, (key, _, _) in enumerate(_PAIRS):
            turn = (run + n) % len(sides)
            rates: dict[str, float] = {}
            for side in sides[turn:] + sides[:turn]:
                timed = _section(bench, key, PLAIN if side == "plain" else CREDITED, seconds)
                with bench.side(side, work.get(side, Work())):
                    rate, latencies = timed()
                rates[side] = rate
                figures[f"{key}_{side}"].runs.append(rate)
                for q in (50, 99) if latencies else ():
                    figures[f"p{q}_{side}"].runs.append(1000 * percentile(latencies, q))
            for side in tickers:
                figures[f"{key}_ratio_{side}"].runs.append(100 * rates[side] / rates["plain"])
        for side, done in work.items():
            if done.entries <= 0:
                raise RuntimeError(f"run {run}: the {side} ticks wrote no ledger entry")
            figures[f"tick_{side}"].runs.append(1000 * percentile(done.durations, 50))
            figures[f"entries_{side}"].runs.append(done.entries)
            into = total[side]
            into.ticks += done.ticks
            into.durations += done.durations
            into.entries += done.entries
            into.firings += done.firings
            into.seconds += done.seconds
    return list(figures.values()), total


def profile(bench: CreditsBench, url: str, seconds: float) -> str:
    """cProfile of one credit tick, and of ``seconds`` of increment and of record_many on
    this thread of the recording process, plain and with the tick in a thread beside them
    (that thread's own time is not in the profiles, only what it makes this one wait)."""
    ticker = ThreadTicker(url)

    def section(key: str, cohort: Cohort, *, beside: bool) -> Callable[[], object]:
        timed = _section(bench, key, cohort, seconds)

        def run() -> object:
            if not beside:
                return timed()
            with ticker.running():
                return timed()

        return run

    try:
        return profile_calls(
            {
                f"one credit tick ({len(CREDITED.accounts)} accounts with credit, "
                f"{bench.alerts} alerts)": ticker.tick,
                f"increment, 1 thread, {seconds:g} s, plain": section("inc", PLAIN, beside=False),
                f"increment, 1 thread, {seconds:g} s, credits+alerts, tick in a thread": (
                    section("inc", CREDITED, beside=True)
                ),
                f"record_many, 1 thread, {seconds:g} s, plain": section("rm", PLAIN, beside=False),
                f"record_many, 1 thread, {seconds:g} s, credits+alerts, tick in a thread": (
                    section("rm", CREDITED, beside=True)
                ),
            },
            top=12,
        )
    finally:
        ticker.close()


@dataclass(frozen=True, slots=True)
class CreditPlan:
    """How much to measure (``--repeat``, ``--credit-seconds``, ``--credit-ticker``,
    ``--profile``)."""

    repeat: int
    seconds: int
    #: Where the tick runs: ``thread``, ``process`` or ``both`` (a side each).
    ticker: str = "both"
    profile: bool = False


def run_credits(url: str, origin: str, plan: CreditPlan) -> str:
    """The comparison on one database, as a printed table (plus a profile if asked)."""
    configure_logging("WARNING")  # drawdowns and firings log at info, on stdout otherwise
    tickers = ("thread", "process") if plan.ticker == "both" else (plan.ticker,)
    repeat, seconds = plan.repeat, plan.seconds
    progress("billing both cohorts, granting credit and adding alerts to the credited one")
    bench = CreditsBench(url, tickers)
    try:
        figures, work = measure(bench, tickers, repeat=repeat, seconds=seconds)
        text = profile(bench, url, seconds) if plan.profile else ""
        version = _version(bench.ms)
    finally:
        bench.close()
    accounts = len(CREDITED.accounts)
    title = f"{version} ({origin}): credits and alerts active vs not, median of {repeat} runs"
    notes = [
        f"each figure timed for {seconds} s per side and run; the sides' order rotates, and "
        "each ratio is taken within a run",
        f"credits+alerts: {accounts} accounts, each billed by a mirrored graduated price "
        f"(its own customer and subscription), with a grant and 3 alerts of its own "
        f"(usage, cost, credit balance: {bench.alerts} alerts); plain: "
        f"{len(PLAIN.accounts)} accounts billed alike, no grant, no alert, no tick",
        f"the tick: CreditTicker.run_once every {INTERVAL:g} s ({DEFAULT_INTERVAL}x the "
        f"default of {DEFAULT_INTERVAL} s) during each credits+alerts section, at 0.5, 1.5 "
        "… s into it, on an engine of its own; a tick draws every account with credit, "
        "then checks every alert (reading the ledger it just drew; alerts that fired this "
        "period are skipped); log lines off",
        "tick in a thread: in the recording process, as `metersync run` runs the scheduler "
        "(shares the GIL); tick in its own process: as `metersync scheduler` runs it",
    ]
    for side, done in work.items():
        d = done.durations
        notes.append(
            f"tick in {_SHORT[side]}, over its timed sections: {done.ticks} ticks in "
            f"{done.seconds:.1f} s, {accounts * done.ticks:,} drawdowns (1 per account "
            f"and tick), {bench.alerts * done.ticks:,} alerts checked, "
            f"{done.entries:,} ledger entries and {done.firings} firings written; over all "
            f"its ticks, p50 {1000 * percentile(d, 50):.0f} ms, p99 "
            f"{1000 * percentile(d, 99):.0f} ms"
        )
    if bench.short:
        notes.append(
            f"{bench.short} record_many sections ran out of batches before their time was "
            "up (their rate is over the shorter time)"
        )
    notes.append(
        "targets: credits+alerts at least 80 % of plain (each ratio); record_many "
        "50,000 events/s (stated for PostgreSQL)"
    )
    return render(title, figures, notes) + ("\n\n" + text if text else "")


def _version(ms: Metersync) -> str:
    with ms.engine.connect() as conn:
        if ms.engine.dialect.name == "postgresql":
            return f"PostgreSQL {conn.execute(sa.text('SHOW server_version')).scalar()}"
        return f"SQLite {conn.execute(sa.text('SELECT sqlite_version()')).scalar()}"
