"""``adapter.mirror.sync`` on SQLite and PostgreSQL, with Stripe's list endpoints played by
``responses``: resource order, resumable cursors, ``restart``, pacing, pushing what the
mirror closed, and event replay (new events only, oldest first)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
import responses
import sqlalchemy as sa

import adapter
from adapter.client import Metersync
from adapter.gateway import Gateway
from adapter.mirror import deliveries
from adapter.mirror import sync as syncing
from adapter.mirror.context import Processed, Refetch
from adapter.pushing.outbox import close_reports
from adapter.store.mirror_models import SyncState, WebhookDelivery
from adapter.store.models import table
from config.settings import Settings
from tests.gateways import make_gateway
from tests.stripe_lists import API, StripeLists, error

_STATE = table(SyncState)
_DELIVERIES = table(WebhookDelivery)
#: The clock of Stripe's objects and events here: a recent second.
T0 = int(datetime(2026, 11, 3, 12, 0, tzinfo=UTC).timestamp())


# --- Stripe objects in both API shapes -------------------------------------------------------


def meter(n: int) -> dict[str, Any]:
    return {
        "id": f"mtr_{n}",
        "object": "billing.meter",
        "created": T0 - 900 + n,
        "event_name": f"event_{n}",
        "display_name": f"Meter {n}",
        "status": "active",
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
        "livemode": False,
    }


def price(n: int) -> dict[str, Any]:
    return {
        "id": f"price_{n}",
        "object": "price",
        "created": T0 - 800 + n,
        "active": True,
        "currency": "usd",
        "billing_scheme": "per_unit",
        "unit_amount_decimal": "0.5",
        "recurring": {"interval": "month", "usage_type": "metered", "meter": f"mtr_{n}"},
        "product": "prod_1",
        "metadata": {},
        "livemode": False,
    }


def customer(n: int) -> dict[str, Any]:
    return {
        "id": f"cus_{n}",
        "object": "customer",
        "created": T0 - 700 + n,
        "email": f"c{n}@example.com",
        "name": f"Customer {n}",
        "metadata": {"metersync_account": f"acct_{n}"},
        "livemode": False,
    }


def subscription(n: int, *, basil: bool = True) -> dict[str, Any]:
    """Since 2025-03-31 the period is on each item; older payloads have it on the
    subscription."""
    period = {"current_period_start": T0 - 86_400, "current_period_end": T0 + 86_400}
    item: dict[str, Any] = {
        "id": f"si_{n}",
        "object": "subscription_item",
        "price": price(n),
        "quantity": None,
        **(period if basil else {}),
    }
    return {
        "id": f"sub_{n}",
        "object": "subscription",
        "created": T0 - 600 + n,
        "customer": f"cus_{n}",
        "status": "active",
        "cancel_at_period_end": False,
        "items": {"object": "list", "data": [item], "has_more": False},
        "metadata": {},
        "livemode": False,
        **({} if basil else period),
    }


def invoice(n: int, *, basil: bool = True) -> dict[str, Any]:
    """The subscription is under ``parent`` since basil, top-level before."""
    sub = f"sub_{n}"
    link = (
        {"parent": {"type": "subscription_details", "subscription_details": {"subscription": sub}}}
        if basil
        else {"subscription": sub}
    )
    line = {
        "id": f"il_{n}",
        "object": "line_item",
        "amount": 500,
        "currency": "usd",
        "quantity": 10,
        "period": {"start": T0 - 86_400, "end": T0},
    }
    return {
        "id": f"in_{n}",
        "object": "invoice",
        "created": T0 - 500 + n,
        "customer": f"cus_{n}",
        "status": "draft",
        "billing_reason": "subscription_cycle",
        "currency": "usd",
        "total": 500,
        "lines": {"object": "list", "data": [line], "has_more": False},
        "metadata": {},
        "livemode": False,
        **link,
    }


def event(n: int, *, created: int, obj: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": f"evt_{n}",
        "object": "event",
        "type": "customer.updated",
        "created": created,
        "livemode": False,
        "api_version": "2026-10-28.endive",
        "data": {"object": obj or customer(n)},
    }


# --- the mirror and the gateway --------------------------------------------------------------


class FakeMirror:
    """Records what it was handed; stands in for ``adapter.mirror.process``."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.read_at: list[datetime | None] = []
        self.replayed: list[str] = []
        self.refetch: Refetch | None = None
        self.to_push: dict[str, tuple[int, ...]] = {}

    def sync_object(
        self,
        ms: Metersync,
        obj: dict[str, Any],
        *,
        read_at: datetime | None = None,
        refetch: Refetch | None = None,
    ) -> Processed:
        self.read_at.append(read_at)
        self.applied.append(obj["id"])
        status = "skipped" if obj.get("status") == "canceled" else "processed"
        return Processed(0, status, self.to_push.get(obj["id"], ()))

    def process_delivery(
        self, ms: Metersync, delivery_id: int, *, refetch: Refetch | None = None
    ) -> Processed:
        self.refetch = refetch
        with ms.engine.begin() as conn:
            event_id = conn.execute(
                sa.select(_DELIVERIES.c.event_id).where(_DELIVERIES.c.id == delivery_id)
            ).scalar_one()
            conn.execute(
                _DELIVERIES.update()
                .where(_DELIVERIES.c.id == delivery_id)
                .values(status="processed")
            )
        self.replayed.append(event_id)
        return Processed(delivery_id, "processed")


