"""Subscriptions, their items, and the billing periods they give accounts.

Both payload shapes are read: before API version 2025-03-31 the current period sits on the
subscription, since ``2025-03-31.basil`` on each item. The period that matters to
metersync is the one of the *metered* items (prices with ``recurring.meter``: the meters
metersync reports to), so:

- the subscription row's ``current_period_*`` hold that usage period: the metered items'
  (the latest-starting one if they disagree, as under flexible billing), else the
  subscription's own (older shape), else the latest-starting item's;
- only a live subscription (``active``, ``trialing``, ``past_due``, ``unpaid``,
  ``incomplete``) with at least one metered item sets its customer's account's billing
  period. A subscription without metered items bills nothing metersync sends, and a
  customer may hold one on another cycle (Stripe puts different intervals in different
  subscriptions): letting it set periods would cut usage at the wrong boundaries.
- periods only move forward: a period starting before the account's latest known one is
  not stored (it can only come from a second, stale subscription).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from adapter.domain.windows import Period
from adapter.mirror import ordering, shapes
from adapter.mirror.context import Apply
from adapter.store import periods
from adapter.store.mirror_models import Subscription, SubscriptionItem
from adapter.store.models import Account, BillingPeriod, table, utcnow

SUBSCRIPTIONS, ITEMS, _ACCOUNTS = table(Subscription), table(SubscriptionItem), table(Account)
_PERIODS = table(BillingPeriod)
#: Statuses whose current period is a billing period of the customer.
PERIOD_STATUSES = frozenset({"active", "trialing", "past_due", "unpaid", "incomplete"})
#: Statuses a subscription never leaves.
FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})
_NEVER = datetime.min.replace(tzinfo=UTC)


def to_row(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``subscription`` columns; ``current_period_*`` is the usage period (above)."""
    row = shapes.base_row(obj)
    if shapes.is_stub(obj):
        return row
    start, end = usage_period(obj) or (None, None)
    return row | {
        "customer_id": shapes.ref(obj.get("customer")) or "",
        "status": shapes.text(obj.get("status"), limit=32) or "unknown",
        "current_period_start": start,
        "current_period_end": end,
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end", False)),
        "canceled_at": shapes.timestamp(obj.get("canceled_at")),
    }


