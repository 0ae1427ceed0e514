"""Sessions and users kept in memory: the token check of a read without a database trip.

Every authenticated request checks its session: an ended session's access token is
refused at once. Reading the session and its user costs a database
round trip that dwarfs the rest of a read, so routes that only read ask this cache
first (``ReaderAuth`` / ``Reader`` in ``app.routers.deps``); routes that change
something always authenticate against the database and get live ORM objects.

What is kept: per session id, a copy of the open session; per user UUID, a copy of the
user without secrets, history and picture id. Copies are detached ORM objects that
refuse writes (:class:`SnapshotWrite`), so a reader route that starts writing fails
loudly instead of losing the change.

When an entry goes:

- a commit that wrote a ``user`` or ``session`` row drops that user and their
  sessions: in this process before ``commit()`` returns, and with Redis in every
  replica (announced on :data:`CHANNEL`; see below for a Redis that does not answer).
  ORM writes are seen on flush; a bulk UPDATE/DELETE names its users with
  ``execution_options(auth_cache_users=[...])``, and one that does not empties the
  whole cache;
- after ``AUTH_CACHE_SECONDS``, and never later than the session's expiry (bounds
  what no hook sees: a CLI command without Redis, hand-written SQL);
- whenever this process may have missed an invalidation, the cache empties and is not
  used until it is sure again (below).

A copy read from the database while an invalidation happened is not stored
(:attr:`AuthCache.generation`), so a slow reader cannot put back what a writer has
just removed.

Knowing that nothing was missed:

- Without Redis a process hears only its own commits, so the cache is used only by
  the one process of a SQLite database (:class:`SQLiteProcesses`).
- With Redis, a listening replica publishes a probe to itself every
  :data:`PROBE_INTERVAL_SECONDS` on a channel of its own. Redis delivers a
  subscriber's messages in the order it ran the PUBLISH commands, so a probe that
  comes back proves that every invalidation published before it has arrived. The
  cache answers only for :data:`LEASE_SECONDS` after sending the last probe that came
  back; a Redis that stalls (or a lost subscription) stops it within that time, and
  the cache starts empty when probes return again. A probe is a PUBLISH rather than a
  PING because a Redis paused for writes (``CLIENT PAUSE WRITE``, as during a
  failover) still answers PING but holds every PUBLISH.
- A commit waits for its announcement at most :data:`ANNOUNCE_WAIT_SECONDS`, longer
  than a lease: if Redis stalled before the announcement got through, every replica
  that shares that Redis has stopped answering from memory by the time the commit
  returns. An announcement that failed is retried until Redis takes it. Once this
  replica has itself been unsure for :data:`LEASE_SECONDS`, so have the others, and
  commits stop waiting.

The cost of a cached lookup is one monotonic clock read and comparison (plus, on
SQLite without Redis, one byte read from shared memory): no Redis round trip.
Left uncovered: a replica cut off from Redis while the others still reach it cannot
tell them about its commits until it reaches Redis again (it retries meanwhile); the
others miss them until then, and ``AUTH_CACHE_SECONDS`` at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import math
import mmap
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from loguru import logger
from redis.asyncio import Redis
from sqlalchemy import Delete, Update, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, make_transient_to_detached
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm.attributes import set_committed_value

from app.models import Session, User, now_epoch

#: Redis pub/sub channel of invalidations: ``{"origin": str, "users": [uuid | "*"]}``.
CHANNEL = "user_manager:auth_cache"
#: The mark that empties the whole cache.
ALL = "*"
#: How often a listening replica sends itself a probe through Redis.
PROBE_INTERVAL_SECONDS = 0.1
#: How long a probe that came back lets the cache answer, counted from its sending.
LEASE_SECONDS = 0.5
#: Longest a commit waits for Redis to take its announcement: a lease and a margin for
#: the network, so that a Redis stalled before the announcement got through has
#: stopped every replica's cache by then.
ANNOUNCE_WAIT_SECONDS = 1.0
#: Longest pause between two attempts at an announcement Redis did not take.
RETRY_MAX_SECONDS = 2.0
#: Users named in one announcement; beyond, it empties every cache instead.
MAX_MARKS = 1000
#: Columns a copy does not carry: secrets, the picture id (the database clears it when
#: the file goes, which no hook sees).
USER_OMITTED = frozenset(
    {"hashed_password", "otp_secret", "otp_last_timestep", "profile_picture_id"}
)
SESSION_OMITTED = frozenset({"refresh_token_hash"})

_INFO_CACHE = "auth_cache"
_INFO_MARKS = "auth_cache_marks"
_INFO_ANNOUNCE = "auth_cache_announce"
_SNAPSHOT = "auth_cache_snapshot"

_Model = TypeVar("_Model", User, Session)


class SnapshotWrite(RuntimeError):
    """A cached copy was written to: that route must authenticate with the database."""


def snapshot(instance: _Model, omitted: frozenset[str]) -> _Model:
    """A detached, read-only copy of ``instance`` without the ``omitted`` columns.

    Reading an omitted column raises (the copy has no session to load it from).
    """
    mapper = sa_inspect(instance).mapper
    copy = mapper.class_manager.new_instance()
    for attribute in mapper.column_attrs:
        key = attribute.key
        if key not in omitted:
            value = getattr(instance, key)
            set_committed_value(copy, key, list(value) if isinstance(value, list) else value)
    make_transient_to_detached(copy)
    sa_inspect(copy).info[_SNAPSHOT] = True
    return copy


class SQLiteProcesses:
    """The server processes that use one SQLite database file, told apart by file locks.

    Without Redis a process hears only its own commits, so it may keep the cache only
    while no other process uses the database: not a second server on the same file,
    not a sibling worker however it was started (spawned, forked). Two files beside
    the database say who is there; the kernel drops their locks when a process ends,
    however it ends:

    - ``<database>.cache-owner-lock``, held exclusively for life by the process that
      found no other (the owner). Its first byte, mapped into every process's memory,
      is set by each process that comes later: the owner reads it on every lookup.
    - ``<database>.cache-members-lock``, held shared for life by every other process,
      so that an owner started while they run knows they are there.

    An owner writes "alone" while it holds the members lock exclusively, and a later
    process writes "shared" only once it holds that lock, so the last word is always
    right. Once shared, the owner stays uncached until it restarts alone.
    """

    def __init__(self, owner_fd: int, members_fd: int, flag: mmap.mmap, alone: bool) -> None:
        self._owner_fd = owner_fd
        self._members_fd = members_fd
        #: First byte non-zero: another process has joined since the owner started.
        self.flag = flag
        #: Whether this process found no other on the database when it joined.
        self.alone = alone

    @classmethod
    def join(cls, database: str | Path) -> SQLiteProcesses:
        """Register this process as a user of the SQLite file ``database`` (blocks
        briefly: run it in a thread). Raises OSError when the lock files cannot be made."""
        database = Path(database).resolve()  # one file, however it is named
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        owner_fd = os.open(f"{database}.cache-owner-lock", flags, 0o600)
        try:
            members_fd = os.open(f"{database}.cache-members-lock", flags, 0o600)
        except OSError:
            os.close(owner_fd)
            raise
        flag = None
        try:
            if os.fstat(owner_fd).st_size < 1:
                os.ftruncate(owner_fd, 1)  # room for the flag; a racing twin does the same
            flag = mmap.mmap(owner_fd, 1)
            try:
                fcntl.flock(owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # an owner is running: this process comes later
                fcntl.flock(members_fd, fcntl.LOCK_SH)  # waits out an owner's check only
                flag[0] = 1
                return cls(owner_fd, members_fd, flag, alone=False)
            try:
                fcntl.flock(members_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # others outlived the previous owner
                flag[0] = 1
                return cls(owner_fd, members_fd, flag, alone=False)
            flag[0] = 0
            fcntl.flock(members_fd, fcntl.LOCK_UN)
            return cls(owner_fd, members_fd, flag, alone=True)
        except BaseException:
            if flag is not None:
                flag.close()
            os.close(owner_fd)
            os.close(members_fd)
            raise

    def leave(self) -> None:
        """Release both locks (exiting does the same)."""
        self.flag.close()
        os.close(self._members_fd)
        os.close(self._owner_fd)


class AuthCache:
    """Copies of open sessions and their users, dropped when the database changes.

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
        self.ttl = ttl_seconds
        self.redis = redis
        self.max_users = max_users
        self.max_sessions = 4 * max_users
        self.clock = clock
        #: Bumped by every invalidation; a fill that started before is not stored.
        self.generation = 0
        #: Lookups are answered until this time (:attr:`clock`): with Redis, one lease
        #: after the last probe that came back; without, for ever or never.
        self._sure_until = -math.inf if ttl_seconds <= 0 or redis is not None else math.inf
        #: Whether sureness was ever had (a lapse after it is logged).
        self._was_sure = False
        self._processes = processes
        #: The owner's view of the "another process joined" byte (None: not watched).
        self._shared_flag = processes.flag if processes is not None and processes.alone else None
        self.origin = uuid.uuid4().hex
        self._probe_channel = f"{CHANNEL}:probe:{self.origin}"
        #: Whether :meth:`listen` runs with probes (a server; the CLI only announces).
        self.listening = False
        # Announcements not yet taken by Redis, and how far delivery got (tickets).
        self._pending: set[str] = set()
        self._queued = 0
        self._sent = 0
        self._progress = asyncio.Event()  # set (and replaced) at each delivery
        self._wake = asyncio.Event()  # a new announcement: retry now
        self._sender: asyncio.Task[None] | None = None
        self._users: dict[str, tuple[float, User]] = {}
        self._sessions: dict[str, tuple[float, Session]] = {}
        self._sessions_of: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)

    @property
    def available(self) -> bool:
        """Whether lookups may be answered now."""
        return self.clock() < self._sure_until and not self._joined_by_another()

    def _joined_by_another(self) -> bool:
        """Whether another process opened the SQLite database since this one (then the
        cache goes off for good)."""
        if self._shared_flag is None or not self._shared_flag[0]:
            return False
        logger.warning(
            "auth cache off: another process uses this SQLite database, "
            "and without REDIS_URL it could not tell this one about logouts"
        )
        self._shared_flag = None
        self._sure_until = -math.inf
        self.forget([ALL])
        return True

    # Lookups ----------------------------------------------------------------------------

    def session(self, session_id: str) -> tuple[Session, User] | None:
        """The cached session and its user, or None (then ask the database)."""
        now = self.clock()
        if now >= self._sure_until or (self._shared_flag is not None and self._shared_flag[0]):
            self._joined_by_another()
            return None
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop_session(session_id)
            return None
        session = entry[1]
        user = self._user(session.user_uuid, now)
        return None if user is None else (session, user)

    def user(self, user_uuid: str) -> User | None:
        """The cached copy of a user, or None (then ask the database)."""
        now = self.clock()
        if now >= self._sure_until or (self._shared_flag is not None and self._shared_flag[0]):
            self._joined_by_another()
            return None
        return self._user(user_uuid, now)

    def _user(self, user_uuid: str, now: float) -> User | None:
        entry = self._users.get(user_uuid)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop_user(user_uuid)
            return None
        return entry[1]

    # Fills ------------------------------------------------------------------------------

    def store_user(self, generation: int, user: User) -> User | None:
        """Keep a copy of ``user`` read at ``generation``; return it (None if not kept)."""
        if not self.available or generation != self.generation:
            return None
        if user.uuid not in self._users and len(self._users) >= self.max_users:
            self._drop_user(next(iter(self._users)))
        copy = snapshot(user, USER_OMITTED)
        self._users[user.uuid] = (self.clock() + self.ttl, copy)
        return copy

    def store_session(
        self, generation: int, session: Session, user: User
    ) -> tuple[Session, User] | None:
        """Keep copies of an open session and its user, read at ``generation``;
        return them (None if not kept)."""
        remaining = session.expires_at - now_epoch()
        if remaining <= 0:
            return None
        user_copy = self.store_user(generation, user)
        if user_copy is None:
            return None
        if session.id not in self._sessions and len(self._sessions) >= self.max_sessions:
            self._drop_session(next(iter(self._sessions)))
        until = self.clock() + min(self.ttl, remaining)
        session_copy = snapshot(session, SESSION_OMITTED)
        self._sessions[session.id] = (until, session_copy)
        self._sessions_of.setdefault(session.user_uuid, set()).add(session.id)
        return session_copy, user_copy

    # Invalidation -----------------------------------------------------------------------

    def forget(self, marks: Iterable[str]) -> None:
        """Drop the users named by ``marks`` and their sessions (:data:`ALL`: everything)."""
        marks = set(marks)
        self.generation += 1
        if ALL in marks:
            self._users.clear()
            self._sessions.clear()
            self._sessions_of.clear()
            return
        for user_uuid in marks:
            self._drop_user(user_uuid)

    def _drop_user(self, user_uuid: str) -> None:
        self._users.pop(user_uuid, None)
        for session_id in self._sessions_of.pop(user_uuid, ()):
            self._sessions.pop(session_id, None)

    def _drop_session(self, session_id: str) -> None:
        entry = self._sessions.pop(session_id, None)
        if entry is not None:
            remaining = self._sessions_of.get(entry[1].user_uuid)
            if remaining is not None:
                remaining.discard(session_id)

    # Replicas: announcing ---------------------------------------------------------------

    async def announce(self, marks: Iterable[str]) -> None:
        """Tell the other replicas to drop ``marks``; return once Redis has taken the
        message, or after :meth:`announce_wait_seconds` (it is then retried in the
        background until Redis takes it)."""
        marks = set(marks)
        if self.redis is None or not marks:
            return
        self._pending |= marks
        self._queued += 1
        ticket = self._queued
        self._wake.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(self.redis))
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
        if self.listening and self.clock() - self._sure_until >= LEASE_SECONDS:
            return 0.0
        return ANNOUNCE_WAIT_SECONDS

    async def _send(self, redis: Redis) -> None:
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
                    await redis.publish(CHANNEL, message)
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

    async def aclose(self, drain_seconds: float = 1.0) -> None:
        """Stop: give pending announcements ``drain_seconds`` to get out, drop the
        cache, release the SQLite locks."""
        sender = self._sender
        if sender is not None and not sender.done():
            await asyncio.wait({sender}, timeout=drain_seconds)
            if not sender.done():
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                logger.error("auth cache invalidation never announced over Redis")
        self._sure_until = -math.inf
        self._shared_flag = None
        self.forget([ALL])
        if self._processes is not None:
            self._processes.leave()
            self._processes = None

    # Replicas: listening ----------------------------------------------------------------

    async def listen(self, retry_seconds: float = 2.0) -> None:
        """Apply other replicas' invalidations until cancelled; reconnect on errors.

        The cache answers only while its probes come back (see the module's text),
        and starts empty each time they come back after a gap.
        """
        if self.redis is None:
            return
        self._sure_until = self.clock()  # unsure from now until a probe comes back
        self.forget([ALL])
        prober = asyncio.create_task(self._probe(self.redis)) if self.ttl > 0 else None
        self.listening = prober is not None
        try:
            await self._listen(self.redis, retry_seconds)
        finally:
            self.listening = False
            if prober is not None:
                prober.cancel()
                await asyncio.gather(prober, return_exceptions=True)

    async def _listen(self, redis: Redis, retry_seconds: float) -> None:
        probe_channel = self._probe_channel.encode()
        while True:
            try:
                async with redis.pubsub() as pubsub:
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
                self._lapse()
            await asyncio.sleep(retry_seconds)

    async def _probe(self, redis: Redis) -> None:
        """Publish the send time to this replica's probe channel, every interval."""
        while True:
            sent = self.clock()
            # A stalled or absent Redis: the lease runs out by itself.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEASE_SECONDS):
                    await redis.publish(self._probe_channel, repr(sent))
            if self._was_sure and self.clock() >= self._sure_until:
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
        now = self.clock()
        if until <= now or self.ttl <= 0:
            return  # too late to vouch for now
        if now >= self._sure_until:
            # Unsure until now: an invalidation may have been missed meanwhile, and a
            # fill that started before must not be stored (forget bumps the generation).
            self.forget([ALL])
            if not self._was_sure:
                logger.info("auth cache on: Redis answers its probes")
            self._was_sure = True
        self._sure_until = max(self._sure_until, until)

    def _lapse(self) -> None:
        """Stop answering from now on (until a probe comes back), and drop everything."""
        self._sure_until = min(self._sure_until, self.clock())
        self.forget([ALL])

    def _apply(self, data: bytes | str) -> None:
        try:
            payload = json.loads(data)
            origin, users = payload["origin"], payload["users"]
            if not all(isinstance(user, str) for user in users):
                raise TypeError("users must be strings")
        except (ValueError, KeyError, TypeError) as error:  # ValueError: not JSON, not UTF-8
            logger.error("malformed auth cache announcement ({}): emptying the cache", error)
            self.forget([ALL])
            return
        if origin != self.origin:
            self.forget(users)