def _gateway() -> Gateway:
    return make_gateway(attempts=2)


@pytest.fixture(autouse=True)
def _empty_sync_tables(ms: Metersync) -> None:
    """The shared PostgreSQL database keeps sync state and deliveries between tests."""
    with ms.engine.begin() as conn:
        conn.execute(_STATE.delete())
        conn.execute(_DELIVERIES.delete())


@pytest.fixture
def stripe_lists(stripe_api: responses.RequestsMock) -> StripeLists:
    return StripeLists(stripe_api)


@pytest.fixture
def mirror() -> FakeMirror:
    return FakeMirror()


def run(
    ms: Metersync,
    mirror: FakeMirror,
    *,
    resources: Iterable[str] = syncing.RESOURCES,
    restart: bool = False,
) -> syncing.SyncSummary:
    return syncing.sync(
        ms, _gateway(), resources=resources, restart=restart, pace=lambda: None, mirror=mirror
    )


def replay(ms: Metersync, mirror: FakeMirror, *, restart: bool = False) -> syncing.SyncSummary:
    return syncing.sync_events(ms, _gateway(), restart=restart, pace=lambda: None, mirror=mirror)


def state(ms: Metersync) -> dict[str, tuple[str | None, bool, int]]:
    with ms.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_STATE.c.resource, _STATE.c.cursor, _STATE.c.done, _STATE.c.count)
        )
        return {r.resource: (r.cursor, r.done, r[3]) for r in rows}


def fill(lists: StripeLists) -> None:
    """Two of everything, newest first, in both payload shapes."""
    lists.objects["meters"] = [meter(2), meter(1)]
    lists.objects["prices"] = [price(2), price(1)]
    lists.objects["customers"] = [customer(3), customer(2), customer(1)]
    lists.objects["subscriptions"] = [subscription(2), subscription(1, basil=False)]
    lists.objects["invoices"] = [invoice(2), invoice(1, basil=False)]


def permanent(message: str = "Invalid request.") -> tuple[int, dict[str, Any]]:
    return error(400, message)


# --- sync ------------------------------------------------------------------------------------


