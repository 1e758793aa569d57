"""Recording and querying usage (design flows 1 and 5), on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

import adapter
from adapter import usage
from adapter.client import Metersync
from adapter.errors import (
    InvalidPeriod,
    InvalidQuantity,
    InvalidTimestamp,
    InvalidUsage,
    MetersyncError,
    UnknownAccount,
    UnknownMeter,
)
from adapter.store.models import UsageEvent, UsageReport, table
from config.settings import Settings
from tests.servers import Postgres

_REPORTS = table(UsageReport)


def _counts(ms: Metersync) -> tuple[int, int]:
    """(rows in usage_event, rows in usage_report)."""
    with ms.engine.connect() as conn:
        events = conn.execute(sa.text("SELECT count(*) FROM usage_event")).scalar_one()
        reports = conn.execute(sa.text("SELECT count(*) FROM usage_report")).scalar_one()
    return int(events), int(reports)


def _reports(ms: Metersync, meter: str = "api_calls") -> list[Any]:
    """The usage_report rows of ``acct_1`` on ``meter``, oldest window first."""
    meter_id = ms.meters.get(meter).id
    with ms.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(_REPORTS)
                .where(_REPORTS.c.meter_id == meter_id)
                .order_by(_REPORTS.c.window_start)
            ).all()
        )


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


@pytest.fixture
def base() -> datetime:
    """The start of an hour three hours ago: explicit timestamps around it are billable."""
    return _hour(datetime.now(UTC)) - timedelta(hours=3)


def _wide(base: datetime) -> dict[str, Any]:
    """A query period holding every timestamp these tests use."""
    return {"period_start": base - timedelta(days=35), "period_end": base + timedelta(days=1)}


@pytest.fixture
def ms(ms: Metersync) -> Metersync:
    """conftest's ``ms``; on SQLite, lock waits are cut from 30 s to 0.2 s, so that a call
    deadlocking on its own connections fails within seconds instead of minutes (no test
    here runs two writers at once, so no legitimate wait is cut short)."""
    if ms.engine.dialect.name == "sqlite":

        @sa.event.listens_for(ms.engine, "connect")
        def _short_busy_timeout(dbapi_conn: sqlite3.Connection, _record: object) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=200")

        ms.engine.dispose()  # pooled connections were made with the long timeout
    return ms


KNOWN = "known meters: api_calls, peak, requests, seats"


# --- bad input ------------------------------------------------------------------------

BAD_INPUTS = [
    pytest.param({"account": "nobody"}, UnknownAccount, "unknown account 'nobody'", id="account"),
    pytest.param(
        {"meter": "api_call"}, UnknownMeter, f"unknown meter 'api_call'; {KNOWN}", id="meter"
    ),
    pytest.param({"quantity": -1}, InvalidQuantity, "must not be negative", id="negative"),
    pytest.param({"quantity": float("nan")}, InvalidQuantity, "must be finite", id="nan"),
    pytest.param({"quantity": Decimal("NaN")}, InvalidQuantity, "finite", id="decimal-nan"),
    pytest.param({"quantity": float("inf")}, InvalidQuantity, "must be finite", id="inf"),
    pytest.param(
        {"quantity": "1234567890.123456"},
        InvalidQuantity,
        "16 significant digits; Stripe accepts at most 15",
        id="16-digits",
    ),
    pytest.param({"quantity": True}, InvalidQuantity, "must be a number, got bool", id="bool"),
    pytest.param({"quantity": "ten"}, InvalidQuantity, "'ten' is not a number", id="text"),
    pytest.param({"quantity": "1e15"}, InvalidQuantity, r"10\^15 or more", id="too-big"),
    pytest.param({"quantity": "1e1000000"}, InvalidQuantity, r"10\^15 or more", id="huge-exp"),
    pytest.param({"quantity": "1e-31"}, InvalidQuantity, "more than 30 decimal places", id="tiny"),
    pytest.param(
        {"timestamp": lambda: datetime.now(UTC) + timedelta(minutes=6)},
        InvalidTimestamp,
        "more than 5 minutes in the future",
        id="future",
    ),
    pytest.param(
        {"timestamp": lambda: datetime.now(UTC) - timedelta(days=36)},
        InvalidTimestamp,
        "up to 35 days old",
        id="too-old",
    ),
    pytest.param(
        {"timestamp": lambda: datetime.now() - timedelta(minutes=1)},
        InvalidTimestamp,
        "has no time zone",
        id="naive",
    ),
    pytest.param({"timestamp": "yesterday"}, InvalidTimestamp, "not an ISO 8601", id="bad-iso"),
    pytest.param({"idempotency_key": ""}, InvalidUsage, "non-empty string", id="empty-key"),
    pytest.param(
        {"idempotency_key": "k" * 256},
        InvalidUsage,
        "idempotency_key is 256 characters; at most 255",
        id="long-key",
    ),
    pytest.param({"dimensions": {"region": ["eu"]}}, InvalidUsage, "dimensions", id="dim-list"),
    pytest.param({"dimensions": {1: "eu"}}, InvalidUsage, "dimensions", id="dim-key"),
    pytest.param({"dimensions": "region=eu"}, InvalidUsage, "dimensions", id="dim-text"),
]


def _item(**overrides: object) -> dict[str, Any]:
    """A usage item for ``record_many``; timestamps given as callables are evaluated."""
    item: dict[str, Any] = {"account": "acct_1", "meter": "api_calls", "quantity": 1}
    item.update(overrides)
    if callable(item.get("timestamp")):
        item["timestamp"] = item["timestamp"]()
    return item


@pytest.mark.parametrize(("overrides", "error", "message"), BAD_INPUTS)
def test_increment_refuses_bad_input_and_stores_nothing(
    ms: Metersync, overrides: dict[str, Any], error: type[InvalidUsage], message: str
) -> None:
    """Each kind of bad input raises its own InvalidUsage subclass with a helpful message,
    and no event or report is written."""
    item = _item(**overrides)
    before = _counts(ms)
    with pytest.raises(InvalidUsage, match=message) as caught:
        ms.increment(item.pop("account"), item.pop("quantity"), **item)
    assert caught.type is error
    assert issubclass(caught.type, MetersyncError)
    assert _counts(ms) == before == (0, 0)


@pytest.mark.parametrize(("overrides", "error", "message"), BAD_INPUTS)
def test_record_many_rejects_bad_item_and_keeps_the_good_ones(
    ms: Metersync, overrides: dict[str, Any], error: type[InvalidUsage], message: str
) -> None:
    """In a batch the same bad input is rejected with the same message at its index,
    while the valid items around it are stored."""
    res = ms.record_many([_item(quantity=2), _item(**overrides), _item(quantity=3)])
    assert res.accepted == 2
    assert res.duplicates == 0
    assert [r.index for r in res.rejected] == [1]
    assert res.rejected[0].error
    assert re.search(message, res.rejected[0].error), res.rejected[0].error
    assert res.receipts[1] is None
    assert res.receipts[0] is not None
    assert res.receipts[2] is not None
    assert _counts(ms) == (2, 1)
    assert ms.get_usage("acct_1").meters["api_calls"].quantity == Decimal(5)


def test_error_hierarchy_is_flat_under_invalid_usage() -> None:
    """Every bad-input error derives from InvalidUsage, and that from MetersyncError."""
    for cls in (UnknownAccount, UnknownMeter, InvalidQuantity, InvalidTimestamp, InvalidPeriod):
        assert issubclass(cls, InvalidUsage)
    assert issubclass(InvalidUsage, MetersyncError)
    assert adapter.InvalidUsage is InvalidUsage


def test_limits_are_inclusive(ms: Metersync) -> None:
    """Fifteen significant digits, 10^15 - 1, thirty decimal places, a 255-character key,
    zero and 34-day-old usage all pass."""
    old = datetime.now(UTC) - timedelta(days=34)
    ms.increment("acct_1", "12345678901.2345", meter="api_calls", idempotency_key="k" * 255)
    ms.increment("acct_1", 0, meter="api_calls", timestamp=old)
    r = ms.increment("acct_1", "0.5", meter="api_calls", timestamp=old.isoformat())
    assert r.occurred_at == old
    ms.increment("acct_1", 999_999_999_999_999, meter="api_calls")
    ms.increment("acct_1", "1e-30", meter="api_calls")
    ms.increment("acct_1", "1.500000000000000", meter="api_calls")  # zeros not significant
    u = ms.get_usage("acct_1", old - timedelta(hours=2), datetime.now(UTC) + timedelta(hours=1))
    assert u.meters["api_calls"].quantity == Decimal(
        "1000012345678902.234500000000000000000000000001"
    )
    assert u.meters["api_calls"].events == 6


def test_non_finite_dimension_values_are_rejected(ms: Metersync) -> None:
    """Dimensions that cannot be JSON (NaN) are bad input: the item alone is rejected."""
    res = ms.record_many([_item(dimensions={"ratio": float("nan")}), _item(quantity=4)])
    assert [r.index for r in res.rejected] == [0]
    assert "dimensions" in res.rejected[0].error
    assert res.accepted == 1
    assert _counts(ms) == (1, 1)


# --- record_many ----------------------------------------------------------------------


def test_record_many_reports_every_item(ms: Metersync) -> None:
    """A mixed batch: outcome per item, duplicates inside the batch and against earlier
    events resolved to the original receipt, unknown fields rejected."""
    early = ms.increment("acct_1", 1, meter="api_calls", idempotency_key="early")
    items: list[Any] = [
        _item(quantity=2, idempotency_key="b-1"),  # 0 accepted
        _item(account="ghost"),  # 1 unknown account
        _item(quantity=-3),  # 2 negative
        _item(quantity=3),  # 3 accepted, keyless
        _item(quantity=7, idempotency_key="b-1"),  # 4 duplicate inside the batch
        {**_item(), "qty": 1},  # 5 unknown field
        _item(quantity=9, idempotency_key="early"),  # 6 duplicate of an earlier event
        42,  # 7 not a mapping
        _item(meter="peak", quantity=6),  # 8 accepted, another meter
    ]
    res = ms.record_many(items)
    assert (res.accepted, res.duplicates) == (3, 2)
    errors = {r.index: r.error for r in res.rejected}
    assert sorted(errors) == [1, 2, 5, 7]
    assert "unknown account 'ghost'" in errors[1]
    assert "negative" in errors[2]
    assert "unknown field(s) 'qty'" in errors[5]
    assert "mapping" in errors[7]
    assert [r is None for r in res.receipts] == [
        False, True, True, False, False, True, False, True, False,
    ]  # fmt: skip
    first, dup, again = res.receipts[0], res.receipts[4], res.receipts[6]
    assert first is not None
    assert dup is not None
    assert again is not None
    assert not first.duplicate
    assert dup.duplicate
    assert again.duplicate
    assert (dup.event_id, dup.report_id, dup.quantity) == (
        first.event_id,
        first.report_id,
        Decimal(2),
    )
    assert (again.event_id, again.quantity) == (early.event_id, Decimal(1))
    assert _counts(ms)[0] == 4
    u = ms.get_usage("acct_1")
    assert u.meters["api_calls"].quantity == Decimal(6)
    assert u.meters["api_calls"].events == 3
    assert u.meters["peak"].quantity == Decimal(6)


def test_record_many_of_invalid_items_stores_nothing(ms: Metersync) -> None:
    """A batch in which every item is rejected writes no event and no report."""
    res = ms.record_many([_item(account="ghost"), _item(quantity=-1), {"meter": "api_calls"}])
    assert res.accepted == 0
    assert res.duplicates == 0
    assert [r.index for r in res.rejected] == [0, 1, 2]
    assert "account must be a non-empty string" in res.rejected[2].error
    assert _counts(ms) == (0, 0)


def test_record_many_of_duplicates_leaves_no_empty_report(ms: Metersync, base: datetime) -> None:
    """Repeating keys with timestamps in another window opens no (empty) report there."""
    ms.increment("acct_1", 5, meter="api_calls", idempotency_key="a", timestamp=base)
    before = _counts(ms)
    later = base + timedelta(hours=1, minutes=5)
    res = ms.record_many([_item(idempotency_key="a", timestamp=later)] * 3)
    assert (res.accepted, res.duplicates) == (0, 3)
    assert all(r is not None and r.occurred_at == base for r in res.receipts)
    assert _counts(ms) == before == (1, 1)


@pytest.mark.parametrize(
    "items",
    ["acct_1", b"acct_1", {"account": "acct_1"}, (i for i in range(1)), None],
    ids=["str", "bytes", "mapping", "generator", "none"],
)
def test_record_many_refuses_what_is_not_a_list(ms: Metersync, items: object) -> None:
    """record_many takes a sequence of items; a string, mapping or generator raises."""
    with pytest.raises(InvalidUsage, match="takes a list of usage items"):
        ms.record_many(items)
    assert _counts(ms) == (0, 0)


def test_record_many_accepts_a_tuple_and_an_empty_list(ms: Metersync) -> None:
    """Any sequence will do; an empty one records nothing and reports nothing."""
    empty = ms.record_many([])
    assert (empty.accepted, empty.duplicates, empty.rejected, empty.receipts) == (0, 0, [], [])
    res = ms.record_many((_item(quantity=4),))
    assert res.accepted == 1
    assert ms.get_usage("acct_1").meters["api_calls"].quantity == Decimal(4)


def test_record_many_uses_the_default_meter(ms: Metersync) -> None:
    """An item naming no meter goes to the default meter, created as a sum meter."""
    res = ms.record_many([{"account": "acct_1", "quantity": 2}, {"account": "acct_1"}])
    assert res.accepted == 2
    assert all(r is not None and r.meter == "usage" for r in res.receipts)
    assert ms.meters.get("usage").aggregation == "sum"
    assert ms.get_usage("acct_1", meter="usage").meters["usage"].quantity == Decimal(3)


@pytest.mark.parametrize("via", ["increment", "record_many"])
def test_receipts_point_at_their_own_events(ms: Metersync, base: datetime, via: str) -> None:
    """Each receipt names the stored event holding that item's account, quantity, time,
    key and dimensions, also when a batch mixes accounts and keyed with keyless items."""
    ms.accounts.upsert("acct_0")
    items = [
        _item(
            account=("acct_1", "acct_0")[i % 2],
            quantity=Decimal(i) + Decimal("0.5"),
            timestamp=base + timedelta(minutes=i * 3),
            idempotency_key=f"key-{i}" if i % 3 else None,
            dimensions={"region": "eu", "n": i, "flag": True, "none": None} if i % 4 else None,
        )
        for i in range(30)
    ]
    if via == "record_many":
        receipts = ms.record_many(items).receipts
    else:
        receipts = [
            ms.increment(i.pop("account"), i.pop("quantity"), **i) for i in map(dict, items)
        ]
    with ms.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(table(UsageEvent))).all()}
        names: dict[int, str] = dict(conn.execute(sa.text("SELECT id, name FROM account")).all())
    assert len(rows) == 30
    for item, receipt in zip(items, receipts, strict=True):
        assert receipt is not None
        row = rows[receipt.event_id]
        assert (names[row.account_id], row.quantity, row.occurred_at) == (
            item["account"], item["quantity"], item["timestamp"],
        )  # fmt: skip
        assert (row.idempotency_key, row.dimensions) == (
            item["idempotency_key"], item["dimensions"],
        )  # fmt: skip
        assert (receipt.account, receipt.quantity, receipt.occurred_at, receipt.report_id) == (
            item["account"], item["quantity"], item["timestamp"], row.report_id,
        )  # fmt: skip


# --- idempotency ----------------------------------------------------------------------


def test_idempotency_key_is_per_account(ms: Metersync) -> None:
    """The same key on two accounts is two events; on one account it is one."""
    ms.accounts.upsert("acct_2")
    a = ms.increment("acct_1", 4, meter="api_calls", idempotency_key="same")
    b = ms.increment("acct_2", 4, meter="api_calls", idempotency_key="same")
    c = ms.increment("acct_2", 4, meter="api_calls", idempotency_key="same")
    assert not a.duplicate
    assert not b.duplicate
    assert c.duplicate
    assert a.event_id != b.event_id
    assert a.report_id != b.report_id
    assert c.event_id == b.event_id
    assert ms.get_usage("acct_1").meters["api_calls"].quantity == Decimal(4)
    assert ms.get_usage("acct_2").meters["api_calls"].quantity == Decimal(4)
    assert _counts(ms) == (2, 2)


def test_duplicate_receipt_is_the_original(ms: Metersync, base: datetime) -> None:
    """A repeat with other values returns the original event, report, quantity and time,
    and changes nothing."""
    at = base + timedelta(minutes=17, seconds=3, microseconds=250)
    first = ms.increment("acct_1", "5.25", meter="api_calls", idempotency_key="k1", timestamp=at)
    before = _counts(ms)
    again = ms.increment(
        "acct_1", 99, meter="api_calls", idempotency_key="k1", timestamp=base + timedelta(hours=2)
    )
    assert not first.duplicate
    assert again.duplicate
    assert again.event_id == first.event_id
    assert again.report_id == first.report_id
    assert again.quantity == Decimal("5.25")
    assert again.occurred_at == at
    batch = ms.record_many([_item(quantity=1, idempotency_key="k1")])
    dup = batch.receipts[0]
    assert dup is not None
    assert dup.duplicate
    assert batch.duplicates == 1
    assert (dup.event_id, dup.report_id, dup.quantity, dup.occurred_at) == (
        first.event_id, first.report_id, Decimal("5.25"), at,
    )  # fmt: skip
    assert _counts(ms) == before
    assert ms.get_usage("acct_1", **_wide(base)).meters["api_calls"].quantity == Decimal("5.25")


# --- report windows -------------------------------------------------------------------


def test_explicit_timestamps_land_in_their_hourly_window(ms: Metersync, base: datetime) -> None:
    """Two events in the same hour share a report; one in the next hour gets its own,
    and each report's window is the hour holding its events."""
    assert ms.schedule.current().expression == "every 1h"
    a = ms.increment("acct_1", 1, meter="api_calls", timestamp=base + timedelta(minutes=10))
    b = ms.increment("acct_1", 2, meter="api_calls", timestamp=base + timedelta(minutes=59))
    c = ms.increment("acct_1", 4, meter="api_calls", timestamp=base + timedelta(minutes=60))
    unix = (base + timedelta(minutes=90)).timestamp()
    d = ms.increment("acct_1", 0, meter="api_calls", timestamp=int(unix))
    assert d.occurred_at == base + timedelta(minutes=90)
    assert a.report_id == b.report_id != c.report_id == d.report_id
    rows = _reports(ms)
    assert [(r.window_start, r.window_end) for r in rows] == [
        (base, base + timedelta(hours=1)),
        (base + timedelta(hours=1), base + timedelta(hours=2)),
    ]
    assert [(r.id, r.total, r.events) for r in rows] == [
        (a.report_id, Decimal(3), 2),
        (c.report_id, Decimal(4), 2),
    ]
    assert all(r.status == "open" for r in rows)


