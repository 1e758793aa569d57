"""Properties of the prepaid credit ledger: for any sequence of grants, usage, voids, time
passing and drawdowns, every grant's balance is what its entries say and never below zero,
the balance is the credit in effect, credit is never left unused while usage is uncovered,
and a voided grant is never drawn again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import time_machine
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import adapter
from adapter.client import Metersync
from adapter.errors import InvalidUsage
from adapter.store.credit_models import CreditEntry, CreditGrant
from adapter.store.credits import KINDS, drawn_for_period
from adapter.store.models import UsageEvent, UsageReport, table
from tests.billing_world import API, BASE, PERIOD, mirror
from tests.mirror_helpers import clear_mirror, link_meter

_GRANTS, _ENTRIES = table(CreditGrant), table(CreditEntry)
_EVENTS, _REPORTS = table(UsageEvent), table(UsageReport)
PERIOD_START = datetime.fromtimestamp(PERIOD[0], UTC)
#: How far an example may move the clock: well inside the billing period (20 days left).
MAX_ELAPSED = timedelta(days=15)


# --- operations -------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    amount: int
    priority: int
    #: Hours from now until it takes effect (``None``: now) and then until it expires.
    starts_in: int | None
    expires_after: int | None


@dataclass(frozen=True)
class Record:
    quantity: int


@dataclass(frozen=True)
class Void:
    #: Which of the grants made so far (modulo their number).
    pick: int


@dataclass(frozen=True)
class Advance:
    hours: int


@dataclass(frozen=True)
class Draw:
    pass


@dataclass(frozen=True)
class Balance:
    pass


Op = Grant | Record | Void | Advance | Draw | Balance
#: An operation, and whether ``balance()`` is read (and checked) right after it.
Step = tuple[Op, bool]

_OPS = st.one_of(
    st.builds(
        Grant,
        amount=st.integers(1, 50_000),
        priority=st.integers(0, 100),
        starts_in=st.none() | st.integers(1, 48),
        expires_after=st.none() | st.integers(1, 240),
    ),
    st.builds(Record, quantity=st.integers(1, 5_000)),
    st.builds(Void, pick=st.integers(0, 20)),
    st.builds(Advance, hours=st.integers(1, 96)),
    st.just(Draw()),
    st.just(Balance()),
)
_STEPS = st.lists(st.tuples(_OPS, st.booleans()), min_size=1, max_size=14)


# --- the model: what the test knows independently of the ledger ---------------------------


@dataclass
class Model:
    """Units recorded, grants made (in order) and the ones voided, with the entry id
    each void was written at."""

    quantity: int = 0
    grants: list[int] = field(default_factory=list)
    voided: dict[int, int] = field(default_factory=dict)

    @property
    def cost(self) -> int:
        """The cost so far, rated afresh by the price."""
        return adapter.rate(API, self.quantity)


@dataclass(frozen=True)
class Snapshot:
    grants: dict[int, sa.Row[Any]]
    entries: list[sa.Row[Any]]
    drawn_by_meter: dict[int, list[tuple[int, int]]]


def _snapshot(ms: Metersync) -> Snapshot:
    account_id = ms.accounts.get("acct_1").id
    with ms.engine.connect() as conn:
        grants = {r.id: r for r in conn.execute(sa.select(_GRANTS)).all()}
        entries = list(conn.execute(sa.select(_ENTRIES).order_by(_ENTRIES.c.id)).all())
        drawn = drawn_for_period(conn, account_id, PERIOD_START)
    return Snapshot(grants, entries, drawn)


def _live(grant: sa.Row[Any], now: datetime, voided: bool) -> bool:
    """In effect at ``now``: effective, not expired, not voided."""
    if voided or now < grant.effective_at:
        return False
    return grant.expires_at is None or now < grant.expires_at


# --- the invariants ---------------------------------------------------------------------


def _remaining(ms: Metersync, model: Model, snap: Snapshot) -> dict[int, int]:
    """Each grant's balance, worked out from its entries by kind, equals what the API says,
    and no prefix of its entries ever took it below zero; the balances."""
    assert sorted(snap.grants) == sorted(model.grants)
    shown = {g.id: g.remaining for g in ms.credits.history("acct_1").grants}
    found: dict[int, int] = {}
    for gid, grant in snap.grants.items():
        mine = [e for e in snap.entries if e.grant_id == gid]
        assert {e.kind for e in mine} <= set(KINDS)
        by_kind = {k: [int(e.amount) for e in mine if e.kind == k] for k in KINDS}
        assert all(a < 0 for a in by_kind["drawdown"] + by_kind["expiry"]), mine
        assert all(a > 0 for a in by_kind["release"]), mine
        assert all(a <= 0 for a in by_kind["void"]), mine
        drawn, released = -sum(by_kind["drawdown"]), sum(by_kind["release"])
        voided, expired = -sum(by_kind["void"]), -sum(by_kind["expiry"])
        left = grant.amount - drawn + released - voided - expired
        assert shown[gid] == left, (gid, shown[gid], left, mine)
        running = grant.amount
        for e in mine:
            running += int(e.amount)
            assert running >= 0, (gid, e, mine)
        found[gid] = left
    return found


def _voids_stick(model: Model, snap: Snapshot) -> None:
    """Exactly the grants voided have one void entry each, and nothing is drawn from (or
    written off) a grant after its void: it stays at 0."""
    voids = {e.grant_id: e.id for e in snap.entries if e.kind == "void"}
    assert voids == model.voided
    for e in snap.entries:
        void_id = voids.get(e.grant_id)
        if void_id is not None and e.id > void_id:
            raise AssertionError(f"grant {e.grant_id} moved after its void: {e}")


def _drawn_in_effect(snap: Snapshot) -> None:
    """Drawdowns only take from a grant in effect at the time of the drawdown, and an
    expiry is written at the grant's expiry time."""
    for e in snap.entries:
        grant = snap.grants[e.grant_id]
        if e.kind == "drawdown":
            assert grant.effective_at <= e.at, (e, grant)
            assert grant.expires_at is None or e.at < grant.expires_at, (e, grant)
        if e.kind == "expiry":
            assert e.at == grant.expires_at, (e, grant)


