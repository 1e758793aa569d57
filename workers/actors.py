"""Dramatiq actors. They receive ids, never objects, and are idempotent: pushing a report
twice sends at most one meter event (the stored decision and Stripe's identifier dedup see
to that), and processing a webhook delivery twice applies it once, so a redelivered or
duplicated message is harmless.

:class:`Jobs` holds what each actor does, one plain method per actor; :class:`Actors`
declares them on one broker, in one place, and enqueues their messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, ParamSpec

import dramatiq
import sqlalchemy as sa
import structlog

from adapter.alerting.evaluate import Fired
from adapter.client import Metersync
from adapter.gateway import TransientError
from adapter.mirror.process import process_delivery
from adapter.pushing.pusher import PUSHABLE, Pusher
from adapter.pushing.stream import StreamPusher
from adapter.reconciling import run as reconciling
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import UsageReport, table
from config import defaults
from config.settings import Settings
from workers import rate_limit
from workers.broker import QUEUE, BrokerHandle

P = ParamSpec("P")
log = structlog.get_logger("metersync.worker")
_REPORTS, _DELIVERIES = table(UsageReport), table(WebhookDelivery)
#: How long a push waits for its (customer, meter) turn or a rate-limit slot before it
#: hands the message back to Dramatiq to retry later.
WAIT_SECONDS = 10.0
#: Dramatiq's retries of one push (exponential backoff); the scheduler's sweep picks up
#: anything still unsent after those, for as long as Stripe can accept it.
MAX_RETRIES = 12
#: Dramatiq's retries of a scheduled reconcile run that Stripe stopped (each resumes it).
RECONCILE_RETRIES = 5
#: Milliseconds a reconcile run may take (Dramatiq's default, 10 minutes, is too short for
#: tens of thousands of pairs at Stripe's test-mode read limit).
RECONCILE_TIME_LIMIT = 6 * 3600 * 1000
#: Reports per message with the v2 stream transport (Stripe takes 100 events per call).
STREAM_BATCH = 100
#: Dramatiq's backoff between the retries of every actor, in milliseconds.
BACKOFF = {"min_backoff": 1_000, "max_backoff": 300_000}

#: Hands reports to the push actors; how many messages' worth were enqueued.
EnqueuePushes = Callable[[Iterable[int]], int]


def mutex_ttl_ms(settings: Settings, *, attempts: int = 4, max_wait: float = 8.0) -> int:
    """How long a (customer, meter) slot outlives a worker that died holding it: just
    longer than the longest push (every attempt waiting for a rate-limit slot and timing
    out, plus backoff), so a slow call can never run beside another for the same pair."""
    longest = attempts * (settings.stripe_timeout + WAIT_SECONDS) + (attempts - 1) * max_wait
    return int((longest + 15) * 1000)


class Jobs:
    """What each actor does, one method per actor and named as it, on one metersync
    connection and the limits shared through ``handle``'s broker."""

    def __init__(
        self, ms: Metersync, handle: BrokerHandle, *, enqueue_pushes: EnqueuePushes
    ) -> None:
        throttle = _throttle(handle, ms.settings.effective_rate_limit)
        gateway = ms.gateway()
        self._ms = ms
        self._gateway = gateway
        #: Settles same-second ties by reading the object from Stripe, when a key is set.
        self._refetch = gateway.retrieve if gateway is not None else None
        self._pusher = Pusher(ms.engine, gateway=gateway.throttled(throttle) if gateway else None)
        self._streamer = StreamPusher(
            ms.engine, gateway=gateway.throttled(throttle) if gateway else None
        )
        self._slot = rate_limit.pair_slots(handle, ttl=mutex_ttl_ms(ms.settings))
        self._enqueue_pushes = enqueue_pushes

    def push_report(
        self, report_id: int, account_id: int | None = None, meter_id: int | None = None
    ) -> None:
        """Push one closed report to Stripe (or record it as a dry run). The message
        names the report's (account, meter); older messages carry the report id alone."""
        if account_id is None or meter_id is None:
            pair = _pairs(self._ms.engine, [report_id]).get(report_id)
            if pair is None:
                return  # gone or not pushable: nothing to do
            account_id, meter_id = pair
        # One call in flight per (customer, meter), as Stripe requires. The TTL frees the
        # slot of a worker killed mid-push.
        with _holding(self._slot(f"metersync:push:{account_id}:{meter_id}")):
            result = self._pusher.push(report_id)
        if result.status != "sent":  # a sent report's line is the pusher's report.pushed
            log.info("report.push", report_id=report_id, status=result.status, value=result.value)
        if result.status == "sending":  # Stripe did not take it yet: retry with backoff
            raise dramatiq.Retry(f"report {report_id}: {result.error}")

    def push_batch(self, report_ids: list[int]) -> None:
        """Push up to 100 reports in one call on Stripe's v2 meter event stream."""
        results = self._streamer.push_many(report_ids)
        waiting = [r.report_id for r in results if r.status == "sending"]
        log.info("report.push_batch", reports=len(report_ids), waiting=len(waiting))
        if waiting:
            raise dramatiq.Retry(f"{len(waiting)} reports not taken by Stripe yet")

    def process_webhook(self, delivery_id: int) -> None:
        """Apply one stored webhook delivery to the mirror; push what it closed."""
        try:
            processed = process_delivery(self._ms, delivery_id, refetch=self._refetch)
        except Exception:
            # process_delivery kept the error and counted the attempt; once it gave up the
            # delivery is `failed` (see `metersync webhooks`) and Dramatiq must stop too.
            if _delivery_status(self._ms, delivery_id) == "failed":
                log.error("webhook.failed", delivery_id=delivery_id)
                return
            raise
        if processed.to_push:
            self._enqueue_pushes(processed.to_push)
        log.info(
            "webhook.applied",
            delivery_id=delivery_id,
            status=processed.status,
            pushes=len(processed.to_push),
        )

    def reconcile(self, period: str = "previous,current") -> None:
        """Compare every (customer, meter, period) with Stripe's summaries, reporting
        only. A run Stripe stops is retried by Dramatiq and resumes where it stopped."""
        if self._gateway is None:
            log.info("reconcile.skipped", reason="dry run: no Stripe API key")
            return
        try:
            reconciling.reconcile(self._ms, self._gateway, period=period, trigger="schedule")
        except reconciling.ReconcileStopped as stopped:
            raise dramatiq.Retry(str(stopped)) from None