def test_billing_period_boundary_cuts_the_window(ms: Metersync, base: datetime) -> None:
    """Events just before and after a billing-period start mid-hour land in different
    reports whose windows stop at, and start from, the boundary."""
    boundary = base + timedelta(minutes=30)
    ms.set_billing_period("acct_1", boundary, boundary + timedelta(days=30))
    before = ms.increment("acct_1", 1, meter="api_calls", timestamp=boundary - timedelta(seconds=1))
    after = ms.increment("acct_1", 2, meter="api_calls", timestamp=boundary + timedelta(seconds=1))
    at = ms.increment("acct_1", 4, meter="api_calls", timestamp=boundary)
    assert before.report_id != after.report_id == at.report_id
    old, new = _reports(ms)
    assert (old.id, old.window_start, old.window_end) == (before.report_id, base, boundary)
    assert (new.id, new.window_start, new.window_end) == (
        after.report_id, boundary, base + timedelta(hours=1),
    )  # fmt: skip
    assert old.period_start is None
    assert (new.period_start, new.period_end) == (boundary, boundary + timedelta(days=30))
    u = ms.get_usage("acct_1")
    assert u.period_source == "billing_period"
    assert (u.period_start, u.period_end) == (boundary, boundary + timedelta(days=30))
    assert u.meters["api_calls"].quantity == Decimal(6)
    assert u.meters["api_calls"].events == 2


