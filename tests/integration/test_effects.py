"""What a new billing period and a draft cycle invoice do to usage reports
(``adapter.mirror.effects``), on SQLite and PostgreSQL.

Usage is recorded with explicit timestamps *before* the boundary is stored, so report
windows straddle it, as they do when the mirror learns of a period late. Meter events are
pushed through a real gateway whose HTTP calls ``responses`` intercepts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import pytest
import responses
import sqlalchemy as sa
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapter
from adapter.client import Metersync
from adapter.domain.aggregation import Aggregate
from adapter.mirror.context import Apply
from adapter.mirror.effects import link_invoice, period_started
from adapter.pushing.outbox import close_reports
from adapter.store.mirror_models import Invoice, InvoiceReport, Price
from adapter.store.models import BillingPeriod, UsageEvent, UsageReport, table
from config.settings import Settings
from tests.gateways import EVENTS_URL, accept_meter_event, make_gateway
from tests.mirror_helpers import (
    account_id,
    clear_mirror,
    draft,
    hour,
    link_meter,
    mirror_invoice,
    mirror_stripe_meter,
    record,
    report_at,
)

_REPORTS, _EVENTS, _PERIODS = table(UsageReport), table(UsageEvent), table(BillingPeriod)
_INVOICES, _LINKS = table(Invoice), table(InvoiceReport)
MONTH = timedelta(days=30)
#: Quantities recorded before (old) and after (new) the boundary, minutes from the hour H.
OLD = ((-55, 2), (10, 9), (20, 4))
NEW = ((40, 5), (50, 8), (65, 7))


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _empty_mirror(ms: Metersync) -> None:
    """Every test starts with empty mirror tables."""
    clear_mirror(ms.engine)


@pytest.fixture
def stripe_api(stripe_api: responses.RequestsMock) -> responses.RequestsMock:
    """Stripe's meter events endpoint, accepting everything."""
    stripe_api.add_callback(responses.POST, EVENTS_URL, callback=accept_meter_event)
    return stripe_api


@pytest.fixture
def live(ms: Metersync, db_url: str, stripe_api: responses.RequestsMock) -> Iterator[Metersync]:
    """The ``ms`` database, through a client that pushes to (intercepted) Stripe."""
    settings = Settings(database_url=db_url, auto_migrate=True)
    client = adapter.connect(settings, gateway=make_gateway(attempts=1))
    yield client
    client.close()


@dataclass(frozen=True)
class Sent:
    """One meter event Stripe received."""

    event_name: str
    customer: str
    value: int
    at: datetime
    identifier: str


def sent(mock: responses.RequestsMock) -> list[Sent]:
    """Every meter event posted to Stripe, in order."""
    found = []
    for call in mock.calls:
        body = parse_qs(str(call.request.body))
        found.append(
            Sent(
                body["event_name"][0],
                body["payload[stripe_customer_id]"][0],
                int(body["payload[value]"][0]),
                datetime.fromtimestamp(int(body["timestamp"][0]), UTC),
                body["identifier"][0],
            )
        )
    return found


def start_period(
    ms: Metersync,
    account: int,
    period: tuple[datetime, datetime],
    previous: tuple[datetime, datetime] | None = None,
) -> list[int]:
    """Store ``period`` (and ``previous``) and apply :func:`period_started`, as the mirror
    does, in one transaction; return the reports it queued for pushing."""
    with ms.engine.begin() as conn:
        for start, end in [p for p in (previous, period) if p is not None]:
            conn.execute(
                _PERIODS.delete().where(
                    _PERIODS.c.account_id == account, _PERIODS.c.period_start == start
                )
            )
            conn.execute(
                _PERIODS.insert().values(
                    account_id=account, period_start=start, period_end=end, source="test"
                )
            )
        ctx = Apply(ms=ms, conn=conn, event_id="evt_1", event_at=period[0])
        period_started(ctx, account_id=account, period=period, previous=previous)
    return ctx.to_push


def reports(ms: Metersync, **where: object) -> list[Any]:
    """Report rows matching column values, by window start then id."""
    query = sa.select(_REPORTS).order_by(_REPORTS.c.window_start, _REPORTS.c.id)
    for column, value in where.items():
        query = query.where(_REPORTS.c[column] == value)
    with ms.engine.connect() as conn:
        return list(conn.execute(query).all())


