"""What each page shows, gathered through the library (``ms.…``) and the bounded queries
of :mod:`webhooks.dashboard.data`; plain values, rendered by the templates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapter.alerting.rules import AlertInfo, FiringInfo
from adapter.crediting.ledger import Balance, History
from adapter.errors import MetersyncError
from adapter.reading.preview import InvoicePreview
from adapter.reading.reports import ReportInfo
from adapter.reading.usage import Usage
from adapter.store.catalog import AccountInfo
from adapter.store.credits import Entry
from adapter.store.models import utcnow
from webhooks.dashboard import charts, data
from webhooks.metrics import Snapshot, quantile, read_snapshot

if TYPE_CHECKING:
    from adapter.client import Metersync

#: Failed items listed on the overview.
FAILED_ROWS = 10
#: Past billing periods charted on an account page.
PAST_PERIODS = 5
#: Credit ledger entries and alert firings listed on an account page.
HISTORY_ROWS = 20


@dataclass(frozen=True, slots=True)
class Overview:
    """The overview page."""

    snapshot: Snapshot
    hourly: list[tuple[datetime, int]]
    delay: tuple[float, float, int]
    drift: data.Drift
    failed_reports: list[ReportInfo]
    failed_deliveries: list[data.DeliveryRow]

    @property
    def events_24h(self) -> int:
        """Events in the reports of the last 24 hours' windows."""
        return sum(n for _, n in self.hourly)

    @property
    def needing_action(self) -> tuple[int, int]:
        """Failed reports and failed deliveries."""
        snap = self.snapshot
        return snap.reports.get("failed", 0), snap.deliveries.get("failed", 0)

    @property
    def latency(self) -> dict[str, float]:
        """Push latency quantiles over the last hour (closing to Stripe taking it)."""
        lat = self.snapshot.latencies
        return {"p50": quantile(lat, 0.5), "p99": quantile(lat, 0.99), "max": quantile(lat, 1)}

    @property
    def charts(self) -> dict[str, Any]:
        """The overview's charts: events per hour and reports by status."""
        statuses = sorted(self.snapshot.reports)
        return {
            "chart-hourly": charts.bar(
                [start.strftime("%H:00") for start, _ in self.hourly],
                [("events", [n for _, n in self.hourly])],
                counts=True,
            ),
            "chart-statuses": charts.bar(
                statuses,
                [("reports", [self.snapshot.reports[s] for s in statuses])],
                horizontal=True,
                counts=True,
            ),
        }


def overview(ms: Metersync) -> Overview:
    """Read the overview: counts, latency, lag, drift and what needs an operator."""
    now = utcnow()
    snapshot = read_snapshot(ms.engine, now=now)
    with ms.engine.connect() as conn:
        hourly = data.events_per_hour(conn, now=now)
        delay = data.processing_delay(conn)
        drift = data.drift(conn)
    return Overview(
        snapshot=snapshot,
        hourly=hourly,
        delay=delay,
        drift=drift,
        failed_reports=ms.reports(status="failed", limit=FAILED_ROWS),
        failed_deliveries=data.deliveries(ms.engine, status="failed", limit=FAILED_ROWS),
    )


@dataclass(frozen=True, slots=True)
class AccountPage:
    """An account page."""

    info: AccountInfo
    current: Usage
    #: Earlier periods, oldest first.
    past: list[Usage]
    balance: Balance
    history: History
    alerts: list[AlertInfo]
    firings: list[FiringInfo]
    preview: InvoicePreview | None
    preview_error: str | None

    @property
    def ledger(self) -> list[tuple[Entry, str]]:
        """The credit ledger's entries, each with its grant's currency."""
        currency = {g.id: g.currency for g in self.history.grants}
        return [(e, currency.get(e.grant_id, "")) for e in self.history.entries]

    @property
    def charts(self) -> dict[str, Any]:
        """Usage per meter over the periods, and sent vs pending in the current one."""
        periods = [*self.past, self.current]
        names = list(self.current.meters)
        labels = [f"{u.period_start:%Y-%m-%d} to {u.period_end:%Y-%m-%d}" for u in periods]
        over_time = [
            (name, [u.meters[name].quantity if name in u.meters else 0 for u in periods])
            for name in names
        ]
        sent = [self.current.meters[n].sent for n in names]
        pending = [self.current.meters[n].pending for n in names]
        return {
            "chart-periods": charts.bar(labels, over_time),
            "chart-pending": charts.bar(
                names, [("sent", sent), ("pending", pending)], stacked=True
            ),
        }


def _past(ms: Metersync, info: AccountInfo, current: Usage) -> list[Usage]:
    """Usage in the periods before the current one: the known billing periods, else the
    calendar months (while the mirror knows no period)."""
    spans = data.periods_before(ms.engine, info.id, current.period_start, limit=PAST_PERIODS)
    if not spans and current.period_source == "calendar_month":
        end = current.period_start
        for _ in range(PAST_PERIODS):
            start = (end - timedelta(days=1)).replace(day=1)
            spans.append((start, end))
            end = start
    return [ms.get_usage(info.name, start, end) for start, end in reversed(spans)]


def account(ms: Metersync, name: str) -> AccountPage:
    """Read an account page (``UnknownAccount`` if there is none of that name)."""
    info = ms.accounts.get(name)
    current = ms.get_usage(name)
    preview: InvoicePreview | None = None
    preview_error = None
    try:
        preview = ms.preview_invoice(name)
    except MetersyncError as exc:  # no subscription, prices not mirrored: said on the page
        preview_error = str(exc)
    alerts = [a for a in ms.alerts.list() if a.account in (None, name)]
    return AccountPage(
        info=info,
        current=current,
        past=_past(ms, info, current),
        balance=ms.credits.balance(name),
        history=ms.credits.history(name, limit=HISTORY_ROWS),
        alerts=alerts,
        firings=ms.alerts.history(account=name, limit=HISTORY_ROWS),
        preview=preview,
        preview_error=preview_error,
    )
