"""A full disk: a real, small filesystem (tmpfs) as DATA_DIR, filled up.

Whatever cannot be written answers 507 ``INSUFFICIENT_STORAGE`` in the common shape,
leaves nothing half-written behind, and changes nothing else; everything that does
not write to the full disk goes on working, and once space is freed the same request
succeeds. The database lives elsewhere (as PostgreSQL would), except in the test
that puts SQLite itself on the full disk.

Mounting a tmpfs needs root (CI runs as root); without it the tests are skipped, or
fail under REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from loguru import logger
from PIL import Image
from redis.asyncio import Redis
from sqlalchemy import select

from app.core.config import JWT_SECRET_FILE, ConfigError, Settings
from app.core.feature_flags import FlagStore
from app.core.flag_sources import FileFlagSource, FlagBroadcaster
from app.core.logging import log_file_path
from app.core.oauth_client import ExternalProfile
from app.models import AuditEvent, User
from app.services import external_accounts
from app.services.context import SYSTEM
from app.test.conftest import make_settings, missing, settings_env
from app.test.factories import PASSWORD, bearer, login, signup_body, user_with_tokens
from app.test.server import start_server

DISK_BYTES = 4 * 1024 * 1024
#: What the filler leaves free: less than any upload the tests send.
LEFT_FREE_BYTES = 128 * 1024
UPLOAD_BYTES = 1024 * 1024
FILLER = "filler"


@dataclass
class Disk:
    """A tmpfs mounted at ``path`` that a filler file can fill up."""

    path: Path

    @property
    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave_bytes: int = LEFT_FREE_BYTES) -> None:
        """Fill the disk up to ``leave_bytes`` free (0: to the last block)."""
        with open(self.path / FILLER, "ab", buffering=0) as filler:
            while (free := self.free_bytes) > leave_bytes:
                try:
                    filler.write(b"\0" * min(65536, free - leave_bytes))
                except OSError:  # the last partial block
                    break

    def free(self) -> None:
        (self.path / FILLER).unlink()

    def contents(self) -> dict[str, int]:
        """Every file on the disk (but the filler) with its size."""
        return {
            str(path.relative_to(self.path)): path.stat().st_size
            for path in sorted(self.path.rglob("*"))
            if path.is_file() and path.name != FILLER
        }


def _mount_tmpfs(path: Path, size_bytes: int) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        missing("mounting a small tmpfs needs root and mount(8)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        missing(f"cannot mount a tmpfs: {result.stderr.strip()}")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    """A 4 MiB filesystem of its own, unmounted afterwards."""
    path = tmp_path / "disk"
    path.mkdir()
    _mount_tmpfs(path, DISK_BYTES)
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True, timeout=30)


@pytest.fixture
def settings(disk: Disk, db_backend: str, settings_overrides: dict[str, object]) -> Settings:
    """DATA_DIR on the small disk; the database where ``db_backend`` put it."""
    return make_settings(disk.path, db_backend, **settings_overrides)


def _noise_png(size: int = 400) -> bytes:
    """A picture that stays big once re-encoded (noise does not compress)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def _assert_insufficient_storage(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    body = response.json()
    assert body["code"] == "INSUFFICIENT_STORAGE"
    assert set(body) == {"detail", "code"}


async def test_a_file_upload_on_a_full_disk(
    app: FastAPI, client: httpx.AsyncClient, disk: Disk
) -> None:
    user, tokens = await user_with_tokens(app, client)
    data = os.urandom(UPLOAD_BYTES)
    disk.fill()
    before = disk.contents()

    for path in ("/api/file", f"/api/user/{user.uuid}/file"):
        refused = await client.post(
            path, files={"file": ("report.bin", data)}, headers=bearer(tokens)
        )
        _assert_insufficient_storage(refused)
    assert disk.contents() == before  # nothing partial left behind
    listed = await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))
    assert listed.status_code == 200
    assert listed.json()["total"] == 0  # and no row

    # Whatever does not write to the full disk is unaffected.
    again = await login(client, user.username)
    me = await client.get("/api/users/me", headers=bearer(again))
    assert me.status_code == 200
    assert me.json()["uuid"] == user.uuid

    disk.free()
    stored = await client.post(
        "/api/file", files={"file": ("report.bin", data)}, headers=bearer(tokens)
    )
    assert stored.status_code == 201, stored.text
    assert stored.json()["file_name"] == "report.bin"  # the failed tries took no name
    content = await client.get(f"/api/file/{stored.json()['id']}/content", headers=bearer(tokens))
    assert content.content == data


