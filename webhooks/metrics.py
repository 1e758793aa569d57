"""``GET /metrics``: Prometheus text, from a registry owned by the app (never the global one).

Gauges are read from the database at scrape time, so every process serving the app
reports the same values whichever one is scraped (and the workers, which are other
processes, need no metrics endpoint of their own):

- ``metersync_reports{status}``: reports by status (every known status, zeros included).
- ``metersync_usage_events{report_status}``: usage events stored, by the status of the
  report holding them; their sum is every event ever ingested. Read from the reports'
  event counts in the same scan as the line above, so it never counts ``usage_event``.
- ``metersync_webhook_deliveries{status}``: deliveries by status.
- ``metersync_webhook_lag_seconds``: now minus the Stripe ``created`` time of the oldest
  delivery still ``received`` (0 when none waits). A redelivery of an old event counts
  from when Stripe created it, not from when it arrived.
- ``metersync_push_latency_seconds{quantile}``: from closing a report to Stripe taking it
  (``sent_at - closed_at``), over reports sent in the last hour: quantiles 0.5, 0.99 and 1
  (the slowest). A gauge computed from rows rather than a histogram, because pushes happen
  in worker processes that this server cannot observe. To stay an index range scan it
  only looks at reports whose window ended within :data:`LATENCY_WINDOW_LOOKBACK`; a
  report sent later than that is an incident that ``metersync reports`` shows.
- ``metersync_push_latency_reports``: how many reports those quantiles are taken over.
- ``metersync_reconcile_drifting_pairs{verdict}``: pairs of the newest finished reconcile
  run whose drift is still there (``missing``, ``excess``, ``wrong_value``; repaired
  pairs are not counted), 0 when no run finished yet; and
  ``metersync_reconcile_last_run_timestamp_seconds``, when that run finished (0: never).
- ``metersync_database_up``: 1, or 0 when the database could not be read (the gauges
  above are then left out rather than reported as zero).

Counters kept by this process only (each uvicorn worker process counts its own requests):
``metersync_usage_events_recorded_total`` (events accepted by ``POST /v1/usage``) and
``metersync_webhook_deliveries_received_total{result}`` (``stored``, ``duplicate``,
``refused``). Database reads are cached for :data:`CACHE_SECONDS`, so frequent or
duplicated scrapes cost the database nothing more.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapter.domain.drift import DRIFT
from adapter.domain.statuses import ReportStatus
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import UsageReport, table, utcnow
from adapter.store.reconcile_models import ReconcilePair, ReconcileRun

log = structlog.get_logger("metersync.metrics")
_REPORTS, _DELIVERIES = table(UsageReport), table(WebhookDelivery)
_RUNS, _PAIRS = table(ReconcileRun), table(ReconcilePair)
#: Seconds a database snapshot is reused between scrapes.
CACHE_SECONDS = 5.0
#: Push latency is measured over reports sent within this time.
LATENCY_PERIOD = timedelta(hours=1)
#: ... and whose window ended within this time (keeps the query on the status index).
LATENCY_WINDOW_LOOKBACK = timedelta(hours=25)
#: Most rows read for the latency quantiles (the newest windows first).
LATENCY_ROWS = 50_000
#: Quantiles of push latency reported; 1 is the slowest push.
QUANTILES = (0.5, 0.99, 1.0)
#: Statuses always reported, with zeros, so that alerts need no absent() guard.
REPORT_STATUSES: tuple[str, ...] = tuple(ReportStatus)
DELIVERY_STATUSES = ("received", "processed", "ignored", "skipped", "failed")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the database says at one scrape."""

    reports: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    lag_seconds: float = 0.0
    latencies: tuple[float, ...] = ()
    drifting: dict[str, int] = field(default_factory=dict)
    reconciled_at: float = 0.0


