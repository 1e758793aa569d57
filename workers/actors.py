"""Dramatiq actors. They receive report ids, never objects, and are idempotent: pushing a
report twice sends at most one meter event (the stored decision and Stripe's identifier
dedup see to that), so a redelivered or duplicated message is harmless."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dramatiq
import sqlalchemy as sa
import structlog
from dramatiq.rate_limits import ConcurrentRateLimiter, WindowRateLimiter

from adapter.client import Metersync
from adapter.models import UsageReport, table
from workers.broker import QUEUE, BrokerHandle
from workers.rate_limit import SlidingWindowLimiter

log = structlog.get_logger("metersync.worker")
_REPORTS = table(UsageReport)
#: How long a push waits for its (customer, meter) turn or a rate-limit slot before it
#: hands the message back to Dramatiq to retry later.
WAIT_SECONDS = 10.0
#: How long a (customer, meter) slot outlives a worker that died holding it. It must
#: exceed the longest push: 4 attempts of at most ``METERSYNC_STRIPE_TIMEOUT`` (≤ 60 s)
#: plus backoff, so a slow call can never run beside another for the same pair.
MUTEX_TTL_MS = 300_000
#: Dramatiq's retries of one push (exponential backoff); the scheduler's sweep picks up
#: anything still unsent after those, for as long as Stripe can accept it.
MAX_RETRIES = 12


@dataclass
class Actors:
    """The actors bound to one broker and one metersync connection."""

    push_report: Any
    broker: dramatiq.Broker


def declare(handle: BrokerHandle, ms: Metersync) -> Actors:
    """Declare the actors on ``handle``'s broker (nothing global is touched)."""
    limit = ms.settings.effective_rate_limit
    stripe_calls: Any = (
        SlidingWindowLimiter(handle.client, "metersync:stripe:calls", limit=limit)
        if handle.client is not None
        else WindowRateLimiter(handle.backend, "metersync:stripe", limit=limit, window=1)
    )

    def push_report(report_id: int) -> None:
        """Push one closed report to Stripe (or record it as a dry run)."""
        key = _customer_meter(ms, report_id)
        if key is None:
            return  # gone or not pushable: nothing to do
        # One call in flight per (customer, meter), as Stripe requires. The TTL frees the
        # slot of a worker killed mid-push.
        mutex = ConcurrentRateLimiter(
            handle.backend, f"metersync:push:{key}", limit=1, ttl=MUTEX_TTL_MS
        )
        with _holding(mutex):
            _wait_for(stripe_calls)
            result = ms._pusher().push(report_id)
        log.info("report.push", report_id=report_id, status=result.status, value=result.value)
        if result.status == "sending":  # Stripe did not take it yet: retry with backoff
            raise dramatiq.Retry(f"report {report_id}: {result.error}")

    actor = dramatiq.actor(
        broker=handle.broker,
        queue_name=QUEUE,
        actor_name="push_report",
        max_retries=MAX_RETRIES,
        min_backoff=1_000,
        max_backoff=300_000,
    )(push_report)
    return Actors(push_report=actor, broker=handle.broker)


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
    _wait_for(limiter)
    try:
        yield
    finally:
        limiter._release()


def _wait_for(limiter: Any) -> None:
    """Take a slot of ``limiter`` within :data:`WAIT_SECONDS`, else let Dramatiq retry.
    (Dramatiq's public ``acquire`` raises at once when full; pushes should queue.)"""
    deadline = time.monotonic() + WAIT_SECONDS
    while not limiter._acquire():
        if time.monotonic() > deadline:
            raise dramatiq.Retry(f"waited {WAIT_SECONDS}s for {limiter.key}")
        time.sleep(0.01 + (zlib.crc32(limiter.key.encode()) % 10) / 1000)
