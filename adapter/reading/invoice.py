"""Assemble an account's invoice preview from the mirror and the usage reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from adapter.errors import NoSubscription
from adapter.reading.preview import InvoicePreview, PreviewLine, base_fee_line, metered_line
from adapter.reading.pricing import meter_prices
from adapter.reading.usage import read_usage
from adapter.store.catalog import AccountInfo, MeterInfo
from adapter.store.credits import drawn_for_period
from adapter.store.periods import Periods, period_now
from adapter.store.prices import PricedItem, account_items


def preview_invoice(  # noqa: PLR0913  keyword-only inputs, each its own fact
    conn: sa.Connection,
    *,
    account: AccountInfo,
    meters: Sequence[MeterInfo],
    allowances: Mapping[str, Decimal],
    periods: Periods,
    now: datetime,
    subscription: str | None = None,
) -> InvoicePreview:
    """The current period's invoice of ``subscription`` (default: the account's newest
    subscription Stripe still bills), rated locally."""
    items = account_items(conn, account.id)
    if subscription is not None:
        items = [i for i in items if i.subscription_id == subscription]
    if not items:
        raise NoSubscription(_no_subscription(account, subscription))
    chosen = items[0].subscription_id
    items = [i for i in items if i.subscription_id == chosen]
    start, end, source = _period(conn, items, account=account, periods=periods, now=now)
    usage = read_usage(conn, account_id=account.id, meters=meters, start=start, end=end)
    priced = meter_prices(conn, account.id, meters, items=items)
    by_stripe_meter = {p.stripe_meter_id: p for p in priced.values() if p.stripe_meter_id}
    credited = drawn_for_period(conn, account.id, start)
    lines: list[PreviewLine] = []
    # Base fees first, then metered lines, as Stripe's invoice lists them.
    for item in sorted(items, key=lambda i: (i.metered, i.item_id)):
        if not item.metered:
            lines.append(base_fee_line(item))
            continue
        found = by_stripe_meter.get(item.stripe_meter_id or "")
        line = metered_line(
            item,
            found,
            usage.get(found.meter.name) if found is not None else None,
            free=account.free,
            allowance=allowances.get(item.price_id or ""),
        )
        if found is not None and line.amount is not None:
            drawn = sum(amount for _, amount in credited.get(found.meter.id, []))
            line = replace(line, credits=min(drawn, line.amount))
        lines.append(line)
    currencies = {i.price.get("currency") for i in items if i.price is not None}
    notes: tuple[str, ...] = ()
    if len(currencies) > 1:
        notes += ("the subscription's prices are in more than one currency",)
    if account.free:
        notes += ("free account: its usage is never sent, so Stripe bills none of it",)
    return InvoicePreview(
        account=account.name,
        customer=account.stripe_customer_id,
        subscription=chosen,
        currency=next(iter(sorted(c for c in currencies if c)), None),
        period_start=start,
        period_end=end,
        period_source=source,
        lines=tuple(lines),
        generated_at=now,
        notes=notes,
    )


def _period(
    conn: sa.Connection,
    items: Sequence[PricedItem],
    *,
    account: AccountInfo,
    periods: Periods,
    now: datetime,
) -> tuple[datetime, datetime, str]:
    """The subscription's current period (on its items since 2025-03-31), else the
    account's known billing period, else the calendar month."""
    for item in items:
        if item.metered and item.period_start and item.period_end:
            return item.period_start, item.period_end, "subscription"
    for item in items:
        if item.period_start and item.period_end:
            return item.period_start, item.period_end, "subscription"
    return period_now(conn, periods, account.id, now)


def _no_subscription(account: AccountInfo, subscription: str | None) -> str:
    """Why there is nothing to preview, and what to do."""
    if account.stripe_customer_id is None:
        return (
            f"account {account.name!r} is not linked to a Stripe customer, so Stripe bills "
            "it nothing yet; link it with `metersync accounts link`"
        )
    if subscription is not None:
        return (
            f"account {account.name!r} (customer {account.stripe_customer_id}) has no live "
            f"subscription {subscription!r} in the mirror; run `metersync sync` if it is new"
        )
    return (
        f"account {account.name!r} (customer {account.stripe_customer_id}) has no "
        "subscription Stripe still bills in the mirror; run `metersync sync` if it is new"
    )
