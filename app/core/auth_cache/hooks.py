"""ORM hooks that keep the cache right, installed by :func:`install_hooks`.

A commit that wrote a ``user`` or ``session`` row drops that user and their sessions:
in this process before ``commit()`` returns (``after_commit``), and with Redis in
every replica (:class:`CachingSession` awaits the announcement). What a transaction
changed is gathered as it goes:

- ORM writes are seen on flush, object by object;
- a bulk UPDATE/DELETE names its users (:func:`app.core.auth_cache.writes.bulk_write`);
  one that names none and writes a cached column empties the whole cache, or raises
  when :func:`enforce_declarations` is on.

Copies handed out by the store refuse writes (:class:`SnapshotWrite`) through an
attribute hook installed here too.

Nothing is hooked at import: :func:`install_hooks` is called by whoever makes sessions
of the cache (``create_app``, the CLI, test fixtures), and :func:`session_options`
refuses to tie sessions to a cache before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loguru import logger
from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper, ORMExecuteState
from sqlalchemy.orm import Session as OrmSession

from app.core.auth_cache.store import ALL, SNAPSHOT_KEY, SnapshotWrite
from app.core.auth_cache.writes import (
    UndeclaredBulkWrite,
    bulk_statement,
    cached_table,
    declared_users,
    writes_cached_column,
)
from app.models import Session, User

if TYPE_CHECKING:
    from app.core.auth_cache.cache import AuthCache

_INFO_CACHE = "auth_cache"
_INFO_MARKS = "auth_cache_marks"
_INFO_ANNOUNCE = "auth_cache_announce"


class _Hooks:
    """Whether the hooks are in, and whether an undeclared bulk write raises."""

    installed = False
    strict = False


def install_hooks() -> None:
    """Hook the ORM so that commits drop what they changed from the cache, and cached
    copies refuse writes. Idempotent."""
    if _Hooks.installed:
        return
    event.listen(OrmSession, "after_flush", _mark_flushed)
    event.listen(OrmSession, "do_orm_execute", _mark_bulk)
    event.listen(OrmSession, "after_commit", _forget_committed)
    for model in (User, Session):
        mapper: Mapper[Any] = sa_inspect(model)
        for attribute in mapper.column_attrs:
            event.listen(
                attribute.class_attribute, "set", _refuse_snapshot_write, raw=True, retval=True
            )
    _Hooks.installed = True


def enforce_declarations(enabled: bool = True) -> None:
    """Make a bulk write that changes cached columns without declaring its users raise
    :class:`UndeclaredBulkWrite` (the test suite), instead of emptying the whole cache
    and logging an error (the default: a mistake costs speed, not correctness)."""
    _Hooks.strict = enabled


# Sessions that keep the cache right ---------------------------------------------------------


class CachingSession(AsyncSession):
    """An AsyncSession whose commits drop what they changed from the cache.

    The local cache is updated by the ``after_commit`` hook; the announcement to
    other replicas is awaited here, so it has gone out when ``commit()`` returns (or,
    with a stalled Redis, the other replicas' caches have stopped answering:
    :meth:`app.core.auth_cache.fanout.RedisFanOut.announce`).
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
    if not _Hooks.installed:
        raise RuntimeError("install_hooks() must run before sessions are tied to an auth cache")
    return {"class_": CachingSession, "info": {_INFO_CACHE: cache}}


# The hooks ----------------------------------------------------------------------------------


def _marks(session: OrmSession) -> set[str]:
    return session.info.setdefault(_INFO_MARKS, set())


def _mark_flushed(session: OrmSession, _flush_context: Any) -> None:
    if _INFO_CACHE not in session.info:
        return
    for instance in (*session.new, *session.dirty, *session.deleted):
        if isinstance(instance, User):
            _marks(session).add(instance.uuid)
        elif isinstance(instance, Session):
            _marks(session).add(instance.user_uuid)


def _mark_bulk(state: ORMExecuteState) -> None:
    if _INFO_CACHE not in state.session.info or not cached_table(state):
        return
    users = declared_users(state)
    if users is None:
        if not writes_cached_column(state):
            return
        _undeclared(state)
        users = (ALL,)
    _marks(state.session).update(users)


def _undeclared(state: ORMExecuteState) -> None:
    """A bulk write that did not say whose rows it changes: raise, or log and empty
    the whole cache."""
    table = getattr(bulk_statement(state).table, "name", "?")
    what = f"bulk {'DELETE' if state.is_delete else 'UPDATE'} of {table}"
    if _Hooks.strict:
        raise UndeclaredBulkWrite(
            f"{what} writes columns the auth cache copies without declaring its users: "
            "run it through bulk_write(db, statement, users=[...])"
        )
    logger.error(
        "{} declared no users: its commit empties the whole auth cache (run it through bulk_write)",
        what,
    )


def _forget_committed(session: OrmSession) -> None:
    marks = session.info.pop(_INFO_MARKS, None)
    if marks:
        session.info[_INFO_CACHE].forget(marks)
        session.info.setdefault(_INFO_ANNOUNCE, set()).update(marks)


def _refuse_snapshot_write(state: Any, value: Any, _old: Any, _initiator: Any) -> Any:
    if state.info.get(SNAPSHOT_KEY):
        raise SnapshotWrite(
            f"{state.class_.__name__} copy from the auth cache is read-only; "
            "authenticate this route with the database"
        )
    return value
