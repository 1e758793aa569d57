"""The money property: whatever is recorded, get_usage answers what a simple model says.

Runs on SQLite and PostgreSQL through the ``ms`` fixture. Each hypothesis example uses a
fresh account, so examples sharing the fixture's database cannot see each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapter.client import Metersync
from adapter.domain.aggregation import Aggregation
from adapter.errors import InvalidPeriod
from adapter.recording.recorder import Receipt

#: The fixture's meters and their aggregations.
METERS: dict[str, Aggregation] = {
    "api_calls": "sum",
    "requests": "count",
    "peak": "max",
    "seats": "last",
}
#: A small pool, so that repeated keys (within and across calls) are frequent.
KEYS = ("k0", "k1", "k2", "k3", "k4")
#: Events fall within this many seconds before the example's base time (about 3 days).
SPAN = 3 * 86400
ZERO = Decimal(0)


# --- what an example does -----------------------------------------------------------------


@dataclass(frozen=True)
class Ev:
    """One usage item: its time is ``slot`` seconds before the example's base time."""

    meter: str
    quantity: Decimal
    slot: int
    key: str | None


@dataclass(frozen=True)
class Increment:
    """``ms.increment`` of one event."""

    ev: Ev


@dataclass(frozen=True)
class Batch:
    """``ms.record_many`` of several events."""

    evs: tuple[Ev, ...]


@dataclass(frozen=True)
class SetPeriod:
    """``ms.set_billing_period`` over ``[base - start, base - start + length)`` seconds."""

    start: int
    length: int


Op = Increment | Batch | SetPeriod


@dataclass(frozen=True)
class Scenario:
    """Operations to run, then sub-periods (offsets before base, older first) to query."""

    ops: tuple[Op, ...]
    queries: tuple[tuple[int, int], ...]


_quantities = st.decimals(
    min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False
)
_keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS), st.sampled_from(KEYS), st.none())


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Operations over a few shared instants (so equal times are frequent) and queries
    whose edges fall on those instants or anywhere, cutting through report windows."""
    slots = draw(st.lists(st.integers(1, SPAN), min_size=1, max_size=3, unique=True))
    event = st.builds(
        Ev,
        # 'last' is the rule where recording order matters, so it comes up twice as often.
        meter=st.sampled_from([*METERS, "seats"]),
        quantity=_quantities,
        slot=st.sampled_from(slots),
        key=_keys,
    )
    # Query and period edges: on an instant, a second either side of it, or anywhere.
    edge = st.one_of(
        st.sampled_from(slots),
        st.sampled_from(slots).map(lambda s: s - 1),
        st.sampled_from(slots).map(lambda s: s + 1),
        st.integers(-3600, SPAN + 3600),
    )
    period = st.builds(SetPeriod, start=edge, length=st.integers(60, 2 * 86400))
    op = st.one_of(
        event.map(Increment),
        st.lists(event, min_size=1, max_size=8).map(lambda evs: Batch(tuple(evs))),
        period,
    )
    ops = draw(st.lists(op, min_size=1, max_size=12))
    queries = draw(
        st.lists(
            st.tuples(edge, edge).filter(lambda q: q[0] != q[1]).map(lambda q: (max(q), min(q))),
            min_size=1,
            max_size=4,
        )
    )
    return Scenario(tuple(ops), tuple(queries))


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counted:
    """An event the model counts; ``seq`` is its recording order."""

    meter: str
    quantity: Decimal
    at: datetime
    seq: int


def expected(counted: list[Counted], meter: str, start: datetime, end: datetime) -> Decimal:
    """The meter's value over ``[start, end)`` by its rule, computed from raw events."""
    inside = [c for c in counted if c.meter == meter and start <= c.at < end]
    if not inside:
        return ZERO
    rule = METERS[meter]
    if rule == "sum":
        return sum((c.quantity for c in inside), ZERO)
    if rule == "count":
        return Decimal(len(inside))
    if rule == "max":
        return max(c.quantity for c in inside)
    return max(inside, key=lambda c: (c.at, c.seq)).quantity


