"""The auth cache: reads skip the database, and every change is still seen at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi import FastAPI
from redis import Redis
from sqlalchemy import delete, event, make_url, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import DetachedInstanceError

from app.core.auth_cache import (
    ALL,
    ANNOUNCE_WAIT_SECONDS,
    CHANNEL,
    LEASE_SECONDS,
    USER_OMITTED,
    AuthCache,
    SnapshotWrite,
    SQLiteProcesses,
    UndeclaredBulkWrite,
    bulk_write,
    enforce_declarations,
    session_options,
    snapshot,
)
from app.core.auth_cache import hooks as auth_cache_hooks
from app.core.config import Settings
from app.core.database import create_engine, create_session_factory, is_sqlite
from app.core.redis_client import create_redis
from app.main import create_app, stop_background_tasks
from app.models import Base, Session, User, new_uuid, now_epoch
from app.test.conftest import (
    TEST_JWT_SECRET,
    empty_redis,
    replicas,
    require_redis,
    settings_env,
)
from app.test.factories import (
    PASSWORD,
    bearer,
    delete_user,
    live_signup_and_login,
    login,
    make_user,
    signup_and_login,
    user_with_tokens,
)
from app.test.server import LiveServer, start_forked_workers, start_server


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _user_and_session(expires_in: int = 3600) -> tuple:
    user = make_user(uuid=new_uuid(), hashed_password="$2b$04$not-a-real-hash", created_at=1)
    session = Session(
        id=new_uuid(),
        user_uuid=user.uuid,
        refresh_token_hash="f" * 64,
        created_at=1,
        last_used_at=1,
        expires_at=now_epoch() + expires_in,
    )
    return user, session


# The cache on its own -------------------------------------------------------------------


def test_a_stored_session_is_answered_until_its_time_is_up() -> None:
    clock = Clock()
    cache = AuthCache(60, clock=clock)
    user, session = _user_and_session()
    cache.store_session(cache.ticket(), session, user)
    cached = cache.session(session.id)
    assert cached is not None
    cached_session, cached_user = cached
    assert (cached_session.id, cached_user.uuid) == (session.id, user.uuid)
    clock.now += 59
    assert cache.session(session.id) is not None
    clock.now += 2
    assert cache.session(session.id) is None
    assert cache.user(user.uuid) is None


def test_an_entry_never_outlives_its_session() -> None:
    clock = Clock()
    cache = AuthCache(600, clock=clock)
    user, session = _user_and_session(expires_in=5)
    cache.store_session(cache.ticket(), session, user)
    clock.now += 6
    assert cache.session(session.id) is None
    user, expired = _user_and_session(expires_in=0)
    cache.store_session(cache.ticket(), expired, user)
    assert cache.session(expired.id) is None


def test_a_fill_that_raced_an_invalidation_is_not_kept() -> None:
    cache = AuthCache(60)
    user, session = _user_and_session()
    ticket = cache.ticket()  # a reader starts its query...
    cache.forget([user.uuid])  # ...a writer commits a change to that user...
    # ...the reader's old row arrives, and is not kept.
    assert cache.store_session(ticket, session, user) is None
    assert cache.store_user(ticket, user) is None
    assert cache.session(session.id) is None
    kept = cache.store_session(cache.ticket(), session, user)
    assert kept is not None
    assert cache.session(session.id) == kept


def test_a_fill_survives_an_invalidation_of_another_user() -> None:
    cache = AuthCache(60)
    user, session = _user_and_session()
    other, other_session = _user_and_session()
    ticket = cache.ticket()  # a reader of the first user starts its query...
    cache.forget([other.uuid])  # ...the other one logs in meanwhile...
    assert cache.store_session(ticket, session, user) is not None  # ...and it is kept
    # The other user's fill from before their change is not.
    assert cache.store_session(ticket, other_session, other) is None
    assert cache.session(other_session.id) is None


def test_forgetting_everything_refuses_every_fill_in_flight() -> None:
    cache = AuthCache(60)
    user, session = _user_and_session()
    ticket = cache.ticket()
    cache.forget([ALL])
    assert cache.store_session(ticket, session, user) is None
    assert cache.store_session(cache.ticket(), session, user) is not None


def test_a_fill_older_than_the_remembered_invalidations_is_refused() -> None:
    """Invalidations are remembered per user for max_users users: a fill older than
    the oldest one remembered cannot be checked, and is refused."""
    cache = AuthCache(60, max_users=3)
    user, session = _user_and_session()
    ticket = cache.ticket()
    cache.forget([new_uuid()])
    assert cache.store_session(ticket, session, user) is not None
    ticket = cache.ticket()
    for _ in range(3):
        cache.forget([new_uuid()])
    assert cache.store_user(ticket, user) is not None  # still within what is remembered
    cache.forget([new_uuid()])  # the oldest record after the ticket goes
    assert cache.store_user(ticket, user) is None
    assert cache.store_user(cache.ticket(), user) is not None


def test_a_session_is_not_kept_with_another_users_row() -> None:
    cache = AuthCache(60)
    user, _ = _user_and_session()
    _, session = _user_and_session()
    assert cache.store_session(cache.ticket(), session, user) is None


def test_forgetting_a_user_drops_every_session_of_theirs_and_only_theirs() -> None:
    cache = AuthCache(60)
    user, first = _user_and_session()
    _, second = _user_and_session()
    second.user_uuid = user.uuid
    other_user, other = _user_and_session()
    for session, owner in ((first, user), (second, user), (other, other_user)):
        cache.store_session(cache.ticket(), session, owner)
    cache.forget([user.uuid])
    assert cache.session(first.id) is None
    assert cache.session(second.id) is None
    assert cache.session(other.id) is not None
    cache.forget([ALL])
    assert len(cache) == 0


def test_the_oldest_user_makes_room_with_their_sessions() -> None:
    cache = AuthCache(60, max_users=2)
    pairs = [_user_and_session() for _ in range(3)]
    for user, session in pairs:
        cache.store_session(cache.ticket(), session, user)
    assert cache.session(pairs[0][1].id) is None
    assert all(cache.session(session.id) is not None for _, session in pairs[1:])
    assert len(cache) == 4


def test_a_cache_without_lifetime_keeps_nothing() -> None:
    cache = AuthCache(0)
    user, session = _user_and_session()
    cache.store_session(cache.ticket(), session, user)
    assert cache.session(session.id) is None
    assert len(cache) == 0


def test_copies_are_read_only_and_carry_no_secrets() -> None:
    user, _session = _user_and_session()
    copy = snapshot(user, USER_OMITTED)
    assert (copy.uuid, copy.username, copy.roles) == (user.uuid, user.username, user.roles)
    for secret in ("hashed_password", "otp_secret"):
        with pytest.raises(DetachedInstanceError):
            getattr(copy, secret)
    with pytest.raises(SnapshotWrite):
        copy.display_name = "changed"
    user.display_name = "the original stays writable"
    copy.roles.append("admin")  # a copy's list is its own
    assert user.roles == ["user"]


# Through the API --------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def cache_mode(request: pytest.FixtureRequest) -> str:
    """The cache alone (one process), or fed by Redis pub/sub (replicas)."""
    if request.param == "redis":
        empty_redis()
    return request.param


@pytest.fixture
def settings_overrides(cache_mode: str) -> dict[str, object]:
    return {"REDIS_URL": require_redis()} if cache_mode == "redis" else {}


async def _until_available(app: FastAPI) -> AuthCache:
    cache: AuthCache = app.state.auth_cache
    if cache.redis is not None:
        for _ in range(100):
            if cache.available:
                break
            await asyncio.sleep(0.02)
    return cache


async def _me(client: httpx.AsyncClient, tokens: dict) -> httpx.Response:
    return await client.get("/api/users/me", headers=bearer(tokens))


async def test_reads_come_from_the_cache_and_show_every_change(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    cache = await _until_available(app)
    user, tokens = await signup_and_login(client)
    _, viewer = await signup_and_login(client)
    assert (await _me(client, tokens)).status_code == 200
    profile = await client.get(f"/api/user/{user['uuid']}", headers=bearer(viewer))
    assert profile.json()["display_name"] == user["username"]
    # Cached where a logout can be heard everywhere: SQLite, or anything with Redis.
    assert cache.available == (is_sqlite(settings.database_url) or settings.REDIS_URL is not None)
    assert (cache.session(_session_id(tokens)) is not None) == cache.available

    changed = await client.patch(
        "/api/users/me", json={"description": "Renamed"}, headers=bearer(tokens)
    )
    assert changed.status_code == 200
    assert (await _me(client, tokens)).json()["description"] == "Renamed"
    profile = await client.get(f"/api/user/{user['uuid']}", headers=bearer(viewer))
    assert profile.json()["description"] == "Renamed"


def _session_id(tokens: dict) -> str:
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]


async def test_every_way_of_ending_a_session_refuses_its_token_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await _until_available(app)
    _, admin = await user_with_tokens(app, client, roles=("admin",))

    async def cached_reader() -> tuple[dict, dict]:
        user, tokens = await signup_and_login(client)
        assert (await _me(client, tokens)).status_code == 200  # now in the cache
        assert (
            await client.get("/api/auth/token/validate", headers=bearer(tokens))
        ).status_code == 200
        return user, tokens

    _, tokens = await cached_reader()
    assert (await client.post("/api/auth/logout", headers=bearer(tokens))).status_code == 204
    assert (await _me(client, tokens)).status_code == 401

    user, tokens = await cached_reader()
    other = await login(client, user["username"])
    assert (await _me(client, other)).status_code == 200
    assert (await client.post("/api/auth/logout-all", headers=bearer(tokens))).status_code == 204
    assert (await _me(client, tokens)).status_code == 401
    assert (await _me(client, other)).status_code == 401

    user, tokens = await cached_reader()
    other = await login(client, user["username"])
    sessions = (await client.get("/api/auth/sessions", headers=bearer(tokens))).json()["items"]
    other_id = next(item["id"] for item in sessions if not item["current"])
    revoked = await client.delete(f"/api/auth/sessions/{other_id}", headers=bearer(tokens))
    assert revoked.status_code == 204
    assert (await _me(client, other)).status_code == 401
    assert (await _me(client, tokens)).status_code == 200

    user, tokens = await cached_reader()
    changed = await client.post(
        "/api/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "another fine passphrase"},
        headers=bearer(tokens),
    )
    assert changed.status_code == 204
    assert (await _me(client, tokens)).status_code == 401

    user, tokens = await cached_reader()
    banned = await client.patch(
        f"/api/admin/user/{user['uuid']}", json={"is_active": False}, headers=bearer(admin)
    )
    assert banned.status_code == 200
    assert (await _me(client, tokens)).status_code == 401

    user, tokens = await cached_reader()
    deleted = await delete_user(client, user["uuid"], tokens)
    assert deleted.status_code == 204
    assert (await _me(client, tokens)).status_code == 401


async def test_a_role_change_is_read_at_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    await _until_available(app)
    _, admin = await user_with_tokens(app, client, roles=("admin", "moderator"))
    user, tokens = await signup_and_login(client)
    assert (await _me(client, tokens)).json()["roles"] == ["user"]
    assert (await client.get("/api/users", headers=bearer(tokens))).status_code == 403
    promoted = await client.patch(
        f"/api/admin/user/{user['uuid']}", json={"roles": ["moderator"]}, headers=bearer(admin)
    )
    assert promoted.status_code == 200
    assert (await _me(client, tokens)).json()["roles"] == ["moderator"]
    assert (await client.get("/api/users", headers=bearer(tokens))).status_code == 200


async def _change_by_hand(app: FastAPI, user_uuid: str, assignment: str) -> None:
    """Update a user row with hand-written SQL, which no hook of the service sees."""
    async with app.state.engine.begin() as connection:
        await connection.execute(
            text(f'UPDATE "user" SET {assignment} WHERE uuid = :uuid'), {"uuid": user_uuid}
        )


class TestChangesTheServiceDoesNotMake:
    """Hand-written SQL passes no hook: the cache lifetime bounds how long it is missed."""

    @pytest.fixture
    def settings_overrides(self, cache_mode: str) -> dict[str, object]:
        redis = {"REDIS_URL": require_redis()} if cache_mode == "redis" else {}
        return {"AUTH_CACHE_SECONDS": 1, **redis}

    async def test_are_seen_when_the_entry_expires(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        cache = await _until_available(app)
        user, tokens = await signup_and_login(client)
        assert (await _me(client, tokens)).status_code == 200
        await _change_by_hand(app, user["uuid"], "is_active = false")
        # Cached: the old answer, at most AUTH_CACHE_SECONDS; uncached: refused now.
        assert (await _me(client, tokens)).status_code == (200 if cache.available else 401)
        await asyncio.sleep(1.1)
        assert (await _me(client, tokens)).status_code == 401

    async def test_an_inactive_copy_of_the_user_refuses_a_cached_session(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        cache = await _until_available(app)
        user, tokens = await signup_and_login(client)
        assert (await _me(client, tokens)).status_code == 200
        await _change_by_hand(app, user["uuid"], "is_active = false")
        # A profile read refreshes the user's copy before the session's entry expires.
        async with app.state.session_factory() as db:
            cache.store_user(cache.ticket(), await db.get(User, user["uuid"]))
        assert (await _me(client, tokens)).status_code == 401


class TestCacheOff:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"AUTH_CACHE_SECONDS": 0}

    async def test_every_read_asks_the_database(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        user, tokens = await signup_and_login(client)
        assert (await _me(client, tokens)).status_code == 200
        assert len(app.state.auth_cache) == 0
        await _change_by_hand(app, user["uuid"], "description = 'Changed by hand'")
        assert (await _me(client, tokens)).json()["description"] == "Changed by hand"


@pytest.mark.parametrize(
    ("overrides", "cached"),
    [
        ({}, "sqlite"),  # one process: cached on SQLite only
        ({"WORKERS": 2}, None),  # several processes, no Redis: never
        ({"WORKERS": 2, "REDIS_URL": "redis"}, "always"),
    ],
)
async def test_the_cache_is_on_only_where_every_logout_is_heard(
    settings: Settings, overrides: dict, cached: str | None
) -> None:
    if overrides.get("REDIS_URL"):
        overrides = {**overrides, "REDIS_URL": require_redis()}
    application = create_app(settings.model_copy(update={"REDIS_URL": None, **overrides}))
    async with application.router.lifespan_context(application):
        ttl = application.state.auth_cache.ttl
    expected = cached == "always" or (cached == "sqlite" and is_sqlite(settings.database_url))
    assert (ttl > 0) == expected


# Statements a read costs ----------------------------------------------------------------------


@contextlib.contextmanager
def _statements(app: FastAPI) -> Iterator[list[str]]:
    """Every SQL statement the app's engine sends while the block runs."""
    statements: list[str] = []

    def record(_connection, _cursor, statement: str, *_args) -> None:
        statements.append(statement)

    engine = app.state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_read_answered_from_the_cache_asks_the_database_nothing(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    cache = await _until_available(app)
    assert cache.available == (is_sqlite(settings.database_url) or settings.REDIS_URL is not None)
    _, tokens = await signup_and_login(client)  # the login's commit left nothing cached
    with _statements(app) as missed:
        assert (await _me(client, tokens)).status_code == 200
    assert len(missed) == 1, missed  # the session and its user, in one query
    assert "session" in missed[0]
    assert "user" in missed[0]
    with _statements(app) as hit:
        assert (await _me(client, tokens)).status_code == 200
    # Off (PostgreSQL without Redis), every read asks again.
    assert hit == ([] if cache.available else missed)


# Bulk writes declare their users ------------------------------------------------------------


@pytest.fixture
async def cached_sessions(
    tmp_path: Path,
) -> AsyncIterator[tuple[AuthCache, async_sessionmaker[AsyncSession]]]:
    """Sessions tied to a cache of their own on a new SQLite file, without create_app."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'cached.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    cache = AuthCache(60)
    try:
        yield cache, create_session_factory(engine, **session_options(cache))
    finally:
        await cache.aclose()
        await engine.dispose()


async def _cached_pairs(
    cache: AuthCache, factory: async_sessionmaker[AsyncSession], count: int
) -> list[tuple[User, Session]]:
    """``count`` users with a session each, saved, then read into the cache."""
    pairs = [_user_and_session() for _ in range(count)]
    for index, (_, session) in enumerate(pairs):
        session.refresh_token_hash = f"{index:064x}"  # unique
    async with factory() as db:
        db.add_all([row for pair in pairs for row in pair])
        await db.commit()
    for user, session in pairs:
        ticket = cache.ticket()
        async with factory() as db:
            loaded_session = await db.get(Session, session.id)
            loaded_user = await db.get(User, user.uuid)
        assert loaded_session is not None
        assert loaded_user is not None
        assert cache.store_session(ticket, loaded_session, loaded_user) is not None
    return pairs


async def test_a_bulk_write_drops_the_users_it_declares(cached_sessions) -> None:
    cache, factory = cached_sessions
    (user, session), (_, other) = await _cached_pairs(cache, factory, 2)
    async with factory() as db:
        await bulk_write(
            db,
            update(User).where(User.uuid == user.uuid).values(description="Changed"),
            users=[user.uuid],
        )
        assert cache.session(session.id) is not None  # until the commit
        await db.commit()
    assert cache.session(session.id) is None
    assert cache.session(other.id) is not None


@pytest.mark.parametrize(
    "statement",
    [
        lambda user: update(User).where(User.uuid == user.uuid).values(description="x"),
        # An UPDATE of user always writes updated_at, which a copy carries.
        lambda user: update(User).where(User.uuid == user.uuid).values(otp_last_timestep=1),
        lambda user: update(Session).where(Session.user_uuid == user.uuid).values(ip="::1"),
        lambda user: delete(Session).where(Session.user_uuid == user.uuid),
    ],
    ids=["user-column", "user-onupdate", "session-column", "delete"],
)
async def test_an_undeclared_bulk_write_of_a_cached_column_fails_the_tests(
    cached_sessions, statement
) -> None:
    cache, factory = cached_sessions
    [(user, _)] = await _cached_pairs(cache, factory, 1)
    async with factory() as db:
        with pytest.raises(UndeclaredBulkWrite, match="bulk_write"):
            await db.execute(statement(user))


async def test_a_bulk_write_of_columns_no_copy_carries_may_go_undeclared(
    cached_sessions,
) -> None:
    cache, factory = cached_sessions
    [(_, session)] = await _cached_pairs(cache, factory, 1)
    async with factory() as db:
        await db.execute(
            update(Session).where(Session.id == session.id).values(refresh_token_hash="e" * 64)
        )
        await db.commit()
    assert cache.session(session.id) is not None


async def test_without_enforcement_an_undeclared_bulk_write_empties_the_cache(
    cached_sessions, captured_logs: list[str]
) -> None:
    cache, factory = cached_sessions
    (user, _), _ = await _cached_pairs(cache, factory, 2)
    enforce_declarations(False)  # as in production
    try:
        async with factory() as db:
            await db.execute(update(User).where(User.uuid == user.uuid).values(description="x"))
            await db.commit()
    finally:
        enforce_declarations()
    assert len(cache) == 0
    assert any("bulk UPDATE of user declared no users" in line for line in captured_logs)


async def test_bulk_write_takes_a_collection_of_users(cached_sessions) -> None:
    _, factory = cached_sessions
    async with factory() as db:
        with pytest.raises(TypeError):
            await bulk_write(db, update(User).values(description="x"), users=new_uuid())


def test_sessions_are_not_tied_to_a_cache_before_the_hooks_are_in(monkeypatch) -> None:
    monkeypatch.setattr(auth_cache_hooks._Hooks, "installed", False)
    with pytest.raises(RuntimeError, match="install_hooks"):
        session_options(AuthCache(60))


def test_the_hooks_go_in_with_an_app_not_on_import(tmp_path: Path) -> None:
    """Importing the cache and its users hooks nothing; making an app does (as
    importing ``app.main`` does: it makes the app servers import)."""
    script = (
        "from sqlalchemy import event\n"
        "from sqlalchemy.orm import Session\n"
        "import app.cli, app.routers.deps, app.services.maintenance\n"
        "from app.core.auth_cache import hooks\n"
        "print(event.contains(Session, 'after_commit', hooks._forget_committed))\n"
        "from app.main import create_app\n"
        "print(event.contains(Session, 'after_commit', hooks._forget_committed))\n"
    )
    env = {**os.environ, "DATA_DIR": str(tmp_path), "JWT_SECRET_KEY": TEST_JWT_SECRET}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["False", "True"]


# Redis: replicas and a lost subscription ---------------------------------------------------


@pytest.fixture
async def redis_cache() -> AsyncIterator[tuple[AuthCache, asyncio.Task]]:
    redis_client = create_redis(require_redis())
    cache = AuthCache(60, redis=redis_client)
    task = asyncio.create_task(cache.listen(retry_seconds=0.2))
    try:
        yield cache, task
    finally:
        await stop_background_tasks([task])
        await redis_client.aclose()


async def _wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_an_announcement_reaches_the_other_caches_only(redis_cache) -> None:
    listener, _ = redis_cache
    await _wait_for(lambda: listener.available)
    user, session = _user_and_session()
    listener.store_session(listener.ticket(), session, user)
    redis_client = create_redis(require_redis())
    sender = AuthCache(60, redis=redis_client)
    try:
        await sender.announce([new_uuid()])
        await asyncio.sleep(0.2)
        assert listener.session(session.id) is not None  # someone else's change
        await sender.announce([user.uuid])
        await _wait_for(lambda: listener.session(session.id) is None)
        # Its own announcements come back too, and are not applied twice.
        ticket = listener.ticket()
        listener.store_session(ticket, session, user)
        await listener.announce([user.uuid])
        await asyncio.sleep(0.2)
        assert listener.session(session.id) is not None
        assert listener.store_user(ticket, user) is not None  # no fill was refused
    finally:
        await redis_client.aclose()


async def test_a_garbled_announcement_empties_the_cache(redis_cache) -> None:
    listener, _ = redis_cache
    await _wait_for(lambda: listener.available)
    user, session = _user_and_session()
    listener.store_session(listener.ticket(), session, user)
    with Redis.from_url(require_redis()) as redis:
        redis.publish("user_manager:auth_cache", b"\xff not json")
    await _wait_for(lambda: listener.session(session.id) is None)
    assert listener.available


async def test_a_lost_subscription_stops_the_cache_until_it_is_back(redis_cache) -> None:
    cache, _ = redis_cache
    await _wait_for(lambda: cache.available)
    user, session = _user_and_session()
    cache.store_session(cache.ticket(), session, user)
    with Redis.from_url(require_redis()) as redis:
        redis.client_kill_filter(_type="pubsub")
    # Meanwhile nothing is answered from memory: a logout elsewhere could be missed.
    await _wait_for(lambda: not cache.available)
    assert cache.session(session.id) is None
    assert len(cache) == 0
    await _wait_for(lambda: cache.available)
    assert len(cache) == 0


@pytest.fixture
def two_replicas(settings: Settings, tmp_path: Path) -> Iterator[list[LiveServer]]:
    """Two server processes on one database, caching, told of changes through Redis."""
    with replicas(settings, empty_redis(), tmp_path) as servers:
        yield servers


def test_a_logout_on_one_replica_is_refused_by_the_other(
    two_replicas: list[LiveServer],
) -> None:
    first, second = two_replicas
    body = {"username": "replicated", "email": "replicated@example.com", "password": PASSWORD}
    assert httpx.post(f"{first.url}/api/auth/signup", json=body).status_code == 201
    tokens = httpx.post(
        f"{first.url}/api/auth/login", data={"username": "replicated", "password": PASSWORD}
    ).json()
    for server in (first, second):  # both replicas now hold the session
        assert httpx.get(f"{server.url}/api/users/me", headers=bearer(tokens)).status_code == 200

    renamed = httpx.patch(
        f"{second.url}/api/users/me", json={"description": "Seen by both"}, headers=bearer(tokens)
    )
    assert renamed.status_code == 200
    me = httpx.get(f"{first.url}/api/users/me", headers=bearer(tokens))
    assert me.json()["description"] == "Seen by both"

    assert httpx.post(f"{first.url}/api/auth/logout", headers=bearer(tokens)).status_code == 204
    assert httpx.get(f"{second.url}/api/users/me", headers=bearer(tokens)).status_code == 401


def _live_me(server: LiveServer, tokens: dict) -> httpx.Response:
    return httpx.get(f"{server.url}/api/users/me", headers=bearer(tokens), timeout=30)


# A Redis that stalls ------------------------------------------------------------------------


@pytest.fixture
async def stallable_cache(private_redis: str) -> AsyncIterator[AuthCache]:
    """A listening cache on a Redis of the test's own, that the test may pause."""
    redis_client = create_redis(private_redis)
    cache = AuthCache(60, redis=redis_client)
    task = asyncio.create_task(cache.listen(retry_seconds=0.2))
    try:
        yield cache
    finally:
        await stop_background_tasks([task])
        await cache.aclose(drain_seconds=0)
        await redis_client.aclose()


def _pause(redis_url: str, seconds: float, *, writes_only: bool = False) -> None:
    with Redis.from_url(redis_url) as redis:
        redis.client_pause(int(seconds * 1000), all=not writes_only)


async def test_a_redis_paused_for_writes_stops_the_cache_until_it_is_back(
    stallable_cache: AuthCache, private_redis: str
) -> None:
    cache = stallable_cache
    await _wait_for(lambda: cache.available)
    user, session = _user_and_session()
    cache.store_session(cache.ticket(), session, user)
    # Reads still pass (PING would), PUBLISH waits: another replica's logout is held.
    _pause(private_redis, 2, writes_only=True)
    await _wait_for(lambda: not cache.available, seconds=LEASE_SECONDS + 0.5)
    assert cache.session(session.id) is None
    await _wait_for(lambda: cache.available)
    assert cache.session(session.id) is None  # back empty: what was missed is unknown
    assert len(cache) == 0


async def test_a_commit_waits_briefly_on_a_paused_redis_and_is_announced_once_it_is_back(
    private_redis: str,
) -> None:
    listener = create_redis(private_redis)
    redis_client = create_redis(private_redis)
    sender = AuthCache(60, redis=redis_client)
    try:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe(CHANNEL)
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
            _pause(private_redis, 2 * ANNOUNCE_WAIT_SECONDS)
            started = time.monotonic()
            await sender.announce(["someone"])
            assert time.monotonic() - started < ANNOUNCE_WAIT_SECONDS + 0.3
            # Not given up: sent again until Redis takes it.
            message = None
            deadline = time.monotonic() + 10
            while message is None and time.monotonic() < deadline:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            assert message is not None, "the announcement never arrived"
            assert json.loads(message["data"])["users"] == ["someone"]
    finally:
        await sender.aclose(drain_seconds=0)
        await redis_client.aclose()
        await listener.aclose()


async def test_once_redis_has_been_silent_for_a_lease_commits_no_longer_wait() -> None:
    silent = socket.socket()  # accepts connections (the backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    redis_client = create_redis(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    cache = AuthCache(60, redis=redis_client)
    task = asyncio.create_task(cache.listen(retry_seconds=0.2))
    try:
        # Every replica whose probes that Redis holds has stopped trusting its cache.
        fanout = cache.fanout
        assert fanout is not None
        await _wait_for(lambda: fanout.announce_wait_seconds() == 0)
        started = time.monotonic()
        await cache.announce(["someone"])
        assert time.monotonic() - started < 0.1
        assert fanout._pending == {"someone"}  # still trying, in the background
    finally:
        await stop_background_tasks([task])
        await cache.aclose(drain_seconds=0)
        await redis_client.aclose()
        silent.close()


class TestReplicasOnAStalledRedis:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {}  # the replicas get the Redis of the test's own

    def test_a_logout_is_refused_by_the_other_replica_at_once(
        self, settings: Settings, tmp_path: Path, private_redis: str
    ) -> None:
        with replicas(settings, private_redis, tmp_path) as (first, second):
            _, tokens = live_signup_and_login(first.url)
            for server in (first, second):  # both replicas now hold the session
                assert _live_me(server, tokens).status_code == 200

            pause_seconds = 4 * ANNOUNCE_WAIT_SECONDS
            _pause(private_redis, pause_seconds)
            paused_at = time.monotonic()
            with ThreadPoolExecutor(1) as pool:
                logout = pool.submit(
                    httpx.post, f"{first.url}/api/auth/logout", headers=bearer(tokens), timeout=30
                )
                # The commit does not wait for Redis longer than that...
                assert logout.result(timeout=ANNOUNCE_WAIT_SECONDS + 1).status_code == 204
            # ...and by then the other replica has stopped trusting what it holds.
            assert _live_me(second, tokens).status_code == 401
            assert time.monotonic() - paused_at < pause_seconds  # all while Redis was paused


# Processes on one SQLite database, without Redis --------------------------------------------


def test_processes_on_one_sqlite_file_are_told_apart(tmp_path: Path) -> None:
    database = tmp_path / "shared.db"
    first = SQLiteProcesses.join(database)
    assert first.alone
    assert not first.flag[0]
    # Another open file stands for another process: flock tells them apart.
    second = SQLiteProcesses.join(tmp_path / "." / "shared.db")
    assert not second.alone
    assert first.flag[0]  # the owner sees it
    first.leave()
    third = SQLiteProcesses.join(database)  # the owner restarted while the second runs
    assert not third.alone
    second.leave()
    third.leave()
    fourth = SQLiteProcesses.join(database)  # everyone gone: alone again
    assert fourth.alone
    assert not fourth.flag[0]
    fourth.leave()


def test_a_second_process_on_the_database_stops_the_owners_cache(tmp_path: Path) -> None:
    owner = SQLiteProcesses.join(tmp_path / "shared.db")
    cache = AuthCache(60, processes=owner)
    user, session = _user_and_session()
    cache.store_session(cache.ticket(), session, user)
    assert cache.session(session.id) is not None
    other = SQLiteProcesses.join(tmp_path / "shared.db")
    try:
        assert cache.session(session.id) is None
        assert cache.user(user.uuid) is None
        assert not cache.available
        assert len(cache) == 0
        assert cache.store_session(cache.ticket(), session, user) is None
    finally:
        other.leave()
        owner.leave()


def _database_file(settings: Settings) -> str:
    path = make_url(settings.database_url).database
    assert path is not None, "an SQLite URL names its file"
    return path


def _change_in_sqlite(settings: Settings, username: str, assignment: str) -> None:
    """Hand-written SQL on the shared SQLite file, which no process of the service sees."""
    with contextlib.closing(sqlite3.connect(_database_file(settings))) as connection:
        connection.execute(f'UPDATE "user" SET {assignment} WHERE username = ?', (username,))
        connection.commit()


def _description(server: LiveServer, tokens: dict) -> str:
    me = _live_me(server, tokens)
    assert me.status_code == 200, me.text
    return me.json()["description"]


def _each_logout_is_refused_by_the_other_at_once(first: LiveServer, second: LiveServer) -> None:
    for ending, other in ((first, second), (second, first)):
        _, tokens = live_signup_and_login(first.url)
        for server in (first, second):  # each would hold the session if it cached
            assert _live_me(server, tokens).status_code == 200
        logout = httpx.post(f"{ending.url}/api/auth/logout", headers=bearer(tokens))
        assert logout.status_code == 204
        assert _live_me(other, tokens).status_code == 401


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)
class TestProcessesOnOneSQLiteFile:
    """Without Redis: the cache is on only in a process alone on its database."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {}

    @pytest.fixture
    def env(self, settings: Settings) -> dict[str, str]:
        return {**settings_env(settings), "JWT_SECRET_KEY": TEST_JWT_SECRET}

    def test_two_servers_cache_nothing(self, settings: Settings, tmp_path: Path) -> None:
        with replicas(settings, None, tmp_path) as (first, second):
            _each_logout_is_refused_by_the_other_at_once(first, second)

    def test_forked_workers_cache_nothing(self, env: dict[str, str], tmp_path: Path) -> None:
        first, second = start_forked_workers(env, tmp_path / "workers.log")
        try:
            _each_logout_is_refused_by_the_other_at_once(first, second)
        finally:
            first.stop()

    def test_uvicorn_workers_cache_nothing(
        self, settings: Settings, env: dict[str, str], tmp_path: Path
    ) -> None:
        server = start_server(env, tmp_path / "workers.log", ["--workers", "2"])
        try:
            user, tokens = live_signup_and_login(server.url)
            for _ in range(20):  # one connection each: both workers get some
                assert _description(server, tokens) is None
            _change_in_sqlite(settings, user["username"], "description = 'by hand'")
            assert {_description(server, tokens) for _ in range(20)} == {"by hand"}
        finally:
            server.stop()

    def test_a_lone_process_caches_until_another_comes_and_again_after_a_restart(
        self, settings: Settings, env: dict[str, str], tmp_path: Path
    ) -> None:
        def start(name: str) -> LiveServer:
            return start_server({**env, "DATA_DIR": str(tmp_path / name)}, tmp_path / f"{name}.log")

        lone = start("lone")
        try:
            user, tokens = live_signup_and_login(lone.url)
            assert _description(lone, tokens) is None
            # Cached: a change no hook sees is not read (AUTH_CACHE_SECONDS at most).
            _change_in_sqlite(settings, user["username"], "description = 'by hand'")
            assert _description(lone, tokens) is None

            other = start("other")
            other.process.kill()  # a crash: the kernel releases its locks all the same
            other.process.wait()
            assert _description(lone, tokens) == "by hand"  # the first one stopped caching
        finally:
            lone.stop()

        restarted = start("lone")
        try:
            assert _description(restarted, tokens) == "by hand"
            _change_in_sqlite(settings, user["username"], "description = 'again'")
            assert _description(restarted, tokens) == "by hand"  # alone again: cached again
        finally:
            restarted.stop()