# Sessions that keep the cache right -------------------------------------------------------


class CachingSession(AsyncSession):
    """An AsyncSession whose commits drop what they changed from the cache.

    The local cache is updated by the ``after_commit`` hook below; the announcement
    to other replicas is awaited here, so it has gone out when ``commit()`` returns
    (or, with a stalled Redis, the other replicas' caches have stopped answering:
    :meth:`AuthCache.announce`).
    """

    async def commit(self) -> None:
        await super().commit()
        await self._announce()

    async def close(self) -> None:
        await self._announce()  # commits made some other way (``begin()`` blocks)
        await super().close()

    async def _announce(self) -> None:
        marks = self.info.pop(_INFO_ANNOUNCE, None)
        cache = self.info.get(_INFO_CACHE)
        if marks and cache is not None:
            await cache.announce(marks)


def session_options(cache: AuthCache) -> dict[str, Any]:
    """The ``async_sessionmaker`` arguments that tie its sessions to ``cache``."""
    return {"class_": CachingSession, "info": {_INFO_CACHE: cache}}


def _marks(session: OrmSession) -> set[str]:
    return session.info.setdefault(_INFO_MARKS, set())


@event.listens_for(OrmSession, "after_flush")
def _mark_flushed(session: OrmSession, _flush_context: Any) -> None:
    if _INFO_CACHE not in session.info:
        return
    for instance in (*session.new, *session.dirty, *session.deleted):
        if isinstance(instance, User):
            _marks(session).add(instance.uuid)
        elif isinstance(instance, Session):
            _marks(session).add(instance.user_uuid)


@event.listens_for(OrmSession, "do_orm_execute")
def _mark_bulk(state: ORMExecuteState) -> None:
    statement = state.statement
    if not isinstance(statement, Update | Delete) or _INFO_CACHE not in state.session.info:
        return
    if statement.table not in (User.__table__, Session.__table__):
        return
    users = state.execution_options.get("auth_cache_users")
    _marks(state.session).update([ALL] if users is None else users)


@event.listens_for(OrmSession, "after_commit")
def _forget_committed(session: OrmSession) -> None:
    marks = session.info.pop(_INFO_MARKS, None)
    if marks:
        session.info[_INFO_CACHE].forget(marks)
        session.info.setdefault(_INFO_ANNOUNCE, set()).update(marks)


def _refuse_snapshot_write(state: Any, value: Any, _old: Any, _initiator: Any) -> Any:
    if state.info.get(_SNAPSHOT):
        raise SnapshotWrite(
            f"{state.class_.__name__} copy from the auth cache is read-only; "
            "authenticate this route with the database"
        )
    return value


for _model in (User, Session):
    for _attribute in _model.__mapper__.column_attrs:
        event.listen(
            _attribute.class_attribute, "set", _refuse_snapshot_write, raw=True, retval=True
        )