def _drawn_net(ms: Metersync, model: Model, snap: Snapshot) -> int:
    """Credit drawn for the period (net of releases) is never more than the cost so far,
    and the per-meter drawdown of the period is the sum of the meter's entries."""
    moving = [e for e in snap.entries if e.kind in ("drawdown", "release")]
    assert {(e.meter_id, e.period_start) for e in moving} <= {
        (ms.meters.get("api_calls").id, PERIOD_START)
    }
    net = -sum(int(e.amount) for e in moving)
    assert 0 <= net <= model.cost
    assert sum(a for pairs in snap.drawn_by_meter.values() for _, a in pairs) == net
    return net


def _check(ms: Metersync, model: Model, now: datetime, *, drawn: bool) -> dict[int, int]:
    """The invariants of every state; after a drawdown (``drawn``) also that no credit in
    effect is left unused while usage is uncovered, and expired grants hold nothing."""
    snap = _snapshot(ms)
    left = _remaining(ms, model, snap)
    _voids_stick(model, snap)
    _drawn_in_effect(snap)
    net = _drawn_net(ms, model, snap)
    if drawn:
        live = [g for g in left if _live(snap.grants[g], now, g in model.voided)]
        if any(left[g] > 0 for g in live):
            assert net == model.cost, (net, model.cost, left)
        lapsed = [
            g
            for g, row in snap.grants.items()
            if row.expires_at is not None and row.expires_at <= now and g not in model.voided
        ]
        assert [left[g] for g in lapsed] == [0] * len(lapsed)
    return left


def _check_balance(ms: Metersync, model: Model, now: datetime) -> None:
    """balance() draws, then says the credit in effect: the sum of what is left of the grants
    effective, unexpired and not voided."""
    balance = ms.credits.balance("acct_1")
    left = _check(ms, model, now, drawn=True)
    rows = _snapshot(ms).grants
    in_effect = sum(v for g, v in left.items() if _live(rows[g], now, g in model.voided))
    assert balance.amount == in_effect
    assert {g.id: g.remaining for g in balance.grants} == left


# --- running a sequence -------------------------------------------------------------------


