"""Database: migrations agree with the models, upgrade on start, concurrent starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from sqlalchemy import MetaData, insert, inspect, select, text

from app.core.config import Settings
from app.core.database import alembic_config, create_engine, upgrade_database
from app.core.security import hash_secret, new_refresh_token
from app.main import create_app
from app.models import Base, User, now_epoch
from app.test.conftest import settings_env
from app.test.factories import create_user
from app.test.server import ROOT, spawn_server, wait_ready

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def _schema_diff(connection) -> list:
    dialect = connection.dialect.name

    def on_this_database(obj, _name, _type, _reflected, _compare_to) -> bool:
        # An index the models create on one database only (``Index.ddl_if``).
        only_on = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
        return only_on in (None, dialect)

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": on_this_database}
    )
    return compare_metadata(context, Base.metadata)


async def test_migrations_match_the_models(app: FastAPI) -> None:
    async with app.state.engine.connect() as connection:
        diff = await connection.run_sync(_schema_diff)
    assert diff == []


async def test_schema_is_at_head_after_start(app: FastAPI) -> None:
    async with app.state.engine.connect() as connection:
        versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert [row[0] for row in versions] == [HEAD]


async def test_a_restart_reuses_the_database(settings: Settings) -> None:
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        user = await create_user(first.state.session_factory, username="survivor")
    second = create_app(settings)
    async with (
        second.router.lifespan_context(second),
        second.state.session_factory() as session,
    ):
        found = await session.scalar(select(User).where(User.uuid == user.uuid))
    assert found is not None
    assert found.username == "survivor"


async def test_migrations_downgrade_and_upgrade_again(app: FastAPI) -> None:
    def down_and_up(connection) -> list:
        config = alembic_config(connection)
        command.downgrade(config, "base")
        tables = set(connection.dialect.get_table_names(connection)) - {"alembic_version"}
        command.upgrade(config, "head")
        return sorted(tables)

    async with app.state.engine.begin() as connection:
        left_after_downgrade = await connection.run_sync(down_and_up)
        diff = await connection.run_sync(_schema_diff)
    assert left_after_downgrade == []
    assert diff == []


def _session_at_0004(
    connection, user_uuid: str, session_id: str, previous_token: str, current_token: str
) -> None:
    """Migrate to 0004 and store a user with a session that has refreshed once."""
    command.upgrade(alembic_config(connection), "0004")
    tables = MetaData()
    tables.reflect(connection, only=["user", "session"])
    now = now_epoch()
    connection.execute(
        insert(tables.tables["user"]).values(
            uuid=user_uuid,
            username="before_upgrade",
            display_name="before_upgrade",
            email="before_upgrade@example.com",
            email_verified=False,
            otp_method="none",
            roles=["user"],
            created_at=now,
            updated_at=now,
            is_external_only=False,
            is_active=True,
            user_history=[],
            blocked_uuids=[],
        )
    )
    connection.execute(
        insert(tables.tables["session"]).values(
            id=session_id,
            user_uuid=user_uuid,
            refresh_token_hash=hash_secret(current_token),
            previous_refresh_token_hash=hash_secret(previous_token),
            created_at=now,
            last_used_at=now,
            expires_at=now + 3600,
        )
    )


async def test_a_token_replaced_before_the_upgrade_still_ends_its_session(
    settings: Settings,
) -> None:
    """The one replaced refresh token a session remembered at 0004 is kept by the upgrade."""
    user_uuid, session_id = "0a0a0a0a-0000-4000-8000-000000000001", "s-before-upgrade"
    previous_token, current_token = new_refresh_token(), new_refresh_token()
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(
                _session_at_0004, user_uuid, session_id, previous_token, current_token
            )
    finally:
        await engine.dispose()
    app = create_app(settings)  # upgrades to head on start
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        access_token = app.state.authenticator.keyring.sign_access_token(
            subject=user_uuid, session_id=session_id, expires_in_seconds=600
        )
        headers = {"Authorization": f"Bearer {access_token}"}
        assert (await client.get("/api/users/me", headers=headers)).status_code == 200
        reused = await client.post("/api/auth/refresh", json={"refresh_token": previous_token})
        assert reused.status_code == 401
        assert reused.json()["code"] == "REFRESH_TOKEN_REUSED"
        assert (await client.get("/api/users/me", headers=headers)).status_code == 401
        current = await client.post("/api/auth/refresh", json={"refresh_token": current_token})
        assert current.status_code == 401


async def test_foreign_keys_are_enforced(app: FastAPI) -> None:
    """Deleting a user removes its sessions and their replaced tokens (ON DELETE CASCADE
    works on both backends, two levels deep)."""
    user = await create_user(app.state.session_factory)
    async with app.state.session_factory() as session:
        await session.execute(
            text(
                "INSERT INTO session (id, user_uuid, refresh_token_hash, created_at,"
                " last_used_at, expires_at) VALUES ('s1', :uuid, 'h', 0, 0, 0)"
            ),
            {"uuid": user.uuid},
        )
        await session.execute(
            text(
                "INSERT INTO rotated_refresh_token (token_hash, session_id, rotated_at)"
                " VALUES ('old', 's1', 0)"
            )
        )
        await session.commit()
        await session.execute(text('DELETE FROM "user" WHERE uuid = :uuid'), {"uuid": user.uuid})
        await session.commit()
        left = await session.scalar(text("SELECT count(*) FROM session"))
        rotated_left = await session.scalar(text("SELECT count(*) FROM rotated_refresh_token"))
    assert left == 0
    assert rotated_left == 0


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        async with engine.connect() as connection:
            journal = await connection.scalar(text("PRAGMA journal_mode"))
            foreign_keys = await connection.scalar(text("PRAGMA foreign_keys"))
            busy_timeout = await connection.scalar(text("PRAGMA busy_timeout"))
    finally:
        await engine.dispose()
    assert journal == "wal"
    assert foreign_keys == 1
    assert busy_timeout >= 1000


async def test_history_is_carried_into_its_own_table(db_backend: str) -> None:
    """Upgrading past 0005 moves each user's JSON history into ``user_event``, in order."""
    entries = [
        {"action": "signup", "at": 100, "by": "u1", "ip": None, "details": {}},
        {"action": "login_failed", "at": 101, "by": None, "ip": "10.0.0.1", "details": {"n": 1}},
        {"action": "login", "at": 102, "by": "u1", "ip": "10.0.0.1", "details": {}},
    ]
    engine = create_engine(db_backend)
    try:
        await upgrade_database(engine, "0004")
        async with engine.begin() as connection:
            for uuid, history in (("u1", entries), ("u2", [])):
                await connection.execute(
                    text(
                        'INSERT INTO "user" (uuid, username, display_name, email,'
                        " email_verified, otp_method, roles, created_at, updated_at,"
                        " is_external_only, is_active, user_history, blocked_uuids)"
                        " VALUES (:uuid, :uuid, :uuid, :email, false, 'none', '[\"user\"]',"
                        " 0, 0, false, true, :history, '[]')"
                    ),
                    {"uuid": uuid, "email": f"{uuid}@example.com", "history": json.dumps(history)},
                )
        await upgrade_database(engine)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT user_uuid, action, at, by, ip, details FROM user_event ORDER BY id"
                    )
                )
            ).all()
            columns = await connection.run_sync(
                lambda sync: [column["name"] for column in inspect(sync).get_columns("user")]
            )
    finally:
        await engine.dispose()
    assert [(row[0], row[1], row[2], row[3], row[4]) for row in rows] == [
        ("u1", "signup", 100, "u1", None),
        ("u1", "login_failed", 101, None, "10.0.0.1"),
        ("u1", "login", 102, "u1", "10.0.0.1"),
    ]
    details = [row[5] if isinstance(row[5], dict) else json.loads(row[5]) for row in rows]
    assert details == [{}, {"n": 1}, {}]
    assert "user_history" not in columns


