"""The admin command line: flags, purge, seed-users (create-admin is in test_first_admin)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi import FastAPI

from app.core.config import Settings
from app.test.conftest import settings_env
from app.test.factories import PASSWORD, bearer, user_with_tokens
from app.test.server import run_cli


def test_flags_set_and_list(settings: Settings) -> None:
    env = settings_env(settings)
    added = run_cli(env, "flags", "set", "AB_TEST", '[{"percentageOfUsers": 0.25}]')
    assert added.returncode == 0, added.stderr
    assert run_cli(env, "flags", "set", "OLD", "false").returncode == 0
    listed = run_cli(env, "flags", "list")
    assert json.loads(listed.stdout) == {
        "AB_TEST": [{"percentageOfUsers": 0.25}],
        "OLD": False,
    }
    bad = run_cli(env, "flags", "set", "BROKEN", '[{"percentageOfUsers": 3}]')
    assert bad.returncode == 1
    assert "BROKEN" in bad.stderr


def test_flags_set_changes_what_the_api_refuses(settings: Settings) -> None:
    """The command line is the way back in: it sets any flag, the protected ones too."""
    env = settings_env(settings)
    shown = run_cli(env, "flags", "set", "--help")
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.replace("\u2502", " ").split())
    assert "any flag" in text
    assert "LOGIN" in text
    assert "API refuses" in text
    assert run_cli(env, "flags", "set", "LOGIN", "false").returncode == 0
    assert run_cli(env, "flags", "set", "UPDATE_FEATURE_FLAGS", "false").returncode == 0
    assert run_cli(env, "flags", "set", "LOGIN", "true").returncode == 0
    listed = run_cli(env, "flags", "list")
    assert json.loads(listed.stdout) == {"LOGIN": True, "UPDATE_FEATURE_FLAGS": False}


def test_flags_export_and_import(settings: Settings, tmp_path: Path) -> None:
    """The flags leave and come back in the flag file's format, wherever they are kept
    (the file on SQLite, the database on PostgreSQL)."""
    env = settings_env(settings)
    assert run_cli(env, "flags", "set", "ROLLOUT", '[{"percentageOfUsers": 0.5}]').returncode == 0
    exported = tmp_path / "exported.json"
    done = run_cli(env, "flags", "export", str(exported))
    assert done.returncode == 0, done.stderr
    assert json.loads(exported.read_text()) == {"ROLLOUT": [{"percentageOfUsers": 0.5}]}

    exported.write_text(json.dumps({"ROLLOUT": False, "NEW_ONE": True}))
    imported = run_cli(env, "flags", "import", str(exported))
    assert imported.returncode == 0, imported.stderr
    assert json.loads(run_cli(env, "flags", "list").stdout) == {"ROLLOUT": False, "NEW_ONE": True}

    exported.write_text('{"BROKEN": [{"percentageOfUsers": 3}]}')
    refused = run_cli(env, "flags", "import", str(exported))
    assert refused.returncode == 1
    assert "BROKEN" in refused.stderr
    missing = run_cli(env, "flags", "import", str(tmp_path / "nothing.json"))
    assert missing.returncode == 1


def test_purge_runs_every_job(settings: Settings) -> None:
    result = run_cli(settings_env(settings), "purge")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "purge_expired",
        "finish_deletions",
        "remove_orphan_files",
        "trim_history",
        "purge_webhook_deliveries",
        "trim_audit_log",
    ]
    assert json.loads(lines[0].split(": ", 1)[1]) == {
        "sessions": 0,
        "used_tokens": 0,
        "otp_challenges": 0,
        "webauthn_challenges": 0,
        "signing_keys": 0,
        "oidc_codes": 0,
        "oidc_grants": 0,
    }


async def test_seed_users_adds_accounts_that_can_log_in(
    settings: Settings, app: FastAPI, client: httpx.AsyncClient
) -> None:
    env = settings_env(settings)
    seeded = run_cli(env, "seed-users", "--count", "12345", "--password", PASSWORD)
    assert seeded.returncode == 0, seeded.stderr
    assert "Added 12345 users." in seeded.stdout
    more = run_cli(env, "seed-users", "--count", "5", "--start", "12345", "--password", PASSWORD)
    assert more.returncode == 0, more.stderr
    again = run_cli(env, "seed-users", "--count", "5", "--password", PASSWORD)
    assert again.returncode == 1
    assert "exist" in again.stderr

    login = await client.post(
        "/api/auth/login", json={"username": "seed_0012349", "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    _, staff_tokens = await user_with_tokens(app, client, ("moderator", "user"))
    listed = await client.get(
        "/api/users", params={"search": "seed_", "limit": 1}, headers=bearer(staff_tokens)
    )
    assert listed.json()["total"] == 12350
    found = await client.get(
        "/api/users", params={"search": "seed_0000042"}, headers=bearer(staff_tokens)
    )
    assert [user["email"] for user in found.json()["items"]] == ["seed_0000042@example.test"]


def test_seed_users_is_refused_in_production(settings: Settings) -> None:
    env = {**settings_env(settings), "ENVIRONMENT": "production"}
    refused = run_cli(env, "seed-users", "--count", "1", "--password", PASSWORD)
    assert refused.returncode == 2
    assert "production" in refused.stderr