def _apply(ms: Metersync, model: Model, op: Op, now: datetime) -> bool:
    """Do ``op``; whether it drew the ledger down."""
    if isinstance(op, Grant):
        start = now + timedelta(hours=op.starts_in) if op.starts_in is not None else None
        expires = (
            (start or now) + timedelta(hours=op.expires_after)
            if op.expires_after is not None
            else None
        )
        made = ms.credits.grant(
            "acct_1", op.amount, currency="usd", priority=op.priority,
            effective_at=start, expires_at=expires, actor="test",
        )  # fmt: skip
        assert made.remaining == op.amount
        model.grants.append(made.id)
    elif isinstance(op, Record):
        ms.increment("acct_1", op.quantity, meter="api_calls")
        model.quantity += op.quantity
    elif isinstance(op, Void) and model.grants:
        gid = model.grants[op.pick % len(model.grants)]
        if gid in model.voided:
            with pytest.raises(InvalidUsage, match="already voided"):
                ms.credits.void(gid)
        else:
            voided = ms.credits.void(gid, reason="property")
            assert (voided.status, voided.remaining) == ("voided", 0)
            model.voided[gid] = max(e.id for e in ms.credits.history("acct_1").entries)
    elif isinstance(op, Draw):
        ms.credits.draw("acct_1")
        assert ms.credits.draw("acct_1").changed is False  # drawing again writes nothing
        return True
    return False


def _reset(ms: Metersync) -> None:
    """Empty the ledger and the usage: examples share one database."""
    with ms.engine.begin() as conn:
        for t in (_ENTRIES, _GRANTS, _EVENTS, _REPORTS):
            conn.execute(t.delete())


@pytest.fixture
def billed(ms: Metersync) -> Iterator[Metersync]:
    """acct_1 on the billed world (graduated API calls on mtr_api), with no usage yet."""
    clear_mirror(ms.engine)
    link_meter(ms, "api_calls", "mtr_api")
    mirror(ms, BASE, API)
    yield ms
    _reset(ms)
    clear_mirror(ms.engine)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=_STEPS)
@example(
    # Always run: priority order, usage past the credit, an expiry with credit left, a void
    # of a half-drawn grant, a scheduled grant taking effect, and voiding twice.
    steps=[
        (Grant(5_000, 50, None, 24), False),
        (Grant(3_000, 0, None, None), False),
        (Record(2_000), True),
        (Advance(30), True),
        (Grant(40_000, 80, 10, None), False),
        (Record(4_000), False),
        (Void(1), False),
        (Draw(), False),
        (Advance(12), False),
        (Balance(), False),
        (Void(1), False),
    ]
)
def test_ledger_invariants_hold_after_every_operation(billed: Metersync, steps: list[Step]) -> None:
    """Any sequence of grants, usage, voids, time passing and drawdowns keeps every grant at
    amount - drawdowns + releases - voids - expiries >= 0 at every entry, draws no more than
    the cost, all of it while live credit is left, and never from a voided grant."""
    _reset(billed)
    model = Model()
    start = datetime.now(UTC)
    with time_machine.travel(start, tick=False) as clock:
        for op, then_balance in steps:
            now = datetime.now(UTC)
            if isinstance(op, Advance) and now - start + timedelta(hours=op.hours) <= MAX_ELAPSED:
                clock.shift(timedelta(hours=op.hours))
                now = datetime.now(UTC)
            drawn = _apply(billed, model, op, now)
            _check(billed, model, now, drawn=drawn)
            if then_balance or isinstance(op, Balance):
                _check_balance(billed, model, now)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    grants=st.lists(st.tuples(st.integers(1, 20_000), st.integers(0, 100)), min_size=1, max_size=5),
    usage=st.lists(st.integers(1, 4_000), min_size=1, max_size=5),
)
def test_drawdown_takes_grants_in_priority_order(
    billed: Metersync, grants: list[tuple[int, int]], usage: list[int]
) -> None:
    """However usage arrives, grants are drawn in priority order (then oldest): a grant is
    only drawn from once every grant before it in that order is used up."""
    _reset(billed)
    made = [
        (billed.credits.grant("acct_1", amount, currency="usd", priority=p).id, amount, p)
        for amount, p in grants
    ]
    for quantity in usage:
        billed.increment("acct_1", quantity, meter="api_calls")
        billed.credits.draw("acct_1")
    order = [gid for gid, _, _ in sorted(made, key=lambda g: (g[2], g[0]))]
    left = {gid: amount for gid, amount, _ in made}
    for e in _snapshot(billed).entries:
        assert e.kind == "drawdown"
        before = order[: order.index(e.grant_id)]
        assert [left[g] for g in before] == [0] * len(before), (e, left)
        left[e.grant_id] += int(e.amount)
    cost = adapter.rate(API, sum(usage))
    assert sum(amount for _, amount, _ in made) - sum(left.values()) == min(
        cost, sum(a for a, _ in grants)
    )
