"""Async engine, session factory, SQLite pragmas and upgrade-on-startup.

SQLite (the default, in DATA_DIR) gets WAL, foreign keys and a busy timeout on every
connection. PostgreSQL is reached through psycopg 3. On start the schema is upgraded
to Alembic's head, one process at a time: a PostgreSQL advisory lock, or a file lock
beside the SQLite database. On SQLite, migrations run with foreign keys off (see
:func:`sqlite_foreign_keys_off`) and the references are checked before they commit.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from loguru import logger
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

ROOT_DIR = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT_DIR / "alembic.ini"
ALEMBIC_DIR = ROOT_DIR / "app" / "alembic"

#: Key of the PostgreSQL advisory lock held while migrating (any constant shared by replicas).
MIGRATION_LOCK_KEY = 0x55534D47  # "USMG"
#: How long a request waits for a pooled PostgreSQL connection before a 503 DATABASE_BUSY.
POOL_TIMEOUT_SECONDS = 10
#: How long (ms) an SQLite connection waits for a lock held by another writer.
SQLITE_BUSY_TIMEOUT_MS = 5000


def is_sqlite(url: str) -> bool:
    """True for an SQLite database URL."""
    return make_url(url).get_backend_name() == "sqlite"


def _set_sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlite_foreign_keys_off(connection: Connection) -> None:
    """Stop enforcing foreign keys on ``connection`` until it turns them back on.

    To alter a table, SQLite (Alembic's batch mode) builds a copy, drops the original
    and renames the copy. With foreign keys enforced, that drop runs the ``ON DELETE``
    actions of every table that refers to it: rebuilding ``file`` would delete every
    ``user_file`` link and clear every profile picture. SQLite ignores this pragma
    inside a transaction, so it must come before the first write; checked here.
    """
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if connection.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("SQLite migrations must start before any write on their connection")


def check_sqlite_foreign_keys(connection: Connection) -> None:
    """Raise if any row refers to a row that does not exist (before a migration commits)."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise RuntimeError(f"migration left {len(broken)} broken references in {tables}")


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine for ``url`` (SQLite gets its pragmas, PostgreSQL a pool).

    ``hide_parameters``: a database error's message never carries the statement's
    values (password hashes, OTP secrets, passkey keys), so logging the error leaks
    none of them.
    """
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            hide_parameters=True,
        )
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    else:
        engine = create_async_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=10,
            pool_timeout=POOL_TIMEOUT_SECONDS,
            hide_parameters=True,
        )
    return engine


def create_session_factory(engine: AsyncEngine, **options: Any) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (responses are built after it).

    ``options`` go to ``async_sessionmaker`` (the auth cache's session class and info).
    """
    return async_sessionmaker(engine, expire_on_commit=False, **options)


async def release_connection(db: AsyncSession) -> None:
    """Hand the session's connection back to the pool before slow work (a password hash).

    A connection held while bcrypt runs is one fewer for every other request: a flood
    of logins would otherwise empty the pool. The session's objects stay loaded (its
    values are kept after commit) and the next query takes a connection again. Nothing
    may be pending: this is not the place to commit a change.
    """
    if db.new or db.dirty or db.deleted:
        raise RuntimeError("release_connection() with unsaved changes")
    await db.commit()


def rows_matched(result: Result[Any]) -> int:
    """How many rows the UPDATE or DELETE that gave ``result`` matched.

    ``AsyncSession.execute`` is typed to return a plain :class:`Result` whatever the
    statement; for DML it is a :class:`CursorResult`, the one that carries ``rowcount``.
    """
    if not isinstance(result, CursorResult):
        raise TypeError(f"expected the result of an UPDATE or DELETE, got {type(result)}")
    return result.rowcount


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, optionally bound to an open connection."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str = "head") -> None:
    if connection.dialect.name == "postgresql":
        # Held until the transaction ends: a second replica waits here, then finds
        # the schema already at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    command.upgrade(alembic_config(connection), revision)


@asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to Alembic's head (or ``revision``), one process at a time."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock = _file_lock(Path(f"{engine.url.database}.migrate-lock"))
    else:
        lock = _no_lock()
    async with lock, engine.connect() as connection:
        try:
            async with connection.begin():
                await connection.run_sync(_upgrade, revision)
        finally:
            if engine.dialect.name == "sqlite":
                # The migrations turned foreign keys off (app/alembic/env.py); the
                # pragma only takes effect outside a transaction, which is now.
                await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                await connection.commit()
    logger.info("database schema is at {} ({})", revision, engine.dialect.name)


@asynccontextmanager
async def _no_lock() -> AsyncIterator[None]:
    yield


async def check_database(engine: AsyncEngine, timeout_seconds: float = 2.0) -> None:
    """Raise if the database does not answer ``SELECT 1`` within the timeout."""
    async with asyncio.timeout(timeout_seconds):
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
