"""Concurrent drawdown on PostgreSQL: processes recording usage and drawing credit at once
never take a grant below zero, never draw twice, and draw in Stripe's order.

Every process (``spawn``) has its own ``adapter.connect``; a barrier releases them together.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.crediting.drawdown import draw_down
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.credits import drawn_for_period
from adapter.store.models import UsageEvent, table, utcnow
from config.settings import Settings
from tests.billing_world import API, BASE, PERIOD, mirror
from tests.mirror_helpers import link_meter
from tests.servers import Postgres

_GRANTS, _ENTRIES, _EVENTS = table(CreditGrant), table(CreditEntry), table(UsageEvent)
_SPAWN = multiprocessing.get_context("spawn")
#: Longest a test waits for its workers before giving up on them.
_WAIT = 120
PERIOD_START = datetime.fromtimestamp(PERIOD[0], UTC)
#: 4 processes x 30 increments of 125 calls: 15,000 calls, 25,500 cents.
PROCS, ROUNDS, CALLS = 4, 30, 125


# --- workers --------------------------------------------------------------------------


def _worker(url: str, barrier: Barrier, results: Queue[tuple[str, object]]) -> None:
    """Process entry point: record usage and draw credit in turn, then (once every process
    has recorded everything) draw once more, all at the same time."""
    try:
        ms = adapter.connect(Settings(database_url=url))
        try:
            barrier.wait(timeout=_WAIT)
            seen: list[int] = []
            for i in range(ROUNDS):
                ms.increment("acct_1", CALLS, meter="api_calls")
                if i % 2:
                    seen.append(ms.credits.balance("acct_1").amount)
                else:
                    ms.credits.draw("acct_1")
            barrier.wait(timeout=_WAIT)
            last = ms.credits.draw("acct_1")
        finally:
            ms.close()
        results.put(("ok", (seen, last.changed)))
    except BaseException:  # noqa: BLE001  process entry point: every failure goes to the test as a traceback
        results.put(("error", traceback.format_exc()))


def _in_processes(url: str, count: int) -> list[tuple[list[int], bool]]:
    """Run ``count`` workers released together; their (balances seen, last draw changed)."""
    barrier = _SPAWN.Barrier(count)
    results = _SPAWN.Queue()
    procs = [
        _SPAWN.Process(target=_worker, args=(url, barrier, results), daemon=True)
        for _ in range(count)
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
    errors = [str(detail) for status, detail in answers if status != "ok"]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs)
    return [detail for _, detail in answers]


# --- what the database holds afterwards -----------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """The grants (id -> amount), every entry in id order, and the usage recorded."""

    grants: dict[int, int]
    entries: list[sa.Row[Any]]
    quantity: Decimal
    drawn_by_meter: dict[int, list[tuple[int, int]]]


def _ledger(ms: Metersync) -> Ledger:
    account_id = ms.accounts.get("acct_1").id
    with ms.engine.connect() as conn:
        grants = {r.id: int(r.amount) for r in conn.execute(sa.select(_GRANTS)).all()}
        entries = list(conn.execute(sa.select(_ENTRIES).order_by(_ENTRIES.c.id)).all())
        quantity = conn.execute(sa.select(sa.func.sum(_EVENTS.c.quantity))).scalar_one()
        drawn = drawn_for_period(conn, account_id, PERIOD_START)
    return Ledger(grants, entries, Decimal(quantity or 0), drawn)


def _assert_never_negative(ledger: Ledger) -> dict[int, int]:
    """Each grant's running balance over its entries in id order never drops below 0;
    return what each has left."""
    left = dict(ledger.grants)
    for e in ledger.entries:
        left[e.grant_id] += int(e.amount)
        assert left[e.grant_id] >= 0, (e, left)
    return left


def _assert_consistent(ms: Metersync, ledger: Ledger, *, granted: int) -> int:
    """Drawn for the period is min(granted, cost of the usage rated afresh), the per-meter
    drawdown equals the meter's entries, and every entry is for this period; the net drawn."""
    meter_id = ms.meters.get("api_calls").id
    assert ledger.quantity == PROCS * ROUNDS * CALLS
    cost = adapter.rate(API, ledger.quantity)
    assert cost == 25500
    moving = [e for e in ledger.entries if e.kind in ("drawdown", "release")]
    assert {(e.meter_id, e.period_start) for e in moving} == {(meter_id, PERIOD_START)}
    assert all(e.amount < 0 for e in moving if e.kind == "drawdown")
    net = -sum(int(e.amount) for e in moving)
    assert net == min(granted, cost)
    assert set(ledger.drawn_by_meter) == {meter_id}
    assert sum(amount for _, amount in ledger.drawn_by_meter[meter_id]) == net
    return net


def _assert_settled(ms: Metersync, ledger: Ledger) -> None:
    """One more balance() and draw() write nothing: drawdown is idempotent."""
    balance = ms.credits.balance("acct_1")
    assert balance.amount == sum(_assert_never_negative(ledger).values())
    assert ms.credits.draw("acct_1").changed is False
    assert [tuple(e) for e in _ledger(ms).entries] == [tuple(e) for e in ledger.entries]