async def test_a_picture_on_a_full_disk_keeps_the_old_one(
    app: FastAPI, client: httpx.AsyncClient, disk: Disk
) -> None:
    user, tokens = await user_with_tokens(app, client)
    old = _small_png()
    put = await client.put(
        f"/api/user/{user.uuid}/pfp", files={"file": ("old.png", old)}, headers=bearer(tokens)
    )
    assert put.status_code == 204, put.text
    served_before = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    new = _noise_png()
    disk.fill()
    before = disk.contents()

    refused = await client.put(
        f"/api/user/{user.uuid}/pfp", files={"file": ("new.png", new)}, headers=bearer(tokens)
    )
    _assert_insufficient_storage(refused)
    assert disk.contents() == before
    served = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert served.status_code == 200
    assert served.content == served_before.content
    assert served.headers["ETag"] == served_before.headers["ETag"]
    listed = await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))
    assert listed.json()["total"] == 1

    disk.free()
    put = await client.put(
        f"/api/user/{user.uuid}/pfp", files={"file": ("new.png", new)}, headers=bearer(tokens)
    )
    assert put.status_code == 204, put.text
    served = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert served.headers["ETag"] != served_before.headers["ETag"]
    assert Image.open(io.BytesIO(served.content)).size == (400, 400)
    listed = await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))
    assert listed.json()["total"] == 1


