"""The mirror's pure parts: each resource's ``to_row`` on both API shapes and on deleted
objects, the router table, the tie ranks and the stored error text."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from adapter.mirror import (
    alerts,
    customers,
    invoices,
    meters,
    prices,
    process,
    router,
    shapes,
    subscriptions,
)
from tests import stripe_events as se


def utc(ts: int) -> datetime:
    """A unix timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC)


# --- shapes -------------------------------------------------------------------------------


def test_timestamp_reads_unix_seconds_and_refuses_the_rest() -> None:
    """Unix seconds become aware UTC datetimes; null, booleans and strings become None."""
    assert shapes.timestamp(se.T0) == datetime(2026, 1, 1, tzinfo=UTC)
    assert [shapes.timestamp(v) for v in (None, True, "1767225600")] == [None, None, None]


def test_ref_reads_an_id_or_an_expanded_object() -> None:
    """An expandable field gives its id whether it is a string or an expanded object."""
    assert shapes.ref("cus_1") == "cus_1"
    assert shapes.ref({"id": "cus_2", "object": "customer"}) == "cus_2"
    assert [shapes.ref(v) for v in (None, "", {}, 7)] == [None, None, None, None]


def test_listed_says_whether_a_list_is_complete() -> None:
    """A list with has_more is cut (webhook payloads may be); a missing list is too."""
    assert shapes.listed({"items": {"data": [{"id": "a"}], "has_more": False}}, "items") == (
        [{"id": "a"}],
        True,
    )
    assert shapes.listed({"items": {"data": [], "has_more": True}}, "items") == ([], False)
    assert shapes.listed({}, "items") == ([], False)


def test_decimal_reads_ints_and_decimal_strings_only() -> None:
    """Quantities come as ints or decimal strings; floats, NaN and junk are refused."""
    assert shapes.decimal(12) == Decimal(12)
    assert shapes.decimal("0.125") == Decimal("0.125")
    assert [shapes.decimal(v) for v in (1.5, "NaN", "x", True, None)] == [None] * 5


def test_object_without_id_is_a_mirror_error() -> None:
    """A payload object with no id cannot be mirrored and says so."""
    with pytest.raises(shapes.MirrorError, match="subscription in this event has no id"):
        shapes.object_id({"object": "subscription"})


# --- customers ----------------------------------------------------------------------------


def test_customer_row() -> None:
    """A customer gives its id, created, email, name and metadata."""
    row = customers.to_row(se.customer("cus_9", account="acme", metadata={"plan": "pro"}))
    assert row == {
        "id": "cus_9",
        "livemode": False,
        "created": utc(se.T0 - 30 * se.DAY),
        "meta": {"plan": "pro", "metersync_account": "acme"},
        "deleted": False,
        "email": "billing@example.com",
        "name": "Example Ltd",
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("acme", "acme"), ("", None), (" acme", None), ("a" * 256, None), (7, None)],
)
def test_linked_name_accepts_only_usable_account_names(value: object, expected: str | None) -> None:
    """metadata.metersync_account links only when it is a valid account name."""
    obj = se.customer()
    obj["metadata"]["metersync_account"] = value
    assert customers.linked_name(obj) == expected


def test_deleted_stub_gives_only_id_and_flag() -> None:
    """Stripe's deleted-object reply marks the row deleted and overwrites nothing else."""
    for module, kind in (
        (customers, "customer"),
        (subscriptions, "subscription"),
        (invoices, "invoice"),
        (prices, "price"),
        (meters, "billing.meter"),
    ):
        assert module.to_row(se.deleted(kind, "x_1")) == {"id": "x_1", "deleted": True}


def test_deletion_events_flag_full_payloads() -> None:
    """A *.deleted event marks the row deleted even though its payload is the full object."""
    obj = se.customer()
    assert customers.RESOURCE.row(obj, kind="customer.deleted")["deleted"] is True
    assert customers.RESOURCE.row(obj, kind="customer.updated")["deleted"] is False
    assert customers.RESOURCE.row(obj, kind="sync")["deleted"] is False


