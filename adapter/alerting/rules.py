"""``ms.alerts``: add, list, remove and re-arm alerts, check them now, and their history."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.alerting.evaluate import Fired, check_alerts
from adapter.crediting.ledger import Credits
from adapter.domain.alerts import check_rule
from adapter.errors import InvalidUsage
from adapter.store.alert_models import Alert, AlertDelivery, AlertFiring
from adapter.store.audit import audit
from adapter.store.catalog import Accounts, Meters
from adapter.store.models import Account, Meter, table, utcnow
from adapter.store.periods import Periods

_ALERTS, _FIRINGS = table(Alert), table(AlertFiring)
_DELIVERIES = table(AlertDelivery)
_ACCOUNTS, _METERS = table(Account), table(Meter)


@dataclass(frozen=True, slots=True)
class AlertInfo:
    """An alert as the API shows it."""

    id: int
    name: str
    metric: str
    threshold: Decimal
    account: str | None
    meter: str | None
    webhook_url: str | None
    generation: int
    active: bool
    created_at: datetime
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["threshold"] = str(self.threshold)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True, slots=True)
class FiringInfo:
    """One firing: a local alert's crossing, or Stripe's ``billing.alert.triggered``."""

    id: int
    source: str
    alert_id: int | None
    alert: str | None
    account: str | None
    metric: str
    value: Decimal
    threshold: Decimal
    period_start: datetime | None
    generation: int
    fired_at: datetime
    stripe_alert_id: str | None
    deliveries: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = {name: getattr(self, name) for name in self.__slots__}
        data["value"], data["threshold"] = str(self.value), str(self.threshold)
        data["fired_at"] = self.fired_at.isoformat()
        data["period_start"] = self.period_start.isoformat() if self.period_start else None
        return data


class Alerts:
    """The alerts of one database."""

    def __init__(  # noqa: PLR0913  the collaborators of one facade, each named
        self,
        engine: sa.Engine,
        *,
        accounts: Accounts,
        meters: Meters,
        periods: Periods,
        credits: Credits,
        default_url: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._accounts, self._meters, self._periods = accounts, meters, periods
        self._credits, self._default_url = credits, default_url

    def add(  # noqa: PLR0913  public API: independent keyword options of one alert
        self,
        name: str,
        *,
        metric: str,
        threshold: object,
        account: str | None = None,
        meter: str | None = None,
        webhook_url: str | None = None,
        actor: str = "api",
    ) -> AlertInfo:
        """Watch ``metric`` (usage of ``meter``, cost, or credit balance) of ``account``
        (every account when ``None``); fires once per billing period when crossed."""
        value = check_rule(name=name, metric=metric, threshold=threshold, meter=meter)
        if webhook_url is not None and not webhook_url.startswith(("https://", "http://")):
            raise InvalidUsage(f"webhook_url must be an http(s) URL, got {webhook_url!r}")
        with self._engine.begin() as conn:
            account_id = self._accounts.get(account, conn).id if account is not None else None
            meter_id = None
            if meter is not None:
                found = self._meters.resolve(conn, [meter])
                if meter not in found:
                    raise self._meters.unknown(meter, conn)
                meter_id = found[meter].id
            alert_id = conn.execute(
                _ALERTS.insert()
                .values(
                    name=name.strip(), metric=metric, threshold=value, account_id=account_id,
                    meter_id=meter_id, webhook_url=webhook_url, generation=0, active=True,
                    created_at=utcnow(), created_by=actor,
                )
                .returning(_ALERTS.c.id)
            ).scalar_one()  # fmt: skip
            audit(
                conn, actor, "alert.add", str(alert_id), {"metric": metric, "threshold": str(value)}
            )
            return self._one(conn, alert_id)

    def remove(self, alert_id: int, *, actor: str = "api") -> AlertInfo:
        """Stop an alert (kept, with its history, as inactive)."""
        return self._change(
            alert_id, {"active": False, "removed_at": utcnow()}, actor, "alert.remove"
        )

    def rearm(self, alert_id: int, *, actor: str = "api") -> AlertInfo:
        """Let an alert fire once more in periods where it already fired."""
        with self._engine.connect() as conn:
            current = self._one(conn, alert_id)
        return self._change(alert_id, {"generation": current.generation + 1}, actor, "alert.rearm")

    def check(
        self, *, on_fire: Callable[[Fired], None] | None = None, drawn: bool = False
    ) -> list[Fired]:
        """Evaluate every active alert now; the firings this call made (each crossing fires
        once, however many processes check at the same time). ``drawn``: every account's
        credit was just drawn down (the scheduler's tick), so it is not drawn again."""
        return check_alerts(
            self._engine, meters=self._meters, periods=self._periods, credits=self._credits,
            default_url=self._default_url(), now=utcnow(), on_fire=on_fire, drawn=drawn,
        )  # fmt: skip

    def history(self, *, account: str | None = None, limit: int = 100) -> list[FiringInfo]:
        """The newest firings, local and Stripe's, newest first."""
        with self._engine.connect() as conn:
            account_id = self._accounts.get(account, conn).id if account is not None else None
            return _firings(conn, account_id=account_id, limit=limit)

    def _change(self, alert_id: int, values: dict[str, Any], actor: str, action: str) -> AlertInfo:
        with self._engine.begin() as conn:
            self._one(conn, alert_id)
            conn.execute(_ALERTS.update().where(_ALERTS.c.id == alert_id).values(**values))
            audit(conn, actor, action, str(alert_id), {})
            return self._one(conn, alert_id)

    def list(self, *, include_removed: bool = False) -> list[AlertInfo]:
        """Every alert (active ones unless ``include_removed``)."""
        with self._engine.connect() as conn:
            return _infos(conn, include_removed=include_removed)

    @staticmethod
    def _one(conn: sa.Connection, alert_id: int) -> AlertInfo:
        found = _infos(conn, include_removed=True, alert_id=alert_id)
        if not found:
            raise InvalidUsage(f"no alert {alert_id}; list them with `metersync alerts list`")
        return found[0]


def _infos(
    conn: sa.Connection, *, include_removed: bool, alert_id: int | None = None
) -> list[AlertInfo]:
    query = (
        sa.select(_ALERTS, _ACCOUNTS.c.name.label("account"), _METERS.c.name.label("meter"))
        .outerjoin(_ACCOUNTS, _ACCOUNTS.c.id == _ALERTS.c.account_id)
        .outerjoin(_METERS, _METERS.c.id == _ALERTS.c.meter_id)
        .order_by(_ALERTS.c.id)
    )
    if not include_removed:
        query = query.where(_ALERTS.c.active.is_(True))
    if alert_id is not None:
        query = query.where(_ALERTS.c.id == alert_id)
    return [
        AlertInfo(
            r.id, r.name, r.metric, Decimal(r.threshold), r.account, r.meter, r.webhook_url,
            r.generation, r.active, r.created_at, r.created_by,
        )
        for r in conn.execute(query).all()
    ]  # fmt: skip


def _firings(conn: sa.Connection, *, account_id: int | None, limit: int) -> list[FiringInfo]:
    deliveries = _DELIVERIES
    query = (
        sa.select(_FIRINGS, _ALERTS.c.name.label("alert"), _ACCOUNTS.c.name.label("account"))
        .outerjoin(_ALERTS, _ALERTS.c.id == _FIRINGS.c.alert_id)
        .outerjoin(_ACCOUNTS, _ACCOUNTS.c.id == _FIRINGS.c.account_id)
        .order_by(_FIRINGS.c.id.desc())
        .limit(limit)
    )
    if account_id is not None:
        query = query.where(_FIRINGS.c.account_id == account_id)
    rows = conn.execute(query).all()
    counts: dict[int, dict[str, int]] = {}
    if rows:
        for d in conn.execute(
            sa.select(deliveries.c.firing_id, deliveries.c.status, sa.func.count())
            .where(deliveries.c.firing_id.in_([r.id for r in rows]))
            .group_by(deliveries.c.firing_id, deliveries.c.status)
        ).all():
            counts.setdefault(d[0], {})[d[1]] = int(d[2])
    return [
        FiringInfo(
            r.id, r.source, r.alert_id, r.alert, r.account, r.metric, Decimal(r.value),
            Decimal(r.threshold), r.period_start, r.generation, r.fired_at, r.stripe_alert_id,
            counts.get(r.id, {}),
        )
        for r in rows
    ]  # fmt: skip