async def test_a_provider_picture_on_a_full_disk_does_not_stop_the_sign_in(
    app: FastAPI, client: httpx.AsyncClient, disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OAuth picture adoption is skipped, not failed, when there is no room for it.

    Provider pictures come from public https hosts, out of reach here: the download
    alone is replaced; validation and storing run for real, on the full disk.
    """
    user, tokens = await user_with_tokens(app, client)
    picture = _noise_png()

    async def download(_url: str) -> bytes:
        return picture

    monkeypatch.setattr(external_accounts, "fetch_picture", download)
    profile = ExternalProfile(
        provider="github",
        external_id="1",
        username=user.username,
        display_name=None,
        email=None,
        email_verified=False,
        picture_url="https://avatars.example.com/u/1.png",
    )
    disk.fill()
    before = disk.contents()
    async with app.state.session_factory() as session:
        owner = await session.get_one(User, user.uuid)
        await external_accounts.adopt_picture(session, app.state.settings, owner, profile, SYSTEM)
        await session.commit()  # what the sign-in does next
    assert disk.contents() == before
    listed = await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))
    assert listed.json()["total"] == 0

    disk.free()
    async with app.state.session_factory() as session:
        owner = await session.get_one(User, user.uuid)
        await external_accounts.adopt_picture(session, app.state.settings, owner, profile, SYSTEM)
    listed = await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))
    assert listed.json()["total"] == 1


class TestFeatureFlags:
    """A flag change that cannot be saved to the flag file is not applied either."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        # The file, also on PostgreSQL (which keeps the flags in the database otherwise).
        return {"FEATURE_FLAGS_ENABLED": True, "FEATURE_FLAGS_SOURCE": "file"}

    async def test_a_flag_change_that_cannot_be_saved(
        self, app: FastAPI, client: httpx.AsyncClient, disk: Disk
    ) -> None:
        _, admin_tokens = await user_with_tokens(app, client, ("admin", "user"))
        path = app.state.settings.DATA_DIR / "feature_flags.json"
        saved = json.loads(path.read_text())
        change = {"add": {"SIGNUP": False}}
        disk.fill(0)
        before = disk.contents()

        refused = await client.patch(
            "/api/admin/feature-flags", json=change, headers=bearer(admin_tokens)
        )
        _assert_insufficient_storage(refused)
        assert disk.contents() == before
        assert json.loads(path.read_text()) == saved
        listed = await client.get("/api/admin/feature-flags", headers=bearer(admin_tokens))
        assert listed.json()["flags"] == saved  # memory and file agree
        signup = await client.post("/api/auth/signup", json={})
        assert signup.status_code == 422  # still on: the change was not applied
        assert await _audited_actions(app) == []  # nor recorded as made

        disk.free()
        applied = await client.patch(
            "/api/admin/feature-flags", json=change, headers=bearer(admin_tokens)
        )
        assert applied.status_code == 200, applied.text
        assert json.loads(path.read_text())["SIGNUP"] is False
        assert (await client.post("/api/auth/signup", json={})).status_code == 403
        assert await _audited_actions(app) == ["flag.changed"]


async def _audited_actions(app: FastAPI) -> list[str]:
    async with app.state.session_factory() as session:
        return list(await session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


async def test_a_change_from_another_replica_that_cannot_be_saved(disk: Disk) -> None:
    """Kept out, like an admin's change: memory never runs ahead of the file."""
    store = FlagStore(disk.path / "feature_flags.json")
    store.register(["SIGNUP", "LOGIN"])
    saved = store.path.read_text()
    disk.fill(0)
    announcement = json.dumps({"origin": "another replica", "flags": {"SIGNUP": False}})
    await FlagBroadcaster(Redis(), FileFlagSource(store))._apply(announcement)
    assert store.flags == {"SIGNUP": True, "LOGIN": True}
    assert store.path.read_text() == saved
    disk.free()
    await FlagBroadcaster(Redis(), FileFlagSource(store))._apply(announcement)
    assert store.flags == {"SIGNUP": False}


class TestLogFile:
    """LOG_FILE_ENABLED with the log folder on the full disk: logging never fails a request."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"LOG_FILE_ENABLED": True, "LOG_FILE_LEVEL": "DEBUG"}

    async def test_requests_go_on_and_the_file_resumes(
        self, app: FastAPI, client: httpx.AsyncClient, disk: Disk
    ) -> None:
        user, tokens = await user_with_tokens(app, client)
        disk.fill(0)
        for _ in range(20):
            response = await client.get("/api/users/me", headers=bearer(tokens))
            assert response.status_code == 200
        await login(client, user.username)

        disk.free()
        marker = f"written once there is room again {uuid4().hex}"
        logger.warning(marker)
        await logger.complete()
        assert marker in log_file_path(app.state.settings).read_text()


class TestStartingOnAFullDisk:
    """A real server, its log file and feature flags on the full disk, starts and serves."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"LOG_FILE_ENABLED": True, "LOG_FILE_LEVEL": "DEBUG", "FEATURE_FLAGS_ENABLED": True}

    def test_the_server_starts_and_serves(
        self, settings: Settings, disk: Disk, tmp_path: Path
    ) -> None:
        disk.fill(0)
        server = start_server(settings_env(settings), tmp_path / "server.log")
        try:
            signed_up = httpx.post(f"{server.url}/api/auth/signup", json=signup_body())
            assert signed_up.status_code == 201, server.output
            assert httpx.get(f"{server.url}/health").status_code == 200
        finally:
            server.stop()
            disk.free()


def test_a_jwt_secret_that_cannot_be_kept(disk: Disk) -> None:
    """Generating the secret on a full disk stops the start clearly and leaves no empty file."""
    disk.fill(0)
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
        Settings(_env_file=None, DATA_DIR=disk.path)
    assert sorted(disk.contents()) == []
    disk.free()
    secret = Settings(_env_file=None, DATA_DIR=disk.path).JWT_SECRET_KEY
    assert (disk.path / JWT_SECRET_FILE).read_text() == secret


class TestSqliteOnTheFullDisk:
    """The SQLite database itself on the full disk (its default place, DATA_DIR)."""

    @pytest.fixture
    def settings(self, disk: Disk) -> Settings:
        return make_settings(disk.path)

    async def test_writes_answer_507_and_reads_go_on(
        self, app: FastAPI, client: httpx.AsyncClient, disk: Disk
    ) -> None:
        user, tokens = await user_with_tokens(app, client)
        disk.fill(0)
        refused = await client.post(
            "/api/auth/login", data={"username": user.username, "password": PASSWORD}
        )
        _assert_insufficient_storage(refused)
        me = await client.get("/api/users/me", headers=bearer(tokens))
        assert me.status_code == 200
        disk.free()
        await login(client, user.username)


async def test_the_api_declares_507_where_a_full_disk_can_stop_a_save(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for path, method in [
        ("/api/file", "post"),
        ("/api/user/{uuid}/file", "post"),
        ("/api/user/{uuid}/pfp", "put"),
        ("/api/admin/feature-flags", "patch"),
    ]:
        assert "507" in paths[path][method]["responses"], (method, path)