# --- subscriptions ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [se.LEGACY, se.BASIL])
def test_subscription_row_on_both_shapes(shape: se.Shape) -> None:
    """Both shapes give the same row: customer, status and the current period, whether
    the period sits on the subscription (legacy) or on its items (basil)."""
    row = subscriptions.to_row(se.subscription("sub_7", status="past_due", shape=shape))
    assert row["id"] == "sub_7"
    assert row["customer_id"] == "cus_123"
    assert row["status"] == "past_due"
    assert (row["current_period_start"], row["current_period_end"]) == (
        utc(se.JAN[0]),
        utc(se.JAN[1]),
    )
    assert row["cancel_at_period_end"] is False
    assert row["canceled_at"] is None


def test_subscription_with_expanded_customer() -> None:
    """An expanded customer object still gives the customer id."""
    obj = se.subscription()
    obj["customer"] = se.customer("cus_x")
    assert subscriptions.to_row(obj)["customer_id"] == "cus_x"


def test_item_period_of_metered_items_wins_when_items_disagree() -> None:
    """With items on different periods, the metered items' period is the usage period."""
    licensed = se.item(
        "si_seat", price_obj=se.price("price_seat", usage_type="licensed"), period=se.FEB
    )
    metered = se.item("si_api", period=se.JAN)
    obj = se.subscription(items=[licensed, metered])
    assert subscriptions.usage_period(obj) == (utc(se.JAN[0]), utc(se.JAN[1]))


def test_usage_period_falls_back_to_any_item_without_metered_items() -> None:
    """A subscription with only licensed items still has a period (the latest item's)."""
    seat = se.item("si_seat", price_obj=se.price("price_seat", usage_type="licensed"))
    obj = se.subscription(items=[seat])
    assert subscriptions.usage_period(obj) == (utc(se.JAN[0]), utc(se.JAN[1]))
    assert subscriptions.sets_periods(subscriptions.to_row(obj), obj) is False


@pytest.mark.parametrize(
    ("status", "deleted", "expected"),
    [
        ("active", False, True),
        ("trialing", False, True),
        ("past_due", False, True),
        ("canceled", False, False),
        ("incomplete_expired", False, False),
        ("paused", False, False),
        ("active", True, False),
    ],
)
def test_only_live_metered_subscriptions_set_periods(
    status: str, deleted: bool, expected: bool
) -> None:
    """Live subscriptions with a metered item set billing periods; ended ones do not."""
    obj = se.subscription(status=status)
    row = subscriptions.to_row(obj) | {"deleted": deleted}
    assert subscriptions.sets_periods(row, obj) is expected


@pytest.mark.parametrize("shape", [se.LEGACY, se.BASIL])
def test_item_rows_on_both_shapes(shape: se.Shape) -> None:
    """Items give price, the price's meter and quantity; basil items carry the period."""
    seat = se.item(
        "si_seat", price_obj=se.price("price_seat", usage_type="licensed"), quantity=3, shape=shape
    )
    obj = se.subscription("sub_1", items=[se.item("si_api", shape=shape), seat], shape=shape)
    rows = {r["id"]: r for r in subscriptions.item_rows(obj)}
    assert rows["si_api"]["subscription_id"] == "sub_1"
    assert rows["si_api"]["price_id"] == "price_api"
    assert rows["si_api"]["stripe_meter_id"] == "mtr_api"
    assert rows["si_api"]["quantity"] is None
    assert rows["si_seat"]["stripe_meter_id"] is None
    assert rows["si_seat"]["quantity"] == 3
    period = (rows["si_api"]["current_period_start"], rows["si_api"]["current_period_end"])
    expected = (utc(se.JAN[0]), utc(se.JAN[1])) if shape == se.BASIL else (None, None)
    assert period == expected


def test_subscription_rank_orders_the_lifecycle() -> None:
    """For ties: deleted > ended > later period > earlier period."""
    jan = subscriptions.to_row(se.subscription(period=se.JAN))
    feb = subscriptions.to_row(se.subscription(period=se.FEB))
    canceled = subscriptions.to_row(se.subscription(status="canceled", period=se.JAN))
    stub = subscriptions.to_row(se.deleted("subscription", "sub_1"))
    ranks = [subscriptions.rank(r) for r in (jan, feb, canceled, stub)]
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 4