def test_two_processes_starting_at_once_both_serve(settings: Settings, tmp_path: Path) -> None:
    """Two replicas on one empty database: one migrates, the other waits, both serve."""
    env = settings_env(settings)
    servers = [spawn_server(env, tmp_path / f"server{i}.log") for i in range(2)]
    try:
        for server in servers:
            wait_ready(server)
        for server in servers:
            response = httpx.get(f"{server.url}/health/ready", timeout=5)
            assert response.status_code == 200, response.text
            assert response.json()["checks"]["database"] == "ok"
        output = "".join(server.output for server in servers)
        # The first migration ran exactly once.
        assert output.count("Running upgrade  -> 0001") == 1, output
    finally:
        for server in servers:
            server.stop()


def test_required_postgresql_that_is_unreachable_fails_the_run() -> None:
    """Under REQUIRE_SERVICES=1 (CI) a down PostgreSQL fails tests instead of skipping them."""
    env = {
        **os.environ,
        "TEST_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/nothing",
        "REQUIRE_SERVICES": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "app/test/test_health.py::test_liveness",
            "-p",
            "no:cacheprovider",
            "--no-cov",
            "-q",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert "1 passed" in result.stdout  # SQLite still ran
    assert "PostgreSQL at TEST_DATABASE_URL is unreachable" in result.stdout