def quantile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ascending ``ordered`` (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def read_snapshot(engine: sa.Engine, *, now: datetime) -> Snapshot:
    """Read every gauge's value in one connection."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                _REPORTS.c.status,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(_REPORTS.c.events), 0),
            ).group_by(_REPORTS.c.status)
        ).all()
        deliveries = conn.execute(
            sa.select(_DELIVERIES.c.status, sa.func.count()).group_by(_DELIVERIES.c.status)
        ).all()
        oldest = conn.execute(
            sa.select(sa.func.min(_DELIVERIES.c.created)).where(_DELIVERIES.c.status == "received")
        ).scalar()
        pushes = conn.execute(
            sa.select(_REPORTS.c.closed_at, _REPORTS.c.sent_at)
            .where(_REPORTS.c.status == "sent")
            .where(_REPORTS.c.window_end > now - LATENCY_WINDOW_LOOKBACK)
            .where(_REPORTS.c.sent_at >= now - LATENCY_PERIOD)
            .where(_REPORTS.c.closed_at.is_not(None))
            .order_by(_REPORTS.c.window_end.desc())
            .limit(LATENCY_ROWS)
        ).all()
        drifting, reconciled_at = _reconcile_drift(conn)
    return Snapshot(
        drifting=drifting,
        reconciled_at=reconciled_at,
        reports={r[0]: int(r[1]) for r in rows},
        events={r[0]: int(r[2]) for r in rows},
        deliveries={r[0]: int(r[1]) for r in deliveries},
        lag_seconds=0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()),
        latencies=tuple(
            sorted(max(0.0, (p.sent_at - p.closed_at).total_seconds()) for p in pushes)
        ),
    )


def newest_finished_run(conn: sa.Connection) -> sa.Row[Any, Any] | None:
    """The id and ``finished_at`` of the newest finished reconcile run, if any."""
    return conn.execute(
        sa.select(_RUNS.c.id, _RUNS.c.finished_at)
        .where(_RUNS.c.status == "finished")
        .order_by(_RUNS.c.id.desc())
        .limit(1)
    ).first()


def _reconcile_drift(conn: sa.Connection) -> tuple[dict[str, int], float]:
    """Unrepaired drifting pairs of the newest finished reconcile run, by verdict."""
    run = newest_finished_run(conn)
    if run is None:
        return {}, 0.0
    rows = conn.execute(
        sa.select(_PAIRS.c.verdict, sa.func.count())
        .where(_PAIRS.c.run_id == run.id, _PAIRS.c.verdict.in_(DRIFT))
        .where(_PAIRS.c.repaired.is_(False))
        .group_by(_PAIRS.c.verdict)
    ).all()
    return {r[0]: int(r[1]) for r in rows}, run.finished_at.timestamp()


def _by_status(
    name: str, doc: str, label: str, values: dict[str, int], known: Sequence[str]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for status in sorted(set(known) | set(values)):
        family.add_metric([status], values.get(status, 0))
    return family


class _DatabaseCollector(Collector):
    """Gauges computed from a cached :class:`Snapshot` at scrape time."""

    def __init__(self, engine: Callable[[], sa.Engine]) -> None:
        self._engine = engine
        self._cached: tuple[float, Snapshot] | None = None
        self._lock = threading.Lock()

    def _snapshot(self) -> Snapshot:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] > CACHE_SECONDS:
                self._cached = (time.monotonic(), read_snapshot(self._engine(), now=utcnow()))
            return self._cached[1]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the gauges; only ``metersync_database_up 0`` if the database fails."""
        up = GaugeMetricFamily("metersync_database_up", "1 if the database could be read.")
        try:
            snap = self._snapshot()
        except Exception as exc:  # noqa: BLE001  any database failure: logged, reported as down
            log.warning("metrics.database_unavailable", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._gauges(snap)

    @staticmethod
    def _gauges(snap: Snapshot) -> Iterator[GaugeMetricFamily]:
        yield _by_status(
            "metersync_reports", "Usage reports by status.", "status", snap.reports, REPORT_STATUSES
        )
        yield _by_status(
            "metersync_usage_events",
            "Usage events stored, by the status of their report.",
            "report_status",
            snap.events,
            REPORT_STATUSES,
        )
        yield _by_status(
            "metersync_webhook_deliveries",
            "Webhook deliveries by status.",
            "status",
            snap.deliveries,
            DELIVERY_STATUSES,
        )
        yield GaugeMetricFamily(
            "metersync_webhook_lag_seconds",
            "Age of the oldest webhook delivery not yet processed (0 if none).",
            value=snap.lag_seconds,
        )
        latency = GaugeMetricFamily(
            "metersync_push_latency_seconds",
            "Seconds from closing a report to Stripe taking it, over the last hour.",
            labels=["quantile"],
        )
        for q in QUANTILES:
            latency.add_metric([f"{q:g}"], quantile(snap.latencies, q))
        yield latency
        yield _by_status(
            "metersync_reconcile_drifting_pairs",
            "Pairs the newest finished reconcile run found drifting and did not repair.",
            "verdict",
            snap.drifting,
            DRIFT,
        )
        yield GaugeMetricFamily(
            "metersync_reconcile_last_run_timestamp_seconds",
            "When the newest finished reconcile run ended (0 if none has).",
            value=snap.reconciled_at,
        )
        yield GaugeMetricFamily(
            "metersync_push_latency_reports",
            "Reports sent in the last hour that the latency quantiles cover.",
            value=len(snap.latencies),
        )


class Metrics:
    """The app's registry: database gauges and this process's counters."""

    def __init__(self, engine: Callable[[], sa.Engine]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._deliveries = Counter(
            "metersync_webhook_deliveries_received",
            "Webhook requests answered by this process, by result.",
            ["result"],
            registry=self.registry,
        )
        self._recorded = Counter(
            "metersync_usage_events_recorded",
            "Usage events accepted by POST /v1/usage in this process.",
            registry=self.registry,
        )
        self.registry.register(_DatabaseCollector(engine))

    def delivery(self, result: str) -> None:
        """Count one webhook request: ``stored``, ``duplicate`` or ``refused``."""
        self._deliveries.labels(result=result).inc()

    def recorded(self, events: int) -> None:
        """Count events accepted through the API."""
        self._recorded.inc(events)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
