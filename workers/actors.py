"""Dramatiq actors. They receive ids, never objects, and are idempotent: pushing a report
twice sends at most one meter event (the stored decision and Stripe's identifier dedup see
to that), and processing a webhook delivery twice applies it once, so a redelivered or
duplicated message is harmless."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import dramatiq
import sqlalchemy as sa
import structlog
from dramatiq.rate_limits import ConcurrentRateLimiter, WindowRateLimiter

from adapter.client import Metersync
from adapter.gateway import TransientError
from adapter.pushing.pusher import PUSHABLE, Pusher
from adapter.pushing.stream import StreamPusher
from adapter.reconciling import run as reconciling
from adapter.store.mirror_models import WebhookDelivery
from adapter.store.models import UsageReport, table
from config import defaults
from config.settings import Settings
from workers.broker import QUEUE, BrokerHandle
from workers.rate_limit import SlidingWindowLimiter

if TYPE_CHECKING:
    from adapter.mirror.context import Processed, Refetch

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
#: Takes a (customer, meter) slot: the counter dramatiq's ``ConcurrentRateLimiter``
#: keeps, so both read the same key, in one round trip instead of up to four.
_TAKE_SLOT = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], held + 1, 'PX', ARGV[2])
return 1
"""
#: Gives a slot back, in one round trip.
_GIVE_SLOT = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held <= 1 then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], held - 1, 'PX', ARGV[1])
return 1
"""


@dataclass
class Actors:
    """The actors bound to one broker and one metersync connection."""

    push_report: Any
    push_batch: Any
    process_webhook: Any
    broker: dramatiq.Broker
    transport: str = "v1"
    #: The database, to put each report's (account, meter) in its v1 message.
    engine: sa.Engine | None = None
    #: Runs ``adapter.reconciling.run`` (report only) for the scheduler; takes the period.
    reconcile: Any = None

    def enqueue_pushes(self, report_ids: Iterable[int]) -> int:
        """Hand reports to workers: one message each (v1), or batches (stream). A v1
        message also names the report's (account, meter), so the push takes its slot
        without a query first; reports no longer closed or in flight are left out."""
        ids = list(report_ids)
        if self.transport == "stream":
            for start in range(0, len(ids), STREAM_BATCH):
                self.push_batch.send(ids[start : start + STREAM_BATCH])
            return len(ids)
        if self.engine is None:
            for report_id in ids:
                self.push_report.send(report_id)
            return len(ids)
        pairs = _pairs(self.engine, ids)
        for report_id in ids:
            if report_id in pairs:
                self.push_report.send(report_id, *pairs[report_id])
        return len(pairs)

    def enqueue_deliveries(self, delivery_ids: Iterable[int]) -> int:
        """Hand stored webhook deliveries to workers."""
        count = 0
        for delivery_id in delivery_ids:
            self.process_webhook.send(delivery_id)
            count += 1
        return count


def mutex_ttl_ms(settings: Settings, *, attempts: int = 4, max_wait: float = 8.0) -> int:
    """How long a (customer, meter) slot outlives a worker that died holding it: just
    longer than the longest push (every attempt waiting for a rate-limit slot and timing
    out, plus backoff), so a slow call can never run beside another for the same pair."""
    longest = attempts * (settings.stripe_timeout + WAIT_SECONDS) + (attempts - 1) * max_wait
    return int((longest + 15) * 1000)


def declare(handle: BrokerHandle, ms: Metersync) -> Actors:
    """Declare the actors on ``handle``'s broker (nothing global is touched)."""
    throttle = _throttle(handle, ms.settings.effective_rate_limit)
    gateway = ms.gateway()
    pusher = Pusher(ms.engine, gateway=gateway.throttled(throttle) if gateway else None)
    streamer = StreamPusher(ms.engine, gateway=gateway.throttled(throttle) if gateway else None)
    slot = _pair_slots(handle, ttl=mutex_ttl_ms(ms.settings))

    def push_report(
        report_id: int, account_id: int | None = None, meter_id: int | None = None
    ) -> None:
        """Push one closed report to Stripe (or record it as a dry run). The message
        names the report's (account, meter); older messages carry the report id alone."""
        if account_id is None or meter_id is None:
            pair = _pairs(ms.engine, [report_id]).get(report_id)
            if pair is None:
                return  # gone or not pushable: nothing to do
            account_id, meter_id = pair
        # One call in flight per (customer, meter), as Stripe requires. The TTL frees the
        # slot of a worker killed mid-push.
        with _holding(slot(f"metersync:push:{account_id}:{meter_id}")):
            result = pusher.push(report_id)
        if result.status != "sent":  # a sent report's line is the pusher's report.pushed
            log.info("report.push", report_id=report_id, status=result.status, value=result.value)
        if result.status == "sending":  # Stripe did not take it yet: retry with backoff
            raise dramatiq.Retry(f"report {report_id}: {result.error}")

    def push_batch(report_ids: list[int]) -> None:
        """Push up to 100 reports in one call on Stripe's v2 meter event stream."""
        results = streamer.push_many(report_ids)
        waiting = [r.report_id for r in results if r.status == "sending"]
        log.info("report.push_batch", reports=len(report_ids), waiting=len(waiting))
        if waiting:
            raise dramatiq.Retry(f"{len(waiting)} reports not taken by Stripe yet")

    # Imported here, once: the mirror loads only where actors run, not per message.
    from adapter.mirror.process import process_delivery

    refetch = gateway.retrieve if gateway is not None else None

    def process_webhook(delivery_id: int) -> None:
        """Apply one stored webhook delivery to the mirror; push what it closed."""
        _process_delivery(
            ms,
            delivery_id,
            process=process_delivery,
            refetch=refetch,
            enqueue=actors.enqueue_pushes,
        )

    def actor(fn: Callable[..., None], **options: Any) -> Any:
        return dramatiq.actor(
            broker=handle.broker, queue_name=QUEUE, actor_name=fn.__name__, **options
        )(fn)

    def reconcile(period: str = "previous,current") -> None:
        """Compare every (customer, meter, period) with Stripe's summaries, reporting
        only. A run Stripe stops is retried by Dramatiq and resumes where it stopped."""
        if gateway is None:
            log.info("reconcile.skipped", reason="dry run: no Stripe API key")
            return
        try:
            reconciling.reconcile(ms, gateway, period=period, trigger="schedule")
        except reconciling.ReconcileStopped as stopped:
            raise dramatiq.Retry(str(stopped)) from None

    backoff = {"min_backoff": 1_000, "max_backoff": 300_000}
    actors = Actors(
        push_report=actor(push_report, max_retries=MAX_RETRIES, **backoff),
        push_batch=actor(push_batch, max_retries=MAX_RETRIES, **backoff),
        process_webhook=actor(
            process_webhook, max_retries=defaults.WEBHOOK_MAX_ATTEMPTS, **backoff
        ),
        broker=handle.broker,
        transport=ms.settings.stripe_transport,
        engine=ms.engine,
        reconcile=actor(
            reconcile, max_retries=RECONCILE_RETRIES, time_limit=RECONCILE_TIME_LIMIT, **backoff
        ),
    )
    return actors