# --- aggregation ----------------------------------------------------------------------


@pytest.mark.parametrize("via", ["increment", "record_many"])
def test_aggregations(ms: Metersync, base: datetime, via: str) -> None:
    """sum adds, count counts events, max keeps the largest, last keeps the value with
    the latest event time even when an older event is recorded after it."""
    events = [  # (minutes after base, quantity), in recording order
        (50, "7"),
        (10, "3"),  # older, recorded later: not the last value
        (-70, "1.5"),  # an earlier hour, recorded last
        (40, "2"),
    ]
    for meter in ("api_calls", "requests", "peak", "seats"):
        items = [
            _item(meter=meter, quantity=q, timestamp=base + timedelta(minutes=m)) for m, q in events
        ]
        if via == "record_many":
            assert ms.record_many(items).accepted == 4
        else:
            for item in items:
                ms.increment("acct_1", item["quantity"], meter=meter, timestamp=item["timestamp"])
    u = ms.get_usage("acct_1", **_wide(base))
    got = {name: (m.quantity, m.events, m.sent, m.pending) for name, m in u.meters.items()}
    assert got == {
        "api_calls": (Decimal("13.5"), 4, Decimal(0), Decimal("13.5")),
        "requests": (Decimal(4), 4, Decimal(0), Decimal(4)),
        "peak": (Decimal(7), 4, Decimal(0), Decimal(7)),
        "seats": (Decimal(7), 4, Decimal(0), Decimal(7)),
    }
    assert u.meters["peak"].aggregation == "max"
    assert u.meters["seats"].aggregation == "last"


