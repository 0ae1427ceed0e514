"""Invalidations between replicas over Redis pub/sub, and knowing that none was missed.

A commit that changed users is announced on :data:`CHANNEL`; every replica drops
those users from its store. Knowing that nothing was missed:

- A listening replica publishes a probe to itself every :data:`PROBE_INTERVAL_SECONDS`
  on a channel of its own. Redis delivers a subscriber's messages in the order it ran
  the PUBLISH commands, so a probe that comes back proves that every invalidation
  published before it has arrived. The store answers only for :data:`LEASE_SECONDS`
  after sending the last probe that came back; a Redis that stalls (or a lost
  subscription) stops it within that time, and the store starts empty when probes
  return again. A probe is a PUBLISH rather than a PING because a Redis paused for
  writes (``CLIENT PAUSE WRITE``, as during a failover) still answers PING but holds
  every PUBLISH.
- A commit waits for its announcement at most :data:`ANNOUNCE_WAIT_SECONDS`, longer
  than a lease: if Redis stalled before the announcement got through, every replica
  that shares that Redis has stopped answering from memory by the time the commit
  returns. An announcement that failed is retried until Redis takes it. Once this
  replica has itself been unsure for :data:`LEASE_SECONDS`, so have the others, and
  commits stop waiting.

Left uncovered: a replica cut off from Redis while the others still reach it cannot
tell them about its commits until it reaches Redis again (it retries meanwhile); the
others miss them until then, and ``AUTH_CACHE_SECONDS`` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable

from loguru import logger
from redis.asyncio import Redis

from app.core.auth_cache.store import ALL, AuthStore

#: Redis pub/sub channel of invalidations: ``{"origin": str, "users": [uuid | "*"]}``.
CHANNEL = "user_manager:auth_cache"
#: How often a listening replica sends itself a probe through Redis.
PROBE_INTERVAL_SECONDS = 0.1
#: How long a probe that came back lets the store answer, counted from its sending.
LEASE_SECONDS = 0.5
#: Longest a commit waits for Redis to take its announcement: a lease and a margin for
#: the network, so that a Redis stalled before the announcement got through has
#: stopped every replica's cache by then.
ANNOUNCE_WAIT_SECONDS = 1.0
#: Longest pause between two attempts at an announcement Redis did not take.
RETRY_MAX_SECONDS = 2.0
#: Users named in one announcement; beyond, it empties every cache instead.
MAX_MARKS = 1000


class RedisFanOut:
    """Announces this replica's invalidations, applies the others', and keeps
    ``store`` trusted only while probes come back.

    Parameters
    ----------
    store
        The replica's store: forgets what others announce, and answers only while
        this fan-out vouches for it (:meth:`AuthStore.trust_until`).
    redis
        Where invalidations are announced and heard.
    """

    def __init__(self, store: AuthStore, redis: Redis) -> None:
        self.store = store
        self.redis = redis
        self.origin = uuid.uuid4().hex
        self._probe_channel = f"{CHANNEL}:probe:{self.origin}"
        #: Whether sureness was ever had (a lapse after it is logged).
        self._was_sure = False
        #: Whether :meth:`listen` runs with probes (a server; the CLI only announces).
        self.listening = False
        # Announcements not yet taken by Redis, and how far delivery got (tickets).
        self._pending: set[str] = set()
        self._queued = 0
        self._sent = 0
        self._progress = asyncio.Event()  # set (and replaced) at each delivery
        self._wake = asyncio.Event()  # a new announcement: retry now
        self._sender: asyncio.Task[None] | None = None

    # Announcing -------------------------------------------------------------------------

    async def announce(self, marks: Iterable[str]) -> None:
        """Tell the other replicas to drop ``marks``; return once Redis has taken the
        message, or after :meth:`announce_wait_seconds` (it is then retried in the
        background until Redis takes it)."""
        marks = set(marks)
        if not marks:
            return
        self._pending |= marks
        self._queued += 1
        ticket = self._queued
        self._wake.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.announce_wait_seconds()
        while self._sent < ticket:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return

    def announce_wait_seconds(self) -> float:
        """How long a commit waits for its announcement now.

        :data:`ANNOUNCE_WAIT_SECONDS`, unless this replica has not been sure for a
        whole lease already: the other replicas then stopped trusting their caches too
        (whatever stalled its probes stalled theirs), and waiting protects no one.
        """
        if self.listening and self.store.clock() - self.store.trusted_until >= LEASE_SECONDS:
            return 0.0
        return ANNOUNCE_WAIT_SECONDS

    async def _send(self) -> None:
        """Publish what is pending, in one message, until none is left.

        One attempt at a time, each given :data:`ANNOUNCE_WAIT_SECONDS` (a connection
        that hangs is dropped); after a failure the next attempt comes after a growing
        pause, or at once when a new announcement arrives.
        """
        failures = 0
        while self._pending:
            marks, self._pending = self._pending, set()
            ticket = self._queued
            self._wake.clear()
            users = [ALL] if ALL in marks or len(marks) > MAX_MARKS else sorted(marks)
            message = json.dumps({"origin": self.origin, "users": users})
            try:
                async with asyncio.timeout(ANNOUNCE_WAIT_SECONDS):
                    await self.redis.publish(CHANNEL, message)
            except Exception as error:  # retried; meanwhile probes keep the caches honest
                self._pending |= marks
                if failures == 0:
                    logger.error(
                        "auth cache invalidation not announced over Redis ({}); retrying",
                        type(error).__name__,
                    )
                failures += 1
                with contextlib.suppress(TimeoutError):
                    pause = min(RETRY_MAX_SECONDS, 0.1 * 2**failures)
                    await asyncio.wait_for(self._wake.wait(), pause)
                continue
            if failures:
                logger.info("auth cache invalidation announced after {} failures", failures)
                failures = 0
            self._sent = ticket
            self._progress.set()
            self._progress = asyncio.Event()

    async def drain(self, seconds: float) -> None:
        """Give pending announcements ``seconds`` to get out, then stop trying."""
        sender = self._sender
        if sender is not None and not sender.done():
            await asyncio.wait({sender}, timeout=seconds)
            if not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                logger.error("auth cache invalidation never announced over Redis")

    # Listening --------------------------------------------------------------------------

    async def listen(self, retry_seconds: float = 2.0) -> None:
        """Apply other replicas' invalidations until cancelled; reconnect on errors.

        The store answers only while probes come back (see the module's text), and
        starts empty each time they come back after a gap.
        """
        self.store.lapse(from_now=True)  # unsure from now until a probe comes back
        prober = asyncio.create_task(self._probe()) if self.store.ttl > 0 else None
        self.listening = prober is not None
        try:
            await self._listen(retry_seconds)
        finally:
            self.listening = False
            if prober is not None:
                prober.cancel()
                await asyncio.gather(prober, return_exceptions=True)

    async def _listen(self, retry_seconds: float) -> None:
        probe_channel = self._probe_channel.encode()
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL, probe_channel)
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is None or message["type"] != "message":
                            continue
                        if message["channel"] == probe_channel:
                            self._probe_returned(message["data"])
                        else:
                            self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("auth cache subscription lost ({}); retrying", type(error).__name__)
            finally:
                self.store.lapse()
            await asyncio.sleep(retry_seconds)

    async def _probe(self) -> None:
        """Publish the send time to this replica's probe channel, every interval."""
        while True:
            sent = self.store.clock()
            # A stalled or absent Redis: the lease runs out by itself.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEASE_SECONDS):
                    await self.redis.publish(self._probe_channel, repr(sent))
            if self._was_sure and self.store.clock() >= self.store.trusted_until:
                self._was_sure = False
                logger.warning(
                    "auth cache off: no probe came back through Redis for {} s", LEASE_SECONDS
                )
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    def _probe_returned(self, data: bytes) -> None:
        """A probe sent at ``data`` came back: everything published before it is in."""
        try:
            until = float(data) + LEASE_SECONDS
        except ValueError:
            return
        # After a time unsure, an invalidation may have been missed: the store starts
        # empty, and refuses the fills that started before.
        if self.store.trust_until(until):
            if not self._was_sure:
                logger.info("auth cache on: Redis answers its probes")
            self._was_sure = True

    def _apply(self, data: bytes | str) -> None:
        try:
            payload = json.loads(data)
            origin, users = payload["origin"], payload["users"]
            if not all(isinstance(user, str) for user in users):
                raise TypeError("users must be strings")
        except (ValueError, KeyError, TypeError) as error:  # ValueError: not JSON, not UTF-8
            logger.error("malformed auth cache announcement ({}): emptying the cache", error)
            self.store.forget([ALL])
            return
        if origin != self.origin:
            self.store.forget(users)