#: Where the alert hook's messages go, and the actor name an app declares to receive them.
ALERT_QUEUE = "metersync_alerts"
ALERT_ACTOR = "alert_fired"


class Actors:
    """The actors bound to one broker and one metersync connection: the methods of
    :class:`Jobs`, declared on ``handle``'s broker (nothing global is touched)."""

    def __init__(self, handle: BrokerHandle, ms: Metersync) -> None:
        self.broker: dramatiq.Broker = handle.broker
        self.transport = ms.settings.stripe_transport
        #: The database, to put each report's (account, meter) in its v1 message.
        self.engine = ms.engine
        jobs = Jobs(ms, handle, enqueue_pushes=self.enqueue_pushes)
        self.push_report = self._declare(jobs.push_report, max_retries=MAX_RETRIES)
        self.push_batch = self._declare(jobs.push_batch, max_retries=MAX_RETRIES)
        self.process_webhook = self._declare(
            jobs.process_webhook, max_retries=defaults.WEBHOOK_MAX_ATTEMPTS
        )
        #: Runs ``adapter.reconciling.run`` (report only) for the scheduler; takes the period.
        self.reconcile = self._declare(
            jobs.reconcile, max_retries=RECONCILE_RETRIES, time_limit=RECONCILE_TIME_LIMIT
        )
        # The alert hook's queue exists even before an app declares its actor on it, so
        # a firing's message is never refused (an in-process broker checks queues).
        self.broker.declare_queue(ALERT_QUEUE)

    def _declare(self, fn: Callable[P, None], **options: int) -> dramatiq.Actor[P, None]:
        """``fn`` as an actor of this broker on :data:`QUEUE`, named as the method."""
        # As dramatiq's ``**options: Any``: to mypy, a dict of ints might fill ``queue_name``.
        settings: dict[str, Any] = {**BACKOFF, **options}
        declare = dramatiq.actor(
            broker=self.broker, queue_name=QUEUE, actor_name=fn.__name__, **settings
        )
        return declare(fn)

    def enqueue_pushes(self, report_ids: Iterable[int]) -> int:
        """Hand reports to workers: one message each (v1), or batches (stream). A v1
        message also names the report's (account, meter), so the push takes its slot
        without a query first; reports no longer closed or in flight are left out."""
        ids = list(report_ids)
        if self.transport == "stream":
            for start in range(0, len(ids), STREAM_BATCH):
                self.push_batch.send(ids[start : start + STREAM_BATCH])
            return len(ids)
        pairs = _pairs(self.engine, ids)
        for report_id in ids:
            if report_id in pairs:
                self.push_report.send(report_id, *pairs[report_id])
        return len(pairs)

    def alert_fired(self, fired: Fired) -> None:
        """The alert hook: a message for the actor :data:`ALERT_ACTOR` on
        :data:`ALERT_QUEUE`, carrying ``fired.to_dict()``. Apps subscribe by declaring an
        actor of that name on that queue in their own Dramatiq worker."""
        self.broker.enqueue(
            dramatiq.Message(
                queue_name=ALERT_QUEUE, actor_name=ALERT_ACTOR, args=(fired.to_dict(),),
                kwargs={}, options={},
            )
        )  # fmt: skip

    def enqueue_deliveries(self, delivery_ids: Iterable[int]) -> int:
        """Hand stored webhook deliveries to workers."""
        count = 0
        for delivery_id in delivery_ids:
            self.process_webhook.send(delivery_id)
            count += 1
        return count


