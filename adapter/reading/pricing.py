"""Which mirrored price bills each local meter of an account, and what its usage costs.

A meter's price is the account's live subscription item whose price bills the meter's
Stripe meter (``price.recurring.meter``), newest subscription first. The quantity rated is
what Stripe will bill for the period: the local aggregate as a whole number by the meter's
rounding rule (fractions are carried and rounded at period close), nothing for a free
account (its usage is never sent), and a negative total as zero (Stripe's rule).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal

import sqlalchemy as sa

from adapter.domain.rating import Rating, rating
from adapter.domain.reporting import round_whole
from adapter.errors import RatingError
from adapter.reading.usage import MeterUsage
from adapter.store.catalog import MeterInfo
from adapter.store.mirror_models import StripeMeter
from adapter.store.models import table
from adapter.store.prices import PricedItem, account_items

_STRIPE_METERS = table(StripeMeter)


@dataclass(frozen=True, slots=True)
class MeterPrice:
    """The price a local meter bills by, or why there is none."""

    meter: MeterInfo
    item: PricedItem | None
    #: The Stripe meter id the local meter sends to (``None`` when Stripe's is unknown).
    stripe_meter_id: str | None


def stripe_meter_ids(conn: sa.Connection, meters: Iterable[MeterInfo]) -> dict[int, str]:
    """Each local meter's Stripe meter id: stored on the meter, else the mirrored Stripe
    meter with the same event name."""
    found = {m.id: m.stripe_meter_id for m in meters if m.stripe_meter_id}
    missing = {m.event_name: m.id for m in meters if not m.stripe_meter_id}
    if missing:
        rows = conn.execute(
            sa.select(_STRIPE_METERS.c.id, _STRIPE_METERS.c.event_name)
            .where(_STRIPE_METERS.c.event_name.in_(list(missing)))
            .where(_STRIPE_METERS.c.deleted.is_(False))
            .order_by(_STRIPE_METERS.c.created)
        ).all()
        for row in rows:
            found[missing[row.event_name]] = row.id
    return found


def meter_prices(
    conn: sa.Connection,
    account_id: int,
    meters: Iterable[MeterInfo],
    *,
    items: list[PricedItem] | None = None,
) -> dict[str, MeterPrice]:
    """Per local meter name, the live subscription item that bills it (if any)."""
    meters = list(meters)
    items = account_items(conn, account_id) if items is None else items
    ids = stripe_meter_ids(conn, meters)
    found: dict[str, MeterPrice] = {}
    for meter in meters:
        sid = ids.get(meter.id)
        item = next((i for i in items if sid and i.stripe_meter_id == sid), None)
        found[meter.name] = MeterPrice(meter, item, sid)
    return found


def billable_quantity(usage: MeterUsage, meter: MeterInfo, *, free: bool) -> Decimal:
    """What Stripe will bill for the period: whole by the meter's rule, 0 for a free
    account, never below 0."""
    if free:
        return Decimal(0)
    return Decimal(max(round_whole(usage.quantity, meter.rounding), 0))


def rate_usage(
    usage: MeterUsage, priced: MeterPrice | None, *, free: bool
) -> tuple[MeterUsage, Rating | None]:
    """``usage`` with ``amount`` and ``currency`` from its price, and the rating behind it
    (``None`` when no price is known or the price cannot be rated: ``rating_error`` says why)."""
    item = priced.item if priced is not None else None
    if priced is None or item is None or item.price is None:
        return usage, None
    currency = item.price.get("currency")
    try:
        found = rating(item.price, billable_quantity(usage, priced.meter, free=free))
    except RatingError as error:
        return replace(usage, currency=currency, price=item.price_id, rating_error=str(error)), None
    return replace(usage, amount=found.amount, currency=currency, price=item.price_id), found


def priced_usage(
    conn: sa.Connection,
    account_id: int,
    meters: Iterable[MeterInfo],
    usage: dict[str, MeterUsage],
    *,
    free: bool,
) -> dict[str, MeterUsage]:
    """``usage`` with each meter's cost so far (see :func:`rate_usage`)."""
    prices = meter_prices(conn, account_id, meters)
    return {name: rate_usage(u, prices.get(name), free=free)[0] for name, u in usage.items()}
