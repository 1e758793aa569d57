"""Concurrent recording: nothing lost, nothing counted twice, every event in its report.

Writers run in separate processes (``spawn``), each with its own ``adapter.connect``, and
in threads sharing one connection, all released at once by a barrier.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.recording.recorder import Receipt
from adapter.store.models import UsageEvent, UsageReport, table
from config.settings import Settings
from tests.servers import Postgres

_EVENTS, _REPORTS = table(UsageEvent), table(UsageReport)
_SPAWN = multiprocessing.get_context("spawn")
#: Longest a test waits for its workers before giving up on them.
_WAIT = 120

#: A call as a worker makes it: ("one", item) for increment, ("many", items) for a batch.
Call = tuple[str, Any]
#: What a worker reports per item: (key, event_id, report_id, duplicate, quantity, time).
Outcome = tuple[str | None, int, int, bool, str, str]


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


# --- plans: the calls each writer makes, known in advance -----------------------------


def _item(quantity: Decimal, key: str | None, at: datetime | None) -> dict[str, Any]:
    item: dict[str, Any] = {"account": "acct_1", "meter": "api_calls", "quantity": quantity}
    if key is not None:
        item["idempotency_key"] = key
    if at is not None:
        item["timestamp"] = at
    return item


def _load_plan(proc: int, thread: int, *, singles: int, batches: int, base: datetime) -> list[Call]:
    """Single increments and batches of 50, half keyed, over three hourly windows and now,
    ending with a batch that repeats ten keys already sent (to be counted once)."""
    calls: list[Call] = []

    def item(i: int) -> dict[str, Any]:
        key = f"load-{proc}-{thread}-{i}" if i % 2 == 0 else None
        at = None if i % 4 == 1 else base + timedelta(minutes=(i * 7) % 120, seconds=i % 60)
        return _item(Decimal(i % 9) + Decimal("0.25"), key, at)

    for i in range(singles):
        calls.append(("one", item(i)))
    for b in range(batches):
        calls.append(("many", [item(singles + 50 * b + j) for j in range(50)]))
    calls.append(("many", [item(i) for i in range(0, 20, 2)]))
    return calls


def _expected(plans: list[list[Call]]) -> tuple[Decimal, int]:
    """Total and event count the plans should leave: keyless items all count, keyed ones
    once per key."""
    total, count, seen = Decimal(0), 0, set()
    for plan in plans:
        for kind, payload in plan:
            for item in [payload] if kind == "one" else payload:
                key = item.get("idempotency_key")
                if key is not None and key in seen:
                    continue
                seen.add(key)
                total += item["quantity"]
                count += 1
    return total, count


def _race_plan(proc: int, *, keys: int, base: datetime) -> list[Call]:
    """Every process sends the same keys, each with its own quantity and time (two
    processes' times for a key fall in different hours), in its own order, mixing single
    increments with batches of 20 that also repeat their first key."""
    order = [(k + 37 * proc) % keys for k in range(keys)]

    def item(k: int) -> dict[str, Any]:
        at = base + timedelta(minutes=(k % 50) + 60 * (proc % 2), seconds=proc)
        return _item(Decimal(k % 11) + Decimal(proc) / 4, f"race-{k}", at)

    calls: list[Call] = []
    for c in range(0, keys, 20):
        chunk = [item(k) for k in order[c : c + 20]]
        if (c // 20 + proc) % 2:
            calls.extend(("one", i) for i in chunk)
        else:
            calls.append(("many", [*chunk, chunk[0]]))
    return calls


def _default_meter_plan(proc: int) -> list[Call]:
    """Items naming no meter, as ``usage.increment`` sends them: singles, then a batch."""
    items = [
        {"account": "acct_1", "quantity": Decimal(i % 4 + 1), "idempotency_key": f"d-{proc}-{i}"}
        for i in range(40)
    ]
    return [("one", i) for i in items[:20]] + [("many", items[20:])]


# --- workers --------------------------------------------------------------------------


def _run(ms: Metersync, calls: list[Call]) -> list[Outcome]:
    """Make the calls; return one outcome per item sent."""
    outcomes: list[Outcome] = []
    for kind, payload in calls:
        items = [payload] if kind == "one" else payload
        receipts: list[Receipt | None]
        if kind == "one":
            receipts = [
                ms.increment(
                    payload["account"],
                    payload["quantity"],
                    meter=payload.get("meter"),
                    idempotency_key=payload.get("idempotency_key"),
                    timestamp=payload.get("timestamp"),
                )
            ]
        else:
            res = ms.record_many(payload)
            assert not res.rejected, res.rejected
            receipts = list(res.receipts)
        for item, r in zip(items, receipts, strict=True):
            assert r is not None
            outcomes.append(
                (
                    item.get("idempotency_key"),
                    r.event_id,
                    r.report_id,
                    r.duplicate,
                    str(r.quantity),
                    r.occurred_at.isoformat(),
                )
            )
    return outcomes


def _worker(
    url: str, plans: list[list[Call]], barrier: Barrier, results: Queue[tuple[str, object]]
) -> None:
    """Process entry point: connect, wait for the others, run one thread per plan."""
    try:
        ms = adapter.connect(Settings(database_url=url))
        try:
            barrier.wait(timeout=_WAIT)
            with ThreadPoolExecutor(len(plans)) as pool:
                outs = list(pool.map(lambda plan: _run(ms, plan), plans))
        finally:
            ms.close()
        results.put(("ok", outs))
    except BaseException:  # noqa: BLE001  process entry point: every failure goes to the test as a traceback
        results.put(("error", traceback.format_exc()))


def _in_processes(url: str, work: list[list[list[Call]]]) -> list[list[list[Outcome]]]:
    """Run ``work[p]`` (one plan per thread) in process ``p``, all released together."""
    barrier = _SPAWN.Barrier(len(work))
    results = _SPAWN.Queue()
    procs = [
        _SPAWN.Process(target=_worker, args=(url, plans, barrier, results), daemon=True)
        for plans in work
    ]
    for p in procs:
        p.start()
    try:
        answers = [results.get(timeout=_WAIT) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=_WAIT)
            if p.is_alive():
                p.terminate()
    errors = [detail for status, detail in answers if status != "ok"]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs)
    return [detail for _, detail in answers]


def _in_threads(ms: Metersync, plans: list[list[Call]]) -> list[list[Outcome]]:
    """Run one plan per thread on a shared connection, all released together."""
    barrier = threading.Barrier(len(plans))

    def go(plan: list[Call]) -> list[Outcome]:
        barrier.wait(timeout=_WAIT)
        return _run(ms, plan)

    with ThreadPoolExecutor(len(plans)) as pool:
        return list(pool.map(go, plans))


# --- what the database must hold afterwards -------------------------------------------


@dataclass(frozen=True)
class Stored:
    """Totals read back: over reports, over events, and the events by key."""

    report_total: Decimal
    report_events: int
    event_total: Decimal
    event_count: int
    by_key: dict[str, Any]


def _check_stored(engine: sa.Engine) -> Stored:
    """Assert every event points at a report of its account and meter whose window holds
    it, and every report's aggregate is exactly that of its events; return the totals."""
    with engine.connect() as conn:
        events = conn.execute(sa.select(_EVENTS)).all()
        reports = {r.id: r for r in conn.execute(sa.select(_REPORTS)).all()}
    per_report: dict[int, list[Any]] = {rid: [] for rid in reports}
    for e in events:
        r = reports.get(e.report_id)
        assert r is not None, f"event {e.id} points at missing report {e.report_id}"
        assert (r.account_id, r.meter_id) == (e.account_id, e.meter_id), (e, r)
        assert r.window_start <= e.occurred_at < r.window_end, (e, r)
        per_report[r.id].append(e)
    for rid, r in reports.items():
        mine = per_report[rid]
        assert r.events == len(mine) > 0, (r, len(mine))
        assert r.total == sum((e.quantity for e in mine), Decimal(0)), r
        assert r.max_value == max(e.quantity for e in mine), r
        assert r.status == "open"
    keys = Counter(e.idempotency_key for e in events if e.idempotency_key is not None)
    assert not [k for k, n in keys.items() if n > 1]
    return Stored(
        report_total=sum((r.total for r in reports.values()), Decimal(0)),
        report_events=sum(r.events for r in reports.values()),
        event_total=sum((e.quantity for e in events), Decimal(0)),
        event_count=len(events),
        by_key={e.idempotency_key: e for e in events if e.idempotency_key is not None},
    )


def _assert_nothing_lost(
    engine: sa.Engine, plans: list[list[Call]], outcomes: list[list[Outcome]]
) -> None:
    """The database holds exactly what the plans sent, and the receipts agree with it."""
    total, count = _expected(plans)
    stored = _check_stored(engine)
    assert (stored.report_total, stored.report_events) == (total, count)
    assert (stored.event_total, stored.event_count) == (total, count)
    flat = [o for thread in outcomes for o in thread]
    accepted = [o for o in flat if not o[3]]
    assert len(accepted) == count
    assert len({o[1] for o in accepted}) == count  # one new event id per accepted item
    assert sum(Decimal(o[4]) for o in accepted) == total
    for key, event_id, _, duplicate, _, _ in flat:
        if duplicate:
            assert key is not None
            assert stored.by_key[key].id == event_id


def _setup(url: str) -> Metersync:
    ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
    ms.accounts.upsert("acct_1")
    ms.meters.upsert("api_calls", aggregation="sum")
    return ms


@pytest.fixture
def pg(postgres_server: Postgres) -> Iterator[tuple[str, Metersync]]:
    """A fresh, migrated PostgreSQL database with ``acct_1`` and ``api_calls``."""
    url = postgres_server.create_database()
    ms = _setup(url)
    try:
        yield url, ms
    finally:
        ms.close()
        postgres_server.drop_database(url)


@pytest.fixture
def base() -> datetime:
    """The start of the hour two hours ago: plans spread events over the hours since."""
    return _hour(datetime.now(UTC)) - timedelta(hours=2)


# --- tests ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_processes_and_threads_lose_nothing(
    pg: tuple[str, Metersync], base: datetime
) -> None:
    """4 processes x 4 threads of increments and batches (keyed and keyless) on one
    account and meter: report totals and event counts equal exactly what was sent."""
    url, ms = pg
    work = [
        [_load_plan(p, t, singles=60, batches=2, base=base) for t in range(4)] for p in range(4)
    ]
    outcomes = _in_processes(url, work)
    plans = [plan for proc in work for plan in proc]
    _assert_nothing_lost(ms.engine, plans, [o for proc in outcomes for o in proc])
    assert _expected(plans)[1] == 16 * 160


