"""The brute-force guard: how many passwords, codes or mails one account or address gets.

Unlike the global rate limiter, the guard never fails open, and it counts an attempt
*before* the work it guards: the attempt takes a slot in a sliding window (a log of
timestamps per key), and a success gives the slot back. So N parallel attempts check
at most the limit, whatever their timing; only failures stay counted.

Slots live in Redis when REDIS_URL is set (every replica shares them), updated by one
Lua script so that counting and taking a slot are a single step. When Redis cannot be
reached the guard keeps counting in this process's memory, says so in the log and in
``/health/ready``, and goes back to Redis once it answers again.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from limits import RateLimitItem
from loguru import logger
from redis.asyncio import Redis

from app.core.rate_limiter import RateLimited

_WARNING_INTERVAL_SECONDS = 60
_KEY_PREFIX = "user_manager:guard:"


@dataclass(frozen=True)
class Window:
    """At most ``limit`` attempts per ``seconds``."""

    limit: int
    seconds: int

    @classmethod
    def of(cls, item: RateLimitItem) -> Window:
        """The window of a ``limits`` item ("10 per 15 minutes")."""
        return cls(item.amount, item.get_expiry())


@dataclass(frozen=True)
class Slot:
    """A counted attempt: give it back with :meth:`BruteForceGuard.forgive`."""

    key: str
    member: str


class AttemptLog(Protocol):
    """Sliding-window attempt logs, one per key."""

    async def take(self, key: str, window: Window, member: str) -> float | None:
        """Take a slot for ``member``; None when taken, else the seconds until one frees."""

    async def give_back(self, key: str, member: str) -> None:
        """Return the slot ``member`` took."""

    async def forget(self, key: str) -> None:
        """Drop every slot of ``key`` (an admin clears a lock)."""


class MemoryAttemptLog:
    """The logs in this process's memory (one process, or Redis unreachable)."""

    def __init__(self) -> None:
        self._logs: dict[str, deque[tuple[float, str]]] = {}
        self._lock = threading.Lock()

    async def take(self, key: str, window: Window, member: str) -> float | None:
        now = time.time()
        with self._lock:
            log = self._logs.setdefault(key, deque())
            while log and log[0][0] <= now - window.seconds:
                log.popleft()
            if len(log) >= window.limit:
                return log[0][0] + window.seconds - now
            log.append((now, member))
            return None

    async def give_back(self, key: str, member: str) -> None:
        with self._lock:
            log = self._logs.get(key)
            if log is not None:
                for entry in log:
                    if entry[1] == member:
                        log.remove(entry)
                        break
                if not log:
                    del self._logs[key]

    async def forget(self, key: str) -> None:
        with self._lock:
            self._logs.pop(key, None)


# KEYS[1] the log; ARGV now, window seconds, limit, member. Returns the oldest entry's
# time when full, else an empty string.
_TAKE = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(window))
return ''
"""


class RedisAttemptLog:
    """The logs in Redis (sorted sets of attempt times), shared by every replica."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)

    async def take(self, key: str, window: Window, member: str) -> float | None:
        now = time.time()
        oldest = await self._take(
            keys=[_KEY_PREFIX + key], args=[now, window.seconds, window.limit, member]
        )
        if not oldest:
            return None
        return float(oldest) + window.seconds - now

    async def give_back(self, key: str, member: str) -> None:
        await self.redis.zrem(_KEY_PREFIX + key, member)

    async def forget(self, key: str) -> None:
        await self.redis.delete(_KEY_PREFIX + key)


class FallbackAttemptLog:
    """Redis while it answers, this process's memory while it does not (never open)."""

    def __init__(self, redis: Redis) -> None:
        self.shared = RedisAttemptLog(redis)
        self.local = MemoryAttemptLog()
        self.degraded = False
        self._last_warning = 0.0

    def _fall_back(self, error: Exception) -> MemoryAttemptLog:
        self.degraded = True
        now = time.monotonic()
        if now - self._last_warning > _WARNING_INTERVAL_SECONDS:
            self._last_warning = now
            logger.warning(
                "brute-force guard: Redis unavailable ({}), counting in this process only",
                type(error).__name__,
            )
        return self.local

    async def take(self, key: str, window: Window, member: str) -> float | None:
        try:
            wait = await self.shared.take(key, window, member)
        except Exception as error:  # any Redis failure: keep limiting, locally
            return await self._fall_back(error).take(key, window, member)
        if self.degraded:
            self.degraded = False
            logger.info("brute-force guard: Redis is back, counts are shared again")
        return wait

    async def give_back(self, key: str, member: str) -> None:
        # The slot may live in either log; returning it to both is harmless.
        await self.local.give_back(key, member)
        try:
            await self.shared.give_back(key, member)
        except Exception as error:
            self._fall_back(error)

    async def forget(self, key: str) -> None:
        # Unlike a slot given back, a cleared lock must be cleared where the counts
        # are shared: a Redis failure is the caller's to report.
        await self.local.forget(key)
        await self.shared.forget(key)


class BruteForceGuard:
    """Limits on guessing and on mails, per account and per address, always on.

    ``account`` windows (AUTH_RATE_LIMIT_ACCOUNT) bound what one account (or one
    device, or one recipient) gets; ``address`` windows (AUTH_RATE_LIMIT_ADDRESS) bound
    what one client address gets across accounts.
    """

    def __init__(self, log: AttemptLog, account: Window, address: Window) -> None:
        self.log = log
        self.account = account
        self.address = address

    @property
    def shared(self) -> bool:
        """True while the counts are shared by every replica (in Redis)."""
        return isinstance(self.log, FallbackAttemptLog) and not self.log.degraded

    async def _take(self, key: str, window: Window) -> Slot | float:
        member = uuid.uuid4().hex
        wait = await self.log.take(key, window, member)
        return Slot(key, member) if wait is None else wait

    @staticmethod
    def _refuse(wait: float) -> RateLimited:
        return RateLimited(headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def attempt(self, action: str, *, address: str | None) -> None:
        """Count an attempt from ``address`` (kept, success or not); refuse over the limit."""
        if not address:
            return
        taken = await self._take(f"{action}:address:{address}", self.address)
        if not isinstance(taken, Slot):
            raise self._refuse(taken)

    async def claim(self, action: str, *, account: str) -> Slot:
        """Count an attempt on ``account`` before checking it; refuse over the limit.

        Give the slot back with :meth:`forgive` when the attempt succeeds: only
        failures stay counted, so the owner who logs in is never locked out by it.
        """
        slot = await self.try_claim(action, account=account)
        if isinstance(slot, Slot):
            return slot
        raise self._refuse(slot)

    async def try_claim(self, action: str, *, account: str) -> Slot | float:
        """:meth:`claim` without raising: the slot, or the seconds until one frees."""
        return await self._take(f"{action}:account:{account.lower()}", self.account)

    async def forgive(self, slot: Slot) -> None:
        """Give back a slot whose attempt succeeded."""
        await self.log.give_back(slot.key, slot.member)

    async def clear(self, action: str, *, account: str) -> None:
        """Forget every counted attempt of ``action`` on ``account`` (its lock ends)."""
        await self.log.forget(f"{action}:account:{account.lower()}")

    async def spend(self, action: str, *, account: str) -> None:
        """Count one use of ``action`` for ``account`` (a mail sent to it, say), kept
        whatever happens next; refuse over the limit."""
        await self.claim(action, account=account)
