"""The limits the workers share through Redis: Stripe's rate limit and the one call at a
time per (customer, meter).

- :class:`SlidingWindowLimiter`: an exact sliding window. Dramatiq's ``WindowRateLimiter``
  counts per whole second, so two bursts meeting at a second boundary can reach twice the
  limit within one second, and Stripe answers 429. This limiter keeps the admission times
  of the last window in a sorted set and admits a call only while fewer than ``limit``
  remain. It uses the Redis server's clock, so workers on many machines agree on the
  window.
- :class:`RedisSlot`: one holder at a time of a key, on the counter dramatiq's
  ``ConcurrentRateLimiter`` keeps (so both read the same key), in one round trip.
- Without a Redis client (the in-process stub broker), dramatiq's own limiters on its
  rate-limit backend: :class:`DramatiqWindow` and :class:`DramatiqSlot`.

Everything here answers at once; :func:`wait_for` polls a limiter until it admits or a
deadline passes.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from typing import Protocol

import redis
from dramatiq.rate_limits import ConcurrentRateLimiter, RateLimiter, WindowRateLimiter
from redis.commands.core import Script

from workers.broker import BrokerHandle

#: Admits one call if fewer than ARGV[2] were admitted in the last ARGV[1] ms (ARGV[3]
#: is the admission's unique member); 1 if admitted, 0 if not.
SLIDING_WINDOW_SCRIPT = """
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
#: Takes a slot of KEYS[1] if fewer than ARGV[1] are held (ARGV[2]: TTL in ms): the
#: counter dramatiq's ``ConcurrentRateLimiter`` keeps, so both read the same key, in one
#: round trip instead of up to four.
TAKE_SLOT_SCRIPT = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], held + 1, 'PX', ARGV[2])
return 1
"""
#: Gives a slot of KEYS[1] back (ARGV[1]: TTL in ms), in one round trip.
GIVE_SLOT_SCRIPT = """
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if held <= 1 then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], held - 1, 'PX', ARGV[1])
return 1
"""


class Limiter(Protocol):
    """Admits a call now or not; what :func:`wait_for` polls."""

    @property
    def key(self) -> str:
        """The Redis key (or backend key) the limit is kept under."""
        ...

    def acquire(self) -> bool:
        """Take a turn now if one is free; False if not (never waits)."""
        ...


class Slot(Limiter, Protocol):
    """A limiter whose turns are held until given back."""

    def release(self) -> None:
        """Give back a turn this slot took."""
        ...


#: Makes the one-call-at-a-time slot of a key.
SlotFactory = Callable[[str], Slot]


class SlidingWindowLimiter:
    """At most ``limit`` acquisitions in any ``window_ms`` milliseconds, across processes."""

    def __init__(self, client: redis.Redis, key: str, *, limit: int, window_ms: int = 1000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.key = key
        self._limit = limit
        self._window_ms = window_ms
        self._script = client.register_script(SLIDING_WINDOW_SCRIPT)

    def acquire(self) -> bool:
        """Take a slot now if one is free."""
        taken = self._script(keys=[self.key], args=[self._window_ms, self._limit, uuid.uuid4().hex])
        return bool(taken)


class RedisSlot:
    """One holder at a time of ``key``: ``take`` and ``give``, :data:`TAKE_SLOT_SCRIPT`
    and :data:`GIVE_SLOT_SCRIPT` registered once (see :func:`pair_slots`), the key living
    ``ttl`` ms past its last change."""

    def __init__(self, key: str, *, take: Script, give: Script, ttl: int) -> None:
        self.key = key
        self._take, self._give, self._ttl = take, give, ttl

    def acquire(self) -> bool:
        """Take the slot now if it is free."""
        return bool(self._take(keys=[self.key], args=[1, self._ttl]))

    def release(self) -> None:
        """Give the slot back."""
        self._give(keys=[self.key], args=[self._ttl])


class DramatiqWindow:
    """A dramatiq ``WindowRateLimiter`` as a :class:`Limiter`: a turn taken is spent (the
    window limiter gives nothing back)."""

    def __init__(self, limiter: WindowRateLimiter) -> None:
        self.key: str = limiter.key
        self._limiter = limiter

    def acquire(self) -> bool:
        """Take a turn of the current window now if one is left."""
        with self._limiter.acquire(raise_on_failure=False) as taken:
            return bool(taken)


class DramatiqSlot:
    """A dramatiq rate limiter (a ``ConcurrentRateLimiter``) as a :class:`Slot`: each turn
    taken stays held, through dramatiq's own ``acquire`` context, until released."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.key: str = limiter.key
        self._limiter = limiter
        self._held: list[ExitStack] = []

    def acquire(self) -> bool:
        """Take a turn now if one is free."""
        turn = ExitStack()
        if not turn.enter_context(self._limiter.acquire(raise_on_failure=False)):
            turn.close()
            return False
        self._held.append(turn)
        return True

    def release(self) -> None:
        """Give back the latest turn taken (nothing if none is held)."""
        if self._held:
            self._held.pop().close()


def stripe_limiter(handle: BrokerHandle, *, limit: int) -> Limiter:
    """The Stripe rate limit shared by every worker on ``handle``'s broker: ``limit``
    calls per second."""
    if handle.client is not None:
        return SlidingWindowLimiter(handle.client, "metersync:stripe:calls", limit=limit)
    window = WindowRateLimiter(handle.backend, "metersync:stripe", limit=limit, window=1)
    return DramatiqWindow(window)


def pair_slots(handle: BrokerHandle, *, ttl: int) -> SlotFactory:
    """Makes the one-call-at-a-time slot for a key: :class:`RedisSlot` on a Redis broker's
    client, dramatiq's ``ConcurrentRateLimiter`` on any other rate-limit backend. ``ttl``
    (ms) frees the slot of a worker that died holding it."""
    client = handle.client
    if client is None:
        return lambda key: DramatiqSlot(
            ConcurrentRateLimiter(handle.backend, key, limit=1, ttl=ttl)
        )
    take, give = client.register_script(TAKE_SLOT_SCRIPT), client.register_script(GIVE_SLOT_SCRIPT)
    return lambda key: RedisSlot(key, take=take, give=give, ttl=ttl)


def wait_for(limiter: Limiter, *, seconds: float) -> bool:
    """Take a turn of ``limiter`` within ``seconds``; False if none came. (Dramatiq's
    ``acquire`` fails at once when full; pushes should queue.) Waiters on different keys
    poll at slightly different rates, so they do not wake in step."""
    deadline = time.monotonic() + seconds
    while not limiter.acquire():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01 + (zlib.crc32(limiter.key.encode()) % 10) / 1000)
    return True