@pytest.mark.postgres
def test_postgres_processes_racing_on_the_same_keys(
    pg: tuple[str, Metersync], base: datetime
) -> None:
    """6 processes send the same 240 keys (singles and batches, different values and
    hours): each key counts once, and every receipt for a key names the same event."""
    url, ms = pg
    keys, procs = 240, 6
    work = [[_race_plan(p, keys=keys, base=base)] for p in range(procs)]
    outcomes = [o for proc in _in_processes(url, work) for thread in proc for o in thread]
    stored = _check_stored(ms.engine)
    assert stored.event_count == stored.report_events == keys
    by_key: dict[str | None, set[tuple[int, int, Decimal, datetime]]] = {}
    winners: Counter[str | None] = Counter()
    for key, event_id, report_id, duplicate, sent_quantity, sent_at in outcomes:
        agreed = (event_id, report_id, Decimal(sent_quantity), datetime.fromisoformat(sent_at))
        by_key.setdefault(key, set()).add(agreed)
        winners[key] += not duplicate
    assert len(by_key) == keys
    assert {k: len(v) for k, v in by_key.items() if len(v) != 1} == {}
    assert {k: n for k, n in winners.items() if n != 1} == {}
    for key, ((event_id, report_id, quantity, at),) in by_key.items():
        assert key is not None
        row = stored.by_key[key]
        assert (row.id, row.report_id, row.quantity, row.occurred_at) == (
            event_id,
            report_id,
            quantity,
            at,
        )
    assert stored.report_total == stored.event_total
    assert stored.report_total == sum(next(iter(v))[2] for v in by_key.values())
    assert len(outcomes) == procs * (keys + keys // 20 // 2)  # batches repeat a key


@pytest.mark.postgres
def test_postgres_processes_creating_the_default_meter_at_once(pg: tuple[str, Metersync]) -> None:
    """4 processes recording to the not-yet-existing default meter at once: it is created
    once, as a sum meter, and holds every unit sent."""
    url, ms = pg
    assert [m.name for m in ms.meters.list()] == ["api_calls"]
    work = [[_default_meter_plan(p)] for p in range(4)]
    outcomes = [o for proc in _in_processes(url, work) for o in proc]
    plans = [plan for proc in work for plan in proc]
    _assert_nothing_lost(ms.engine, plans, outcomes)
    assert [(m.name, m.aggregation) for m in ms.meters.list()] == [
        ("api_calls", "sum"),
        ("usage", "sum"),
    ]
    usage = ms.get_usage("acct_1", meter="usage").meters["usage"]
    assert (usage.quantity, usage.events) == (_expected(plans)[0], 160)


def test_sqlite_threads_lose_nothing(tmp_path: Path, base: datetime) -> None:
    """4 threads sharing one SQLite connection pool lose and double-count nothing."""
    ms = _setup(f"sqlite:///{tmp_path}/threads.db")
    try:
        plans = [_load_plan(0, t, singles=60, batches=2, base=base) for t in range(4)]
        outcomes = _in_threads(ms, plans)
        _assert_nothing_lost(ms.engine, plans, outcomes)
    finally:
        ms.close()


def test_sqlite_two_processes_lose_nothing(tmp_path: Path, base: datetime) -> None:
    """Two processes (two threads each) writing one SQLite file lose and double-count
    nothing, and agree on keys they both send."""
    url = f"sqlite:///{tmp_path}/shared.db"
    ms = _setup(url)
    try:
        work = [
            [_load_plan(p, t, singles=40, batches=2, base=base) for t in range(2)] for p in (0, 1)
        ]
        work[1].append(_race_plan(1, keys=40, base=base))
        work[0].append(_race_plan(0, keys=40, base=base))
        outcomes = _in_processes(url, work)
        plans = [plan for proc in work for plan in proc[:2]]
        load = [o for proc in outcomes for o in proc[:2]]
        race = [o for proc in outcomes for thread in proc[2:] for o in thread]
        stored = _check_stored(ms.engine)
        total, count = _expected(plans)
        race_won = [o for o in race if not o[3]]
        assert len(race_won) == 40
        race_total = sum((Decimal(o[4]) for o in race_won), Decimal(0))
        assert (stored.report_total, stored.report_events) == (total + race_total, count + 40)
        assert (stored.event_total, stored.event_count) == (total + race_total, count + 40)
        assert sum(1 for thread in load for o in thread if not o[3]) == count
        ids: dict[str | None, set[int]] = {}
        for key, event_id, *_ in race:
            ids.setdefault(key, set()).add(event_id)
        assert all(len(v) == 1 for v in ids.values())
        assert {k: next(iter(v)) for k, v in ids.items()} == {
            k: stored.by_key[k].id for k in ids if k is not None
        }
    finally:
        ms.close()