def test_last_follows_event_time_across_reports(ms: Metersync, base: datetime) -> None:
    """For a last meter, a later-recorded event from an earlier hour does not win."""
    ms.increment("acct_1", 8, meter="seats", timestamp=base + timedelta(hours=2))
    ms.increment("acct_1", 2, meter="seats", timestamp=base)
    assert ms.get_usage("acct_1", **_wide(base)).meters["seats"].quantity == Decimal(8)
    ms.increment("acct_1", 5, meter="seats", timestamp=base + timedelta(hours=2, minutes=1))
    assert ms.get_usage("acct_1", **_wide(base)).meters["seats"].quantity == Decimal(5)


@pytest.mark.parametrize("via", ["increment", "record_many"])
def test_last_on_equal_times_is_the_one_recorded_later(
    ms: Metersync, base: datetime, via: str
) -> None:
    """Two last-meter events with the same time: the later-recorded value wins, in the
    report and in a sub-period query that reads events."""
    at = base + timedelta(minutes=20)
    if via == "record_many":
        ms.record_many([_item(meter="seats", quantity=3, timestamp=at)])
        ms.record_many([_item(meter="seats", quantity=5, timestamp=at)])
    else:
        ms.increment("acct_1", 3, meter="seats", timestamp=at)
        ms.increment("acct_1", 5, meter="seats", timestamp=at)
    assert ms.get_usage("acct_1", **_wide(base)).meters["seats"].quantity == Decimal(5)
    part = ms.get_usage("acct_1", at, at + timedelta(minutes=1), meter="seats")
    assert part.meters["seats"].quantity == Decimal(5)


