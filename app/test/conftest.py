"""Shared fixtures: settings and an app per test, both database backends, clients.

Database tests run on SQLite always and on PostgreSQL when ``TEST_DATABASE_URL`` is
set (each test in a schema of its own, dropped afterwards). With
``REQUIRE_SERVICES=1`` (CI) a missing service or tool fails the test instead of
skipping it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from loguru import logger
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import make_url

from app.core.auth_cache import enforce_declarations, install_hooks
from app.core.config import Settings
from app.main import create_app
from app.test.mail import MailCatcher
from app.test.server import ROOT, LiveServer, listening_socket, start_server

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")


def _redis_of_this_worker(url: str | None) -> str | None:
    """TEST_REDIS_URL, with a database of its own for each pytest-xdist worker: tests
    empty their database, so workers must not share one. The first worker keeps the
    given number, the second takes the one below it, and so on."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not url or not worker.startswith("gw"):
        return url
    parsed = urlsplit(url)
    number = int(parsed.path.strip("/") or 0) - int(worker[2:])
    if number < 0:
        raise pytest.UsageError(
            f"TEST_REDIS_URL {url!r}: worker {worker} needs a database below it; "
            "name a database number of at least the number of workers minus one"
        )
    return urlunsplit(parsed._replace(path=f"/{number}"))


TEST_REDIS_URL = _redis_of_this_worker(os.environ.get("TEST_REDIS_URL"))
REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"
#: A JWT secret for tests (48 bytes).
TEST_JWT_SECRET = "test-secret-" + "x" * 36


@pytest.fixture(autouse=True, scope="session")
def auth_cache_hooks() -> None:
    """The auth cache's ORM hooks, for tests that use sessions or cached copies without
    ``create_app``; and in every test, a bulk write to ``user`` or ``session`` that
    does not declare its users raises instead of emptying the cache."""
    install_hooks()
    enforce_declarations()


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it when services are required (CI)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of a system tool the test drives; skip or fail when it is missing."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (scripts/install-test-tools.sh installs it)")
    return path


def require_redis() -> str:
    """TEST_REDIS_URL; skip or fail when it is not set."""
    if not TEST_REDIS_URL:
        missing("TEST_REDIS_URL is not set")
    return TEST_REDIS_URL


def empty_redis() -> str:
    """TEST_REDIS_URL, its database emptied first: the limiter's counts of earlier tests
    (kept 15 minutes) must not carry into this one."""
    url = require_redis()
    with Redis.from_url(url) as client:
        client.flushdb()
    return url


def _libpq_conninfo(url: str) -> str:
    """A psycopg conninfo for a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'data' / 'test.db'}"
        return
    if not TEST_DATABASE_URL:
        missing("TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    conninfo = _libpq_conninfo(TEST_DATABASE_URL)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as error:
        missing(f"PostgreSQL at TEST_DATABASE_URL is unreachable: {error}")
    url = make_url(TEST_DATABASE_URL).set(
        drivername="postgresql+psycopg", query={"options": f"-csearch_path={schema}"}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings for a test: its own DATA_DIR, no .env file, fast bcrypt."""
    values: dict[str, Any] = {
        "DATA_DIR": data_dir,
        "JWT_SECRET_KEY": TEST_JWT_SECRET,
        "PASSWORD_BCRYPT_ROUNDS": 4,
        "LOG_LEVEL": "DEBUG",
    }
    if database_url:
        values["DATABASE_URI"] = database_url
    values.update(overrides)
    return Settings(_env_file=None, **values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in another process."""
    env = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value == field.default or value is None:
            continue
        env[name] = ",".join(value) if isinstance(value, list) else str(value)
    return env


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Extra settings for the test's app; a module overrides this fixture to change them."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, db_backend: str, settings_overrides: dict[str, object]) -> Settings:
    """Settings of the test's app, on the parametrised database backend."""
    return make_settings(tmp_path / "data", db_backend, **settings_overrides)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The application, started (migrated) and stopped around the test."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client for ``app``."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@contextmanager
def replicas(
    settings: Settings, redis_url: str | None, tmp_path: Path
) -> Iterator[list[LiveServer]]:
    """Two server processes on one database and one Redis (or none), each with its own
    DATA_DIR.

    Started one after the other: the first migrates (and creates a first admin).
    """
    servers: list[LiveServer] = []
    try:
        for index in range(2):
            env = {
                **settings_env(settings),
                "DATA_DIR": str(tmp_path / f"replica{index}"),
                "JWT_SECRET_KEY": TEST_JWT_SECRET,
            }
            if redis_url is not None:
                env["REDIS_URL"] = redis_url
            servers.append(start_server(env, tmp_path / f"replica{index}.log"))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """The URL of a Redis server of the test's own, on a free loopback port: for tests
    that stall Redis (``CLIENT PAUSE`` pauses a whole server, whoever else uses it)."""
    binary = require_tool("redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with Redis.from_url(url, socket_timeout=1) as client:
                    client.ping()
                break
            except RedisConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.kill()
        process.wait()


#: Credentials the tests give the S3 server (moto takes any).
S3_TEST_ACCESS_KEY_ID = "test-access-key"
S3_TEST_SECRET_ACCESS_KEY = "test-secret-access-key"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an S3-compatible server of this test process: moto's, started as a
    subprocess (``app/test/s3_server.py``) on a free loopback port. Tests talk real
    HTTP to it; each takes a bucket of its own (:func:`s3_bucket`)."""
    if importlib.util.find_spec("moto") is None:
        missing("moto is not installed (app/test/requirements.txt installs it)")
    sock = listening_socket()
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    log_path = tmp_path_factory.mktemp("s3") / "s3_server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.test.s3_server", str(sock.fileno())],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    sock.close()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the S3 server did not start: {log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def s3_client(endpoint_url: str) -> Any:
    """A plain (synchronous) S3 client of the test, to look into buckets."""
    import boto3  # installed with moto

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_ACCESS_KEY_ID,
        aws_secret_access_key=S3_TEST_SECRET_ACCESS_KEY,
    )


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket of the test's own on :func:`s3_server`."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_client(s3_server).create_bucket(Bucket=name)
    return name


def s3_settings(endpoint_url: str, bucket: str, **overrides: Any) -> dict[str, Any]:
    """Settings overrides that keep files in ``bucket`` of the test's S3 server."""
    return {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": endpoint_url,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY_ID,
        "S3_SECRET_ACCESS_KEY": S3_TEST_SECRET_ACCESS_KEY,
        **overrides,
    }


@pytest.fixture
def live_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """The app served by a real uvicorn process on a free loopback port."""
    server = start_server(settings_env(settings), log_path=tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


#: Chromium's switches for headless tests in a container (no sandbox, GPU or updates).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright (installed by
    scripts/install-test-tools.sh), closed after the test."""
    executable = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def smtp_server() -> Iterator[MailCatcher]:
    """A real SMTP server (aiosmtpd) on a free loopback port, catching every message."""
    catcher = MailCatcher()
    catcher.start()
    try:
        yield catcher
    finally:
        catcher.stop()


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    """Every log line written while the test runs (formatted messages)."""
    lines: list[str] = []
    handler_id = logger.add(
        lambda message: lines.append(str(message)),
        level="TRACE",
        format="{level} | {extra[request_id]} | {name} | {message}",
    )
    try:
        yield lines
    finally:
        logger.remove(handler_id)
