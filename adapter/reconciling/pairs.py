"""Which (account, meter, period) pairs a reconcile run compares, in run order.

:func:`choose_periods` is pure; :func:`pairs_to_compare` reads accounts, meters, billing
periods and the mirror's Stripe meters to build the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from adapter.domain import validation
from adapter.domain.windows import Period, period_containing
from adapter.reconciling import store
from adapter.store.mirror_models import StripeMeter
from adapter.store.models import BillingPeriod, table

_PERIODS, _STRIPE_METERS = table(BillingPeriod), table(StripeMeter)
#: Accounts whose periods are read per query (inside SQLite's bound-parameter limit).
CHUNK = 500


def choose_periods(spec: str, known: Sequence[Period], as_of: datetime) -> list[Period]:
    """The periods ``spec`` names for an account with billing periods ``known`` (sorted):

    - ``current``: the known period containing ``as_of``, else the calendar month (as
      ``get_usage`` does when the mirror knows no period);
    - ``previous``: the latest known period ending at or before the current one starts;
      the previous calendar month when the account has no known period at all;
    - ``START..END``: those dates, for every account.
    """
    if ".." in spec:
        start, end = spec.split("..", 1)
        return [validation.period(start, end)]
    current = period_containing(as_of, known) or validation.default_period(as_of)
    chosen: list[Period] = []
    for name in spec.split(","):
        if name == "current":
            chosen.append(current)
        elif name == "previous":
            before = [p for p in known if p[1] <= current[0]]
            if before:
                chosen.append(before[-1])
            elif not known:
                chosen.append(validation.default_period(current[0] - timedelta(seconds=1)))
    return sorted(set(chosen))


def pairs_to_compare(
    engine: sa.Engine, spec: str, *, account: str | None, as_of: datetime
) -> list[store.PairKey]:
    """Every pair of ``spec`` (see :mod:`adapter.reconciling.run`), sorted by ``PairKey.order``."""
    keys: list[store.PairKey] = []
    with engine.connect() as conn:
        accounts = store.accounts(conn, account)
        meters = store.meters(conn)
        mirrored = _mirrored_meter_ids(conn)
        for start in range(0, len(accounts), CHUNK):
            chunk = accounts[start : start + CHUNK]
            periods = _known_periods(conn, [a.id for a in chunk])
            chosen = {a.id: choose_periods(spec, periods.get(a.id, []), as_of) for a in chunk}
            # One account, one period per lookup: the spec's first period of each, then
            # its second (``previous,current``).
            for slot in range(max((len(c) for c in chosen.values()), default=0)):
                wanted = {a: found[slot] for a, found in chosen.items() if len(found) > slot}
                used = store.meters_used(conn, wanted)
                for acct in chunk:
                    if acct.id in wanted:
                        keys += _keys(acct, wanted[acct.id], used[acct.id], meters, mirrored)
    keys.sort(key=lambda key: key.order)
    return keys


def _keys(
    acct: sa.Row[Any],
    period: Period,
    meter_ids: list[int],
    meters: dict[int, Any],
    mirrored: dict[str, str],
) -> list[store.PairKey]:
    """The account's pairs of one period, one per meter it used."""
    return [
        store.PairKey(
            account_id=acct.id,
            account=acct.name,
            customer=acct.stripe_customer_id,
            free=bool(acct.free),
            meter_id=meter_id,
            meter=meters[meter_id].name,
            event_name=meters[meter_id].event_name,
            aggregation=meters[meter_id].aggregation,
            stripe_meter_id=meters[meter_id].stripe_meter_id
            or mirrored.get(meters[meter_id].event_name),
            period_start=period[0],
            period_end=period[1],
        )
        for meter_id in meter_ids
    ]


def _known_periods(conn: sa.Connection, account_ids: list[int]) -> dict[int, list[Period]]:
    rows = conn.execute(
        sa.select(_PERIODS.c.account_id, _PERIODS.c.period_start, _PERIODS.c.period_end)
        .where(_PERIODS.c.account_id.in_(account_ids))
        .order_by(_PERIODS.c.period_start)
    ).all()
    found: dict[int, list[Period]] = {}
    for row in rows:
        found.setdefault(row.account_id, []).append((row.period_start, row.period_end))
    return found


def _mirrored_meter_ids(conn: sa.Connection) -> dict[str, str]:
    """Stripe meter ids by event name from the mirror, an active meter winning."""
    rows = conn.execute(
        sa.select(_STRIPE_METERS.c.id, _STRIPE_METERS.c.event_name, _STRIPE_METERS.c.status)
        .where(_STRIPE_METERS.c.deleted.is_(False))
        .order_by(_STRIPE_METERS.c.status == "active")
    ).all()
    return {row.event_name: row.id for row in rows}
