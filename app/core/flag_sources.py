"""Where the flags are kept: the flag file, or the database shared by replicas.

A :class:`~app.core.feature_flags.FlagStore` holds the flags every request reads, in
memory. A source fills it and writes changes:

- :class:`FileFlagSource` (one machine, SQLite): the JSON file in DATA_DIR, re-read
  when it changes; other replicas' changes come over Redis.
- :class:`DatabaseFlagSource` (PostgreSQL, or ``FEATURE_FLAGS_SOURCE=database``): one
  row per flag in ``feature_flag``. A replica that starts later reads the current
  flags at once (a DATA_DIR of its own would hold a stale file); on the very first
  start the file's flags are imported. Changes are written per flag in one
  transaction, so two admins changing different flags on two replicas both keep
  theirs; an announcement over Redis makes the others re-read at once, and every
  replica re-reads every few seconds anyway.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from typing import Protocol

from loguru import logger
from redis.asyncio import Redis
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.feature_flags import (
    FLAGS_CHANNEL,
    FlagStore,
    FlagValue,
    InvalidFlags,
    dump_flags,
    parse_flag_value,
    parse_flags,
)
from app.models import FeatureFlag, now_epoch

#: Seconds between two reads of the flags' source by a running replica.
POLL_SECONDS = 2.0


class FlagSource(Protocol):
    """Fills a :class:`FlagStore` and keeps it current."""

    store: FlagStore

    @property
    def where(self) -> str:
        """Where the flags are kept, for log lines."""
        ...

    async def load(self) -> None:
        """Read every flag into the store."""

    async def register(self, names: Iterable[str]) -> list[str]:
        """Add each missing flag as ``true``; return those added."""

    async def change(
        self, add: dict[str, FlagValue], remove: Iterable[str], db: AsyncSession | None = None
    ) -> None:
        """Set ``add`` and remove ``remove`` (removed flags are on again), all or none;
        in ``db``, the caller's session, when given (one connection per request)."""

    async def refresh(self) -> bool:
        """Re-read the flags when they may have changed; True when the store changed."""

    async def announced(self, flags: dict[str, FlagValue]) -> None:
        """Another replica announced its complete set of flags."""


class FileFlagSource:
    """The flag file (see :class:`FlagStore`); changes are read-modify-write under a lock,
    so two changes in one process never drop each other's flags."""

    def __init__(self, store: FlagStore) -> None:
        self.store = store
        self._lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return str(self.store.path)

    async def load(self) -> None:
        await asyncio.to_thread(self.store.load)

    async def register(self, names: Iterable[str]) -> list[str]:
        async with self._lock:
            return await asyncio.to_thread(self.store.register, list(names))

    async def change(
        self, add: dict[str, FlagValue], remove: Iterable[str], db: AsyncSession | None = None
    ) -> None:
        del db  # a file
        async with self._lock:
            removed = set(remove)
            flags = {name: value for name, value in self.store.flags.items() if name not in removed}
            flags.update(add)
            await asyncio.to_thread(self.store.replace, flags)

    async def refresh(self) -> bool:
        return await asyncio.to_thread(self.store.reload_if_changed)

    async def announced(self, flags: dict[str, FlagValue]) -> None:
        async with self._lock:
            await asyncio.to_thread(self.store.replace, flags)