@pytest.mark.parametrize("via", ["increment", "record_many"])
def test_totals_are_exact(ms: Metersync, base: datetime, via: str) -> None:
    """Valid quantities of very different sizes add up exactly, within a report and
    across reports (no rounding to 28 digits)."""
    items = [
        _item(
            quantity="100000000000000" if minutes % 20 else "0.00000000000001",
            timestamp=base + timedelta(minutes=minutes),
        )
        for minutes in (10, 20, 70, 80)
    ]
    if via == "record_many":
        assert ms.record_many(items).accepted == 4
    else:
        for item in items:
            ms.increment("acct_1", item["quantity"], meter="api_calls", timestamp=item["timestamp"])
    assert [r.total for r in _reports(ms)] == [Decimal("100000000000000.00000000000001")] * 2
    total = ms.get_usage("acct_1", **_wide(base)).meters["api_calls"].quantity
    assert total == Decimal("200000000000000.00000000000002")


# --- get_usage ------------------------------------------------------------------------


def test_get_usage_accepts_strings_dates_and_aware_datetimes(ms: Metersync) -> None:
    """ISO date and datetime strings, dates and aware datetimes (any offset) give the
    same UTC period."""
    ms.increment("acct_1", 3, meter="api_calls")
    today = datetime.now(UTC).date()
    start, end = today - timedelta(days=1), today + timedelta(days=1)
    plus2 = timezone(timedelta(hours=2))
    forms: list[tuple[Any, Any]] = [
        (start.isoformat(), end.isoformat()),  # as in the design: "2026-10-10"
        (start, end),
        (
            datetime(start.year, start.month, start.day, 2, tzinfo=plus2),
            datetime(end.year, end.month, end.day, tzinfo=UTC),
        ),
        (f"{start.isoformat()}T00:00:00Z", f"{end.isoformat()}T00:00:00+00:00"),
    ]
    expected = (
        datetime(start.year, start.month, start.day, tzinfo=UTC),
        datetime(end.year, end.month, end.day, tzinfo=UTC),
    )
    for period_start, period_end in forms:
        u = ms.get_usage("acct_1", period_start, period_end)
        assert (u.period_start, u.period_end) == expected
        assert u.period_start.utcoffset() == timedelta(0)
        assert u.period_source == "requested"
        assert u.meters["api_calls"].quantity == Decimal(3)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (datetime(2026, 1, 1), datetime(2026, 2, 1), "no time zone"),
        ("2026-02-01T00:00Z", "2026-02-01T00:00Z", "must be after period_start"),
        ("2026-02-02T00:00Z", "2026-02-01T00:00Z", "must be after period_start"),
        ("2026-02-01", None, "give both period_start and period_end"),
        (None, "2026-02-01", "give both period_start and period_end"),
        ("soon", "2026-02-01", "not an ISO 8601"),
    ],
)
def test_get_usage_refuses_bad_periods(
    ms: Metersync, start: datetime | str | None, end: datetime | str | None, message: str
) -> None:
    """Naive datetimes, empty or reversed periods and half-given periods raise InvalidPeriod."""
    with pytest.raises(InvalidPeriod, match=message):
        ms.get_usage("acct_1", start, end)


