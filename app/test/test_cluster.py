"""Two replicas on different machines, as far as one machine can play it.

Two service processes, each with a DATA_DIR of its own (nothing on local disk is
shared), on one PostgreSQL database, one Redis and one S3-compatible server. A user's
journey alternates between them request by request; whatever one replica did, the
other must know at once: the account, its second factor, its picture, the flags, a
logout, the failed sign-ins counted, and the maintenance jobs run once per period.
"""

from __future__ import annotations

import io
import itertools
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pyotp
import pytest
from PIL import Image
from sqlalchemy import make_url

from app.core.config import Settings
from app.test.conftest import (
    TEST_DATABASE_URL,
    TEST_JWT_SECRET,
    _libpq_conninfo,
    empty_redis,
    missing,
    s3_client,
    s3_settings,
    settings_env,
)
from app.test.factories import PASSWORD, bearer
from app.test.mail import MailCatcher, link_in, token_in
from app.test.server import LiveServer, start_server

#: Every maintenance job's period in the cluster (seconds).
JOB_PERIOD = 4
#: Failed sign-ins an account may have, across both replicas.
ACCOUNT_LIMIT = 5


@pytest.fixture
def db_backend() -> Iterator[str]:
    """PostgreSQL only: the database replicas on different machines share (a fresh
    schema, dropped afterwards)."""
    if not TEST_DATABASE_URL:
        missing("TEST_DATABASE_URL is not set: the cluster test needs PostgreSQL")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    conninfo = _libpq_conninfo(TEST_DATABASE_URL)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(TEST_DATABASE_URL).set(
        drivername="postgresql+psycopg", query={"options": f"-csearch_path={schema}"}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def settings_overrides(
    smtp_server: MailCatcher, s3_server: str, s3_bucket: str
) -> dict[str, object]:
    return {
        **smtp_server.settings(),
        **s3_settings(s3_server, s3_bucket),
        "FEATURE_FLAGS_ENABLED": True,
        "AUTH_RATE_LIMIT_ACCOUNT": f"{ACCOUNT_LIMIT} per 15 minutes",
        "MAINTENANCE_PERIOD_SECONDS": JOB_PERIOD,
        "FIRST_ADMIN_USERNAME": "cluster_admin",
        "FIRST_ADMIN_EMAIL": "cluster_admin@example.com",
        "FIRST_ADMIN_PASSWORD": PASSWORD,
    }


@pytest.fixture
def cluster(settings: Settings, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Replicas A and B: one database, one Redis, one bucket; a DATA_DIR each."""
    redis_url = empty_redis()
    servers: list[LiveServer] = []
    try:
        for name in ("a", "b"):
            env = {
                **settings_env(settings),
                "DATA_DIR": str(tmp_path / f"replica-{name}"),
                "JWT_SECRET_KEY": TEST_JWT_SECRET,
                "REDIS_URL": redis_url,
            }
            servers.append(start_server(env, tmp_path / f"replica-{name}.log"))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _on(server: LiveServer, url: str) -> str:
    """``url`` (built from BASE_URL) sent to ``server`` instead."""
    parts = urlsplit(url)
    return f"{server.url}{parts.path}?{parts.query}"


def _job_runs(*servers: LiveServer) -> list[float]:
    """When each replica ran purge_expired, from their logs, in order."""
    runs = []
    for server in servers:
        for line in server.output.splitlines():
            if re.search(r" - job purge_expired: ", line):
                runs.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp())
    return sorted(runs)


def test_a_journey_alternating_between_two_replicas(
    cluster: tuple[LiveServer, LiveServer],
    smtp_server: MailCatcher,
    s3_server: str,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    a, b = cluster
    started = time.monotonic()

    # Sign up on A, verify on B, log in on B, read on A.
    signed_up = httpx.post(
        f"{a.url}/api/auth/signup",
        json={"username": "roamer", "email": "roamer@example.com", "password": PASSWORD},
    )
    assert signed_up.status_code == 201, signed_up.text
    deadline = time.monotonic() + 10
    while not smtp_server.to("roamer@example.com") and time.monotonic() < deadline:
        time.sleep(0.05)
    token = token_in(link_in(smtp_server.to("roamer@example.com")[0]))
    verified = httpx.post(f"{b.url}/api/auth/email/verify", json={"token": token})
    assert verified.status_code == 200, verified.text
    pair = httpx.post(
        f"{b.url}/api/auth/login", json={"username": "roamer", "password": PASSWORD}
    ).json()
    me = httpx.get(f"{a.url}/api/users/me", headers=bearer(pair))
    assert me.status_code == 200
    assert me.json()["email_verified"] is True
    user_uuid = me.json()["uuid"]

    # Two-factor: set up on A, turn on with B, log in on A, finish on B.
    setup = httpx.post(
        f"{a.url}/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=bearer(pair),
    )
    assert setup.status_code == 200, setup.text
    totp = pyotp.parse_uri(setup.json()["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    enabled = httpx.post(
        f"{b.url}/api/auth/otp/enable",
        json={"method": "authenticator", "code": totp.now()},
        headers=bearer(pair),
    )
    assert enabled.status_code == 200, enabled.text
    pending = httpx.post(
        f"{a.url}/api/auth/login", json={"username": "roamer", "password": PASSWORD}
    ).json()
    assert pending["otp_required"] is True
    pair = httpx.post(
        f"{b.url}/api/auth/otp/verify",
        json={"otp_token": pending["otp_token"], "code": totp.at(time.time() + 30)},
    ).json()
    assert "access_token" in pair, pair

    # A picture uploaded to A is read through B, from the bucket: no DATA_DIR has it.
    uploaded = httpx.put(
        f"{a.url}/api/user/{user_uuid}/pfp",
        files={"file": ("me.png", _png(), "image/png")},
        headers=bearer(pair),
    )
    assert uploaded.status_code == 204, uploaded.text
    picture_url = httpx.get(f"{b.url}/api/users/me", headers=bearer(pair)).json()["picture_url"]
    from_b = httpx.get(_on(b, picture_url))
    from_a = httpx.get(_on(a, picture_url))
    assert from_b.status_code == 200
    assert from_b.headers["content-type"].startswith("image/")
    assert from_b.content == from_a.content
    stored = s3_client(s3_server).list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert any(user_uuid in item["Key"] for item in stored)
    for name in ("a", "b"):
        assert not list((tmp_path / f"replica-{name}").rglob("pfp_*")), name

    # A flag changed on A is obeyed by B within two seconds.
    admin = httpx.post(
        f"{b.url}/api/auth/login", json={"username": "cluster_admin", "password": PASSWORD}
    ).json()
    changed = httpx.patch(
        f"{a.url}/api/admin/feature-flags",
        json={"add": {"LIST_PROVIDERS": False}},
        headers=bearer(admin),
    )
    assert changed.status_code == 200, changed.text
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if httpx.get(f"{b.url}/api/oauth/providers").status_code == 403:
            break
        time.sleep(0.05)
    assert httpx.get(f"{b.url}/api/oauth/providers").status_code == 403

    # A logout on A: the token is refused by B at once (B had it cached a moment ago).
    assert httpx.get(f"{b.url}/api/users/me", headers=bearer(pair)).status_code == 200
    assert httpx.post(f"{a.url}/api/auth/logout", headers=bearer(pair)).status_code == 204
    assert httpx.get(f"{b.url}/api/users/me", headers=bearer(pair)).status_code == 401

    # Failed sign-ins of one account are counted across both replicas.
    answers = [
        httpx.post(
            f"{server.url}/api/auth/login", json={"username": "roamer", "password": "wrong guess"}
        ).status_code
        for server in (a, b) * ACCOUNT_LIMIT
    ]
    assert answers[:ACCOUNT_LIMIT] == [401] * ACCOUNT_LIMIT
    assert set(answers[ACCOUNT_LIMIT:]) == {429}

    # The maintenance jobs: each replica's timer fires every period, yet the job runs
    # once per period between them.
    deadline = started + 60
    while len(_job_runs(a, b)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    runs = _job_runs(a, b)
    assert len(runs) >= 3, (a.output[-2000:], b.output[-2000:])
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    # Both replicas running one period would log within moments of each other. The
    # log line is written when a run ends, so a run slowed by a busy machine moves it
    # by up to a second: a claimed period still leaves more than a second between.
    assert min(gaps) > 1, runs
    assert len(runs) <= (runs[-1] - runs[0]) / JOB_PERIOD + 1.5, runs
    # Both timers did fire (APScheduler logs each attempt, claimed or not).
    for server in (a, b):
        assert "JobScheduler.run" in server.output
