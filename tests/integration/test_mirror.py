"""The Stripe mirror (design flow 4) on SQLite and PostgreSQL: stored deliveries applied
once, in order, never backwards; accounts linked; billing periods from both API shapes;
the usage effects called at a new period and at a cycle's draft invoice."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from adapter.client import Metersync
from adapter.mirror import deliveries, effects, process, router, shapes
from adapter.mirror.context import Apply
from adapter.store.mirror_models import (
    Invoice,
    InvoiceLine,
    Price,
    StripeCustomer,
    StripeMeter,
    Subscription,
    SubscriptionItem,
)
from adapter.store.models import Account, AuditLog, BillingPeriod, table
from tests import stripe_events as se
from tests.mirror_helpers import account_id, clear_mirror, deliver, delivery_of, utc

_SUBS, _ITEMS, _CUSTOMERS = table(Subscription), table(SubscriptionItem), table(StripeCustomer)
_INVOICES, _LINES = table(Invoice), table(InvoiceLine)
_ACCOUNTS, _AUDIT, _PERIODS = table(Account), table(AuditLog), table(BillingPeriod)


def row(ms: Metersync, t: sa.Table, obj_id: str) -> sa.Row[Any]:
    """One mirrored row by id."""
    with ms.engine.connect() as conn:
        return conn.execute(sa.select(t).where(t.c.id == obj_id)).one()


def periods(ms: Metersync, account: str = "acct_1") -> list[tuple[datetime, datetime, str]]:
    """An account's stored billing periods, oldest first."""
    with ms.engine.connect() as conn:
        return [
            (r.period_start, r.period_end, r.source)
            for r in conn.execute(
                sa.select(_PERIODS)
                .join(_ACCOUNTS, _ACCOUNTS.c.id == _PERIODS.c.account_id)
                .where(_ACCOUNTS.c.name == account)
                .order_by(_PERIODS.c.period_start)
            )
        ]


@dataclass
class EffectCalls:
    """What the mirror asked of the usage effects."""

    periods: list[tuple[int, tuple[datetime, datetime], tuple[datetime, datetime] | None]] = field(
        default_factory=list
    )
    invoices: list[str] = field(default_factory=list)


def fake_effects(monkeypatch: pytest.MonkeyPatch) -> EffectCalls:
    """Replace the usage effects with recorders (they are tested on their own)."""
    calls = EffectCalls()

    def period_started(
        ctx: Apply,
        *,
        account_id: int,
        period: tuple[datetime, datetime],
        previous: tuple[datetime, datetime] | None,
    ) -> None:
        assert ctx.conn.in_transaction()
        calls.periods.append((account_id, period, previous))

    def invoice_drafted(ctx: Apply, *, invoice_id: str) -> None:
        calls.invoices.append(invoice_id)

    monkeypatch.setattr(effects, "period_started", period_started)
    monkeypatch.setattr(effects, "invoice_drafted", invoice_drafted)
    return calls


@pytest.fixture
def calls(ms: Metersync, monkeypatch: pytest.MonkeyPatch) -> EffectCalls:
    """A clean mirror, with the usage effects recorded instead of run."""
    clear_mirror(ms.engine)
    return fake_effects(monkeypatch)


# --- routing and delivery status ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "obj", "t"),
    [
        ("customer.created", se.customer("cus_r"), _CUSTOMERS),
        ("customer.subscription.created", se.subscription("sub_r"), _SUBS),
        ("invoice.finalized", se.invoice("in_r", status="open"), _INVOICES),
        ("price.created", se.price("price_r"), table(Price)),
        ("billing.meter.created", se.meter("mtr_r"), table(StripeMeter)),
    ],
)
def test_each_resource_is_mirrored_with_its_event(
    ms: Metersync, calls: EffectCalls, kind: str, obj: dict[str, Any], t: sa.Table
) -> None:
    """A delivery of each mirrored type writes its row, stamped with the event."""
    event = se.event(kind, obj, created=se.T0)
    result = deliver(ms, event)
    assert result.status == "processed"
    stored = row(ms, t, obj["id"])
    assert (stored.last_event_id, stored.last_event_at) == (event["id"], utc(se.T0))
    delivery = delivery_of(ms, event["id"])
    assert (delivery.status, delivery.attempts, delivery.error) == ("processed", 1, None)
    assert delivery.processed_at is not None