class DatabaseFlagSource:
    """The ``feature_flag`` table (see the module's docstring)."""

    def __init__(self, store: FlagStore, session_factory: async_sessionmaker[AsyncSession]) -> None:
        self.store = store
        self.session_factory = session_factory

    @property
    def where(self) -> str:
        return "the database"

    async def load(self) -> None:
        await self._import_file_once()
        await self.refresh()

    async def _import_file_once(self) -> None:
        """On the first start with an empty table, take the flag file's flags (a
        replica starting at the same moment imports the same rows: no conflict)."""
        async with self.session_factory() as session:
            if await session.scalar(select(func.count()).select_from(FeatureFlag)):
                return
        await asyncio.to_thread(self.store.load)
        if self.store.flags:
            await self._insert_missing(self.store.flags)
            logger.info(
                "feature flags imported into the database from {}: {}",
                self.store.path,
                ", ".join(sorted(self.store.flags)),
            )

    async def _insert_missing(self, flags: dict[str, FlagValue]) -> None:
        async with self.session_factory() as session:
            insert = _insert_for(session)
            rows = [
                {"name": name, "value": value, "updated_at": now_epoch()}
                for name, value in dump_flags(flags).items()
            ]
            await session.execute(insert(FeatureFlag).on_conflict_do_nothing(), rows)
            await session.commit()

    async def register(self, names: Iterable[str]) -> list[str]:
        await self.refresh()
        added = [name for name in dict.fromkeys(names) if name not in self.store.flags]
        if added:
            # Another replica may add the same ones meanwhile: neither overwrites.
            await self._insert_missing(dict.fromkeys(added, True))
            await self.refresh()
        return added

    async def change(
        self, add: dict[str, FlagValue], remove: Iterable[str], db: AsyncSession | None = None
    ) -> None:
        if db is not None:
            await self._write(db, add, remove)
            await self.refresh(db)
            return
        async with self.session_factory() as session:
            await self._write(session, add, remove)
            await self.refresh(session)

    async def _write(
        self, session: AsyncSession, add: dict[str, FlagValue], remove: Iterable[str]
    ) -> None:
        removed = [name for name in remove if name not in add]
        if removed:
            await session.execute(delete(FeatureFlag).where(FeatureFlag.name.in_(removed)))
        if add:
            insert = _insert_for(session)
            statement = insert(FeatureFlag)
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=[FeatureFlag.name],
                    set_={
                        "value": statement.excluded.value,
                        "updated_at": statement.excluded.updated_at,
                    },
                ),
                [
                    {"name": name, "value": value, "updated_at": now_epoch()}
                    for name, value in dump_flags(add).items()
                ],
            )
        await session.commit()

    async def refresh(self, db: AsyncSession | None = None) -> bool:
        if db is not None:
            rows = (await db.execute(select(FeatureFlag.name, FeatureFlag.value))).all()
        else:
            async with self.session_factory() as session:
                rows = (await session.execute(select(FeatureFlag.name, FeatureFlag.value))).all()
        flags: dict[str, FlagValue] = {}
        for name, value in rows:
            try:
                flags[name] = parse_flag_value(name, value)
            except InvalidFlags as error:  # written by hand: keep the last good value
                logger.error("feature flag {} in the database is malformed: {}", name, error)
                if name in self.store.flags:
                    flags[name] = self.store.flags[name]
        if flags == self.store.flags:
            return False
        self.store.flags = flags
        return True

    async def announced(self, flags: dict[str, FlagValue]) -> None:
        del flags  # the database is the truth: read it rather than trust the message
        await self.refresh()


def flag_source_for(
    settings: Settings, store: FlagStore, session_factory: async_sessionmaker[AsyncSession]
) -> FlagSource:
    """The database when FEATURE_FLAGS_SOURCE says so, or (``auto``) on PostgreSQL,
    which is what several replicas share; else the file."""
    choice = settings.FEATURE_FLAGS_SOURCE
    if choice == "auto":
        choice = "database" if settings.database_url.startswith("postgresql") else "file"
    if choice == "database":
        return DatabaseFlagSource(store, session_factory)
    return FileFlagSource(store)


def _insert_for(session: AsyncSession):
    """The INSERT with ON CONFLICT of the session's database."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def watch_flags(source: FlagSource, interval_seconds: float = POLL_SECONDS) -> None:
    """Re-read the flags' source every ``interval_seconds`` (a lost announcement only
    delays a change)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            if await source.refresh():
                logger.info("feature flags reloaded from {}", source.where)
        except Exception as error:  # keep watching whatever happened
            logger.error("feature flag watcher: {}: {}", type(error).__name__, error)


class FlagBroadcaster:
    """Announces flag changes over Redis pub/sub and applies other replicas' changes."""

    def __init__(self, redis: Redis, source: FlagSource) -> None:
        self.redis = redis
        self.source = source
        self.origin = uuid.uuid4().hex

    async def publish(self) -> None:
        """Tell the other replicas the complete set of flags (failures are logged)."""
        message = json.dumps({"origin": self.origin, "flags": dump_flags(self.source.store.flags)})
        try:
            await self.redis.publish(FLAGS_CHANNEL, message)
        except Exception as error:  # the file watcher still converges
            logger.warning("feature flags not announced over Redis: {}", type(error).__name__)

    async def listen(self, retry_seconds: float = 2.0) -> None:
        """Apply announcements from other replicas until cancelled; reconnect on errors."""
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(FLAGS_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                logger.warning(
                    "feature flag subscription lost ({}); retrying", type(error).__name__
                )
                await asyncio.sleep(retry_seconds)

    async def _apply(self, data: bytes | str) -> None:
        try:
            payload = json.loads(data)
            if payload.get("origin") == self.origin:
                return
            flags = parse_flags(payload.get("flags"))
        except (ValueError, AttributeError) as error:  # not JSON, not UTF-8, bad flags
            logger.error("ignoring a malformed feature flag announcement: {}", error)
            return
        try:
            await self.source.announced(flags)
        except OSError as error:  # a full disk: keep the flags the file still has
            logger.error("feature flags of another replica not applied: {}", error.strerror)
            return
        logger.info("feature flags updated by another replica")