def declare(handle: BrokerHandle, ms: Metersync) -> Actors:
    """Declare the actors on ``handle``'s broker (nothing global is touched)."""
    return Actors(handle, ms)


def stale_deliveries(engine: sa.Engine, *, now: datetime, grace: timedelta) -> list[int]:
    """Deliveries stored but still unprocessed after ``grace``: their message was lost."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(_DELIVERIES.c.id)
                .where(_DELIVERIES.c.status == "received")
                .where(_DELIVERIES.c.received_at < now - grace)
                .order_by(_DELIVERIES.c.created, _DELIVERIES.c.id)
            ).scalars()
        )


def _delivery_status(ms: Metersync, delivery_id: int) -> str | None:
    with ms.engine.connect() as conn:
        status: str | None = conn.execute(
            sa.select(_DELIVERIES.c.status).where(_DELIVERIES.c.id == delivery_id)
        ).scalar_one_or_none()
    return status


def _throttle(handle: BrokerHandle, limit: int) -> Callable[[], None]:
    """Waits for a slot of the Stripe rate limit shared by every worker."""
    limiter = rate_limit.stripe_limiter(handle, limit=limit)

    def throttle() -> None:
        if not rate_limit.wait_for(limiter, seconds=WAIT_SECONDS):
            raise TransientError(
                f"no Stripe rate-limit slot within {WAIT_SECONDS:g}s "
                f"({limit}/s shared by all workers); the push is retried later"
            )

    return throttle


def _pairs(engine: sa.Engine, report_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(account id, meter id) of each report still closed or in flight, by report id."""
    found: dict[int, tuple[int, int]] = {}
    with engine.connect() as conn:
        for start in range(0, len(report_ids), 500):  # within SQLite's bound parameters
            rows = conn.execute(
                sa.select(_REPORTS.c.id, _REPORTS.c.account_id, _REPORTS.c.meter_id)
                .where(_REPORTS.c.id.in_(report_ids[start : start + 500]))
                .where(_REPORTS.c.status.in_(PUSHABLE))
            )
            found.update((row.id, (row.account_id, row.meter_id)) for row in rows)
    return found


@contextmanager
def _holding(slot: rate_limit.Slot) -> Iterator[None]:
    """Hold a concurrency slot (waiting for it) for the duration of the block."""
    if not rate_limit.wait_for(slot, seconds=WAIT_SECONDS):
        raise dramatiq.Retry(f"waited {WAIT_SECONDS}s for {slot.key}")
    try:
        yield
    finally:
        slot.release()