@pytest.mark.parametrize(
    "event",
    [
        se.event("charge.succeeded", {"id": "ch_1", "object": "charge"}, created=se.T0),
        se.event("invoice.upcoming", se.invoice() | {"id": None}, created=se.T0),
    ],
)
def test_unmirrored_types_are_ignored(
    ms: Metersync, calls: EffectCalls, event: dict[str, Any]
) -> None:
    """Types metersync does not mirror (invoice.upcoming has no id) end as ignored."""
    assert deliver(ms, event).status == "ignored"
    assert delivery_of(ms, event["id"]).status == "ignored"
    with ms.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(_INVOICES)).scalar() == 0


def test_redelivered_message_does_nothing(ms: Metersync, calls: EffectCalls) -> None:
    """Processing a finished delivery again returns its status and changes nothing."""
    event = se.event("customer.subscription.created", se.subscription(), created=se.T0)
    first = deliver(ms, event)
    again = deliver(ms, event)
    assert (first.status, again.status) == ("processed", "processed")
    assert delivery_of(ms, event["id"]).attempts == 1
    assert len(calls.periods) == 1


def test_unknown_delivery_is_a_clear_error(ms: Metersync, calls: EffectCalls) -> None:
    """A delivery id that does not exist says so."""
    with pytest.raises(process.UnknownDelivery, match="no webhook delivery 999999"):
        process.process_delivery(ms, 999_999)


# --- ordering -----------------------------------------------------------------------------


def test_older_event_is_recorded_and_skipped(ms: Metersync, calls: EffectCalls) -> None:
    """An event older than the last one applied does not move the object back."""
    newer = se.event("customer.subscription.updated", se.subscription(), created=se.T0 + 10)
    older = se.event(
        "customer.subscription.updated", se.subscription(status="incomplete"), created=se.T0
    )
    assert deliver(ms, newer).status == "processed"
    assert deliver(ms, older).status == "skipped"
    assert row(ms, _SUBS, "sub_1").status == "active"
    assert row(ms, _SUBS, "sub_1").last_event_id == newer["id"]
    assert delivery_of(ms, older["id"]).status == "skipped"


def test_replay_cannot_move_an_object_backwards(ms: Metersync, calls: EffectCalls) -> None:
    """Replaying an older delivery is skipped; replaying the last one applied changes
    nothing (the same event id)."""
    old = se.event("customer.updated", se.customer(email="old@example.com"), created=se.T0)
    new = se.event("customer.updated", se.customer(email="new@example.com"), created=se.T0 + 5)
    deliver(ms, old)
    deliver(ms, new)
    assert process.replay(ms, delivery_of(ms, old["id"]).id).status == "skipped"
    assert process.replay(ms, delivery_of(ms, new["id"]).id).status == "skipped"
    assert row(ms, _CUSTOMERS, "cus_123").email == "new@example.com"
    assert delivery_of(ms, old["id"]).attempts == 1


