"""Faults: PostgreSQL stopped mid-run and started again, under a live server.

The test runs a PostgreSQL cluster of its own (initdb in a temporary folder, on a
free port), so stopping it disturbs nothing else. Redis down, SMTP down and a
deletion failing half-way are covered in test_rate_limiter, test_email and
test_users.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.test.conftest import TEST_JWT_SECRET, missing
from app.test.factories import PASSWORD
from app.test.server import listening_socket, start_server


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster run by the postgres system user."""

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(self.folder / "data"), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._pg_ctl("-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or not shutil.which("runuser") or not shutil.which("initdb"):
        missing("a throwaway PostgreSQL cluster needs root, runuser and initdb")
    folder = Path(tempfile.mkdtemp(prefix="user-manager-pg-"))
    folder.chmod(0o755)
    shutil.chown(folder, "postgres", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            "initdb",
            "-D",
            str(folder / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    instance = Cluster(folder, port)
    instance.start()
    try:
        yield instance
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            instance.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _wait(check, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_postgresql_stopped_and_started_again(cluster: Cluster, tmp_path: Path) -> None:
    env = {
        "DATABASE_URI": cluster.url,
        "DATA_DIR": str(tmp_path / "data"),
        "JWT_SECRET_KEY": TEST_JWT_SECRET,
        "PASSWORD_BCRYPT_ROUNDS": "4",
    }
    server = start_server(env, tmp_path / "server.log")
    try:
        base = server.url
        httpx.post(
            f"{base}/api/auth/signup",
            json={"username": "steady", "email": "steady@example.com", "password": PASSWORD},
        ).raise_for_status()
        token = httpx.post(
            f"{base}/api/auth/login", data={"username": "steady", "password": PASSWORD}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/api/users/me", headers=headers).status_code == 200

        cluster.stop()
        ready = httpx.get(f"{base}/health/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "unreachable"
        me = httpx.get(f"{base}/api/users/me", headers=headers, timeout=10)
        assert me.status_code == 503
        assert me.json()["code"] == "DATABASE_UNAVAILABLE"
        signup = httpx.post(
            f"{base}/api/auth/signup",
            json={"username": "during", "email": "during@example.com", "password": PASSWORD},
            timeout=10,
        )
        assert signup.status_code == 503
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200  # still alive

        cluster.start()
        assert _wait(lambda: httpx.get(f"{base}/health/ready").status_code == 200)
        assert httpx.get(f"{base}/api/users/me", headers=headers).status_code == 200
        assert "Internal server error" not in server.output
    finally:
        server.stop()