class Model:
    """Replays what metersync should have counted, checking every receipt on the way."""

    def __init__(self) -> None:
        self.counted: list[Counted] = []
        self.first: dict[str, Receipt] = {}

    def check(self, receipt: Receipt | None, ev: Ev, at: datetime) -> bool:
        """Check one receipt against the model; return whether it was a duplicate."""
        assert receipt is not None
        original = self.first.get(ev.key) if ev.key is not None else None
        if original is not None:
            assert receipt.duplicate, (ev, receipt)
            assert receipt.report_id == original.report_id
            assert receipt.event_id == original.event_id
            assert receipt.quantity == original.quantity
            assert receipt.occurred_at == original.occurred_at
            return True
        assert not receipt.duplicate, (ev, receipt)
        assert receipt.report_id > 0
        assert receipt.event_id > 0
        assert receipt.quantity == ev.quantity
        assert receipt.occurred_at == at
        assert receipt.meter == ev.meter
        self.counted.append(Counted(ev.meter, ev.quantity, at, len(self.counted)))
        if ev.key is not None:
            self.first[ev.key] = receipt
        return False


def _set_period(
    ms: Metersync,
    account: str,
    op: SetPeriod,
    base: datetime,
    periods: list[tuple[datetime, datetime]],
) -> None:
    """Set a billing period; one overlapping a known period must be refused."""
    start = base - timedelta(seconds=op.start)
    end = start + timedelta(seconds=op.length)
    if any(s == start for s, _ in periods):
        # Re-setting a period with the same start replaces it, which hits known bugs (see
        # the xfail tests below), so each start is used once.
        return
    if any(s < end and start < e for s, e in periods):
        with pytest.raises(InvalidPeriod, match="overlaps"):
            ms.set_billing_period(account, start, end)
        return
    ms.set_billing_period(account, start, end)
    periods.append((start, end))


def _run(ms: Metersync, account: str, scenario: Scenario, base: datetime) -> Model:
    """Perform the scenario's operations, checking receipts against the model."""
    model = Model()
    periods: list[tuple[datetime, datetime]] = []
    for op in scenario.ops:
        if isinstance(op, Increment):
            at = base - timedelta(seconds=op.ev.slot)
            receipt = ms.increment(
                account,
                op.ev.quantity,
                meter=op.ev.meter,
                idempotency_key=op.ev.key,
                timestamp=at,
            )
            model.check(receipt, op.ev, at)
        elif isinstance(op, Batch):
            # Items of one batch get distinct microseconds: equal times inside one batch
            # hit a known bug (see test_last_tie_inside_one_batch_is_the_same_for_any_period).
            times = [
                base - timedelta(seconds=e.slot) + timedelta(microseconds=i)
                for i, e in enumerate(op.evs)
            ]
            items: list[dict[str, Any]] = [
                {
                    "account": account,
                    "meter": e.meter,
                    "quantity": e.quantity,
                    "idempotency_key": e.key,
                    "timestamp": at,
                }
                for e, at in zip(op.evs, times, strict=True)
            ]
            result = ms.record_many(items)
            assert result.rejected == []
            assert len(result.receipts) == len(items)
            dups = sum(
                model.check(r, e, at)
                for r, e, at in zip(result.receipts, op.evs, times, strict=True)
            )
            assert (result.accepted, result.duplicates) == (len(items) - dups, dups)
        else:
            _set_period(ms, account, op, base, periods)
    return model


