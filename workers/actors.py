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
from typing import Any

import dramatiq
import sqlalchemy as sa
import structlog
from dramatiq.rate_limits import ConcurrentRateLimiter, WindowRateLimiter

from adapter.client import Metersync
from adapter.gateway import TransientError
from adapter.mirror_models import WebhookDelivery
from adapter.models import UsageReport, table
from adapter.pushing import Pusher
from adapter.stream_push import StreamPusher
from config import defaults
from config.settings import Settings
from workers.broker import QUEUE, BrokerHandle
from workers.rate_limit import SlidingWindowLimiter

log = structlog.get_logger("metersync.worker")
_REPORTS, _DELIVERIES = table(UsageReport), table(WebhookDelivery)
#: How long a push waits for its (customer, meter) turn or a rate-limit slot before it
#: hands the message back to Dramatiq to retry later.
WAIT_SECONDS = 10.0
#: Dramatiq's retries of one push (exponential backoff); the scheduler's sweep picks up
#: anything still unsent after those, for as long as Stripe can accept it.
MAX_RETRIES = 12
#: Reports per message with the v2 stream transport (Stripe takes 100 events per call).
STREAM_BATCH = 100


@dataclass
class Actors:
    """The actors bound to one broker and one metersync connection."""

    push_report: Any
    push_batch: Any
    process_webhook: Any
    broker: dramatiq.Broker
    transport: str = "v1"

    def enqueue_pushes(self, report_ids: Iterable[int]) -> int:
        """Hand reports to workers: one message each (v1), or batches (stream)."""
        ids = list(report_ids)
        if self.transport == "stream":
            for start in range(0, len(ids), STREAM_BATCH):
                self.push_batch.send(ids[start : start + STREAM_BATCH])
        else:
            for report_id in ids:
                self.push_report.send(report_id)
        return len(ids)

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
    ttl = mutex_ttl_ms(ms.settings)

    def push_report(report_id: int) -> None:
        """Push one closed report to Stripe (or record it as a dry run)."""
        key = _customer_meter(ms, report_id)
        if key is None:
            return  # gone or not pushable: nothing to do
        # One call in flight per (customer, meter), as Stripe requires. The TTL frees the
        # slot of a worker killed mid-push.
        mutex = ConcurrentRateLimiter(handle.backend, f"metersync:push:{key}", limit=1, ttl=ttl)
        with _holding(mutex):
            result = pusher.push(report_id)
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

    def process_webhook(delivery_id: int) -> None:
        """Apply one stored webhook delivery to the mirror; push what it closed."""
        _process_delivery(ms, delivery_id, gateway=gateway, enqueue=actors.enqueue_pushes)

    def actor(fn: Callable[..., None], **options: Any) -> Any:
        return dramatiq.actor(
            broker=handle.broker, queue_name=QUEUE, actor_name=fn.__name__, **options
        )(fn)

    backoff = {"min_backoff": 1_000, "max_backoff": 300_000}
    actors = Actors(
        push_report=actor(push_report, max_retries=MAX_RETRIES, **backoff),
        push_batch=actor(push_batch, max_retries=MAX_RETRIES, **backoff),
        process_webhook=actor(
            process_webhook, max_retries=defaults.WEBHOOK_MAX_ATTEMPTS, **backoff
        ),
        broker=handle.broker,
        transport=ms.settings.stripe_transport,
    )
    return actors


def _process_delivery(
    ms: Metersync,
    delivery_id: int,
    *,
    gateway: Any,
    enqueue: Callable[[Iterable[int]], int],
) -> None:
    from webhooks.mirror.process import process_delivery

    refetch = gateway.retrieve if gateway is not None else None
    try:
        processed = process_delivery(ms, delivery_id, refetch=refetch)
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


def _customer_meter(ms: Metersync, report_id: int) -> str | None:
    with ms.engine.connect() as conn:
        row = conn.execute(
            sa.select(_REPORTS.c.account_id, _REPORTS.c.meter_id, _REPORTS.c.status).where(
                _REPORTS.c.id == report_id
            )
        ).first()
    if row is None or row.status not in ("closed", "sending"):
        return None
    return f"{row.account_id}:{row.meter_id}"


@contextmanager
def _holding(limiter: ConcurrentRateLimiter) -> Iterator[None]:
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