# --- invoices -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [se.LEGACY, se.BASIL])
def test_invoice_row_on_both_shapes(shape: se.Shape) -> None:
    """Both shapes give the subscription id, status, reason, period and total."""
    row = invoices.to_row(se.invoice("in_5", status="open", shape=shape))
    assert row["subscription_id"] == "sub_1"
    assert row["customer_id"] == "cus_123"
    assert (row["status"], row["billing_reason"], row["currency"]) == (
        "open",
        "subscription_cycle",
        "usd",
    )
    assert (row["period_start"], row["period_end"]) == (utc(se.JAN[0]), utc(se.JAN[1]))
    assert row["total"] == 2400
    assert "flushed_at" not in row


def test_one_off_invoice_has_no_subscription() -> None:
    """An invoice without a parent subscription mirrors with subscription_id None."""
    row = invoices.to_row(se.invoice(subscription_id=None, billing_reason="manual"))
    assert row["subscription_id"] is None


@pytest.mark.parametrize("shape", [se.LEGACY, se.BASIL])
def test_line_rows_on_both_shapes(shape: se.Shape) -> None:
    """Lines give price, subscription item, period, quantity and amount in both shapes;
    only the legacy shape carries the meter (basil lines get it from the mirror)."""
    obj = se.invoice("in_5", lines=[se.line("il_1", invoice_id="in_5", shape=shape)])
    (row,) = invoices.line_rows(obj)
    assert row["invoice_id"] == "in_5"
    assert row["price_id"] == "price_api"
    assert row["subscription_item_id"] == "si_api"
    assert (row["period_start"], row["period_end"]) == (utc(se.JAN[0]), utc(se.JAN[1]))
    assert row["quantity"] == Decimal(1200)
    assert row["amount"] == 2400
    assert row["stripe_meter_id"] == ("mtr_api" if shape == se.LEGACY else None)


def test_line_quantity_decimal_wins_over_truncated_quantity() -> None:
    """quantity_decimal keeps the fraction that the integer quantity truncates."""
    raw = se.line(quantity=3)
    raw["quantity_decimal"] = "3.25"
    (row,) = invoices.line_rows(se.invoice(lines=[raw]))
    assert row["quantity"] == Decimal("3.25")


def test_invoice_rank_orders_the_lifecycle() -> None:
    """For ties: draft < open < uncollectible < paid, and deleted beats all."""
    statuses = ["draft", "open", "uncollectible", "paid"]
    ranks = [invoices.rank({"status": s, "deleted": False}) for s in statuses]
    ranks.append(invoices.rank({"status": "draft", "deleted": True}))
    assert ranks == sorted(ranks)
    assert len(set(ranks)) == 5


@pytest.mark.parametrize(
    ("status", "reason", "flushed", "expected"),
    [
        ("draft", "subscription_cycle", None, True),
        ("draft", "subscription_cycle", datetime(2026, 2, 1, tzinfo=UTC), False),
        ("open", "subscription_cycle", None, False),
        ("draft", "manual", None, False),
    ],
)
def test_drafted_is_a_cycle_draft_not_flushed_yet(
    status: str, reason: str, flushed: datetime | None, expected: bool
) -> None:
    """Only an unflushed subscription-cycle draft asks for the final flush."""
    row = {"deleted": False, "status": status, "billing_reason": reason, "flushed_at": flushed}
    assert invoices.drafted(row) is expected


# --- prices and meters --------------------------------------------------------------------


def test_metered_price_row() -> None:
    """A metered price gives its meter, usage type, interval and amounts."""
    row = prices.to_row(se.price("price_api"))
    assert row["stripe_meter_id"] == "mtr_api"
    assert (row["usage_type"], row["interval"], row["billing_scheme"]) == (
        "metered",
        "month",
        "per_unit",
    )
    assert (row["unit_amount"], row["unit_amount_decimal"]) == (2, "2")
    assert row["product_id"] == "prod_api"
    assert "tiers" not in row  # a webhook payload never carries tiers: keep stored ones