def events_of(ms: Metersync, report_id: int) -> list[Any]:
    """A report's events in id order."""
    with ms.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(_EVENTS).where(_EVENTS.c.report_id == report_id).order_by(_EVENTS.c.id)
            ).all()
        )


def assert_consistent(ms: Metersync) -> None:
    """Every report's aggregate is the one of its events, and its window holds them."""
    for report in reports(ms):
        evs = events_of(ms, report.id)
        assert Aggregate.of(report) == Aggregate().extend(
            [(e.quantity, e.occurred_at) for e in evs]
        ), report
        assert all(report.window_start <= e.occurred_at < report.window_end for e in evs)


# --- period_started: re-cut, periods, close ----------------------------------------------


@pytest.mark.parametrize("meter", ["api_calls", "requests", "peak", "seats"])
def test_recut_moves_the_events_after_the_boundary_and_recomputes_both(
    live: Metersync, stripe_api: responses.RequestsMock, meter: str
) -> None:
    """A report straddling a late-learned boundary keeps only its earlier events; the
    later ones move to the new period's report; both aggregates are recomputed; after a
    push, each period's usage is fully sent, with timestamps inside that period."""
    h = hour(5)
    boundary = h + timedelta(minutes=30)
    record(live, meter, h, OLD + NEW)
    [before, straddling, after] = reports(live)
    assert (straddling.window_start, straddling.window_end) == (h, h + timedelta(hours=1))
    previous, period = (boundary - MONTH, boundary), (boundary, boundary + MONTH)
    queued = start_period(live, account_id(live), period, previous)

    old, cut, new, later = reports(live)
    assert (old.id, cut.id, later.id) == (before.id, straddling.id, after.id)
    assert (cut.window_start, cut.window_end, cut.status) == (h, boundary, "closed")
    assert (new.window_start, new.window_end, new.status) == (
        boundary,
        h + timedelta(hours=1),
        "open",
    )
    assert [e.occurred_at for e in events_of(live, cut.id)] == [
        h + timedelta(minutes=10), h + timedelta(minutes=20)
    ]  # fmt: skip
    assert [e.quantity for e in events_of(live, new.id)] == [5, 8]
    assert_consistent(live)
    assert [(r.period_start, r.period_end) for r in (old, cut)] == [previous, previous]
    assert [(r.period_start, r.period_end) for r in (new, later)] == [period, period]
    assert queued == [old.id, cut.id]
    assert old.status == "closed"

    live.report_now()
    rule = {"api_calls": sum, "requests": len, "peak": max, "seats": lambda q: q[-1]}[meter]
    for span, plan in ((previous, OLD), (period, NEW)):
        usage = live.get_usage("acct_1", *span, meter=meter).meters[meter]
        expected = Decimal(rule([q for _, q in plan]))
        assert (usage.quantity, usage.sent, usage.pending) == (expected, expected, 0), span
        assert usage.events == 3
    times = [s.at for s in sent(stripe_api)]
    old_calls = sum(1 for t in times if t < boundary)
    new_calls = sum(1 for t in times if t >= boundary)
    if meter in ("api_calls", "requests"):
        assert (old_calls, new_calls) == (2, 2)  # each period's two reports
    else:  # a 'last' meter sends a period's value once; a report that holds it is free
        assert 1 <= old_calls <= 2
        assert 1 <= new_calls <= 2


def test_sent_totals_per_period_match_what_was_recorded(
    live: Metersync, stripe_api: responses.RequestsMock
) -> None:
    """Stripe receives, per period, exactly the units recorded in it (sum meter): values
    with timestamps before the boundary add up to the old period's usage, the rest to the
    new period's."""
    h = hour(6)
    boundary = h + timedelta(minutes=17, seconds=30)
    plan = [(m, m % 7 + 1) for m in range(-70, 150, 9)]
    record(live, "api_calls", h, plan)
    start_period(live, account_id(live), (boundary, boundary + MONTH), None)
    live.report_now()
    old = sum(q for m, q in plan if h + timedelta(minutes=m) < boundary)
    new = sum(q for m, q in plan if h + timedelta(minutes=m) >= boundary)
    events = sent(stripe_api)
    assert sum(s.value for s in events if s.at < boundary) == old
    assert sum(s.value for s in events if s.at >= boundary) == new
    assert len({s.identifier for s in events}) == len(events)
    assert_consistent(live)