def test_get_usage_filters_by_meter(ms: Metersync) -> None:
    """meter= narrows the answer to one meter; an unknown account raises."""
    ms.increment("acct_1", 2, meter="api_calls")
    ms.increment("acct_1", 9, meter="peak")
    u = ms.get_usage("acct_1", meter="peak")
    assert list(u.meters) == ["peak"]
    assert u.meters["peak"].quantity == Decimal(9)
    with pytest.raises(UnknownAccount, match="unknown account 'acct_9'"):
        ms.get_usage("acct_9")


def test_get_usage_names_the_known_meters(ms: Metersync) -> None:
    """Asking for an unknown meter raises UnknownMeter listing the meters that exist."""
    with pytest.raises(UnknownMeter, match=f"unknown meter 'peek'; {KNOWN}"):
        ms.get_usage("acct_1", meter="peek")


def test_meter_without_usage_is_present_with_zeros(ms: Metersync) -> None:
    """Every meter appears in the answer; those without usage hold zeros."""
    ms.increment("acct_1", 2, meter="api_calls")
    u = ms.get_usage("acct_1")
    assert sorted(u.meters) == ["api_calls", "peak", "requests", "seats"]
    for name in ("peak", "requests", "seats"):
        m = u.meters[name]
        assert (m.quantity, m.sent, m.pending, m.events) == (Decimal(0), Decimal(0), Decimal(0), 0)