def test_tie_without_refetch_applies_unless_behind_in_the_lifecycle(
    ms: Metersync, calls: EffectCalls
) -> None:
    """Same second, no Stripe key: a later period or a cancellation applies, a step back
    in the lifecycle is skipped, and between equals the later delivery wins."""
    kind = "customer.subscription.updated"
    feb = se.event(kind, se.subscription(period=se.FEB), created=se.T0)
    jan = se.event(kind, se.subscription(period=se.JAN), created=se.T0)
    assert deliver(ms, feb).status == "processed"
    assert deliver(ms, jan).status == "skipped"
    canceled = se.event(kind, se.subscription(status="canceled", period=se.FEB), created=se.T0)
    assert deliver(ms, canceled).status == "processed"
    assert row(ms, _SUBS, "sub_1").status == "canceled"
    first = se.event("customer.updated", se.customer(email="a@example.com"), created=se.T0)
    second = se.event("customer.updated", se.customer(email="b@example.com"), created=se.T0)
    deliver(ms, first)
    assert deliver(ms, second).status == "processed"
    assert row(ms, _CUSTOMERS, "cus_123").email == "b@example.com"


def test_tie_with_refetch_applies_what_stripe_holds(ms: Metersync, calls: EffectCalls) -> None:
    """Same second with a Stripe key: the object is re-read and that copy is applied."""
    asked: list[tuple[str, str]] = []
    fresh = se.subscription(status="past_due", period=se.FEB)

    def refetch(kind: str, obj_id: str) -> dict[str, Any] | None:
        asked.append((kind, obj_id))
        return fresh

    kind = "customer.subscription.updated"
    deliver(ms, se.event(kind, se.subscription(period=se.FEB), created=se.T0), refetch=refetch)
    assert asked == []  # no tie yet: no read
    tie = se.event(kind, se.subscription(period=se.JAN), created=se.T0)
    assert deliver(ms, tie, refetch=refetch).status == "processed"
    assert asked == [("subscription", "sub_1")]
    stored = row(ms, _SUBS, "sub_1")
    assert (stored.status, stored.current_period_start) == ("past_due", utc(se.FEB[0]))
    assert stored.last_event_id == tie["id"]


def test_tie_with_refetch_of_a_gone_object_marks_it_deleted(
    ms: Metersync, calls: EffectCalls
) -> None:
    """When Stripe no longer has the object at a tie, it is mirrored as deleted."""
    deliver(ms, se.event("price.created", se.price("price_g"), created=se.T0))
    tie = se.event("price.updated", se.price("price_g", active=False), created=se.T0)
    assert deliver(ms, tie, refetch=lambda kind, obj_id: None).status == "processed"
    stored = row(ms, table(Price), "price_g")
    assert stored.deleted is True
    assert stored.stripe_meter_id == "mtr_api"  # history kept


def test_sync_object_applies_unless_a_newer_event_was_applied(
    ms: Metersync, calls: EffectCalls
) -> None:
    """metersync sync writes what it read; an event older than the read is then skipped,
    and a read older than an applied event is skipped."""
    read_at = utc(se.T0 + 100)
    result = process.sync_object(ms, se.customer(email="sync@example.com"), read_at=read_at)
    assert (result.delivery_id, result.status) == (0, "processed")
    stored = row(ms, _CUSTOMERS, "cus_123")
    assert (stored.last_event_id, stored.last_event_at) == (None, read_at)
    older = se.event("customer.updated", se.customer(email="old@example.com"), created=se.T0)
    assert deliver(ms, older).status == "skipped"
    deliver(ms, se.event("customer.updated", se.customer(), created=se.T0 + 200))
    stale = process.sync_object(ms, se.customer(email="stale@example.com"), read_at=read_at)
    assert stale.status == "skipped"
    assert row(ms, _CUSTOMERS, "cus_123").email == "billing@example.com"


def test_sync_object_refuses_unmirrored_objects(ms: Metersync, calls: EffectCalls) -> None:
    """sync of an object type the mirror does not know says which ones it knows."""
    with pytest.raises(shapes.MirrorError, match="metersync mirrors customer, subscription"):
        process.sync_object(ms, {"id": "ch_1", "object": "charge"})


# --- failures and replay ------------------------------------------------------------------