def _process_delivery(
    ms: Metersync,
    delivery_id: int,
    *,
    process: Callable[..., Processed],
    refetch: Refetch | None,
    enqueue: Callable[[Iterable[int]], int],
) -> None:
    try:
        processed = process(ms, delivery_id, refetch=refetch)
    except Exception:
        # process_delivery kept the error and counted the attempt; once it gave up the
        # delivery is `failed` (see `metersync webhooks`) and Dramatiq must stop too.
        if _delivery_status(ms, delivery_id) == "failed":
            log.error("webhook.failed", delivery_id=delivery_id)
            return
        raise
    if processed.to_push:
        enqueue(processed.to_push)
    log.info(
        "webhook.applied",
        delivery_id=delivery_id,
        status=processed.status,
        pushes=len(processed.to_push),
    )


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
    limiter: Any = (
        SlidingWindowLimiter(handle.client, "metersync:stripe:calls", limit=limit)
        if handle.client is not None
        else WindowRateLimiter(handle.backend, "metersync:stripe", limit=limit, window=1)
    )

    def throttle() -> None:
        if not _wait(limiter):
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


class _RedisSlot:
    """A slot of a (customer, meter): :data:`_TAKE_SLOT` and :data:`_GIVE_SLOT` on one key."""

    def __init__(self, key: str, take: Any, give: Any, ttl: int) -> None:
        self.key, self._take, self._give, self._ttl = key, take, give, ttl

    def _acquire(self) -> bool:
        return bool(self._take(keys=[self.key], args=[1, self._ttl]))

    def _release(self) -> None:
        self._give(keys=[self.key], args=[self._ttl])


def _pair_slots(handle: BrokerHandle, *, ttl: int) -> Callable[[str], Any]:
    """Makes the one-call-at-a-time slot for a key: Lua scripts on a Redis broker's
    client, dramatiq's ``ConcurrentRateLimiter`` on any other rate-limit backend."""
    client = handle.client
    if client is None:
        return lambda key: ConcurrentRateLimiter(handle.backend, key, limit=1, ttl=ttl)
    take, give = client.register_script(_TAKE_SLOT), client.register_script(_GIVE_SLOT)
    return lambda key: _RedisSlot(key, take, give, ttl)


@contextmanager
def _holding(limiter: Any) -> Iterator[None]:
    """Hold a concurrency slot (waiting for it) for the duration of the block."""
    if not _wait(limiter):
        raise dramatiq.Retry(f"waited {WAIT_SECONDS}s for {limiter.key}")
    try:
        yield
    finally:
        limiter._release()


def _wait(limiter: Any) -> bool:
    """Take a slot of ``limiter`` within :data:`WAIT_SECONDS`; False if none came.
    (Dramatiq's public ``acquire`` raises at once when full; pushes should queue.)"""
    deadline = time.monotonic() + WAIT_SECONDS
    while not limiter._acquire():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01 + (zlib.crc32(limiter.key.encode()) % 10) / 1000)
    return True
