"""Bulk writes to ``user`` and ``session``: each declares whose rows it may change.

An ORM write (``db.add``, attribute changes, ``db.delete``) is seen on flush, object by
object. A bulk UPDATE or DELETE is not: the hooks know its table, not its rows. So
every one of them runs through :func:`bulk_write`, which names the users whose user
row or sessions it may change; their cache entries go when the transaction commits.

A bulk statement on those tables that declares nothing and writes a column a cached
copy carries (a DELETE writes them all; an UPDATE of ``user`` always writes
``updated_at``) breaks that contract: with :func:`enforce_declarations` on (the test
suite) it raises :class:`UndeclaredBulkWrite`; otherwise (production) it empties the
whole cache at commit and logs an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Delete, Update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapper, ORMExecuteState

from app.core.auth_cache.store import SESSION_OMITTED, USER_OMITTED
from app.models import Session, User

#: The execution option that carries a bulk statement's users.
USERS_OPTION = "auth_cache_users"


class UndeclaredBulkWrite(RuntimeError):
    """A bulk UPDATE/DELETE of cached columns did not say whose rows it changes."""


async def bulk_write(
    db: AsyncSession,
    statement: Update | Delete,
    *,
    users: Iterable[str],
) -> CursorResult[Any]:
    """Execute a bulk UPDATE or DELETE of ``user``/``session`` rows.

    Parameters
    ----------
    db
        The session; its commit drops ``users`` from every replica's cache.
    statement
        An ``update(User)``, ``update(Session)``, ``delete(...)`` of them; its own
        execution options (``synchronize_session``) are kept.
    users
        The UUIDs of every user whose row or sessions the statement may change;
        ``[ALL]`` when that is not known. Empty only when the rows it changes cannot
        be in the cache, or it writes nothing a copy carries: say why beside the call.
    """
    if isinstance(users, str):  # a UUID would be read as its characters
        raise TypeError("users must be a collection of UUIDs, not one string")
    if not isinstance(statement, Update | Delete):
        raise TypeError(f"bulk_write runs UPDATE or DELETE statements, not {type(statement)}")
    declared = statement.execution_options(**{USERS_OPTION: tuple(users)})
    return cast(CursorResult[Any], await db.execute(declared))


# Which columns a bulk statement writes ------------------------------------------------------


def _cached_keys(model: type, omitted: frozenset[str]) -> frozenset[str]:
    mapper: Mapper[Any] = sa_inspect(model)
    return frozenset(
        attribute.key for attribute in mapper.column_attrs if attribute.key not in omitted
    )


def _always_written(model: type) -> frozenset[str]:
    """Columns an UPDATE writes without being asked (``onupdate``)."""
    mapper: Mapper[Any] = sa_inspect(model)
    return frozenset(
        attribute.key
        for attribute in mapper.column_attrs
        if any(
            column.onupdate is not None or column.server_onupdate is not None
            for column in attribute.columns
        )
    )


#: Per cached table: the columns its copies carry, and those every UPDATE writes.
_CACHED = {
    User.__table__: (_cached_keys(User, USER_OMITTED), _always_written(User)),
    Session.__table__: (_cached_keys(Session, SESSION_OMITTED), _always_written(Session)),
}


def bulk_statement(state: ORMExecuteState) -> Update | Delete:
    """The statement of a bulk UPDATE/DELETE (``state.is_update or state.is_delete``)."""
    return cast(Update | Delete, state.statement)


def cached_table(state: ORMExecuteState) -> bool:
    """Whether ``state`` is a bulk UPDATE/DELETE of a table the cache copies."""
    return (state.is_update or state.is_delete) and bulk_statement(state).table in _CACHED


def declared_users(state: ORMExecuteState) -> tuple[str, ...] | None:
    """The users a bulk statement declared (None: it declared nothing)."""
    users = state.execution_options.get(USERS_OPTION)
    return None if users is None else tuple(users)


def writes_cached_column(state: ORMExecuteState) -> bool:
    """Whether a bulk UPDATE/DELETE of a cached table may write a column copies carry.

    A DELETE removes every column; an UPDATE writes its SET columns, those named by
    its parameters (a bulk UPDATE by primary key), and its ``onupdate`` ones. A key
    it cannot name counts as cached.
    """
    if state.is_delete:
        return True
    statement = cast(Update, state.statement)
    cached, always = _CACHED[statement.table]
    if always & cached:
        return True
    # The SET clause has no public accessor; its keys are columns (names are resolved).
    values = getattr(statement, "_values", None)
    if values is None and not state.parameters:
        return True  # no SET clause this version of SQLAlchemy shows: assume the worst
    written = {_key(key) for key in values or ()}
    parameters = state.parameters
    for row in parameters if isinstance(parameters, list) else [parameters or {}]:
        written |= {_key(key) for key in row}
    return bool(written & cached) or None in written


def _key(key: Any) -> str | None:
    """The attribute key of a SET target: a name, a column, an ORM attribute."""
    if isinstance(key, str):
        return key
    return getattr(key, "key", None)