def test_decided_reports_are_not_touched_and_logged(ms: Metersync) -> None:
    """A straddling report already pushed (here as a dry run) keeps its window, aggregate
    and status; a warning names it."""
    h = hour(4)
    boundary = h + timedelta(minutes=30)
    record(ms, "api_calls", h, ((10, 1), (40, 2)))
    [pushed] = ms.report_now()
    with structlog.testing.capture_logs() as logs:
        queued = start_period(ms, account_id(ms), (boundary, boundary + MONTH), None)
    [report] = reports(ms)
    assert (report.id, report.status, report.window_end, report.total) == (
        pushed.report_id, "dry_run", h + timedelta(hours=1), 3,
    )  # fmt: skip
    assert queued == []
    warnings = [e for e in logs if e["event"] == "period.recut_too_late"]
    assert [(w["report_id"], w["status"]) for w in warnings] == [(report.id, "dry_run")]


def test_closed_undecided_reports_are_recut_and_queued(ms: Metersync) -> None:
    """A closed report not yet pushed is still re-cut; it and older closed reports are
    queued, oldest window first, and an open report wholly before the boundary is closed."""
    h = hour(6)
    boundary = h + timedelta(hours=2, minutes=15)
    record(ms, "api_calls", h, ((5, 1), (65, 2)))
    close_reports(ms.engine, now=h + timedelta(hours=2))
    record(ms, "api_calls", h, ((125, 3), (140, 4), (170, 5)))
    first, second, straddling = reports(ms)
    queued = start_period(ms, account_id(ms), (boundary, boundary + MONTH), None)
    assert queued == [first.id, second.id, straddling.id]
    assert [r.status for r in reports(ms)] == ["closed", "closed", "closed", "open"]
    assert [r.total for r in reports(ms)] == [1, 2, 3, 9]


def test_report_left_empty_by_the_cut_is_deleted(ms: Metersync) -> None:
    """A straddling report holding only events after the boundary disappears; its events
    go to the new period's report, none lost."""
    h = hour(3)
    boundary = h + timedelta(minutes=20)
    record(ms, "peak", h, ((30, 4), (45, 6)))
    [old] = reports(ms)
    start_period(ms, account_id(ms), (boundary, boundary + MONTH), None)
    [new] = reports(ms)
    assert new.id != old.id
    assert (new.window_start, new.max_value, new.events) == (boundary, 6, 2)
    assert_consistent(ms)


def test_period_started_twice_changes_nothing_more(ms: Metersync) -> None:
    """Applying the same period again (a replayed event) leaves the reports as they are."""
    h = hour(4)
    boundary = h + timedelta(minutes=30)
    record(ms, "api_calls", h, ((10, 1), (40, 2), (50, 3)))
    period = (boundary, boundary + MONTH)
    first = start_period(ms, account_id(ms), period, None)
    snapshot = [tuple(r) for r in reports(ms)]
    again = start_period(ms, account_id(ms), period, None)
    assert [tuple(r) for r in reports(ms)] == snapshot
    assert again == first


def test_decided_fraction_is_carried_into_the_period(ms: Metersync) -> None:
    """A report pushed before any period was known joins the old period with the fraction
    it carried, so the period's closing report rounds the whole period: 0.7 + 0.6 → 1."""
    h = hour(8)
    record(ms, "api_calls", h, ((10, "0.7"),))
    [first] = ms.report_now()
    assert first.value == 0
    record(ms, "api_calls", h, ((70, "0.6"),))
    boundary = h + timedelta(hours=3)
    previous = (h - MONTH, boundary)
    start_period(ms, account_id(ms), (boundary, boundary + MONTH), previous)
    assert [(r.period_start, r.period_end) for r in reports(ms)] == [previous, previous]
    [second] = ms.report_now()
    assert second.value == 1


