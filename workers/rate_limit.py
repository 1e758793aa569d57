"""An exact sliding-window rate limit shared through Redis.

Dramatiq's ``WindowRateLimiter`` counts per whole second, so two bursts meeting at a
second boundary can reach twice the limit within one second, and Stripe answers 429.
This limiter keeps the admission times of the last window in a sorted set and admits a
call only while fewer than ``limit`` remain. It uses the Redis server's clock, so
workers on many machines agree on the window.
"""

from __future__ import annotations

import uuid

import redis

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return 1
end
return 0
"""


class SlidingWindowLimiter:
    """At most ``limit`` acquisitions in any ``window_ms`` milliseconds, across processes."""

    def __init__(self, client: redis.Redis, key: str, *, limit: int, window_ms: int = 1000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.key = key
        self._limit = limit
        self._window_ms = window_ms
        self._script = client.register_script(_SCRIPT)

    def _acquire(self) -> bool:
        """Take a slot now if one is free (the same name as Dramatiq's limiters)."""
        taken = self._script(keys=[self.key], args=[self._window_ms, self._limit, uuid.uuid4().hex])
        return bool(taken)
