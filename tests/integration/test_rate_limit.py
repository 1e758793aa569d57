"""The sliding-window Stripe rate limit, on a real Redis."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from tests.servers import Redis
from workers import rate_limit
from workers.rate_limit import SlidingWindowLimiter

pytestmark = pytest.mark.redis


def _limiter(server: Redis, limit: int, window_ms: int = 1000) -> SlidingWindowLimiter:
    client = redis.Redis.from_url(server.url)
    return SlidingWindowLimiter(client, f"test:limit:{uuid.uuid4().hex}", limit=limit,
                                window_ms=window_ms)  # fmt: skip


def test_admits_the_limit_then_refuses_until_the_window_slides(redis_server: Redis) -> None:
    """Five slots per 300 ms: five are taken, the sixth waits for the window to move."""
    limiter = _limiter(redis_server, 5, window_ms=300)
    assert [limiter.acquire() for _ in range(6)] == [True] * 5 + [False]
    time.sleep(0.35)
    assert limiter.acquire()


def test_no_window_of_a_second_ever_holds_more_than_the_limit(redis_server: Redis) -> None:
    """Eight threads hammering for 2.5 s: in every one-second span at most ``limit`` pass,
    even across whole-second boundaries (where a per-second counter lets twice through).
    Admission times are the Redis clock's, as the limiter sees them: times taken in the
    test after each call would bunch up whenever a loaded machine delays a thread."""
    limit = 20
    limiter = _limiter(redis_server, limit)
    # The limiter's own script, answering the admission time (µs) instead of 1.
    assert rate_limit.SLIDING_WINDOW_SCRIPT.count("return 1") == 1
    timed = redis.Redis.from_url(redis_server.url).register_script(
        rate_limit.SLIDING_WINDOW_SCRIPT.replace("return 1", "return now")
    )
    admitted: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + 2.5

    def hammer() -> None:
        while time.monotonic() < stop:
            at = int(timed(keys=[limiter.key], args=[1000, limit, uuid.uuid4().hex]))
            if at:
                with lock:
                    admitted.append(at)
            time.sleep(0.002)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted.sort()
    busiest = max(sum(1 for other in admitted if at <= other < at + 1_000_000) for at in admitted)
    assert busiest <= limit
    assert len(admitted) >= 2 * limit  # it did admit at the limit, not far below it
