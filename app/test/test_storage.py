"""File journeys on both storage backends: DATA_DIR and a real S3-compatible server.

Every test here runs with ``STORAGE_BACKEND=local`` and ``STORAGE_BACKEND=s3``; the
S3 one talks HTTP to moto's standalone server (a subprocess, ``s3_server`` in
conftest), in a bucket of the test's own, under an ``S3_PREFIX``. What is stored is
checked independently of the service: files under DATA_DIR, objects listed by a
client of the test's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.oauth_client import ExternalProfile
from app.core.storage import ObjectTooLarge, storage_for
from app.core.storage.s3 import PART_BYTES
from app.models import File, User
from app.services import external_accounts
from app.services import files as file_service
from app.services.context import SYSTEM
from app.services.maintenance import remove_orphan_files
from app.test.conftest import s3_client, s3_settings
from app.test.factories import bearer, delete_user, user_with_tokens

PREFIX = "tenant-a/"


def _png(size: tuple[int, int] = (64, 48), color=(20, 120, 220)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _files(name: str, data: bytes) -> dict:
    return {"file": (name, data, "application/octet-stream")}


@pytest.fixture(params=["local", "s3"])
def storage_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend_settings(request: pytest.FixtureRequest, storage_backend: str) -> dict[str, Any]:
    """The settings that choose the backend (a bucket of the test's own for S3)."""
    if storage_backend == "local":
        return {}
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return s3_settings(server, bucket, S3_PREFIX=PREFIX)


@pytest.fixture
def settings_overrides(backend_settings: dict[str, Any]) -> dict[str, object]:
    return backend_settings


def stored_keys(settings: Settings) -> list[str]:
    """Every stored key, seen without the service: files under DATA_DIR/users, or the
    bucket's objects (all under S3_PREFIX)."""
    users = settings.DATA_DIR / "users"
    if settings.STORAGE_BACKEND == "local":
        return sorted(
            path.relative_to(settings.DATA_DIR).as_posix()
            for path in users.rglob("*")
            if path.is_file()
        )
    assert not users.exists(), "S3 storage wrote to DATA_DIR"
    assert settings.S3_ENDPOINT_URL
    assert settings.S3_BUCKET
    answer = s3_client(settings.S3_ENDPOINT_URL).list_objects_v2(Bucket=settings.S3_BUCKET)
    keys = [item["Key"] for item in answer.get("Contents", [])]
    assert all(key.startswith(PREFIX) for key in keys), keys
    return sorted(key.removeprefix(PREFIX) for key in keys)


def pending_uploads(settings: Settings) -> list[Any]:
    """Multipart uploads begun and neither completed nor aborted (S3 only)."""
    if settings.STORAGE_BACKEND == "local":
        return []
    assert settings.S3_ENDPOINT_URL
    answer = s3_client(settings.S3_ENDPOINT_URL).list_multipart_uploads(Bucket=settings.S3_BUCKET)
    return list(answer.get("Uploads", []))


async def _count_files(app: FastAPI) -> int:
    async with app.state.session_factory() as session:
        return await session.scalar(select(func.count()).select_from(File)) or 0


async def _key_of(app: FastAPI, file_id: int) -> str:
    async with app.state.session_factory() as session:
        file = await session.get_one(File, file_id)
        return file.file_path


# Journeys ------------------------------------------------------------------------------


async def test_upload_list_download_rename_delete(app: FastAPI, client: httpx.AsyncClient) -> None:
    settings = app.state.settings
    owner, tokens = await user_with_tokens(app, client)
    _, stranger_tokens = await user_with_tokens(app, client)
    report = os.urandom(300_000)  # more than one chunk each way
    uploaded = await client.post(
        "/api/file",
        files=_files("report.txt", report),
        data={"description": "numbers"},
        headers=bearer(tokens),
    )
    assert uploaded.status_code == 201, uploaded.text
    file_id = uploaded.json()["id"]
    picture = _png()
    image = await client.post(
        "/api/file", files=_files("photo.png", picture), headers=bearer(tokens)
    )
    assert image.json()["file_type"] == "image/png"

    listed = await client.get(f"/api/user/{owner.uuid}/files", headers=bearer(tokens))
    assert listed.json()["total"] == 2
    assert {item["file_name"] for item in listed.json()["items"]} == {"report.txt", "photo.png"}
    assert stored_keys(settings) == sorted(
        [await _key_of(app, file_id), await _key_of(app, image.json()["id"])]
    )
    assert all(key.startswith(f"users/{owner.uuid}/") for key in stored_keys(settings))

    content = await client.get(f"/api/file/{file_id}/content", headers=bearer(tokens))
    assert content.status_code == 200
    assert content.content == report
    assert content.headers["content-type"].startswith("text/plain")
    assert content.headers["content-disposition"] == 'attachment; filename="report.txt"'
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["content-length"] == str(len(report))
    shown = await client.get(f"/api/file/{image.json()['id']}/content", headers=bearer(tokens))
    assert shown.content == picture
    assert shown.headers["content-disposition"] == 'inline; filename="photo.png"'

    hidden = await client.get(f"/api/file/{file_id}/content", headers=bearer(stranger_tokens))
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "FILE_NOT_FOUND"

    renamed = await client.patch(
        f"/api/file/{file_id}", json={"file_name": "résumé.txt"}, headers=bearer(tokens)
    )
    assert renamed.status_code == 200
    again = await client.get(f"/api/file/{file_id}/content", headers=bearer(tokens))
    assert again.content == report
    assert again.headers["content-disposition"] == (
        "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.txt"
    )

    key = await _key_of(app, file_id)
    deleted = await client.delete(f"/api/file/{file_id}", headers=bearer(tokens))
    assert deleted.status_code == 204
    gone = await client.get(f"/api/file/{file_id}/content", headers=bearer(tokens))
    assert gone.status_code == 404
    assert key not in stored_keys(settings)
    assert len(stored_keys(settings)) == 1


class TestLargeFiles:
    """Over one S3 part (8 MiB): a multipart upload, and a download in many chunks."""

    @pytest.fixture
    def settings_overrides(self, backend_settings: dict[str, Any]) -> dict[str, object]:
        return {**backend_settings, "MAX_UPLOAD_SIZE_MB": 20}

    async def test_a_large_file_goes_through_whole(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        _, tokens = await user_with_tokens(app, client)
        data = os.urandom(PART_BYTES + 1_000_000)
        uploaded = await client.post(
            "/api/file", files=_files("big.bin", data), headers=bearer(tokens)
        )
        assert uploaded.status_code == 201, uploaded.text
        content = await client.get(
            f"/api/file/{uploaded.json()['id']}/content", headers=bearer(tokens)
        )
        assert hashlib.sha256(content.content).digest() == hashlib.sha256(data).digest()
        assert pending_uploads(app.state.settings) == []


async def test_a_profile_picture_is_set_read_and_removed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    settings = app.state.settings
    user, tokens = await user_with_tokens(app, client)
    generated = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert generated.status_code == 200

    put = await client.put(
        f"/api/user/{user.uuid}/pfp", files=_files("me.png", _png()), headers=bearer(tokens)
    )
    assert put.status_code == 204, put.text
    (key,) = stored_keys(settings)
    assert key.startswith(f"users/{user.uuid}/")
    read = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert read.status_code == 200
    assert read.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(read.content)).size == (64, 48)
    assert read.headers["etag"] != generated.headers["etag"]
    cached = await client.get(
        f"/api/user/{user.uuid}/pfp",
        headers={**bearer(tokens), "If-None-Match": read.headers["etag"]},
    )
    assert cached.status_code == 304

    me = await client.get("/api/users/me", headers=bearer(tokens))
    signed = await client.get(me.json()["picture_url"])  # no Authorization: a signed URL
    assert signed.status_code == 200
    assert signed.content == read.content

    replaced = await client.put(
        f"/api/user/{user.uuid}/pfp",
        files=_files("me.png", _png((32, 32), (250, 0, 0))),
        headers=bearer(tokens),
    )
    assert replaced.status_code == 204
    (new_key,) = stored_keys(settings)
    assert new_key != key  # the earlier picture's bytes are gone

    removed = await client.delete(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert removed.status_code == 204
    assert stored_keys(settings) == []
    back = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert back.status_code == 200
    assert back.headers["etag"] == generated.headers["etag"]


async def test_a_picture_whose_bytes_are_gone_shows_the_generated_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user, tokens = await user_with_tokens(app, client)
    generated = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    await client.put(
        f"/api/user/{user.uuid}/pfp", files=_files("me.png", _png()), headers=bearer(tokens)
    )
    await storage_for(app.state.settings).delete(stored_keys(app.state.settings))
    read = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert read.status_code == 200
    assert read.headers["etag"] == generated.headers["etag"]


async def test_deleting_a_user_removes_their_stored_files(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    settings = app.state.settings
    user, tokens = await user_with_tokens(app, client)
    other, other_tokens = await user_with_tokens(app, client)
    await client.post("/api/file", files=_files("one.txt", b"1"), headers=bearer(tokens))
    await client.put(
        f"/api/user/{user.uuid}/pfp", files=_files("me.png", _png()), headers=bearer(tokens)
    )
    await client.post("/api/file", files=_files("keep.txt", b"2"), headers=bearer(other_tokens))
    assert len(stored_keys(settings)) == 3
    assert (await delete_user(client, user.uuid, tokens)).status_code == 204
    assert [key.split("/")[1] for key in stored_keys(settings)] == [other.uuid]


async def test_parallel_uploads_and_pictures_keep_one_object_per_row(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Racing uploads of one name get distinct names and objects; racing pictures
    replace each other and leave exactly the one object the row names."""
    settings = app.state.settings
    user, tokens = await user_with_tokens(app, client)
    uploads = await asyncio.gather(
        *(
            client.post("/api/file", files=_files("same.txt", b"%d" % i), headers=bearer(tokens))
            for i in range(12)
        )
    )
    assert [r.status_code for r in uploads] == [201] * 12, [r.text for r in uploads]
    assert len({r.json()["file_name"] for r in uploads}) == 12
    pictures = await asyncio.gather(
        *(
            client.put(
                f"/api/user/{user.uuid}/pfp",
                files=_files("me.png", _png((20 + i, 20))),
                headers=bearer(tokens),
            )
            for i in range(6)
        )
    )
    assert [r.status_code for r in pictures] == [204] * 6, [r.text for r in pictures]
    async with app.state.session_factory() as session:
        keys = sorted(await session.scalars(select(File.file_path)))
    assert len(keys) == 13
    assert stored_keys(settings) == keys
    for upload in uploads:
        content = await client.get(
            f"/api/file/{upload.json()['id']}/content", headers=bearer(tokens)
        )
        assert content.status_code == 200


# The orphan cleanup --------------------------------------------------------------------


async def _put_behind_the_service(settings: Settings, key: str, data: bytes) -> None:
    """Bytes with no row, as a crash between storing and committing leaves them."""
    if settings.STORAGE_BACKEND == "local":
        path = settings.DATA_DIR / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    assert settings.S3_ENDPOINT_URL
    s3_client(settings.S3_ENDPOINT_URL).put_object(
        Bucket=settings.S3_BUCKET, Key=PREFIX + key, Body=data
    )


async def test_the_orphan_cleanup_removes_stored_bytes_without_a_row(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    settings = app.state.settings
    factory = app.state.session_factory
    user, tokens = await user_with_tokens(app, client)
    uploaded = await client.post(
        "/api/file", files=_files("kept.txt", b"kept"), headers=bearer(tokens)
    )
    kept = await _key_of(app, uploaded.json()["id"])
    orphan = f"users/{user.uuid}/0123456789abcdef.txt"
    gone_user = "users/00000000-0000-4000-8000-000000000000/left.txt"
    await _put_behind_the_service(settings, orphan, b"orphan")
    await _put_behind_the_service(settings, gone_user, b"left")

    # Young bytes may be an upload whose row is not committed yet: kept.
    assert await remove_orphan_files(factory, settings) == {"files": 0, "folders": 0}
    assert stored_keys(settings) == sorted([kept, orphan, gone_user])

    await asyncio.sleep(1.1)  # S3 keeps whole seconds: make the objects older than "now"
    result = await remove_orphan_files(factory, settings, min_age_seconds=0)
    assert result["files"] == 2
    # A gone user's folder is a thing of DATA_DIR only; a bucket has none.
    assert result["folders"] == (1 if settings.STORAGE_BACKEND == "local" else 0)
    assert stored_keys(settings) == [kept]
    content = await client.get(f"/api/file/{uploaded.json()['id']}/content", headers=bearer(tokens))
    assert content.content == b"kept"


# Size caps -----------------------------------------------------------------------------


class TestSizeCap:
    """MAX_UPLOAD_SIZE_MB=1, counted while the bytes stream into storage."""

    @pytest.fixture
    def settings_overrides(self, backend_settings: dict[str, Any]) -> dict[str, object]:
        return {**backend_settings, "MAX_UPLOAD_SIZE_MB": 1}

    async def test_an_upload_just_over_the_cap_keeps_nothing(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        user, tokens = await user_with_tokens(app, client)
        over = await client.post(
            "/api/file", files=_files("edge.bin", b"x" * (1024 * 1024 + 1)), headers=bearer(tokens)
        )
        assert over.status_code == 413
        assert over.json()["code"] == "PAYLOAD_TOO_LARGE"
        assert stored_keys(app.state.settings) == []
        assert await _count_files(app) == 0
        exact = await client.post(
            "/api/file", files=_files("edge.bin", b"x" * (1024 * 1024)), headers=bearer(tokens)
        )
        assert exact.status_code == 201
        picture = await client.put(
            f"/api/user/{user.uuid}/pfp",
            files=_files("big.png", b"\x89PNG" + b"x" * (1024 * 1024)),
            headers=bearer(tokens),
        )
        assert picture.status_code == 413
        assert len(stored_keys(app.state.settings)) == 1

    async def test_the_upload_is_refused_before_it_is_read_whole(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """The service reads the upload chunk by chunk and stops at the cap."""
        user, _ = await user_with_tokens(app, client)
        chunk = 64 * 1024
        sent = 0

        async def upload() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(64):  # 4 MiB offered
                sent += 1
                yield b"y" * chunk

        async with app.state.session_factory() as db:
            actor = await db.get_one(User, user.uuid)
            with pytest.raises(file_service.FileTooLarge):
                await file_service.upload_file(
                    db,
                    app.state.settings,
                    actor,
                    actor.uuid,
                    file_name="stream.bin",
                    content=upload(),
                    description=None,
                    client=SYSTEM,
                )
        assert sent == 1024 * 1024 // chunk + 1  # the chunk that crossed the cap, no more
        assert stored_keys(app.state.settings) == []
        assert await _count_files(app) == 0


async def test_storage_refuses_an_object_over_its_cap_mid_stream(settings: Settings) -> None:
    """Past one S3 part: the multipart upload begun is aborted, nothing is kept."""
    storage = storage_for(settings)
    chunk = 1024 * 1024
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(16):
            sent += 1
            yield os.urandom(chunk)

    limit = PART_BYTES + 2 * chunk
    try:
        with pytest.raises(ObjectTooLarge):
            await storage.put(
                "users/someone/big.bin",
                chunks(),
                max_bytes=limit,
                content_type="application/octet-stream",
            )
        assert sent == limit // chunk + 1
        assert stored_keys(settings) == []
        assert pending_uploads(settings) == []
        assert await storage.open("users/someone/big.bin") is None
    finally:
        await storage.aclose()


# Presigned downloads -------------------------------------------------------------------


class TestPresignedDownloads:
    """S3_PRESIGNED_DOWNLOADS: after the access check, a redirect to the bucket."""

    @pytest.fixture
    def settings_overrides(self, backend_settings: dict[str, Any]) -> dict[str, object]:
        return {**backend_settings, "S3_PRESIGNED_DOWNLOADS": True, "S3_PRESIGNED_SECONDS": 120}

    async def test_a_download_is_a_redirect_to_a_url_that_serves_it(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        settings = app.state.settings
        _, tokens = await user_with_tokens(app, client)
        _, stranger_tokens = await user_with_tokens(app, client)
        data = os.urandom(200_000)
        uploaded = await client.post(
            "/api/file", files=_files("data set.csv", data), headers=bearer(tokens)
        )
        path = f"/api/file/{uploaded.json()['id']}/content"

        hidden = await client.get(path, headers=bearer(stranger_tokens))
        assert hidden.status_code == 404  # checked before any URL is made
        assert "location" not in hidden.headers

        answer = await client.get(path, headers=bearer(tokens))
        if settings.STORAGE_BACKEND == "local":  # nothing to presign: served as always
            assert answer.status_code == 200
            assert answer.content == data
            return
        assert answer.status_code == 307
        assert answer.headers["cache-control"] == "no-store"
        location = answer.headers["location"]
        assert location.startswith(f"{settings.S3_ENDPOINT_URL}/{settings.S3_BUCKET}/{PREFIX}")
        assert "X-Amz-Expires=120" in location
        # A real HTTP GET to the object store, without the service's token.
        async with httpx.AsyncClient() as outside:
            fetched = await outside.get(location)
        assert fetched.status_code == 200
        assert fetched.content == data
        assert fetched.headers["content-type"] == "text/csv"
        assert fetched.headers["content-disposition"] == (
            "attachment; filename*=utf-8''data%20set.csv"
        )


# An object store that does not answer --------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TestUnreachableStore:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return s3_settings(f"http://127.0.0.1:{_closed_port()}", "nowhere")

    async def test_uploads_answer_503_and_keep_no_row(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        user, tokens = await user_with_tokens(app, client)
        answer = await client.post(
            "/api/file", files=_files("a.txt", b"hello"), headers=bearer(tokens)
        )
        assert answer.status_code == 503
        assert answer.json()["code"] == "STORAGE_UNAVAILABLE"
        assert await _count_files(app) == 0
        picture = await client.put(
            f"/api/user/{user.uuid}/pfp", files=_files("me.png", _png()), headers=bearer(tokens)
        )
        assert picture.status_code == 503
        assert await _count_files(app) == 0

    async def test_a_provider_picture_is_skipped_and_the_sign_in_goes_on(
        self, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As on a full disk: the provider's picture is a nicety. Its download alone is
        replaced (provider pictures come from public hosts, out of reach here)."""
        user, tokens = await user_with_tokens(app, client)

        async def download(_url: str) -> bytes:
            return _png()

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
        async with app.state.session_factory() as session:
            owner = await session.get_one(User, user.uuid)
            await external_accounts.adopt_picture(
                session, app.state.settings, owner, profile, SYSTEM
            )
            await session.commit()  # what the sign-in does next
        assert await _count_files(app) == 0
        me = await client.get("/api/users/me", headers=bearer(tokens))
        assert me.status_code == 200
