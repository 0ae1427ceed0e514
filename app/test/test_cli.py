"""The admin command line: flags and purge (create-admin is in test_first_admin)."""

from __future__ import annotations

import json

from app.core.config import Settings
from app.test.conftest import settings_env
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


def test_purge_runs_every_job(settings: Settings) -> None:
    result = run_cli(settings_env(settings), "purge")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "purge_expired",
        "finish_deletions",
        "remove_orphan_files",
        "trim_history",
    ]
    assert json.loads(lines[0].split(": ", 1)[1]) == {
        "sessions": 0,
        "used_tokens": 0,
        "otp_challenges": 0,
        "webauthn_challenges": 0,
    }