def test_sync_reads_every_resource_in_dependency_order(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """Meters, prices, customers, subscriptions, invoices: each object once, in that order."""
    fill(stripe_lists)
    stripe_lists.objects["subscriptions"][0]["status"] = "canceled"
    began = datetime.now(UTC)

    summary = run(ms, mirror)

    assert mirror.applied == [
        "mtr_2", "mtr_1", "price_2", "price_1", "cus_3", "cus_2", "cus_1",
        "sub_2", "sub_1", "in_2", "in_1",
    ]  # fmt: skip
    assert [(r.resource, r.listed, r.complete) for r in summary.resources] == [
        ("meters", 2, True),
        ("prices", 2, True),
        ("customers", 3, True),
        ("subscriptions", 2, True),
        ("invoices", 2, True),
    ]
    assert summary.resources[2].pages == 2
    assert summary.resources[3].statuses == {"skipped": 1, "processed": 1}
    assert state(ms)["customers"] == ("cus_1", True, 3)
    assert summary.pushed == {}
    # Each object carries when its page was read, so a newer webhook is never overwritten.
    assert all(at is not None and began <= at <= datetime.now(UTC) for at in mirror.read_at)


def test_only_some_resources_keep_dependency_order(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """Resources asked for out of order are still read in dependency order, and only them."""
    fill(stripe_lists)

    run(ms, mirror, resources=["invoices", "meters"])

    assert mirror.applied == ["mtr_2", "mtr_1", "in_2", "in_1"]
    assert {r for r, _ in stripe_lists.requests} == {"meters", "invoices"}


def test_unknown_resource_is_refused(ms: Metersync, mirror: FakeMirror) -> None:
    """A resource sync does not know is refused before any call, naming the known ones."""
    with pytest.raises(adapter.errors.MetersyncError, match="cannot sync charges; known: meters"):
        run(ms, mirror, resources=["charges"])


def test_interrupted_sync_resumes_after_the_last_finished_page(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """A permanent error on page 2 stops the sync with page 1's cursor stored; the rerun
    asks for the page after it, and every customer is mirrored exactly once."""
    stripe_lists.objects["customers"] = [customer(n) for n in range(5, 0, -1)]
    stripe_lists.fail[("customers", "cus_4")] = permanent("Something is wrong.")

    with pytest.raises(syncing.SyncStopped) as caught:
        run(ms, mirror, resources=["customers"])

    stopped = caught.value
    assert "sync of customers stopped" in str(stopped)
    assert "Something is wrong." in str(stopped)
    assert "[request req_2]" in str(stopped)
    assert stopped.summary.resources[0].listed == 2
    assert state(ms)["customers"] == ("cus_4", False, 2)

    summary = run(ms, mirror, resources=["customers"])

    assert stripe_lists.requests[2] == ("customers", "cus_4")
    assert mirror.applied == ["cus_5", "cus_4", "cus_3", "cus_2", "cus_1"]
    assert summary.resources[0].resumed_after == "cus_4"
    assert summary.resources[0].listed == 3
    assert state(ms)["customers"] == ("cus_1", True, 5)


def test_finished_resource_starts_over(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """Once a resource is done, the next sync reads it again from the newest object."""
    stripe_lists.objects["prices"] = [price(1)]
    run(ms, mirror, resources=["prices"])

    summary = run(ms, mirror, resources=["prices"])

    assert stripe_lists.requests == [("prices", None), ("prices", None)]
    assert mirror.applied == ["price_1", "price_1"]
    assert summary.resources[0].resumed_after is None


def test_restart_ignores_the_stored_cursor(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """``restart`` reads from the newest object even when an interrupted pass was stored."""
    stripe_lists.objects["customers"] = [customer(n) for n in range(4, 0, -1)]
    stripe_lists.fail[("customers", "cus_3")] = permanent()
    with pytest.raises(syncing.SyncStopped):
        run(ms, mirror, resources=["customers"])

    summary = run(ms, mirror, resources=["customers"], restart=True)

    assert stripe_lists.requests[2:] == [("customers", None), ("customers", "cus_3")]
    assert summary.resources[0].resumed_after is None
    assert state(ms)["customers"] == ("cus_1", True, 4)


def test_a_vanished_cursor_starts_the_pass_over(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """When Stripe no longer has the stored cursor object, the pass restarts from the top."""
    stripe_lists.objects["customers"] = [customer(2), customer(1)]
    with ms.engine.begin() as conn:
        conn.execute(
            _STATE.insert().values(resource="customers", cursor="cus_9", done=False, count=7)
        )
    gone = error(404, "No such customer: 'cus_9'", code="resource_missing")
    stripe_lists.fail[("customers", "cus_9")] = gone

    summary = run(ms, mirror, resources=["customers"])

    assert stripe_lists.requests == [("customers", "cus_9"), ("customers", None)]
    assert mirror.applied == ["cus_2", "cus_1"]
    assert state(ms)["customers"] == ("cus_1", True, 2)
    assert summary.resources[0].resumed_after is None


def test_transient_errors_are_retried_within_the_page(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """A 500 on a page is retried by the gateway; the sync goes on without stopping."""
    stripe_lists.objects["meters"] = [meter(1)]
    stripe_lists.fail[("meters", None)] = error(500, "x", type_="api_error")

    summary = run(ms, mirror, resources=["meters"])

    assert stripe_lists.requests == [("meters", None), ("meters", None)]
    assert summary.resources[0].complete is True


def test_every_request_is_paced(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """The pace is called once before each HTTP request sync makes."""
    fill(stripe_lists)
    paces: list[int] = []

    syncing.sync(ms, _gateway(), pace=lambda: paces.append(1), mirror=mirror)

    assert len(paces) == len(stripe_lists.requests) == 6


def test_reports_closed_by_the_mirror_are_pushed(
    db_url: str,
    stripe_api: responses.RequestsMock,
    stripe_lists: StripeLists,
    mirror: FakeMirror,
) -> None:
    """Reports the mirror closed while syncing are pushed once, at the end."""
    ms = adapter.connect(Settings(database_url=db_url, auto_migrate=True), gateway=_gateway())
    try:
        ms.meters.upsert("api_calls", aggregation="sum")
        ms.increment("acct_1", 3, meter="api_calls")
        close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
        (report,) = (r.id for r in ms.reports(status="closed"))
        stripe_api.post(f"{API}/v1/billing/meter_events", json={"object": "billing.meter_event"})
        stripe_lists.objects["subscriptions"] = [subscription(2), subscription(1)]
        mirror.to_push = {"sub_2": (report,), "sub_1": (report,)}

        summary = syncing.sync(
            ms, _gateway(), resources=["subscriptions"], pace=lambda: None, mirror=mirror
        )

        assert summary.to_push == [report, report]
        assert summary.pushed == {"sent": 1}
        assert [r.status for r in ms.reports()] == ["sent"]
    finally:
        ms.close()


def test_closed_reports_wait_for_the_worker_without_a_key(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """With no Stripe key configured for pushing, closed reports are left to the worker."""
    stripe_lists.objects["subscriptions"] = [subscription(1)]
    mirror.to_push = {"sub_1": (41,)}

    summary = run(ms, mirror, resources=["subscriptions"])

    assert (summary.to_push, summary.pushed) == ([41], {})


# --- sync_events -----------------------------------------------------------------------------


def delivery_rows(ms: Metersync) -> dict[str, tuple[str, str]]:
    with ms.engine.connect() as conn:
        rows = conn.execute(
            sa.select(_DELIVERIES.c.event_id, _DELIVERIES.c.source, _DELIVERIES.c.status)
        )
        return {r.event_id: (r.source, r.status) for r in rows}


def test_events_store_only_new_ones_and_apply_them_oldest_first(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """Events already delivered by webhook are skipped; new ones are stored as ``sync``
    deliveries and applied oldest first, with the gateway's refetch."""
    stripe_lists.objects["events"] = [event(n, created=T0 + n) for n in (5, 4, 3, 2, 1)]
    deliveries.store(ms.engine, event(2, created=T0 + 2), source="webhook")

    summary = replay(ms, mirror)

    assert mirror.replayed == ["evt_1", "evt_3", "evt_4", "evt_5"]
    (result,) = summary.resources
    assert (result.resource, result.listed, result.new, result.pages) == ("events", 5, 4, 3)
    assert result.statuses == {"processed": 4}
    rows = delivery_rows(ms)
    assert rows["evt_2"] == ("webhook", "received")
    assert rows["evt_5"] == ("sync", "processed")
    assert mirror.refetch is not None
    assert state(ms)["events"] == ("evt_5", True, 4)


def test_same_second_events_are_applied_in_stripe_order(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """Events of one second are applied in the reverse of Stripe's newest-first order."""
    stripe_lists.objects["events"] = [event(n, created=T0) for n in (9, 8, 7)]

    replay(ms, mirror)

    assert mirror.replayed == ["evt_7", "evt_8", "evt_9"]


def test_next_run_stops_a_little_before_the_last_runs_newest(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """A second run reads back only to the first run's newest event less the overlap."""
    old = [event(n, created=T0 - 3600 * n) for n in (1, 2, 3)]
    stripe_lists.objects["events"] = old
    replay(ms, mirror)
    overlap = int(syncing.EVENT_OVERLAP.total_seconds())
    stripe_lists.objects["events"] = [
        event(7, created=T0 + 60),
        event(6, created=T0 - overlap + 1),
        *old,
    ]
    stripe_lists.requests.clear()
    mirror.replayed.clear()

    summary = replay(ms, mirror)

    assert stripe_lists.requests == [("events", None), ("events", "evt_6")]
    assert mirror.replayed == ["evt_6", "evt_7"]
    assert (summary.resources[0].listed, summary.resources[0].new) == (3, 2)
    assert state(ms)["events"] == ("evt_7", True, 2)


def test_restart_reads_events_back_to_the_horizon(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """With ``restart`` the stored mark is ignored and every event Stripe has is read."""
    stripe_lists.objects["events"] = [event(n, created=T0 - 86_400 * n) for n in (1, 2, 3)]
    replay(ms, mirror)
    stripe_lists.requests.clear()

    summary = replay(ms, mirror, restart=True)

    assert len(stripe_lists.requests) == 2
    assert (summary.resources[0].listed, summary.resources[0].new) == (3, 0)
    assert mirror.replayed == ["evt_3", "evt_2", "evt_1"]


def test_interrupted_event_replay_applies_nothing_until_a_run_finishes(
    ms: Metersync, stripe_lists: StripeLists, mirror: FakeMirror
) -> None:
    """A failed page stops the replay before anything is applied and leaves no mark; the
    rerun reads everything again, skips what was stored, and applies all oldest first."""
    stripe_lists.objects["events"] = [event(n, created=T0 + n) for n in (4, 3, 2, 1)]
    stripe_lists.fail[("events", "evt_3")] = permanent()

    with pytest.raises(syncing.SyncStopped, match="sync of events stopped"):
        replay(ms, mirror)

    assert mirror.replayed == []
    assert "events" not in state(ms)
    assert set(delivery_rows(ms)) == {"evt_4", "evt_3"}

    summary = replay(ms, mirror)

    assert mirror.replayed == ["evt_1", "evt_2", "evt_3", "evt_4"]
    assert summary.resources[0].new == 2


def test_refetch_given_to_the_mirror_reads_from_stripe(
    ms: Metersync,
    stripe_api: responses.RequestsMock,
    stripe_lists: StripeLists,
    mirror: FakeMirror,
) -> None:
    """The refetch handed to ``process_delivery`` reads the object from Stripe."""
    stripe_lists.objects["events"] = [event(1, created=T0)]
    stripe_api.get(f"{API}/v1/customers/cus_1", json=customer(1))
    replay(ms, mirror)

    assert mirror.refetch is not None
    assert mirror.refetch("customer", "cus_1") == customer(1)


# --- with the real mirror, once it exists ---------------------------------------------------


def test_real_mirror_stores_objects_of_both_shapes(
    ms: Metersync, stripe_lists: StripeLists
) -> None:
    """With the real mirror, every listed object lands in its mirror table."""
    process = pytest.importorskip("adapter.mirror.process")
    fill(stripe_lists)

    summary = syncing.sync(ms, _gateway(), pace=lambda: None, mirror=process)

    assert all(r.complete for r in summary.resources)
    with ms.engine.connect() as conn:
        for table_name, ids in [
            ("stripe_meter", {"mtr_1", "mtr_2"}),
            ("price", {"price_1", "price_2"}),
            ("stripe_customer", {"cus_1", "cus_2", "cus_3"}),
            ("subscription", {"sub_1", "sub_2"}),
            ("invoice", {"in_1", "in_2"}),
        ]:
            found = set(conn.execute(sa.text(f"SELECT id FROM {table_name}")).scalars())
            assert ids <= found, table_name


def test_sync_linking_a_customer_pushes_its_unlinked_reports(
    db_url: str, stripe_api: responses.RequestsMock, stripe_lists: StripeLists
) -> None:
    """A report waiting for its customer is pushed by the sync that links the account."""
    process = pytest.importorskip("adapter.mirror.process")
    ms = adapter.connect(Settings(database_url=db_url, auto_migrate=True), gateway=_gateway())
    try:
        ms.meters.upsert("api_calls", aggregation="sum")
        ms.accounts.upsert("acct_9")
        ms.increment("acct_9", 3, meter="api_calls")
        [waiting] = ms.report_now()
        assert waiting.status == "unlinked"
        stripe_api.post(f"{API}/v1/billing/meter_events", json={"object": "billing.meter_event"})
        stripe_lists.objects["customers"] = [customer(9)]

        summary = syncing.sync(
            ms, _gateway(), resources=["customers"], pace=lambda: None, mirror=process
        )

        assert summary.to_push == [waiting.report_id]
        assert summary.pushed == {"sent": 1}
        [sent] = [c for c in stripe_api.calls if c.request.url.endswith("/meter_events")]
        assert "cus_9" in str(sent.request.body)
    finally:
        ms.close()
