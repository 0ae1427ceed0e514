"""The auth cache of one process: its store, and what keeps the store honest."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from redis.asyncio import Redis

from app.core.auth_cache.fanout import RedisFanOut
from app.core.auth_cache.sqlite import SQLiteProcesses
from app.core.auth_cache.store import AuthStore


class AuthCache(AuthStore):
    """Copies of open sessions and their users, dropped when the database changes.

    The lookups and fills are the store's (:class:`AuthStore`); this adds how the
    process learns about changes it did not make.

    Parameters
    ----------
    ttl_seconds
        Longest life of an entry; 0 keeps nothing (the instance then only
        announces invalidations, as the CLI does).
    redis
        Where invalidations are announced and heard; the cache is unused until
        :meth:`listen` has had a probe back.
    processes
        Without Redis: this process's registration on the SQLite database; the cache
        turns off for good when another process joins.
    max_users
        Entries kept; the oldest user (and their sessions) goes first.
    """

    def __init__(
        self,
        ttl_seconds: float,
        *,
        redis: Redis | None = None,
        processes: SQLiteProcesses | None = None,
        max_users: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            ttl_seconds,
            trusted=redis is None,
            joined_flag=processes.flag if processes is not None and processes.alone else None,
            max_users=max_users,
            clock=clock,
        )
        self._processes = processes
        #: The Redis fan-out, when there is a Redis.
        self.fanout = RedisFanOut(self, redis) if redis is not None else None

    @property
    def redis(self) -> Redis | None:
        """The Redis that carries invalidations, if any."""
        return self.fanout.redis if self.fanout is not None else None

    async def announce(self, marks: Iterable[str]) -> None:
        """Tell the other replicas to drop ``marks`` (see :meth:`RedisFanOut.announce`)."""
        if self.fanout is not None:
            await self.fanout.announce(marks)

    async def listen(self, retry_seconds: float = 2.0) -> None:
        """Apply other replicas' invalidations until cancelled (see
        :meth:`RedisFanOut.listen`); without Redis, return at once."""
        if self.fanout is not None:
            await self.fanout.listen(retry_seconds)

    async def aclose(self, drain_seconds: float = 1.0) -> None:
        """Stop: give pending announcements ``drain_seconds`` to get out, drop the
        cache, release the SQLite locks."""
        if self.fanout is not None:
            await self.fanout.drain(drain_seconds)
        self.turn_off()
        if self._processes is not None:
            self._processes.leave()
            self._processes = None
