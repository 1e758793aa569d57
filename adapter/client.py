"""The object applications hold: ``ms = adapter.connect()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from adapter.alerting.rules import Alerts
from adapter.crediting.ledger import Credits
from adapter.domain import validation
from adapter.errors import ConfigurationError, InvalidPeriod, InvalidUsage, MetersyncError
from adapter.gateway import Gateway
from adapter.gateway.stream import STREAM_CHUNK
from adapter.pushing.outbox import close_reports, pushable_ids
from adapter.pushing.pusher import Pusher, PushResult
from adapter.pushing.stream import StreamPusher
from adapter.reading.compare import Comparison, compare
from adapter.reading.invoice import preview_invoice
from adapter.reading.preview import InvoicePreview
from adapter.reading.pricing import priced_usage
from adapter.reading.reports import ReportInfo, list_reports
from adapter.reading.usage import Usage, read_usage
from adapter.reconciling.run import ReconcileSummary, reconcile
from adapter.recording.recorder import BatchResult, Receipt, Recorder
from adapter.store import db
from adapter.store.allowances import Allowances
from adapter.store.catalog import Accounts, Meters
from adapter.store.credits import has_grants
from adapter.store.models import UsageReport, table, utcnow
from adapter.store.periods import Periods, period_now, store_period
from adapter.store.prices import account_items
from adapter.store.schedule import ScheduleStore
from config.settings import Settings

DateLike = str | date | datetime
_REPORTS = table(UsageReport)


class Metersync:
    """Records usage and answers usage queries over one database."""

    def __init__(
        self, settings: Settings, engine: sa.Engine, *, gateway: Gateway | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        self._autocommit = (
            db.make_autocommit_engine(settings.database_url)
            if engine.dialect.name == "postgresql"
            else None
        )
        self.accounts = Accounts(engine)
        self.meters = Meters(engine, default_meter=settings.default_meter)
        self.schedule = ScheduleStore(engine, initial=settings.report_schedule)
        self.periods = Periods(engine)
        #: Units each Stripe price's plan includes, set in metersync (see the preview).
        self.allowances = Allowances(engine)
        #: Prepaid credit: grant, void, balance (drawn down as usage lands), history.
        self.credits = Credits(
            engine, accounts=self.accounts, meters=self.meters, periods=self.periods,
            gateway=self.gateway,
        )  # fmt: skip
        #: Thresholds on usage, cost or credit balance, fired once per period per crossing.
        self.alerts = Alerts(
            engine, accounts=self.accounts, meters=self.meters, periods=self.periods,
            credits=self.credits, default_url=lambda: getattr(settings, "alert_webhook_url", None),
        )  # fmt: skip
        self._recorder = Recorder(
            engine,
            self.accounts,
            self.meters,
            self.schedule,
            self.periods,
            autocommit=self._autocommit,
        )
        #: The Stripe gateway given, else built from settings on first use.
        self._gateway: Gateway | None = gateway

    def increment(  # noqa: PLR0913  public API: independent keyword options of one event
        self,
        account: str,
        quantity: int | float | str | Decimal = 1,
        *,
        meter: str | None = None,
        idempotency_key: str | None = None,
        timestamp: DateLike | int | float | None = None,
        dimensions: Mapping[str, Any] | None = None,
    ) -> Receipt:
        """Record one usage event. Raises :class:`~adapter.errors.InvalidUsage` on bad
        input (nothing is stored); a repeated key returns the original receipt."""
        item: dict[str, Any] = {
            "account": account,
            "quantity": quantity,
            "meter": meter,
            "idempotency_key": idempotency_key,
            "timestamp": timestamp,
        }
        if dimensions is not None:
            item["dimensions"] = dimensions
        receipt = self._recorder.record([item], strict=True).receipts[0]
        assert receipt is not None  # strict mode raises instead of rejecting
        return receipt

    def record_many(self, items: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Record a batch in one transaction; invalid items are reported, valid ones kept."""
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise validation.InvalidUsage("record_many takes a list of usage items")
        return self._recorder.record(list(items))

    def get_usage(
        self,
        account: str,
        period_start: DateLike | None = None,
        period_end: DateLike | None = None,
        *,
        meter: str | None = None,
    ) -> Usage:
        """Per meter, the usage of ``account`` over ``[period_start, period_end)``; with no
        dates, over the account's current billing period (the calendar month until the
        mirror knows one)."""
        with self.engine.connect() as conn:
            info = self.accounts.get(account, conn)
            account_id = info.id
            if meter is None:
                meters = self.meters.all(conn)
            else:
                found = self.meters.resolve(conn, [meter])
                if meter not in found:
                    raise self.meters.unknown(meter, conn)
                meters = [found[meter]]
            start, end, source = self._period(conn, account_id, period_start, period_end)
            per_meter = read_usage(conn, account_id=account_id, meters=meters, start=start, end=end)
            per_meter = priced_usage(conn, account_id, meters, per_meter, free=info.free)
        return Usage(account, start, end, per_meter, source)

    def _period(
        self, conn: sa.Connection, account_id: int, start: DateLike | None, end: DateLike | None
    ) -> tuple[datetime, datetime, str]:
        if start is not None and end is not None:
            return (*validation.period(start, end), "requested")
        if start is not None or end is not None:
            raise InvalidPeriod("give both period_start and period_end, or neither")
        return period_now(conn, self.periods, account_id, utcnow())

    def preview_invoice(self, account: str, *, subscription: str | None = None) -> InvoicePreview:
        """The current period's invoice of the account's subscription (the newest one
        Stripe still bills, unless ``subscription`` names one), rated locally: base fees,
        metered lines with allowance, overage and tiers, subtotal and total."""
        with self.engine.connect() as conn:
            credited = has_grants(conn, self.accounts.get(account, conn).id)
        if credited:  # the preview shows the credit drawn up to now
            self.credits.draw(account)
        with self.engine.connect() as conn:
            return preview_invoice(
                conn,
                account=self.accounts.get(account, conn),
                meters=self.meters.all(conn),
                allowances=self.allowances.all(conn),
                periods=self.periods,
                now=utcnow(),
                subscription=subscription,
            )

    def compare_invoice(self, account: str, *, subscription: str | None = None) -> Comparison:
        """:meth:`preview_invoice` beside Stripe's own preview of the same invoice, line by
        line (needs a Stripe key)."""
        gateway = self.gateway()
        if gateway is None:
            raise ConfigurationError(
                "comparing with Stripe reads Stripe's invoice preview: "
                "set METERSYNC_STRIPE_API_KEY and run again"
            )
        preview = self.preview_invoice(account, subscription=subscription)
        # A preview always names both: it raises when there is no subscription.
        assert preview.customer is not None
        assert preview.subscription is not None
        theirs = gateway.preview_invoice(
            customer=preview.customer, subscription=preview.subscription
        )
        with self.engine.connect() as conn:
            items = account_items(conn, self.accounts.get(account, conn).id)
        prices = {i.price_id: i.price for i in items if i.price_id and i.price}
        return compare(preview, theirs, prices)

    def set_billing_period(
        self, account: str, period_start: DateLike, period_end: DateLike, *, source: str = "manual"
    ) -> None:
        """Record a billing period of ``account`` (the webhook mirror does this from Stripe
        subscription items); new report windows are cut at its boundaries. One transaction:
        the account is read and the period written on the same connection."""
        with self.engine.begin() as conn:
            account_id = self.accounts.get(account, conn).id
            store_period(conn, account_id, period_start, period_end, source=source)
        self.periods.forget([account_id])

    def report_now(self) -> list[PushResult]:
        """Operator flush: close every open report, then push every closed one, now and
        synchronously (a dry run without a Stripe key). Returns one result per report."""
        now = utcnow()
        close_reports(self.engine, now=now, due_only=False)
        ids = pushable_ids(self.engine)
        if self.settings.stripe_transport == "stream":
            streamer = StreamPusher(self.engine, gateway=self.gateway())
            return [
                result
                for start in range(0, len(ids), STREAM_CHUNK)
                for result in streamer.push_many(ids[start : start + STREAM_CHUNK], now=now)
            ]
        pusher = self.pusher()
        return [pusher.push(report_id, now=now) for report_id in ids]

    def retry(self, report_id: int) -> PushResult:
        """Push a ``failed`` (or stuck ``sending``) report again, with the same identifier
        if it was decided already, so a send that did reach Stripe is not billed twice."""
        with self.engine.begin() as conn:
            status = conn.execute(
                sa.select(_REPORTS.c.status).where(_REPORTS.c.id == report_id)
            ).scalar_one_or_none()
            if status is None:
                raise InvalidUsage(f"no report {report_id}; list them with `metersync reports`")
            if status not in ("failed", "sending"):
                raise InvalidUsage(
                    f"report {report_id} is {status}; only failed or sending reports are retried"
                )
            conn.execute(
                _REPORTS.update().where(_REPORTS.c.id == report_id).values(status="closed")
            )
        return self.pusher().push(report_id)

    def reports(self, *, status: str | None = None, limit: int = 100) -> list[ReportInfo]:
        """The newest reports, optionally of one status."""
        return list_reports(self.engine, status=status, limit=limit)

    def reconcile(
        self, *, period: str = "current", account: str | None = None, repair: bool = False
    ) -> ReconcileSummary:
        """Compare what was sent with Stripe's meter event summaries, per (customer, meter,
        period), repairing drift only with ``repair`` (see :mod:`adapter.reconciling.run`)."""
        gateway = self.gateway()
        if gateway is None:
            raise ConfigurationError(
                "reconcile needs a Stripe API key: set METERSYNC_STRIPE_API_KEY and run again"
            )
        return reconcile(
            self, gateway, period=period, account=account, repair=repair, trigger="api"
        )

    def gateway(self) -> Gateway | None:
        """The Stripe gateway, built from settings on first use; ``None`` in a dry run."""
        if self._gateway is None and self.settings.stripe_api_key is not None:
            self._gateway = Gateway.from_settings(self.settings)
        return self._gateway

    def use_gateway(self, gateway: Gateway | None) -> None:
        """Replace the Stripe gateway (tests, proxies, custom retries); ``None`` builds
        one from settings again on next use."""
        self._gateway = gateway

    def pusher(self) -> Pusher:
        """A pusher on this connection's database and gateway."""
        return Pusher(self.engine, gateway=self.gateway())

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()


def connect(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    gateway: Gateway | None = None,
) -> Metersync:
    """Wire metersync from settings (the environment by default). SQLite databases are
    created and migrated on first use; PostgreSQL ones must be at the current migration
    (``metersync db upgrade``) unless ``METERSYNC_AUTO_MIGRATE`` is set. ``gateway``
    replaces the Stripe gateway built from settings (tests, proxies, custom retries)."""
    if settings is None:
        settings = Settings()
    if database_url is not None:
        settings = settings.model_copy(update={"database_url": database_url})
        Settings.model_validate(settings.model_dump())  # same checks as from the environment
    engine = db.make_engine(settings.database_url)
    try:
        sqlite = engine.dialect.name == "sqlite"
        db.ensure_schema(engine, migrate=sqlite or settings.auto_migrate)
    except MetersyncError:
        engine.dispose()
        raise
    except sa.exc.OperationalError as exc:
        engine.dispose()
        where = engine.url.render_as_string(hide_password=True)
        raise MetersyncError(f"cannot reach the database at {where}: {exc.orig}") from None
    ms = Metersync(settings, engine, gateway=gateway)
    ms.schedule.seed()
    return ms