def test_failing_handler_counts_attempts_then_fails(
    ms: Metersync, calls: EffectCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error rolls the apply back, keeps the error and counts the attempt; at the
    limit the delivery is failed. A replay after the fix processes it."""

    def broken(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
        ctx.conn.execute(_CUSTOMERS.insert().values(id="cus_half", meta={}))
        raise RuntimeError("handler bug")

    monkeypatch.setitem(router.HANDLERS, "customer.created", broken)
    event = se.event("customer.created", se.customer("cus_f"), created=se.T0)
    delivery_id = deliveries.store(ms.engine, event)
    assert delivery_id is not None
    for attempt, status in ((1, "received"), (2, "failed")):
        with pytest.raises(RuntimeError, match="handler bug"):
            process.process_delivery(ms, delivery_id, max_attempts=2)
        stored = delivery_of(ms, event["id"])
        assert (stored.attempts, stored.status) == (attempt, status)
        assert stored.error == "RuntimeError: handler bug"
    with ms.engine.connect() as conn:
        assert conn.execute(sa.select(_CUSTOMERS.c.id)).all() == []  # rolled back
    monkeypatch.undo()
    fake_effects(monkeypatch)
    result = process.replay(ms, delivery_id)
    assert result.status == "processed"
    stored = delivery_of(ms, event["id"])
    assert (stored.status, stored.attempts, stored.error) == ("processed", 1, None)
    assert row(ms, _CUSTOMERS, "cus_f").email == "billing@example.com"


def test_payload_without_object_fails_at_once(ms: Metersync, calls: EffectCalls) -> None:
    """A mirrored type without data.object can never apply: failed on the first attempt."""
    event = se.event("customer.updated", {}, created=se.T0)
    event["data"] = {}
    with pytest.raises(shapes.MirrorError, match=r"no data\.object"):
        deliver(ms, event)
    stored = delivery_of(ms, event["id"])
    assert (stored.status, stored.attempts) == ("failed", 1)
    assert "no data.object" in stored.error


# --- customers and accounts ---------------------------------------------------------------


def test_customer_metadata_creates_and_links_an_account(ms: Metersync, calls: EffectCalls) -> None:
    """metadata.metersync_account names a new account: it is created, linked, audited."""
    deliver(ms, se.event("customer.created", se.customer("cus_new", account="acme"), created=se.T0))
    acme = ms.accounts.get("acme")
    assert (acme.stripe_customer_id, acme.free) == ("cus_new", False)
    assert row(ms, _CUSTOMERS, "cus_new").account_id == acme.id
    with ms.engine.connect() as conn:
        audit = conn.execute(sa.select(_AUDIT).where(_AUDIT.c.subject == "acme")).one()
    assert (audit.actor, audit.action) == ("stripe", "account.created")


def test_customer_metadata_links_an_unlinked_account(ms: Metersync, calls: EffectCalls) -> None:
    """An existing account without a customer gets the customer that names it."""
    ms.accounts.upsert("beta")
    deliver(ms, se.event("customer.updated", se.customer("cus_b", account="beta"), created=se.T0))
    assert ms.accounts.get("beta").stripe_customer_id == "cus_b"
    assert row(ms, _CUSTOMERS, "cus_b").account_id == account_id(ms, "beta")


def test_customer_never_steals_a_linked_account(ms: Metersync, calls: EffectCalls) -> None:
    """A customer naming an account billed to another customer is mirrored unlinked and
    the refusal is audited; the account keeps its customer."""
    event = se.event("customer.created", se.customer("cus_thief", account="acct_1"), created=se.T0)
    assert deliver(ms, event).status == "processed"
    assert ms.accounts.get("acct_1").stripe_customer_id == "cus_123"
    assert row(ms, _CUSTOMERS, "cus_thief").account_id is None
    with ms.engine.connect() as conn:
        audit = conn.execute(
            sa.select(_AUDIT).where(_AUDIT.c.action == "account.link_refused")
        ).one()
    assert audit.detail["linked_to"] == "cus_123"
    assert audit.detail["stripe_customer_id"] == "cus_thief"


def test_customer_without_metadata_mirrors_and_finds_its_account(
    ms: Metersync, calls: EffectCalls
) -> None:
    """A customer without the metadata is mirrored; the account billed to it is found."""
    deliver(ms, se.event("customer.created", se.customer("cus_123"), created=se.T0))
    assert row(ms, _CUSTOMERS, "cus_123").account_id == account_id(ms)
    deliver(ms, se.event("customer.created", se.customer("cus_none"), created=se.T0))
    assert row(ms, _CUSTOMERS, "cus_none").account_id is None


def test_deleted_customer_keeps_history(ms: Metersync, calls: EffectCalls) -> None:
    """customer.deleted flags the row; the row, its data and the account link stay."""
    deliver(ms, se.event("customer.created", se.customer(), created=se.T0))
    deliver(ms, se.event("customer.deleted", se.customer(), created=se.T0 + 1))
    stored = row(ms, _CUSTOMERS, "cus_123")
    assert (stored.deleted, stored.email, stored.account_id) == (
        True,
        "billing@example.com",
        account_id(ms),
    )
    assert ms.accounts.get("acct_1").stripe_customer_id == "cus_123"


# --- subscriptions and billing periods ----------------------------------------------------


@pytest.mark.parametrize("shape", [se.LEGACY, se.BASIL])
def test_subscription_gives_the_account_its_billing_period(
    ms: Metersync, calls: EffectCalls, shape: se.Shape
) -> None:
    """The period on the subscription (legacy) or its items (basil) becomes the
    account's billing period, which get_usage uses at once."""
    ms.get_usage("acct_1")  # caches "no period" in this process
    now = int(time.time())
    current = (now - 5 * se.DAY, now + 25 * se.DAY)
    sub = se.subscription(shape=shape, period=current)
    deliver(ms, se.event("customer.subscription.created", sub, created=now))
    expected = (utc(current[0]), utc(current[1]))
    assert periods(ms) == [(*expected, "stripe:sub_1")]
    assert calls.periods == [(account_id(ms), expected, None)]
    items = {r.id: r for r in _all(ms, _ITEMS)}
    assert items["si_api"].stripe_meter_id == "mtr_api"
    usage = ms.get_usage("acct_1")  # no stale cached copy of the periods
    assert (usage.period_start, usage.period_end) == expected


def test_new_period_calls_period_started_once_with_the_previous(
    ms: Metersync, calls: EffectCalls
) -> None:
    """A renewal stores the next period and calls period_started after storing it; the
    same period again calls nothing; an older period is not stored."""
    kind = "customer.subscription.updated"
    deliver(ms, se.event(kind, se.subscription(period=se.JAN), created=se.T0))
    deliver(ms, se.event(kind, se.subscription(period=se.FEB), created=se.T0 + 10))
    deliver(ms, se.event(kind, se.subscription(period=se.FEB), created=se.T0 + 20))
    jan, feb = (utc(se.JAN[0]), utc(se.JAN[1])), (utc(se.FEB[0]), utc(se.FEB[1]))
    assert calls.periods == [(account_id(ms), jan, None), (account_id(ms), feb, jan)]
    assert [p[:2] for p in periods(ms)] == [jan, feb]


def test_anchor_reset_trims_the_overlapped_period(ms: Metersync, calls: EffectCalls) -> None:
    """A period starting inside the known one (billing anchor reset) cuts it short."""
    mid = (se.JAN[0] + 14 * se.DAY, se.JAN[0] + 45 * se.DAY)
    kind = "customer.subscription.updated"
    deliver(ms, se.event(kind, se.subscription(period=se.JAN), created=se.T0))
    deliver(ms, se.event(kind, se.subscription(period=mid), created=se.T0 + 10))
    assert [p[:2] for p in periods(ms)] == [
        (utc(se.JAN[0]), utc(mid[0])),
        (utc(mid[0]), utc(mid[1])),
    ]
    assert calls.periods[-1][2] == (utc(se.JAN[0]), utc(se.JAN[1]))


@pytest.mark.parametrize("status", ["canceled", "incomplete_expired"])
def test_ended_subscription_sets_no_period(ms: Metersync, calls: EffectCalls, status: str) -> None:
    """Canceled subscriptions are mirrored but give no billing period."""
    obj = se.subscription(status=status, canceled_at=se.T0)
    deliver(ms, se.event("customer.subscription.deleted", obj, created=se.T0))
    assert periods(ms) == []
    assert calls.periods == []
    assert row(ms, _SUBS, "sub_1").deleted is True


def test_subscription_before_its_customer_link_sets_the_period_at_linking(
    ms: Metersync, calls: EffectCalls
) -> None:
    """A subscription of a not-yet-linked customer sets its period when the customer
    event links the account."""
    sub = se.subscription("sub_z", customer_id="cus_z")
    deliver(ms, se.event("customer.subscription.created", sub, created=se.T0))
    assert calls.periods == []
    deliver(ms, se.event("customer.created", se.customer("cus_z", account="zed"), created=se.T0))
    jan = (utc(se.JAN[0]), utc(se.JAN[1]))
    assert periods(ms, "zed") == [(*jan, "stripe:sub_z")]
    assert calls.periods == [(account_id(ms, "zed"), jan, None)]


def test_items_no_longer_listed_are_marked_deleted(ms: Metersync, calls: EffectCalls) -> None:
    """A complete item list replaces the set (dropped items kept, flagged deleted); a cut
    list (has_more) deletes nothing."""
    seat = se.item("si_seat", price_obj=se.price("price_seat", usage_type="licensed"))
    kind = "customer.subscription.updated"
    deliver(ms, se.event(kind, se.subscription(items=[se.item(), seat]), created=se.T0))
    cut = se.subscription(items=[se.item()], has_more=True)
    deliver(ms, se.event(kind, cut, created=se.T0 + 1))
    assert {r.id: r.deleted for r in _all(ms, _ITEMS)} == {"si_api": False, "si_seat": False}
    deliver(ms, se.event(kind, se.subscription(items=[se.item()]), created=se.T0 + 2))
    assert {r.id: r.deleted for r in _all(ms, _ITEMS)} == {"si_api": False, "si_seat": True}


def test_deleted_stub_of_an_unknown_subscription_is_stored_deleted(
    ms: Metersync, calls: EffectCalls
) -> None:
    """The first news of an object being its deletion still records it, so an older
    event arriving later cannot bring it back."""
    deliver(
        ms,
        se.event(
            "customer.subscription.deleted", se.deleted("subscription", "sub_d"), created=se.T0 + 5
        ),
    )
    late = se.event("customer.subscription.created", se.subscription("sub_d"), created=se.T0)
    assert deliver(ms, late).status == "skipped"
    assert row(ms, _SUBS, "sub_d").deleted is True
    assert calls.periods == []


# --- invoices -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [se.LEGACY, se.BASIL])
def test_cycle_draft_invoice_stores_lines_and_asks_for_the_flush_once(
    ms: Metersync, calls: EffectCalls, shape: se.Shape
) -> None:
    """A cycle's draft is stored with its lines, then invoice_drafted is called; once
    flushed_at is set, later drafts of it call nothing."""
    deliver(ms, se.event("price.created", se.price(), created=se.T0))
    deliver(ms, se.event("invoice.created", se.invoice(shape=shape), created=se.T0 + 1))
    assert calls.invoices == ["in_1"]
    (line,) = _all(ms, _LINES)
    assert (line.invoice_id, line.price_id, line.stripe_meter_id) == (
        "in_1",
        "price_api",
        "mtr_api",
    )
    assert (line.quantity, line.amount) == (Decimal(1200), 2400)
    with ms.engine.begin() as conn:
        conn.execute(_INVOICES.update().values(flushed_at=utc(se.T0 + 2)))
    deliver(ms, se.event("invoice.updated", se.invoice(shape=shape), created=se.T0 + 3))
    assert calls.invoices == ["in_1"]
    assert row(ms, _INVOICES, "in_1").flushed_at == utc(se.T0 + 2)  # the mirror keeps it


def test_other_invoices_do_not_ask_for_a_flush(ms: Metersync, calls: EffectCalls) -> None:
    """Manual drafts and finalized cycle invoices do not call invoice_drafted."""
    deliver(
        ms, se.event("invoice.created", se.invoice("in_m", billing_reason="manual"), created=se.T0)
    )
    deliver(ms, se.event("invoice.finalized", se.invoice("in_o", status="open"), created=se.T0))
    assert calls.invoices == []


def test_basil_line_meter_comes_from_the_mirrored_item(ms: Metersync, calls: EffectCalls) -> None:
    """A basil line names no meter; the mirrored subscription item supplies it."""
    deliver(ms, se.event("customer.subscription.created", se.subscription(), created=se.T0))
    deliver(ms, se.event("invoice.created", se.invoice(), created=se.T0 + 1))
    assert [r.stripe_meter_id for r in _all(ms, _LINES)] == ["mtr_api"]


def test_invoice_lines_are_replaced_and_status_moves_on(ms: Metersync, calls: EffectCalls) -> None:
    """A later version of an invoice replaces its lines and status; a voided draft
    deleted later is flagged, lines kept."""
    two = [se.line("il_a"), se.line("il_b", quantity=5)]
    deliver(ms, se.event("invoice.created", se.invoice(lines=two), created=se.T0))
    one = [se.line("il_b", quantity=7)]
    deliver(
        ms, se.event("invoice.finalized", se.invoice(status="open", lines=one), created=se.T0 + 1)
    )
    assert [(r.id, r.quantity) for r in _all(ms, _LINES)] == [("il_b", Decimal(7))]
    assert row(ms, _INVOICES, "in_1").status == "open"
    deliver(ms, se.event("invoice.deleted", se.deleted("invoice", "in_1"), created=se.T0 + 2))
    stored = row(ms, _INVOICES, "in_1")
    assert (stored.deleted, stored.status) == (True, "open")
    assert len(_all(ms, _LINES)) == 1


def test_price_event_without_tiers_keeps_stored_tiers(ms: Metersync, calls: EffectCalls) -> None:
    """Webhook payloads leave tiers out; tiers read by sync survive a price.updated."""
    tiers = [se.tier(100, unit=0), se.tier(None, unit=3)]
    process.sync_object(ms, se.price("price_t", tiers=tiers), read_at=utc(se.T0))
    plain = se.price("price_t", tiers=tiers)
    del plain["tiers"]
    deliver(ms, se.event("price.updated", plain | {"active": False}, created=se.T0 + 1))
    stored = row(ms, table(Price), "price_t")
    assert (stored.active, stored.tiers) == (False, tiers)


def _all(ms: Metersync, t: sa.Table) -> list[Any]:
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(t).order_by(t.c.id)).all())


def test_renewal_with_the_real_effects_queues_the_old_periods_report(ms: Metersync) -> None:
    """End to end with the real usage effects: a renewal closes the old period's open
    report and process_delivery hands it back to be pushed."""
    clear_mirror(ms.engine)
    now = int(time.time())
    old, new = (now - 10 * se.DAY, now - 3600), (now - 3600, now + 29 * se.DAY)
    kind = "customer.subscription.updated"
    deliver(ms, se.event(kind, se.subscription(period=old), created=now - 7200))
    receipt = ms.increment("acct_1", 5, meter="api_calls", timestamp=now - 5400)
    result = deliver(ms, se.event(kind, se.subscription(period=new), created=now - 60))
    assert result.status == "processed"
    assert receipt.report_id in result.to_push
    status = next(r.status for r in ms.reports() if r.id == receipt.report_id)
    assert status == "closed"