def _assert_workers(outcomes: list[tuple[list[int], bool]], granted: int) -> None:
    """Each process saw its balance only fall, within [0, granted]; of the final draws made
    at once after all usage was in, at most one found anything to draw."""
    for seen, _ in outcomes:
        assert seen == sorted(seen, reverse=True)
        assert all(0 <= amount <= granted for amount in seen)
    assert sum(changed for _, changed in outcomes) <= 1


# --- fixtures -------------------------------------------------------------------------


def _billed(url: str) -> Metersync:
    """acct_1 (cus_123) on the billed world: base fee and graduated API calls on mtr_api."""
    ms = adapter.connect(Settings(database_url=url, auto_migrate=True))
    ms.accounts.upsert("acct_1", stripe_customer_id="cus_123")
    ms.meters.upsert("api_calls", aggregation="sum")
    link_meter(ms, "api_calls", "mtr_api")
    mirror(ms, BASE, API)
    return ms


@pytest.fixture
def pg(postgres_server: Postgres) -> Iterator[tuple[str, Metersync]]:
    """A fresh, migrated PostgreSQL database holding the billed world and no usage."""
    url = postgres_server.create_database()
    ms = _billed(url)
    try:
        yield url, ms
    finally:
        ms.close()
        postgres_server.drop_database(url)


# --- tests ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_concurrent_drawdown_never_overdraws(pg: tuple[str, Metersync]) -> None:
    """4 processes recording usage and drawing at once: the 20,000-cent grant never goes
    below 0, exactly 20,000 of the 25,500 cost is drawn, and drawing again changes nothing."""
    url, ms = pg
    grant = ms.credits.grant("acct_1", 20000, currency="usd", actor="test")
    outcomes = _in_processes(url, PROCS)
    _assert_workers(outcomes, 20000)
    ledger = _ledger(ms)
    assert _assert_never_negative(ledger) == {grant.id: 0}
    assert _assert_consistent(ms, ledger, granted=20000) == 20000
    assert {e.kind for e in ledger.entries} == {"drawdown"}
    assert len(ledger.entries) > 1  # drawn piecemeal, as usage arrived
    _assert_settled(ms, ledger)
    assert ms.preview_invoice("acct_1").lines[1].credits == 20000


@pytest.mark.postgres
def test_concurrent_drawdown_exhausts_priority_0_first(pg: tuple[str, Metersync]) -> None:
    """Under the same concurrency, an older priority-50 grant is not touched until the
    priority-0 grant is used up: 8,000 from it, then 17,500 from the priority-50 one."""
    url, ms = pg
    low = ms.credits.grant("acct_1", 20000, currency="usd", actor="test")
    high = ms.credits.grant("acct_1", 8000, currency="usd", priority=0, actor="test")
    outcomes = _in_processes(url, PROCS)
    _assert_workers(outcomes, 28000)
    ledger = _ledger(ms)
    assert _assert_never_negative(ledger) == {high.id: 0, low.id: 2500}
    assert _assert_consistent(ms, ledger, granted=28000) == 25500
    left = {high.id: 8000, low.id: 20000}
    for e in ledger.entries:
        assert e.kind == "drawdown"
        if e.grant_id == low.id:
            assert left[high.id] == 0, f"priority 50 drawn while priority 0 had {left[high.id]}"
        left[e.grant_id] += int(e.amount)
    assert left == {high.id: 0, low.id: 2500}
    assert ledger.entries[0].grant_id == high.id
    _assert_settled(ms, ledger)


@pytest.mark.postgres
def test_void_waits_for_a_drawdown_in_progress(pg: tuple[str, Metersync]) -> None:
    """A void made while a drawdown of the account is uncommitted voids what is left after
    it (the grant ends at 0), not what was left before it (which would leave it at -25,500)."""
    _, ms = pg
    grant = ms.credits.grant("acct_1", 30000, currency="usd", actor="test")
    ms.increment("acct_1", 15000, meter="api_calls")
    info = ms.accounts.get("acct_1")
    errors: list[BaseException] = []

    def void() -> None:
        try:
            ms.credits.void(grant.id, reason="refund")
        except BaseException as exc:  # noqa: BLE001  reported to the test below
            errors.append(exc)

    voiding = threading.Thread(target=void)
    with ms.engine.connect() as conn, conn.begin():
        result = draw_down(
            conn, account=info, meters=ms.meters.all(conn), periods=ms.periods, now=utcnow()
        )
        assert result.drawn == {"api_calls": 25500}
        voiding.start()
        voiding.join(timeout=1.0)  # a void that does not wait for the drawdown is done by now
    voiding.join(timeout=_WAIT)
    assert not voiding.is_alive()
    assert errors == []
    ledger = _ledger(ms)
    assert [(e.kind, int(e.amount)) for e in ledger.entries] == [
        ("drawdown", -25500),
        ("void", -4500),
    ]
    assert _assert_never_negative(ledger) == {grant.id: 0}