def test_tiered_price_row_keeps_tiers() -> None:
    """Expanded tiers are stored as Stripe gives them, with the tiers mode."""
    tiers = [se.tier(1000, unit=0), se.tier(None, unit=1, flat=500)]
    row = prices.to_row(se.price(tiers=tiers, tiers_mode="volume"))
    assert row["billing_scheme"] == "tiered"
    assert row["tiers_mode"] == "volume"
    assert row["tiers"] == tiers


def test_price_row_keeps_nickname_and_custom_unit_amount() -> None:
    """The nickname and a pay-what-you-want price's bounds are stored as Stripe sent them."""
    custom = {"maximum": 10_000, "minimum": 500, "preset": None}
    row = prices.to_row(se.price() | {"nickname": "API calls", "custom_unit_amount": custom})
    assert (row["nickname"], row["custom_unit_amount"]) == ("API calls", custom)
    plain = prices.to_row(se.price())
    assert (plain["nickname"], plain["custom_unit_amount"]) == (None, None)


@pytest.mark.parametrize(
    ("price", "kind", "lacking"),
    [
        ({"billing_scheme": "tiered"}, "price.updated", True),
        ({"billing_scheme": "tiered", "tiers": []}, "price.updated", False),
        ({"billing_scheme": "per_unit"}, "price.updated", False),
        ({"billing_scheme": "tiered"}, "price.deleted", False),
        ({"billing_scheme": "tiered", "deleted": True}, "sync", False),
    ],
)
def test_only_a_live_tiered_price_without_tiers_lacks_them(
    price: dict[str, object], kind: str, lacking: bool
) -> None:
    """A refetch is wanted only for a live tiered price whose payload left tiers out."""
    assert prices.lacks_tiers({"id": "price_1", "object": "price", **price}, kind=kind) is lacking


def test_meter_row() -> None:
    """A billing meter gives event name, formula, payload keys and status."""
    row = meters.to_row(se.meter(formula="last", status="inactive", value_key="n"))
    assert {k: row[k] for k in ("event_name", "formula", "status", "customer_key")} == {
        "event_name": "api_calls",
        "formula": "last",
        "status": "inactive",
        "customer_key": "stripe_customer_id",
    }
    assert row["value_key"] == "n"
    assert row["meta"] == {}


# --- router and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "handler"),
    [
        ("customer.created", customers.apply),
        ("customer.deleted", customers.apply),
        ("customer.subscription.trial_will_end", subscriptions.apply),
        ("customer.subscription.pending_update_expired", subscriptions.apply),
        ("invoice.marked_uncollectible", invoices.apply),
        ("invoice.deleted", invoices.apply),
        ("price.deleted", prices.apply),
        ("billing.meter.reactivated", meters.apply),
        ("billing.alert.triggered", alerts.apply),
    ],
)
def test_router_table(kind: str, handler: object) -> None:
    """Each mirrored event type routes to its resource's apply."""
    assert router.HANDLERS[kind] is handler


@pytest.mark.parametrize("kind", ["invoice.upcoming", "charge.succeeded", "payout.paid"])
def test_router_ignores_other_types(kind: str) -> None:
    """Types metersync does not mirror (invoice.upcoming has no id) are not handled."""
    assert not router.handles(kind)


def test_every_object_type_of_sync_has_a_handler() -> None:
    """metersync sync can apply each mirrored object type."""
    assert set(router.OBJECT_HANDLERS) == {
        "customer",
        "subscription",
        "invoice",
        "price",
        "billing.meter",
    }


def test_describe_hides_sql_parameters_and_secrets() -> None:
    """A stored error names the failure without SQL, bound values or Stripe secrets."""
    orig = ValueError("duplicate key value\nDETAIL: Key (id)=(x) exists")
    exc = sa.exc.IntegrityError("INSERT INTO t VALUES (%(secret)s)", {"secret": "s3"}, orig)
    assert process.describe(exc) == "ValueError: duplicate key value"
    leaked = process.describe(RuntimeError("bad key sk_live_abcDEF123 and whsec_zzz"))
    assert "abcDEF123" not in leaked
    assert "zzz" not in leaked
    assert process.describe(RuntimeError("x" * 2000)).startswith("RuntimeError: xxx")
    assert len(process.describe(RuntimeError("x" * 2000))) == process.ERROR_LIMIT
