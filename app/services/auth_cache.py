"""Sessions and users kept in memory: the token check of a read without a database trip.

Every authenticated request checks its session (DESIGN.md §4: an ended session's
access token is refused at once). Reading the session and its user costs a database
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
  replica (announced on :data:`CHANNEL` before ``commit()`` returns). ORM writes are
  seen on flush; a bulk UPDATE/DELETE names its users with
  ``execution_options(auth_cache_users=[...])``, and one that does not empties the
  whole cache;
- after ``AUTH_CACHE_SECONDS``, and never later than the session's expiry (bounds
  what no hook sees: a CLI command without Redis, hand-written SQL);
- while a Redis subscription is down the cache is not used at all (another replica's
  logout could be missed), and it starts empty when the subscription comes back.

A copy read from the database while an invalidation happened is not stored
(:attr:`AuthCache.generation`), so a slow reader cannot put back what a writer has
just removed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from loguru import logger
from redis.asyncio import Redis
from sqlalchemy import event
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


class AuthCache:
    """Copies of open sessions and their users, dropped when the database changes.

    Parameters
    ----------
    ttl_seconds
        Longest life of an entry; 0 keeps nothing (the instance then only
        announces invalidations, as the CLI does).
    redis
        Where invalidations are announced and heard; the cache is unused until
        :meth:`listen` has subscribed.
    max_users
        Entries kept; the oldest user (and their sessions) goes first.
    """

    def __init__(
        self,
        ttl_seconds: float,
        *,
        redis: Redis | None = None,
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
        #: Whether lookups may be answered; with Redis, only while subscribed.
        self.available = ttl_seconds > 0 and redis is None
        self.origin = uuid.uuid4().hex
        #: Whether :meth:`listen` runs (a server; the CLI only announces).
        self.listening = False
        self._background: set[asyncio.Task[None]] = set()
        self._users: dict[str, tuple[float, User]] = {}
        self._sessions: dict[str, tuple[float, Session]] = {}
        self._sessions_of: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)

    # Lookups ----------------------------------------------------------------------------

    def session(self, session_id: str) -> tuple[Session, User] | None:
        """The cached session and its user, or None (then ask the database)."""
        if not self.available:
            return None
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            self._drop_session(session_id)
            return None
        session = entry[1]
        user = self.user(session.user_uuid)
        return None if user is None else (session, user)

    def user(self, user_uuid: str) -> User | None:
        """The cached copy of a user, or None (then ask the database)."""
        if not self.available:
            return None
        entry = self._users.get(user_uuid)
        if entry is None:
            return None
        if entry[0] <= self.clock():
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

    # Replicas ---------------------------------------------------------------------------

    async def announce(self, marks: Iterable[str]) -> None:
        """Tell the other replicas to drop ``marks`` (failures are logged).

        Awaited while this process is subscribed (Redis answers: the message is out
        before the caller goes on). While its subscription is down Redis may not
        answer for seconds, so the message is sent in the background instead of
        holding up the request.
        """
        if self.redis is None:
            return
        message = json.dumps({"origin": self.origin, "users": sorted(set(marks))})
        if self.listening and not self.available:
            task = asyncio.create_task(self._publish(message))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        await self._publish(message)

    async def _publish(self, message: str) -> None:
        try:
            await self.redis.publish(CHANNEL, message)
        except Exception as error:  # their subscriptions fail too; the TTL bounds the rest
            logger.error(
                "auth cache invalidation not announced over Redis: {}", type(error).__name__
            )

    async def listen(self, retry_seconds: float = 2.0) -> None:
        """Apply other replicas' invalidations until cancelled; reconnect on errors.

        The cache answers only while subscribed, and starts empty each time the
        subscription is (re)established: what happened meanwhile is unknown.
        """
        if self.redis is None:
            return
        self.listening = True
        try:
            await self._listen(retry_seconds)
        finally:
            self.listening = False

    async def _listen(self, retry_seconds: float) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=None)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            self.forget([ALL])
                            self.available = self.ttl > 0
                        elif message["type"] == "message":
                            self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning("auth cache subscription lost ({}); retrying", type(error).__name__)
            finally:
                self.available = False
                self.forget([ALL])
            await asyncio.sleep(retry_seconds)

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
    to other replicas is awaited here, so it has gone out when ``commit()`` returns.
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
    if not (state.is_update or state.is_delete) or _INFO_CACHE not in state.session.info:
        return
    if state.statement.table not in (User.__table__, Session.__table__):
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
    for _attribute in sa_inspect(_model).column_attrs:
        event.listen(
            _attribute.class_attribute, "set", _refuse_snapshot_write, raw=True, retval=True
        )
