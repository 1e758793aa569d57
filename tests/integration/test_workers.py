"""Dramatiq actors and the scheduler: in-process StubBroker and a real Redis broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
import sqlalchemy as sa
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import StubBackend

from adapter.client import Metersync
from adapter.pushing.outbox import close_reports
from adapter.store.models import UsageReport, table
from config.settings import Settings
from tests.servers import Redis
from workers.actors import declare
from workers.broker import QUEUE, BrokerHandle, make_broker
from workers.rate_limit import DramatiqSlot, pair_slots, stripe_limiter
from workers.scheduler import Scheduler

_REPORTS = table(UsageReport)


@pytest.fixture
def stub() -> Iterator[BrokerHandle]:
    """An in-process broker and rate-limit backend."""
    handle = BrokerHandle(StubBroker(), StubBackend(), "stub")
    yield handle
    handle.close()


def _statuses(ms: Metersync) -> list[str]:
    with ms.engine.connect() as conn:
        return list(conn.execute(sa.select(_REPORTS.c.status).order_by(_REPORTS.c.id)).scalars())


def _hour(ago: int) -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=ago)


def _drain(handle: BrokerHandle) -> None:
    worker = Worker(handle.broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        handle.broker.join(QUEUE, timeout=20_000)
        worker.join()
    finally:
        worker.stop()


def test_push_actor_pushes_each_report_once(ms: Metersync, stub: BrokerHandle) -> None:
    """Messages carry report ids; a duplicated message pushes nothing a second time."""
    actors = declare(stub, ms)
    ms.increment("acct_1", 3, meter="api_calls", timestamp=_hour(2))
    ms.increment("acct_1", 4, meter="api_calls", timestamp=_hour(1))
    close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
    with ms.engine.connect() as conn:
        ids = list(conn.execute(sa.select(_REPORTS.c.id)).scalars())
    for report_id in ids + ids:  # every message twice
        actors.push_report.send(report_id)
    _drain(stub)
    assert _statuses(ms) == ["dry_run", "dry_run"]
    with ms.engine.connect() as conn:
        attempts = list(conn.execute(sa.select(_REPORTS.c.attempts)).scalars())
    assert attempts == [1, 1]


@pytest.mark.redis
def test_push_actor_on_a_real_redis_broker(ms: Metersync, redis_server: Redis) -> None:
    """The same push through a RedisBroker on a real Redis server."""
    handle = make_broker(Settings(redis_url=redis_server.url))
    try:
        handle.broker.flush_all()
        actors = declare(handle, ms)
        ms.increment("acct_1", 5, meter="api_calls", timestamp=_hour(1))
        close_reports(ms.engine, now=datetime.now(UTC), due_only=False)
        actors.push_report.send(1)
        _drain(handle)
        assert _statuses(ms) == ["dry_run"]
    finally:
        handle.close()


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_scheduler_ticks_once_per_tick_and_follows_schedule_changes(
    ms: Metersync, stub: BrokerHandle
) -> None:
    """Due reports close on a tick; the same tick does nothing twice; a new schedule is
    followed on the next loop; a paused schedule closes nothing."""
    actors = declare(stub, ms)
    base = _hour(3)  # the scheduler's clock runs three hours behind, in the past
    now = base + timedelta(minutes=20)
    clock = _Clock(now)
    scheduler = Scheduler(ms, actors, client=None, clock=clock)
    ms.increment("acct_1", 1, meter="api_calls", timestamp=base - timedelta(minutes=55))
    ms.increment("acct_1", 1, meter="api_calls", timestamp=now - timedelta(minutes=1))
    first = scheduler.run_once()
    assert first is not None
    assert (first.closed, first.enqueued) == (1, 1)  # the current hour is not due yet
    assert scheduler.run_once() is None
    ms.schedule.set("every 15m", actor="test")
    clock.now = now + timedelta(minutes=11)  # :31, past the :30 tick of the new schedule
    second = scheduler.run_once()
    assert second is not None
    assert second.tick == base + timedelta(minutes=30)
    ms.schedule.pause(actor="test")
    clock.now = now + timedelta(hours=2)
    assert scheduler.run_once() is None


@pytest.mark.redis
def test_only_one_scheduler_acts(ms: Metersync, redis_server: Redis) -> None:
    """Two schedulers sharing a Redis: the one holding the lock ticks, the other waits."""
    client = redis.Redis.from_url(redis_server.url)
    client.delete("metersync:scheduler")
    stub = BrokerHandle(StubBroker(), StubBackend(), "stub")
    actors = declare(stub, ms)
    first = Scheduler(ms, actors, client=client)
    second = Scheduler(ms, actors, client=client)
    try:
        assert first.run_once() is not None
        assert second.run_once() is None
    finally:
        client.delete("metersync:scheduler")
        stub.close()


@pytest.mark.redis
def test_pair_slot_admits_one_holder_and_shares_dramatiqs_key(redis_server: Redis) -> None:
    """The (customer, meter) slot on real Redis: one holder at a time; released, it is
    free again; and a worker of the previous release holding the same key through
    dramatiq's ConcurrentRateLimiter keeps a new worker out (and the other way round)."""
    handle = make_broker(Settings(database_url="sqlite://", redis_url=redis_server.url))
    try:
        key = f"metersync:push:test:{datetime.now(UTC).timestamp()}"
        slot = pair_slots(handle, ttl=60_000)
        first, second = slot(key), slot(key)
        assert first.acquire()
        assert not second.acquire()
        first.release()
        assert second.acquire()
        old = DramatiqSlot(ConcurrentRateLimiter(handle.backend, key, limit=1, ttl=60_000))
        assert not old.acquire()  # the new slot's holder keeps an old worker out
        second.release()
        assert old.acquire()
        assert not slot(key).acquire()  # and an old worker's hold keeps a new one out
        old.release()
        assert slot(key).acquire()
    finally:
        handle.close()


def test_without_redis_slots_hold_one_at_a_time_and_the_limit_counts_calls(
    stub: BrokerHandle,
) -> None:
    """On the stub backend: a pair slot admits one holder until released, and the Stripe
    limit admits ``limit`` calls within a second, then refuses."""
    slot = pair_slots(stub, ttl=60_000)
    first, second = slot("metersync:push:1:1"), slot("metersync:push:1:1")
    assert first.acquire()
    assert not second.acquire()
    assert slot("metersync:push:1:2").acquire()  # another pair is not held up
    first.release()
    assert second.acquire()
    for _ in range(3):  # a second boundary between the calls resets the count: again
        fresh = BrokerHandle(StubBroker(), StubBackend(), "stub")  # counts from zero
        limiter = stripe_limiter(fresh, limit=3)
        started = int(time.time())
        taken = [limiter.acquire() for _ in range(4)]
        if int(time.time()) == started:
            break
    assert taken == [True, True, True, False]