def test_decided_max_report_keeps_no_period(ms: Metersync) -> None:
    """A max report decided before the period was known does not join it: its value may
    hold another period's peak. An undecided one does."""
    h = hour(8)
    record(ms, "peak", h, ((10, 9),))
    ms.report_now()
    record(ms, "peak", h, ((70, 2),))
    boundary = h + timedelta(hours=3)
    previous = (h - MONTH, boundary)
    start_period(ms, account_id(ms), (boundary, boundary + MONTH), previous)
    assert [r.period_start for r in reports(ms)] == [None, previous[0]]


# --- a property: every unit in its period, nothing twice ---------------------------------


#: A boundary (seconds after the base hour), events (second, quantity), previous known.
Scenario = tuple[int, list[tuple[int, int]], bool]


@st.composite
def boundary_scenarios(draw: st.DrawFn) -> Scenario:
    """A boundary (seconds after the base hour) and events (second, quantity) around it;
    whether the previous period is known."""
    boundary = draw(st.integers(60, 3 * 3600))
    near = st.integers(boundary - 600, boundary + 600)
    anywhere = st.integers(-3600, 4 * 3600 - 1)
    events = draw(
        st.lists(st.tuples(st.one_of(near, anywhere), st.integers(0, 50)), min_size=1, max_size=12)
    )
    return boundary, events, draw(st.booleans())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=boundary_scenarios())
def test_every_unit_is_sent_in_its_period_once(
    live: Metersync, stripe_api: responses.RequestsMock, scenario: Scenario
) -> None:
    """For random events around a random late-learned boundary, Stripe receives per
    period exactly the units recorded in it, each report once, and get_usage agrees."""
    boundary_s, plan, previous_known = scenario
    name, customer = f"acct_{uuid4().hex[:8]}", f"cus_{uuid4().hex[:8]}"
    live.accounts.upsert(name, stripe_customer_id=customer)
    base = hour(6)
    for i, (second, quantity) in enumerate(plan):
        at = base + timedelta(seconds=second)
        live.increment(name, quantity, meter="api_calls", timestamp=at, idempotency_key=str(i))
    boundary = base + timedelta(seconds=boundary_s)
    previous = (boundary - MONTH, boundary) if previous_known else None
    start_period(live, account_id(live, name), (boundary, boundary + MONTH), previous)
    live.report_now()
    mine = [s for s in sent(stripe_api) if s.customer == customer]
    old = sum(q for s, q in plan if base + timedelta(seconds=s) < boundary)
    new = sum(q for s, q in plan if base + timedelta(seconds=s) >= boundary)
    assert sum(s.value for s in mine if s.at < boundary) == old
    assert sum(s.value for s in mine if s.at >= boundary) == new
    assert len({s.identifier for s in mine}) == len(mine)
    for span, want in (((boundary - MONTH, boundary), old), ((boundary, boundary + MONTH), new)):
        usage = live.get_usage(name, *span, meter="api_calls").meters["api_calls"]
        assert (usage.quantity, usage.sent) == (want, want)


# --- PostgreSQL: increments racing the re-cut -----------------------------------------------


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_increments_racing_the_recut_are_counted_once(ms: Metersync) -> None:
    """Threads increment with timestamps on both sides of the boundary while the period is
    applied: every event is counted in exactly one report whose window holds it, and a
    second application re-cuts what recorders with a stale period cache left behind."""
    h = hour(3)
    boundary = h + timedelta(minutes=30)
    account = account_id(ms)
    record(ms, "api_calls", h, ((1, 1), (59, 1)))
    go = threading.Barrier(5)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        go.wait()
        try:
            for i in range(120):
                at = h + timedelta(minutes=(i * 7 + n) % 60, seconds=n)
                ms.increment(
                    "acct_1", 1, meter="api_calls", timestamp=at, idempotency_key=f"{n}-{i}"
                )
        except BaseException as exc:  # noqa: BLE001  reported to the main thread, which fails the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    go.wait()
    start_period(ms, account, (boundary, boundary + MONTH), None)
    for t in threads:
        t.join()
    assert errors == []
    start_period(ms, account, (boundary, boundary + MONTH), None)
    with ms.engine.connect() as conn:
        totals = conn.execute(sa.select(_REPORTS.c.total, _REPORTS.c.events)).all()
        orphans = conn.exec_driver_sql(
            "SELECT count(*) FROM usage_event e LEFT JOIN usage_report r "
            "ON r.id = e.report_id WHERE r.id IS NULL"
        ).scalar_one()
    assert sum(t.total for t in totals) == 482
    assert sum(t.events for t in totals) == 482
    assert orphans == 0
    assert_consistent(ms)
    for report in reports(ms):
        assert not report.window_start < boundary < report.window_end, report