def item_rows(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``subscription_item`` columns of each item listed in the subscription."""
    items, _complete = shapes.listed(obj, "items")
    return [
        shapes.base_row(item)
        | {
            "livemode": bool(obj.get("livemode", False)),
            "subscription_id": obj["id"],
            "price_id": shapes.ref(item.get("price")) or shapes.ref(item.get("plan")),
            "stripe_meter_id": meter_of(item),
            "quantity": shapes.integer(item.get("quantity")),
            "current_period_start": shapes.timestamp(item.get("current_period_start")),
            "current_period_end": shapes.timestamp(item.get("current_period_end")),
        }
        for item in items
    ]


def meter_of(item: dict[str, Any]) -> str | None:
    """The Stripe meter an item's price reports to (``price.recurring.meter``)."""
    found = shapes.dig(item, "price", "recurring", "meter") or shapes.dig(item, "plan", "meter")
    return found if isinstance(found, str) and found else None


def usage_period(obj: dict[str, Any]) -> Period | None:
    """The subscription's current usage period (see the module docstring)."""
    items, _complete = shapes.listed(obj, "items")
    metered = [p for i in items if meter_of(i) and (p := _period_of(i)) is not None]
    if metered:
        return max(metered)
    own = _period_of(obj)
    if own is not None:
        return own
    found = [p for i in items if (p := _period_of(i)) is not None]
    return max(found) if found else None


def _period_of(obj: dict[str, Any]) -> Period | None:
    start = shapes.timestamp(obj.get("current_period_start"))
    end = shapes.timestamp(obj.get("current_period_end"))
    return (start, end) if start is not None and end is not None and end > start else None


def rank(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Lifecycle order for same-second ties: deleted, then ended, then later periods."""
    return (
        bool(row.get("deleted")),
        row.get("status") in FINAL_STATUSES,
        row.get("current_period_start") or _NEVER,
    )


RESOURCE = ordering.Resource(
    SUBSCRIPTIONS, "subscription", to_row, rank, {"customer_id": "", "status": "deleted"}
)


#: The oldest account billed to ``:customer_id``.
_ACCOUNT_FOR = (
    sa.select(_ACCOUNTS.c.id)
    .where(_ACCOUNTS.c.stripe_customer_id == sa.bindparam("customer_id"))
    .order_by(_ACCOUNTS.c.id)
    .limit(1)
)
_LATEST = (
    sa.select(_PERIODS.c.period_start, _PERIODS.c.period_end)
    .where(_PERIODS.c.account_id == _ACCOUNTS.c.id)
    .order_by(_PERIODS.c.period_start.desc())
    .limit(1)
)
#: That account and its latest known period (``periods.latest_period``), in one read.
_BILLED_ACCOUNT = _ACCOUNT_FOR.add_columns(
    _LATEST.with_only_columns(_PERIODS.c.period_start).scalar_subquery().label("start"),
    _LATEST.with_only_columns(_PERIODS.c.period_end).scalar_subquery().label("end"),
)
_STAMP = ("last_event_id", "last_event_at", "updated_at")


def apply(ctx: Apply, obj: dict[str, Any], *, kind: str) -> str:
    """Mirror a subscription and its items; give its account the current period."""
    applied = ordering.apply_object(ctx, RESOURCE, obj, kind=kind)
    if applied is None:
        return "skipped"
    admitted, row = applied.obj, applied.row
    _replace_items(ctx, admitted)
    period = usage_period(admitted)
    if period is not None and sets_periods(row, admitted):
        billed = _billed_account(ctx.conn, row["customer_id"])
        if billed is not None:
            account_id, latest = billed
            _store_after(ctx, account_id, period, latest, source=f"stripe:{row['id']}")
    return "processed"


def sets_periods(row: dict[str, Any], obj: dict[str, Any]) -> bool:
    """Does this subscription give its customer's account billing periods?"""
    items, _complete = shapes.listed(obj, "items")
    live = not row["deleted"] and row.get("status") in PERIOD_STATUSES
    return live and any(meter_of(i) for i in items)


def _replace_items(ctx: Apply, obj: dict[str, Any]) -> None:
    """Upsert the listed items; mark the subscription's other items deleted when the
    list is complete (a cut list, ``has_more``, says nothing about the rest)."""
    stamp = {"last_event_id": ctx.event_id, "last_event_at": ctx.event_at, "updated_at": utcnow()}
    rows = [] if shapes.is_stub(obj) else [r | stamp for r in item_rows(obj)]
    ordering.upsert_many(ctx.conn, ITEMS, rows)
    _items, complete = shapes.listed(obj, "items")
    if complete or shapes.is_stub(obj):
        keep = {f"keep_{n}": r["id"] for n, r in enumerate(rows)}
        ctx.conn.execute(
            _retire_items(len(keep)),
            {"of_subscription": obj["id"], **keep, **{f"stamp_{k}": v for k, v in stamp.items()}},
        )


@functools.cache
def _retire_items(keep: int) -> sa.Update:
    """Marks a subscription's live items deleted, but for ``keep`` listed ids (built once
    per count: building a statement costs more than running it)."""
    stamps = {c: sa.bindparam(f"stamp_{c}", type_=ITEMS.c[c].type) for c in _STAMP}
    kept = [sa.bindparam(f"keep_{n}", type_=ITEMS.c.id.type) for n in range(keep)]
    return (
        ITEMS.update()
        .where(ITEMS.c.subscription_id == sa.bindparam("of_subscription"))
        .where(ITEMS.c.deleted.is_(False), *([ITEMS.c.id.not_in(kept)] if kept else []))
        .values(deleted=True, **stamps)
    )


def account_for(conn: sa.Connection, customer_id: str) -> int | None:
    """The local account billed to ``customer_id`` (the oldest, if several are)."""
    if not customer_id:
        return None
    found: int | None = conn.execute(_ACCOUNT_FOR, {"customer_id": customer_id}).scalar()
    return found


def store_usage_period(ctx: Apply, account_id: int, period: Period, *, source: str) -> None:
    """Store ``period`` for the account; when it starts a new period, tell the usage
    effects (``effects.period_started``) once it is stored."""
    latest = periods.latest_period(ctx.conn, account_id)
    _store_after(ctx, account_id, period, latest, source=source)


def _store_after(
    ctx: Apply, account_id: int, period: Period, latest: Period | None, *, source: str
) -> None:
    """:func:`store_usage_period`, given the account's latest period read on ``ctx.conn``."""
    if latest is not None and (period[0] < latest[0] or period == latest):
        return
    periods.replace_period(ctx.conn, account_id, *period, source=source)
    # Readers of the cache on this transaction (the effects) must see the new period;
    # process.py forgets again after commit for everyone else.
    ctx.ms.periods.forget([account_id])
    if latest is None or latest[0] != period[0]:
        effects().period_started(ctx, account_id=account_id, period=period, previous=latest)


def _billed_account(conn: sa.Connection, customer_id: str) -> tuple[int, Period | None] | None:
    """:func:`account_for` and that account's latest known period, in one read."""
    if not customer_id:
        return None
    found = conn.execute(_BILLED_ACCOUNT, {"customer_id": customer_id}).first()
    if found is None:
        return None
    latest = None if found.start is None else (found.start, found.end)
    return int(found.id), latest


def periods_for_customer(ctx: Apply, *, customer_id: str, account_id: int) -> None:
    """Give a newly linked account the period of its customer's mirrored subscriptions."""
    metered = (
        sa.select(ITEMS.c.id)
        .where(ITEMS.c.subscription_id == SUBSCRIPTIONS.c.id, ITEMS.c.deleted.is_(False))
        .where(ITEMS.c.stripe_meter_id.is_not(None))
    )
    row = ctx.conn.execute(
        sa.select(SUBSCRIPTIONS.c.id, SUBSCRIPTIONS.c.current_period_start.label("start"))
        .add_columns(SUBSCRIPTIONS.c.current_period_end.label("end"))
        .where(SUBSCRIPTIONS.c.customer_id == customer_id, SUBSCRIPTIONS.c.deleted.is_(False))
        .where(SUBSCRIPTIONS.c.status.in_(PERIOD_STATUSES), metered.exists())
        .where(SUBSCRIPTIONS.c.current_period_start.is_not(None))
        .order_by(SUBSCRIPTIONS.c.current_period_start.desc())
        .limit(1)
    ).first()
    if row is not None and row.end is not None:
        store_usage_period(ctx, account_id, (row.start, row.end), source=f"stripe:{row.id}")


def effects() -> ModuleType:
    """The usage effects module, looked up at call time so tests can observe it."""
    return importlib.import_module("adapter.mirror.effects")
