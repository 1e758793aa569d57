"""Drawing prepaid credit down as usage is rated.

For the account's current billing period, each meter's cost so far (its usage rated by
the subscription's price, :mod:`adapter.reading.pricing`) is compared with the credit
already drawn for that meter and period: the difference is drawn from the grants that
cover it (:func:`adapter.domain.credits.allocate`), or, when the cost fell, released back.
So the credit drawn for a period always equals the cost it covers, as far as the balance
goes, however often drawdown runs; running it twice draws nothing the second time.

One drawdown per account at a time: on PostgreSQL the account row is locked for the
transaction, so processes drawing at once queue and each sees what the last one drew;
no grant is ever drawn below zero. Grants past their expiry first lose what is left (an
``expiry`` entry at the expiry time), so they cover nothing after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from adapter.domain.credits import GrantState, allocate, release
from adapter.reading.pricing import priced_usage
from adapter.reading.usage import MeterUsage, read_usage
from adapter.store.catalog import AccountInfo, MeterInfo
from adapter.store.credits import add_entries, drawn_for_period, grant_rows, states
from adapter.store.models import Account, table
from adapter.store.periods import Periods, period_now

_ACCOUNTS = table(Account)


@dataclass(frozen=True, slots=True)
class Drawdown:
    """What one drawdown did: credit drawn and released per meter, and grants expired."""

    account: str
    period_start: datetime
    period_end: datetime
    drawn: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    expired: int = 0

    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return bool(self.drawn or self.released or self.expired)


def draw_down(
    conn: sa.Connection,
    *,
    account: AccountInfo,
    meters: Sequence[MeterInfo],
    periods: Periods,
    now: datetime,
) -> Drawdown:
    """Bring the account's credit ledger up to its usage, on ``conn`` (one transaction)."""
    lock_account(conn, account.id)
    start, end, _source = period_now(conn, periods, account.id, now)
    grants = states(grant_rows(conn, account.id))
    entries: list[dict[str, Any]] = []
    grants, expired = _expire(grants, now=now, account_id=account.id, into=entries)
    result = Drawdown(account.name, start, end, expired=expired)
    if grants:
        usage = read_usage(conn, account_id=account.id, meters=meters, start=start, end=end)
        usage = priced_usage(conn, account.id, meters, usage, free=account.free)
        drawn = drawn_for_period(conn, account.id, start)
        base = {"account_id": account.id, "period_start": start, "at": now, "actor": "drawdown"}
        for meter in sorted(meters, key=lambda m: m.id):
            used = usage.get(meter.name)
            if used is None or used.amount is None or used.currency is None:
                continue
            grants = _settle(
                meter, used, drawn.get(meter.id, []), grants, base=base | {"meter_id": meter.id},
                now=now, into=entries, result=result,
            )  # fmt: skip
    add_entries(conn, entries)
    return result


def _settle(  # noqa: PLR0913  one meter's inputs and where its entries go, each named
    meter: MeterInfo,
    used: MeterUsage,
    taken: list[tuple[int, int]],
    grants: list[GrantState],
    *,
    base: dict[str, Any],
    now: datetime,
    into: list[dict[str, Any]],
    result: Drawdown,
) -> list[GrantState]:
    """Draw or release the difference between one meter's cost and the credit drawn for
    it; the grants after it."""
    assert used.amount is not None  # checked by the caller
    assert used.currency is not None
    delta = used.amount - sum(amount for _, amount in taken)
    if delta > 0:
        pairs = allocate(
            delta, grants, at=now, currency=used.currency, meter=meter.name, price=used.price
        )
        kind, sign, tally = "drawdown", -1, result.drawn
    elif delta < 0:
        pairs = release(-delta, taken)
        kind, sign, tally = "release", 1, result.released
    else:
        return grants
    by_id = {g.id: g for g in grants}
    for grant_id, amount in pairs:
        into.append(base | {"grant_id": grant_id, "kind": kind, "amount": sign * amount,
                            "note": used.price or ""})  # fmt: skip
        grant = by_id[grant_id]
        if kind == "release" and not grant.live(now):
            # Credit given back to a voided or expired grant is written off again at once,
            # so such a grant stays at zero instead of holding credit nothing can use.
            into.append(base | {"grant_id": grant_id, "kind": "writeoff", "amount": -amount,
                                "meter_id": None, "period_start": None,
                                "note": "released to a grant no longer in effect"})  # fmt: skip
    if pairs:
        tally[meter.name] = sum(a for _, a in pairs)
    live_pairs = [(g, a) for g, a in pairs if kind == "drawdown" or by_id[g].live(now)]
    return _spend(grants, [(g, -sign * a) for g, a in live_pairs])


def lock_account(conn: sa.Connection, account_id: int) -> None:
    """Serialise changes to one account's credit ledger (drawdowns, voids) for the rest of
    the transaction (PostgreSQL row lock; SQLite has one writer)."""
    query = sa.select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.id == account_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    conn.execute(query).one()


def _expire(
    grants: list[GrantState], *, now: datetime, account_id: int, into: list[dict[str, Any]]
) -> tuple[list[GrantState], int]:
    """Write off what expired grants have left; the grants after it, and how many expired."""
    kept: list[GrantState] = []
    count = 0
    for grant in grants:
        lapsed = grant.expires_at is not None and grant.expires_at <= now
        if lapsed and grant.remaining > 0 and not grant.voided:
            into.append(
                {"grant_id": grant.id, "account_id": account_id, "kind": "expiry",
                 "amount": -grant.remaining, "at": grant.expires_at, "actor": "drawdown",
                 "note": "expired with credit left", "meter_id": None, "period_start": None}
            )  # fmt: skip
            grant = replace(grant, remaining=0)
            count += 1
        kept.append(grant)
    return kept, count


def _spend(grants: list[GrantState], pairs: Sequence[tuple[int, int]]) -> list[GrantState]:
    """The grants after taking ``pairs`` (negative amounts give back)."""
    taken: dict[int, int] = {}
    for grant_id, amount in pairs:
        taken[grant_id] = taken.get(grant_id, 0) + amount
    return [replace(g, remaining=g.remaining - taken.get(g.id, 0)) for g in grants]