# --- invoice_drafted: final flush and links -----------------------------------------------


def links(ms: Metersync) -> list[tuple[str, int]]:
    """(line id, report id) of every invoice link."""
    with ms.engine.connect() as conn:
        rows = conn.execute(sa.select(_LINKS).order_by(_LINKS.c.line_id, _LINKS.c.report_id))
        return [(r.line_id, r.report_id) for r in rows]


def test_draft_cycle_invoice_flushes_and_links(ms: Metersync) -> None:
    """A draft cycle invoice closes the open reports of its line period, queues them with
    the closed unsent ones, stamps flushed_at and links each metered line to its reports;
    a report of the next period is left open and unlinked."""
    h = hour(5)
    period = (h - timedelta(hours=2), h + timedelta(hours=2))
    link_meter(ms, "api_calls", "mtr_calls")
    mirror_stripe_meter(ms, "mtr_peak", event_name="peak")
    with ms.engine.begin() as conn:
        conn.execute(
            table(Price).insert().values(id="price_peak", stripe_meter_id="mtr_peak", meta={})
        )
    record(ms, "api_calls", h, ((-90, 1), (10, 2), (130, 4)))
    record(ms, "peak", h, ((20, 3),))
    close_reports(ms.engine, now=h)  # the first api_calls report is closed, not yet sent
    mirror_invoice(
        ms,
        period=period,
        lines=[
            {"id": "il_calls", "stripe_meter_id": "mtr_calls", "quantity": Decimal(3)},
            {"id": "il_peak", "price_id": "price_peak", "quantity": Decimal(3)},
            {"id": "il_fee", "quantity": Decimal(1)},
        ],
    )
    first = report_at(ms, "api_calls", h - timedelta(minutes=90))
    calls = report_at(ms, "api_calls", h + timedelta(minutes=10))
    peak = report_at(ms, "peak", h + timedelta(minutes=20))
    nxt = report_at(ms, "api_calls", h + timedelta(minutes=130))
    queued = draft(ms)
    assert queued == [first.id, calls.id, peak.id]
    assert report_at(ms, "api_calls", nxt.window_start).status == "open"
    assert links(ms) == sorted(
        [("il_calls", first.id), ("il_calls", calls.id), ("il_peak", peak.id)]
    )
    with ms.engine.connect() as conn:
        flushed = conn.execute(sa.select(_INVOICES.c.flushed_at)).scalar_one()
    assert flushed is not None
    assert draft(ms) == queued  # applied again: same queue, same links, no duplicates
    assert len(links(ms)) == 3


def test_finalized_invoice_is_linked_without_a_flush(ms: Metersync) -> None:
    """An invoice no longer in draft is not flushed (Stripe no longer takes its usage),
    but link_invoice re-links it; a link to a report of another account never appears."""
    h = hour(5)
    link_meter(ms, "api_calls", "mtr_calls")
    ms.accounts.upsert("acct_2", stripe_customer_id="cus_999")
    record(ms, "api_calls", h, ((10, 2),))
    record(ms, "api_calls", h, ((10, 5),), account="acct_2")
    period = (h - timedelta(hours=1), h + timedelta(hours=1))
    mirror_invoice(
        ms, period=period, status="open",
        lines=[{"id": "il_calls", "stripe_meter_id": "mtr_calls", "quantity": Decimal(2)}],
    )  # fmt: skip
    assert draft(ms) == []
    assert links(ms) == []  # the report is still open: nothing stands behind the line yet
    close_reports(ms.engine, now=h + timedelta(hours=1))
    with ms.engine.begin() as conn:
        assert link_invoice(conn, "in_1") == 1
        assert link_invoice(conn, "in_1") == 1
    [mine] = reports(ms, account_id=account_id(ms))
    assert links(ms) == [("il_calls", mine.id)]
