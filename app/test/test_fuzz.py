"""Schemathesis against the live app: zero server errors, zero schema violations.

Every check, the stateful phase included, with a fixed seed and a time budget, as a
normal user, as an admin, and anonymously. The signed-in runs leave out the handful
of operations that end their own session (logout, password change, 2FA changes,
deleting the account), since nothing after them could be tested; the anonymous run
covers those too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.test.conftest import settings_env
from app.test.factories import PASSWORD
from app.test.server import LiveServer, start_server

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = "20261127"
SECONDS_PER_RUN = "40"
SESSION_ENDING = [
    "--exclude-path",
    "/api/auth/logout",
    "--exclude-path",
    "/api/auth/logout-all",
    "--exclude-path",
    "/api/auth/password/change",
    "--exclude-path-regex",
    r"^/api/auth/(otp/(enable|disable)|sessions/.*)$",
    "--exclude-path-regex",
    r"^/api/user/\{uuid\}$",
]


@pytest.fixture
def fuzzed_server(settings: Settings, tmp_path: Path) -> LiveServer:
    configured = settings.model_copy(
        update={
            "FIRST_ADMIN_USERNAME": "fuzz_admin",
            "FIRST_ADMIN_EMAIL": "fuzz_admin@example.com",
            "FIRST_ADMIN_PASSWORD": PASSWORD,
            # Fuzzing sends thousands of logins: the guard must not hide the answers.
            "AUTH_RATE_LIMIT_ADDRESS": "1000000 per 1 minute",
            "AUTH_RATE_LIMIT_ACCOUNT": "1000000 per 1 minute",
            "LOG_LEVEL": "WARNING",
        }
    )
    server = start_server(settings_env(configured), tmp_path / "server.log")
    yield server
    server.stop()


def _token(server: LiveServer, username: str) -> str:
    response = httpx.post(
        f"{server.url}/api/auth/login", data={"username": username, "password": PASSWORD}
    )
    response.raise_for_status()
    return response.json()["access_token"]


def _schemathesis(schema: Path, server: LiveServer, *extra: str) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        str(schema),
        "--url",
        server.url,
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        SEED,
        "--max-time",
        SECONDS_PER_RUN,
        "--workers",
        "1",
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def test_no_server_errors_and_no_schema_violations(
    fuzzed_server: LiveServer, tmp_path: Path
) -> None:
    httpx.post(
        f"{fuzzed_server.url}/api/auth/signup",
        json={"username": "fuzz_user", "email": "fuzz_user@example.com", "password": PASSWORD},
    ).raise_for_status()
    admin = _token(fuzzed_server, "fuzz_admin")
    schema = tmp_path / "openapi.json"
    document = httpx.get(
        f"{fuzzed_server.url}/openapi.json", headers={"Authorization": f"Bearer {admin}"}
    )
    document.raise_for_status()
    schema.write_text(json.dumps(document.json()))

    runs = {
        "user": ["--header", f"Authorization: Bearer {_token(fuzzed_server, 'fuzz_user')}"],
        "admin": ["--header", f"Authorization: Bearer {admin}"],
    }
    failures = []
    for name, auth in runs.items():
        result = _schemathesis(schema, fuzzed_server, *auth, *SESSION_ENDING)
        if result.returncode != 0:
            failures.append(f"--- as {name} ---\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}")
    anonymous = _schemathesis(schema, fuzzed_server)
    if anonymous.returncode != 0:
        failures.append(f"--- anonymous ---\n{anonymous.stdout[-6000:]}")
    assert "Internal server error" not in fuzzed_server.output
    assert not failures, "\n".join(failures)
