"""The first admin: from FIRST_ADMIN_* at start, or `python -m app.cli create-admin`."""

from __future__ import annotations

import subprocess

import httpx
from sqlalchemy import select

from app.core.config import Settings
from app.main import create_app
from app.models import User
from app.test.conftest import settings_env
from app.test.factories import PASSWORD, bearer, login
from app.test.server import run_cli

ADMIN = {
    "FIRST_ADMIN_USERNAME": "root_admin",
    "FIRST_ADMIN_EMAIL": "Admin@Example.com",
    "FIRST_ADMIN_PASSWORD": PASSWORD,
}


async def _admins(app) -> list[User]:
    async with app.state.session_factory() as session:
        users = (await session.scalars(select(User))).all()
    return [user for user in users if "admin" in user.roles]


async def test_first_admin_is_created_once(settings: Settings) -> None:
    configured = settings.model_copy(update=ADMIN)
    for _ in range(2):  # a restart does not create a second one
        app = create_app(configured)
        async with app.router.lifespan_context(app):
            admins = await _admins(app)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                tokens = await login(client, "root_admin")
                me = (await client.get("/api/users/me", headers=bearer(tokens))).json()
        assert len(admins) == 1
        assert me["roles"] == ["admin", "moderator", "tester", "user"]
        assert me["email"] == "admin@example.com"
        assert me["email_verified"] is True


async def test_incomplete_or_invalid_first_admin_creates_nothing(
    settings: Settings, captured_logs: list[str]
) -> None:
    for overrides in (
        {"FIRST_ADMIN_USERNAME": "root_admin"},
        {**ADMIN, "FIRST_ADMIN_PASSWORD": "password"},
        {**ADMIN, "FIRST_ADMIN_USERNAME": "Root Admin"},
    ):
        app = create_app(settings.model_copy(update=overrides))
        async with app.router.lifespan_context(app):
            assert await _admins(app) == []
    logs = "".join(captured_logs)
    assert (
        "FIRST_ADMIN_USERNAME, FIRST_ADMIN_EMAIL and FIRST_ADMIN_PASSWORD must all be set" in logs
    )
    assert "first admin not created: password is too common" in logs
    assert "first admin not created: username must be" in logs


def _cli(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return run_cli(settings_env(settings), *args, stdin=stdin)


async def test_cli_create_admin_prompts_for_the_password(settings: Settings) -> None:
    result = _cli(
        settings,
        "create-admin",
        "--username",
        "cli_admin",
        "--email",
        "cli@example.com",
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Admin 'cli_admin' created" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            tokens = await login(client, "cli_admin")
            me = (await client.get("/api/users/me", headers=bearer(tokens))).json()
    assert me["roles"] == ["admin", "moderator", "tester", "user"]

    again = _cli(
        settings,
        "create-admin",
        "--username",
        "cli_admin",
        "--email",
        "other@example.com",
        "--password",
        PASSWORD,
    )
    assert again.returncode == 1
    assert "This username is already taken" in again.stderr


def test_cli_refuses_a_weak_password(settings: Settings) -> None:
    result = _cli(
        settings,
        "create-admin",
        "--username",
        "weak_admin",
        "--email",
        "w@example.com",
        "--password",
        "password",
    )
    assert result.returncode == 1
    assert "password is too common" in result.stderr


def test_cli_migrate(settings: Settings) -> None:
    result = _cli(settings, "migrate")
    assert result.returncode == 0, result.stderr
    assert "Database schema is up to date." in result.stdout
