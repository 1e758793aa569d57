"""Mirrored prices as rating reads them: each account's live subscription items, with the
Stripe Price object of each, rebuilt from the ``price`` row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from adapter.store.mirror_models import Price, Subscription, SubscriptionItem
from adapter.store.models import Account, table

_ACCOUNTS = table(Account)
_SUBSCRIPTIONS, _ITEMS, _PRICES = table(Subscription), table(SubscriptionItem), table(Price)
#: Subscription statuses Stripe still invoices (``canceled`` and ``incomplete_expired`` end it).
BILLED_STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete", "paused")


@dataclass(frozen=True, slots=True)
class PricedItem:
    """A live subscription item and the price it bills by (``price`` is ``None`` when the
    mirror has no row for the item's price yet)."""

    subscription_id: str
    subscription_status: str
    item_id: str
    price_id: str | None
    price: dict[str, Any] | None
    #: The item's quantity (licensed prices); ``None`` for metered ones.
    quantity: int | None
    #: The Stripe meter the item's price bills (from the item, else from the price).
    stripe_meter_id: str | None
    period_start: datetime | None
    period_end: datetime | None

    @property
    def metered(self) -> bool:
        """Whether the price bills a meter's usage (``recurring.usage_type = metered``)."""
        usage_type = ((self.price or {}).get("recurring") or {}).get("usage_type")
        return self.stripe_meter_id is not None or usage_type == "metered"


def price_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """The Stripe Price object a ``price`` row mirrors, in the API's own shape."""
    return {
        "id": row["id"],
        "object": "price",
        "active": row["active"],
        "livemode": row["livemode"],
        "currency": row["currency"],
        "product": row["product_id"],
        "metadata": dict(row["meta"] or {}),
        "billing_scheme": row["billing_scheme"],
        "tiers_mode": row["tiers_mode"],
        "tiers": row["tiers"],
        "unit_amount": row["unit_amount"],
        "unit_amount_decimal": row["unit_amount_decimal"],
        "transform_quantity": row["transform_quantity"],
        "nickname": row["nickname"],
        "custom_unit_amount": row["custom_unit_amount"],
        "type": "recurring" if row["interval"] else "one_time",
        "recurring": {
            "usage_type": row["usage_type"],
            "interval": row["interval"],
            "meter": row["stripe_meter_id"],
        }
        if row["interval"] or row["usage_type"]
        else None,
    }


def account_items(conn: sa.Connection, account_id: int) -> list[PricedItem]:
    """The items of the account's subscriptions Stripe still bills, newest subscription
    first, each with its mirrored price."""
    query = (
        sa.select(
            _SUBSCRIPTIONS.c.id.label("subscription_id"),
            _SUBSCRIPTIONS.c.status,
            _SUBSCRIPTIONS.c.created.label("subscription_created"),
            _SUBSCRIPTIONS.c.current_period_start.label("sub_start"),
            _SUBSCRIPTIONS.c.current_period_end.label("sub_end"),
            _ITEMS.c.id.label("item_id"),
            _ITEMS.c.price_id,
            _ITEMS.c.quantity,
            _ITEMS.c.stripe_meter_id.label("item_meter"),
            _ITEMS.c.current_period_start.label("item_start"),
            _ITEMS.c.current_period_end.label("item_end"),
            *(c.label(f"p_{c.name}") for c in _PRICES.c),
        )
        .select_from(
            _ACCOUNTS.join(
                _SUBSCRIPTIONS, _SUBSCRIPTIONS.c.customer_id == _ACCOUNTS.c.stripe_customer_id
            )
            .join(_ITEMS, _ITEMS.c.subscription_id == _SUBSCRIPTIONS.c.id)
            .outerjoin(_PRICES, _PRICES.c.id == _ITEMS.c.price_id)
        )
        .where(_ACCOUNTS.c.id == account_id)
        .where(_SUBSCRIPTIONS.c.status.in_(BILLED_STATUSES))
        .where(_SUBSCRIPTIONS.c.deleted.is_(False), _ITEMS.c.deleted.is_(False))
        .order_by(_SUBSCRIPTIONS.c.created.desc().nulls_last(), _ITEMS.c.id)
    )
    found: list[PricedItem] = []
    for row in conn.execute(query).mappings():
        price_row = {c.name: row[f"p_{c.name}"] for c in _PRICES.c}
        price = price_object(price_row) if price_row["id"] is not None else None
        found.append(
            PricedItem(
                subscription_id=row["subscription_id"],
                subscription_status=row["status"],
                item_id=row["item_id"],
                price_id=row["price_id"],
                price=price,
                quantity=row["quantity"],
                stripe_meter_id=row["item_meter"] or price_row["stripe_meter_id"],
                period_start=row["item_start"] or row["sub_start"],
                period_end=row["item_end"] or row["sub_end"],
            )
        )
    return found


def mirrored_prices(conn: sa.Connection, *, include_inactive: bool = False) -> list[dict[str, Any]]:
    """Every mirrored price as a Stripe Price object, newest first."""
    query = sa.select(_PRICES).where(_PRICES.c.deleted.is_(False))
    if not include_inactive:
        query = query.where(_PRICES.c.active.is_(True))
    rows = conn.execute(query.order_by(_PRICES.c.created.desc().nulls_last(), _PRICES.c.id))
    return [price_object(dict(row)) for row in rows.mappings()]