def test_default_period_is_the_calendar_month_without_billing_period(ms: Metersync) -> None:
    """With no billing period known, get_usage covers the current calendar month."""
    now = datetime.now(UTC)
    u = ms.get_usage("acct_1")
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    assert (u.period_start, u.period_end, u.period_source) == (start, end, "calendar_month")


def test_default_period_is_the_billing_period_covering_now(ms: Metersync) -> None:
    """A billing period containing now is the default; one in the past is not used."""
    now = datetime.now(UTC)
    past = (now - timedelta(days=60), now - timedelta(days=30))
    ms.set_billing_period("acct_1", *past)
    assert ms.get_usage("acct_1").period_source == "calendar_month"
    current = (now - timedelta(days=3), now + timedelta(days=27))
    ms.set_billing_period("acct_1", *current)
    ms.increment("acct_1", 6, meter="api_calls")
    u = ms.get_usage("acct_1")
    assert u.period_source == "billing_period"
    assert (u.period_start, u.period_end) == current
    assert u.meters["api_calls"].quantity == Decimal(6)


def test_sub_period_counts_only_events_inside(ms: Metersync, base: datetime) -> None:
    """A query cutting through a report window counts only the events in [start, end)."""
    for minutes, q in ((10, 1), (20, 2), (30, 4), (40, 8)):
        at = base + timedelta(minutes=minutes)
        for meter in ("api_calls", "requests", "peak", "seats"):
            ms.increment("acct_1", q, meter=meter, timestamp=at)
    assert len(_reports(ms)) == 1
    u = ms.get_usage("acct_1", base + timedelta(minutes=15), base + timedelta(minutes=40))
    got = {name: (m.quantity, m.events) for name, m in u.meters.items()}
    assert got == {
        "api_calls": (Decimal(6), 2),
        "requests": (Decimal(2), 2),
        "peak": (Decimal(4), 2),
        "seats": (Decimal(4), 2),
    }
    whole = ms.get_usage("acct_1", base, base + timedelta(hours=1), meter="api_calls")
    assert whole.meters["api_calls"].quantity == Decimal(15)


def test_usage_to_dict_is_json_with_decimal_strings(ms: Metersync) -> None:
    """to_dict() survives json.dumps and keeps quantities exact as strings."""
    ms.increment("acct_1", "0.1", meter="api_calls")
    ms.increment("acct_1", "0.2", meter="api_calls")
    u = ms.get_usage("acct_1")
    data = json.loads(json.dumps(u.to_dict()))
    assert data["account"] == "acct_1"
    assert data["period_source"] == "calendar_month"
    assert datetime.fromisoformat(data["period_start"]) == u.period_start
    assert data["meters"]["api_calls"] == {
        "quantity": "0.3",
        "sent": "0",
        "pending": "0.3",
        "events": 2,
        "aggregation": "sum",
        "amount": None,
        "currency": None,
        "price": None,
        "rating_error": None,
    }
    assert data["meters"]["peak"]["quantity"] == "0"


# --- Gravity-style module -------------------------------------------------------------


@pytest.fixture
def default_ms(ms: Metersync) -> Iterator[Metersync]:
    """``ms`` installed as the default connection of ``adapter.usage``."""
    usage.set_default_connection(ms)
    try:
        yield ms
    finally:
        usage.set_default_connection(None)


def test_usage_module_increments_the_default_meter(default_ms: Metersync) -> None:
    """usage.increment adds to the auto-created sum meter `usage`; no quantity means 1."""
    r = usage.increment(account="acct_1", quantity=10)
    usage.increment(account="acct_1")
    assert r.meter == "usage"
    assert not r.duplicate
    assert default_ms.meters.get("usage").aggregation == "sum"
    u = usage.get(account="acct_1")
    assert u.meters["usage"].quantity == Decimal(11)
    assert u.meters["usage"].events == 2
    today = datetime.now(UTC).date()
    ranged = usage.get(
        account="acct_1", period_start=today, period_end=today + timedelta(days=1), meter="usage"
    )
    assert list(ranged.meters) == ["usage"]
    assert ranged.meters["usage"].quantity == Decimal(11)
    usage.increment(account="acct_1", quantity=5, meter="api_calls", idempotency_key="g1")
    usage.increment(account="acct_1", quantity=5, meter="api_calls", idempotency_key="g1")
    assert usage.get(account="acct_1").meters["api_calls"].quantity == Decimal(5)


