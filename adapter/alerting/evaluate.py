"""Checking alerts: each active alert against each account it watches, in the account's
current billing period.

A crossing is written as an ``alert_firing`` row whose key is (alert, account, period,
generation): the insert does nothing when that row exists, so an alert fires exactly once
per period (and once more per re-arm) however many processes check at the same time.
Only the process whose insert wrote the row logs it, calls ``on_fire`` (the scheduler
sends the Dramatiq hook) and queues the outbound webhook, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from adapter.crediting.ledger import Credits
from adapter.domain.alerts import crossed
from adapter.reading.pricing import priced_usage
from adapter.reading.usage import MeterUsage, read_usage
from adapter.store.alert_models import Alert, AlertDelivery, AlertFiring
from adapter.store.catalog import Meters
from adapter.store.credits import accounts_with_grants
from adapter.store.models import Account, Meter, table
from adapter.store.periods import Periods, period_now

log = structlog.get_logger("metersync.alerts")
_ALERTS, _FIRINGS, _DELIVERIES = table(Alert), table(AlertFiring), table(AlertDelivery)
_ACCOUNTS, _METERS = table(Account), table(Meter)


@dataclass(frozen=True, slots=True)
class Fired:
    """An alert that crossed its threshold just now (what the hook and webhook carry)."""

    firing_id: int
    alert_id: int
    alert: str
    account: str
    meter: str | None
    metric: str
    value: Decimal
    threshold: Decimal
    period_start: datetime
    generation: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the Dramatiq hook's argument)."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["value"], data["threshold"] = str(self.value), str(self.threshold)
        data["period_start"] = self.period_start.isoformat()
        return data


def check_alerts(  # noqa: PLR0913  keyword-only collaborators of one check, each named
    engine: sa.Engine,
    *,
    meters: Meters,
    periods: Periods,
    credits: Credits,
    default_url: str | None,
    now: datetime,
    on_fire: Callable[[Fired], None] | None = None,
    drawn: bool = False,
) -> list[Fired]:
    """Evaluate every active alert now; the firings this call wrote. ``drawn``: credit was
    just drawn down (the tick), so credit alerts read the ledger as it stands."""
    with engine.connect() as conn:
        alerts = list(
            conn.execute(
                sa.select(_ALERTS, _METERS.c.name.label("meter"))
                .outerjoin(_METERS, _METERS.c.id == _ALERTS.c.meter_id)
                .where(_ALERTS.c.active.is_(True))
                .order_by(_ALERTS.c.id)
            ).all()
        )
        if not alerts:
            return []
        accounts = {r.id: r for r in conn.execute(sa.select(_ACCOUNTS)).all()}
        with_credit = set(accounts_with_grants(conn))
        all_meters = meters.all(conn)
    fired: list[Fired] = []
    for account in accounts.values():
        mine = [a for a in alerts if a.account_id in (None, account.id)]
        mine = [a for a in mine if a.metric != "credit_balance" or account.name in with_credit]
        if not mine:
            continue
        values = _Values(
            engine, account, all_meters, periods=periods, credits=credits, now=now, drawn=drawn
        )
        done = values.fired_already()
        for alert in mine:
            if (alert.id, alert.generation) in done:
                continue  # fired this period: no need to read its value again
            value = values.of(alert.metric, alert.meter)
            if value is None or not crossed(alert.metric, value, Decimal(alert.threshold)):
                continue
            found = _fire(engine, alert, account, values.period_start, value, url=default_url)
            if found is not None:
                log.info("alert.fired", **found.to_dict())
                fired.append(found)
                if on_fire is not None:
                    on_fire(found)
    return fired


class _Values:
    """One account's watched values, each read once and only when an alert asks."""

    def __init__(  # noqa: PLR0913  keyword-only collaborators, each named
        self,
        engine: sa.Engine,
        account: sa.Row[Any],
        meters: Sequence[Any],
        *,
        periods: Periods,
        credits: Credits,
        now: datetime,
        drawn: bool,
    ) -> None:
        self._engine, self._account, self._meters = engine, account, meters
        self._credits, self._drawn = credits, drawn
        with engine.connect() as conn:
            self.period_start, self._end, _ = period_now(conn, periods, account.id, now)
        self._usage: dict[str, MeterUsage] | None = None

    def of(self, metric: str, meter: str | None) -> Decimal | None:
        """The value ``metric`` watches (``None``: nothing to compare, e.g. no price)."""
        if metric == "credit_balance":
            balance = self._credits.balance(self._account.name, draw=not self._drawn)
            return Decimal(balance.amount)
        usage = self._read()
        if metric == "usage":
            found = usage.get(meter or "")
            return None if found is None else found.quantity
        picked = [usage[meter]] if meter is not None and meter in usage else list(usage.values())
        amounts = [u.amount for u in picked if u.amount is not None]
        return Decimal(sum(amounts)) if amounts else None

    def fired_already(self) -> set[tuple[int, int]]:
        """(alert, generation) pairs that fired for this account in this period."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(_FIRINGS.c.alert_id, _FIRINGS.c.generation)
                .where(_FIRINGS.c.account_id == self._account.id)
                .where(_FIRINGS.c.period_start == self.period_start)
                .where(_FIRINGS.c.source == "local")
            ).all()
        return {(r.alert_id, r.generation) for r in rows}

    def _read(self) -> dict[str, MeterUsage]:
        if self._usage is None:
            with self._engine.connect() as conn:
                usage = read_usage(
                    conn, account_id=self._account.id, meters=self._meters,
                    start=self.period_start, end=self._end,
                )  # fmt: skip
                self._usage = priced_usage(
                    conn, self._account.id, self._meters, usage, free=self._account.free
                )
        return self._usage


def _fire(  # noqa: PLR0913  one firing's facts, each named
    engine: sa.Engine,
    alert: sa.Row[Any],
    account: sa.Row[Any],
    period_start: datetime,
    value: Decimal,
    *,
    url: str | None,
) -> Fired | None:
    """Write the firing once; ``None`` when another check wrote it first."""
    row = {
        "source": "local", "alert_id": alert.id, "account_id": account.id,
        "period_start": period_start, "generation": alert.generation, "metric": alert.metric,
        "value": value, "threshold": Decimal(alert.threshold), "detail": {"meter": alert.meter},
    }  # fmt: skip
    with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_FIRINGS).values(**row)
        keys = ["alert_id", "account_id", "period_start", "generation"]
        firing_id = conn.execute(
            insert.on_conflict_do_nothing(index_elements=keys).returning(_FIRINGS.c.id)
        ).scalar_one_or_none()
        if firing_id is None:
            return None
        target = alert.webhook_url or url
        if target:
            conn.execute(_DELIVERIES.insert().values(firing_id=firing_id, url=target))
    return Fired(
        firing_id, alert.id, alert.name, account.name, alert.meter, alert.metric, value,
        Decimal(alert.threshold), period_start, alert.generation,
    )  # fmt: skip
