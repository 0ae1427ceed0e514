"""Schemathesis against the live app: no server error, no answer outside the OpenAPI
description, and every operation reaches its success.

Two runs, every check and the stateful phase, a fixed seed and a time budget each: as
a plain user and as an admin. Nothing is left out: the hooks (fuzz_hooks.py) sign
the run in again whenever a fuzzed logout, session revocation, sign-out or password
change ends its session, so the operations that end sessions are fuzzed like the
others and the credentials last the whole run. They also fill in what only the
account knows (its password, UUID, files, sessions, a refresh token, a real image),
so that requests get past the 4xx a fuzzer's guesses earn. Each run records every
request's operation and status; the test checks from that record that each run
fuzzed every operation of the schema, and that each operation succeeded at least once
(a 2xx, or the redirect it documents as its answer), except the few in
NO_SUCCESS_REACHABLE, each with the reason. The pages and /metrics, left out of the
served document (it is for API clients), are put back into the fuzzed one: they are
fuzzed like the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.core.database import create_engine
from app.main import create_app
from app.models import WebhookEndpoint
from app.test.conftest import settings_env
from app.test.documents import UNDOCUMENTED, complete_document
from app.test.factories import PASSWORD, bearer
from app.test.server import ROOT, LiveServer, start_server

CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
SEED = "20261127"
SECONDS_PER_RUN = "40"

#: Operations whose success needs what a fuzzer cannot have. They are fuzzed all the
#: same (no server error, no undocumented answer); only their success is not expected.
NO_SUCCESS_REACHABLE = {
    "POST /api/auth/otp/enable": "needs the current code of the authenticator that "
    "otp/setup started: computed from its secret, never guessed",
    "POST /api/auth/otp/verify": "needs the otp_token of a sign-in with two-factor "
    "authentication on, which no fuzzed account has (see otp/enable)",
    "POST /api/auth/otp/disable": "needs two-factor authentication on (see otp/enable)",
    "POST /api/auth/otp/recovery-codes/verify": "needs the otp_token of a sign-in with "
    "two-factor authentication on and a recovery code (see otp/verify)",
    "POST /api/auth/otp/recovery-codes": "needs two-factor authentication on (see otp/enable)",
    "POST /api/auth/otp/disable/code": "needs two-factor authentication by email on "
    "(see otp/enable; email is off on the fuzzed server)",
    "POST /api/auth/reauthenticate/code": "only for accounts without a password (signed "
    "up through a provider); the fuzzed accounts re-authenticate with theirs",
    "POST /api/auth/password/reset/info": "needs the one-time token mailed by password/forgot",
    "POST /api/auth/password/reset": "needs the one-time token mailed by password/forgot",
    "GET /api/auth/email/verify": "needs the one-time token mailed to the address",
    "POST /api/auth/email/verify": "needs the one-time token mailed to the address",
    "POST /api/auth/email/change/confirm": "needs the one-time token mailed to the new address",
    "POST /api/auth/email/change/undo": "needs the one-time token mailed to the old address",
    "POST /api/auth/token/exchange": "needs the one-time code that ends a sign-in through "
    "a provider, a round trip through the provider's site",
    "GET /api/oauth/{provider}/callback": "needs the state and code of a round trip "
    "through the provider's site",
    "DELETE /api/oauth/{provider}": "needs an account linked through a round trip to the "
    "provider's site",
    "GET /api/oauth/bluesky/client-metadata.json": "Bluesky is off on the fuzzed server "
    "(its sign-in would resolve handles on the internet)",
    "GET /api/oauth/bluesky/jwks.json": "Bluesky is off on the fuzzed server",
    "GET /api/oauth/bluesky/login": "Bluesky is off on the fuzzed server",
    "GET /api/oauth/bluesky/link": "Bluesky is off on the fuzzed server",
    "GET /api/oauth/bluesky/callback": "Bluesky is off on the fuzzed server",
    "POST /api/oauth/bluesky/refresh": "Bluesky is off on the fuzzed server",
    "POST /api/admin/user/{uuid}/two-factor/reset": "needs another account with "
    "two-factor authentication on, which no fuzzed account has (see otp/enable)",
    "POST /api/admin/user/{uuid}/password-reset": "needs email, which is off on the fuzzed server",
    "DELETE /api/admin/user/{uuid}/external-accounts/{provider}": "needs another account "
    "linked through a round trip to the provider's site",
    "POST /api/auth/passkeys/register/finish": "needs an authenticator's signature over "
    "the challenge of register/begin",
    "POST /api/auth/passkeys/sign-in/finish": "needs a registered passkey's signature "
    "(see register/finish)",
    "PATCH /api/auth/passkeys/{passkey_id}": "needs a registered passkey (see register/finish)",
    "DELETE /api/auth/passkeys/{passkey_id}": "needs a registered passkey (see register/finish)",
    "DELETE /api/admin/user/{uuid}/passkeys/{passkey_id}": "needs a registered passkey "
    "(see register/finish)",
    "POST /api/auth/passkeys/second-factor/begin": "needs the otp_token of a sign-in with "
    "two-factor authentication on (see otp/verify)",
    "POST /api/auth/passkeys/second-factor/finish": "needs two-factor authentication on "
    "and a registered passkey (see otp/verify, register/finish)",
}


@pytest.fixture
def fuzzed_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    configured = settings.model_copy(
        update={
            "FIRST_ADMIN_USERNAME": "fuzz_admin",
            "FIRST_ADMIN_EMAIL": "fuzz_admin@example.com",
            "FIRST_ADMIN_PASSWORD": PASSWORD,
            # Fuzzing sends thousands of logins: the guard must not hide the answers.
            "AUTH_RATE_LIMIT_ADDRESS": "1000000 per 1 minute",
            "AUTH_RATE_LIMIT_ACCOUNT": "1000000 per 1 minute",
            # So that /metrics and a provider's redirect (no round trip) can succeed.
            "METRICS_ENABLED": True,
            "API_CLIENT_ID_GITHUB": "fuzz-client",
            "API_CLIENT_SECRET_GITHUB": "fuzz-secret",
            # So that /terms and /privacy redirect (without a front end they answer 404).
            "FRONTEND_URL": "https://app.example",
            "LOG_LEVEL": "WARNING",
        }
    )
    server = start_server(settings_env(configured), tmp_path / "server.log")
    yield server
    server.stop()


def _fuzz(
    schema: Path, server: LiveServer, context: dict[str, Any], work: Path
) -> tuple[subprocess.CompletedProcess, list[tuple[str, int, str]]]:
    """One schemathesis run with the hooks; its result and its record of requests."""
    record = work / f"{context['username']}.jsonl"
    record.write_text("")
    context_file = work / f"{context['username']}.json"
    context_file.write_text(json.dumps({**context, "url": server.url, "record": str(record)}))
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--no-color",
        "--config-file",
        str(CONFIG),
        "run",
        str(schema),
        "--url",
        server.url,
        # Every check runs (each is on unless schemathesis.toml turns it off for an
        # operation); `--checks all` would override the file. Nothing is excluded; an
        # exclusion would need `--exclude-name` per operation: `--exclude-path-regex`
        # keeps only its last value.
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        SEED,
        "--max-time",
        SECONDS_PER_RUN,
        "--workers",
        "1",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "FUZZ_CONTEXT": str(context_file)}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT, env=env
    )
    requests = [tuple(json.loads(line)) for line in record.read_text().splitlines()]
    return result, requests


async def _webhook_urls(settings: Settings) -> set[str]:
    """The URLs of the webhook endpoints registered on the fuzzed server."""
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            return set((await connection.execute(select(WebhookEndpoint.url))).scalars())
    finally:
        await engine.dispose()


def _succeeded(status: int, documented: set[str]) -> bool:
    """A 2xx, or a redirect the operation documents as its answer."""
    return 200 <= status < 300 or (300 <= status < 400 and str(status) in documented)


def test_every_operation_fuzzed_and_reaching_its_success(
    fuzzed_server: LiveServer, settings: Settings, tmp_path: Path
) -> None:
    signup = httpx.post(
        f"{fuzzed_server.url}/api/auth/signup",
        json={"username": "fuzz_user", "email": "fuzz_user@example.com", "password": PASSWORD},
    )
    signup.raise_for_status()
    admin = httpx.post(
        f"{fuzzed_server.url}/api/auth/login",
        data={"username": "fuzz_admin", "password": PASSWORD},
    ).json()
    user_uuid = signup.json()["uuid"]
    me = httpx.get(f"{fuzzed_server.url}/api/users/me", headers=bearer(admin))
    admin_uuid = me.json()["uuid"]
    served = httpx.get(f"{fuzzed_server.url}/openapi.json", headers=bearer(admin))
    served.raise_for_status()
    document = complete_document(create_app(settings))
    assert set(document["paths"]) - UNDOCUMENTED == set(served.json()["paths"])
    assert set(document["paths"]) >= UNDOCUMENTED
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(document))
    documented = {
        f"{method.upper()} {path}": set(operation["responses"])
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert set(NO_SUCCESS_REACHABLE) <= set(documented)

    runs = {
        "user": {"username": "fuzz_user", "uuid": user_uuid, "other_uuid": admin_uuid},
        "admin": {"username": "fuzz_admin", "uuid": admin_uuid, "other_uuid": user_uuid},
    }
    failures = []
    successes: dict[str, set[str]] = defaultdict(set)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    # Bound, never listening: connections are refused, and nothing else takes the port.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    for name, account in runs.items():
        context = {
            **account,
            "password": PASSWORD,
            "provider": "github",
            "admin_username": "fuzz_admin",
            "admin_password": PASSWORD,
            # Nothing listens there: webhooks the fuzzer registers stay on this machine.
            "webhook_url": f"http://127.0.0.1:{closed_port}/fuzzed",
        }
        result, requests = _fuzz(schema, fuzzed_server, context, tmp_path)
        if result.returncode != 0:
            failures.append(f"--- as {name} ---\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}")
        fuzzed = {label for label, _, phase in requests if phase != "auth"}
        # Every operation, in every run: nothing left out, nothing silently dropped.
        if fuzzed != set(documented):
            failures.append(f"as {name}, fuzzed or not: {sorted(set(documented) ^ fuzzed)}")
        # The session ended under the fuzzer (logout, revocation, password change...)
        # and the run signed in again instead of going on with a dead token.
        if sum(phase == "auth" for _, _, phase in requests) < 2:
            failures.append(f"as {name}, the run never had to sign in again")
        for label, status, phase in requests:
            if phase != "auth":
                statuses[label][status] += 1
            if phase != "auth" and _succeeded(status, documented[label]):
                successes[label].add(name)
    closed.close()
    # Every receiver the fuzzer registered points at the closed loopback port.
    assert asyncio.run(_webhook_urls(settings)) <= {f"http://127.0.0.1:{closed_port}/fuzzed"}
    assert "Internal server error" not in fuzzed_server.output
    assert not failures, "\n".join(failures)

    expected = set(documented) - set(NO_SUCCESS_REACHABLE)
    never = {label: dict(statuses[label]) for label in sorted(expected - set(successes))}
    assert never == {}, "never succeeded (the statuses they got)"
    # A reason that stopped being true: the operation belongs in the check above.
    assert sorted(set(NO_SUCCESS_REACHABLE) & set(successes)) == []