def _assert_usage(
    ms: Metersync, account: str, model: Model, start: datetime, end: datetime
) -> None:
    """get_usage over ``[start, end)`` equals the model, meter by meter."""
    usage = ms.get_usage(account, start, end)
    assert (usage.period_start, usage.period_end) == (start, end)
    assert set(METERS) <= set(usage.meters)
    for meter in METERS:
        got = usage.meters[meter]
        want = expected(model.counted, meter, start, end)
        events = sum(1 for c in model.counted if c.meter == meter and start <= c.at < end)
        assert got.quantity == want, (meter, start, end, got, model.counted)
        assert got.events == events, (meter, start, end, got)
        assert got.sent == ZERO
        assert got.pending == got.quantity


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
@example(
    # Always run: an equal-time 'last' tie across calls, a repeated key inside one batch
    # and across calls, a zero quantity, a period cutting a window, and cut queries.
    scenario=Scenario(
        ops=(
            Increment(Ev("seats", Decimal(3), 100, "k0")),
            Batch(
                (
                    Ev("seats", Decimal(4), 100, None),
                    Ev("api_calls", Decimal("1.5"), 100, "k0"),
                    Ev("peak", Decimal("0.1"), 7200, "k1"),
                    Ev("peak", Decimal(9), 7200, "k1"),
                    Ev("requests", Decimal(0), 100, "k2"),
                )
            ),
            SetPeriod(start=150, length=3600),
            Increment(Ev("seats", Decimal(5), 100, None)),
            Increment(Ev("api_calls", Decimal(2), 160, "k2")),
        ),
        queries=((100, 99), (7200, 50), (101, 100)),
    )
)
def test_get_usage_matches_model(ms: Metersync, scenario: Scenario) -> None:
    """For any mix of increments, batches, repeated keys and billing periods, usage over
    the whole span and over sub-periods cutting report windows equals the model."""
    account = f"acct_{uuid4().hex[:8]}"
    ms.accounts.upsert(account)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    model = _run(ms, account, scenario, base)
    whole = (base - timedelta(seconds=SPAN + 86400), base + timedelta(days=1))
    _assert_usage(ms, account, model, *whole)
    for older, newer in scenario.queries:
        _assert_usage(
            ms, account, model, base - timedelta(seconds=older), base - timedelta(seconds=newer)
        )


# --- known bugs, reduced to their smallest reproduction -----------------------------------


def _hour(ago: int) -> datetime:
    """The start of the UTC hour ``ago`` hours back from the current one."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=ago)


def test_last_tie_inside_one_batch_is_the_same_for_any_period(ms: Metersync) -> None:
    """Two equal-time events of one batch give the same 'last' value whether the query
    follows the report window or cuts through it: the later item in the batch."""
    h = _hour(5)
    at = h + timedelta(minutes=30)
    ms.record_many(
        [
            {
                "account": "acct_1",
                "meter": "seats",
                "quantity": 1,
                "timestamp": at,
                "idempotency_key": "k2",
            },
            {
                "account": "acct_1",
                "meter": "seats",
                "quantity": 2,
                "timestamp": at,
                "idempotency_key": "k1",
            },
        ]
    )
    window = ms.get_usage("acct_1", h, h + timedelta(hours=1)).meters["seats"]
    cut = ms.get_usage("acct_1", at, at + timedelta(minutes=1)).meters["seats"]
    assert window.quantity == Decimal(2)
    assert cut.quantity == Decimal(2)


def test_last_tie_after_period_replaced_follows_recording_order(ms: Metersync) -> None:
    """With equal event times, the value recorded later is 'last', even when a replaced
    billing period put the two events in different reports."""
    h = _hour(5)
    ms.increment("acct_1", 1, meter="seats", timestamp=h + timedelta(minutes=15))
    ms.set_billing_period("acct_1", h - timedelta(hours=1), h + timedelta(minutes=30))
    ms.increment("acct_1", 5, meter="seats", timestamp=h + timedelta(minutes=45))
    ms.set_billing_period("acct_1", h - timedelta(hours=1), h + timedelta(hours=2))
    ms.increment("acct_1", 7, meter="seats", timestamp=h + timedelta(minutes=45))
    usage = ms.get_usage("acct_1", h - timedelta(hours=1), h + timedelta(hours=2))
    assert usage.meters["seats"].quantity == Decimal(7)


def test_event_after_period_end_moved_is_counted_in_sub_period(ms: Metersync) -> None:
    """An event recorded after its billing period was extended is counted by a query
    for the part of the hour after the old period end."""
    h = _hour(5)
    ms.set_billing_period("acct_1", h - timedelta(hours=1), h + timedelta(minutes=30))
    ms.increment("acct_1", 1, meter="api_calls", timestamp=h + timedelta(minutes=15))
    ms.set_billing_period("acct_1", h - timedelta(hours=1), h + timedelta(hours=2))
    ms.increment("acct_1", 5, meter="api_calls", timestamp=h + timedelta(minutes=45))
    usage = ms.get_usage("acct_1", h + timedelta(minutes=40), h + timedelta(hours=2))
    assert usage.meters["api_calls"].quantity == Decimal(5)
    assert usage.meters["api_calls"].events == 1