def test_usage_module_passes_errors_through(default_ms: Metersync) -> None:
    """The module raises the same InvalidUsage errors as the client."""
    with pytest.raises(UnknownAccount):
        usage.increment(account="nobody")
    with pytest.raises(InvalidQuantity):
        usage.increment(account="acct_1", quantity=-2)
    assert _counts(default_ms) == (0, 0)


# --- catalog --------------------------------------------------------------------------


def test_meter_aggregation_cannot_change_once_used(ms: Metersync) -> None:
    """A meter holding usage keeps its aggregation; an unused one may change it."""
    ms.increment("acct_1", 1, meter="api_calls")
    with pytest.raises(InvalidUsage, match="already holds usage aggregated by 'sum'"):
        ms.meters.upsert("api_calls", aggregation="max")
    assert ms.meters.get("api_calls").aggregation == "sum"
    assert ms.meters.upsert("requests", aggregation="max").aggregation == "max"
    renamed = ms.meters.upsert("api_calls", event_name="api_calls_v2")
    assert (renamed.event_name, renamed.aggregation) == ("api_calls_v2", "sum")


def test_account_upsert_keeps_fields_not_given(ms: Metersync) -> None:
    """Upserting an account changes only the fields passed."""
    ms.accounts.upsert("acct_1", metadata={"plan": "pro"})
    ms.accounts.upsert("acct_1", free=True)
    info = ms.accounts.upsert("acct_1")
    assert (info.stripe_customer_id, info.free, info.metadata) == ("cus_123", True, {"plan": "pro"})
    info = ms.accounts.upsert("acct_1", stripe_customer_id="cus_456")
    assert (info.stripe_customer_id, info.free, info.metadata) == ("cus_456", True, {"plan": "pro"})
    assert ms.accounts.get("acct_1") == info


# --- PostgreSQL only ------------------------------------------------------------------


@pytest.fixture
def pg_ms(postgres_server: Postgres) -> Iterator[Metersync]:
    """A connected metersync on a fresh PostgreSQL database with ``acct_1``/``api_calls``."""
    url = postgres_server.create_database()
    client = adapter.connect(Settings(database_url=url, auto_migrate=True))
    client.accounts.upsert("acct_1")
    client.meters.upsert("api_calls")
    try:
        yield client
    finally:
        client.close()
        postgres_server.drop_database(url)


@pytest.mark.postgres
@pytest.mark.parametrize("field", ["account", "meter", "idempotency_key"])
def test_nul_characters_are_invalid_usage(pg_ms: Metersync, field: str) -> None:
    """A NUL in an account, meter or key is refused as bad input: increment raises
    InvalidUsage, and a batch rejects that item alone."""
    bad = _item(**{field: "req\x001"})
    with pytest.raises(InvalidUsage, match=field):
        pg_ms.increment(bad.pop("account"), bad.pop("quantity"), **bad)
    res = pg_ms.record_many([_item(**{field: "req\x001"}), _item(quantity=2)])
    assert [r.index for r in res.rejected] == [0]
    assert res.accepted == 1
    assert _counts(pg_ms) == (1, 1)


def test_set_billing_period_failing_after_its_first_write_changes_nothing(
    ms: Metersync,
) -> None:
    """Replacing a period deletes the old row, then inserts the new one; when the insert
    fails, the delete is rolled back with it: the account keeps its old period."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ms.set_billing_period("acct_1", start, start + timedelta(days=31))
    statements: list[str] = []

    def fail_the_insert(conn: sa.Connection, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.split()[0].upper())
        if statement.lstrip().upper().startswith("INSERT INTO BILLING_PERIOD"):
            raise RuntimeError("disk full")

    sa.event.listen(ms.engine, "before_cursor_execute", fail_the_insert)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            ms.set_billing_period("acct_1", start, start + timedelta(days=30))
    finally:
        sa.event.remove(ms.engine, "before_cursor_execute", fail_the_insert)
    assert "DELETE" in statements  # the first write did happen, inside the transaction
    with ms.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT period_start, period_end FROM billing_period")).all()
    assert [(_utc(a), _utc(b)) for a, b in rows] == [(start, start + timedelta(days=31))]


def _utc(value: datetime | str) -> datetime:
    """A timestamp read back from either database, as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
