"""Files and profile pictures: uploads, naming, limits, serving, access, avatars (OCR)."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import zlib
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from alembic import command
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from app.core.database import alembic_config, create_engine, upgrade_database
from app.models import File, User
from app.services.context import SYSTEM
from app.services.files import safe_file_name, store_picture
from app.test.conftest import require_tool
from app.test.factories import bearer, delete_user, user_with_tokens


def _image(size: tuple[int, int], image_format: str, color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()


def _bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``."""
    png = bytearray(_image((1, 1), "PNG"))
    ihdr = png[12:29]  # b"IHDR" + width, height, depth, colour, compression, filter, interlace
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def _files(name: str, data: bytes, content_type: str = "application/octet-stream") -> dict:
    return {"file": (name, data, content_type)}


async def _count_files(app: FastAPI) -> int:
    async with app.state.session_factory() as session:
        return await session.scalar(select(func.count()).select_from(File))


def _stored(app: FastAPI, user_uuid: str) -> list[Path]:
    folder = app.state.settings.DATA_DIR / "users" / user_uuid
    return sorted(folder.iterdir()) if folder.exists() else []


def _ocr(png: bytes, tmp_path: Path) -> str:
    tesseract = require_tool("tesseract")
    path = tmp_path / "avatar.png"
    path.write_bytes(png)
    result = subprocess.run(
        [tesseract, str(path), "stdout", "--psm", "7"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


# Generated pictures --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "display_name", "expected"),
    [("john_doe", "John Doe", "JD"), ("alice_bob", "alice_bob", "AB")],
)
async def test_generated_picture_shows_the_initials(
    app: FastAPI,
    client: httpx.AsyncClient,
    tmp_path: Path,
    username: str,
    display_name: str,
    expected: str,
) -> None:
    user, tokens = await user_with_tokens(app, client, username=username, display_name=display_name)
    response = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (256, 256)
    assert picture.getpixel((5, 5)) == (128, 128, 128)
    assert _ocr(response.content, tmp_path) == expected
    cached = await client.get(
        f"/api/user/{user.uuid}/pfp",
        headers={**bearer(tokens), "If-None-Match": response.headers["ETag"]},
    )
    assert cached.status_code == 304
    assert cached.content == b""


# Uploaded pictures ---------------------------------------------------------------------


async def test_a_picture_is_resized_to_fit_512(app: FastAPI, client: httpx.AsyncClient) -> None:
    user, tokens = await user_with_tokens(app, client)
    generated = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    put = await client.put(
        f"/api/user/{user.uuid}/pfp",
        files=_files("wide.png", _image((2000, 1000), "PNG"), "image/png"),
        headers=bearer(tokens),
    )
    assert put.status_code == 204, put.text
    response = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert response.headers["content-type"] == "image/png"
    assert response.headers["ETag"] != generated.headers["ETag"]
    assert Image.open(io.BytesIO(response.content)).size == (512, 256)
    files = (await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))).json()
    assert [item["file_name"] for item in files["items"]] == [f"pfp_{user.uuid}.png"]

    # A new picture replaces the old one, row and bytes.
    jpeg = await client.put(
        f"/api/user/{user.uuid}/pfp",
        files=_files("me.jpeg", _image((300, 600), "JPEG"), "image/jpeg"),
        headers=bearer(tokens),
    )
    assert jpeg.status_code == 204
    assert await _count_files(app) == 1
    assert len(_stored(app, user.uuid)) == 1
    response = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (256, 512)

    removed = await client.delete(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert removed.status_code == 204
    back = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert back.headers["ETag"] == generated.headers["ETag"]
    assert _stored(app, user.uuid) == []
    assert await _count_files(app) == 0


async def test_a_replaced_picture_gets_a_new_etag(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Even within the same second, and when the database reuses the row's id (SQLite)."""
    user, tokens = await user_with_tokens(app, client)
    etags: list[str] = []
    for color in ((200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)):
        put = await client.put(
            f"/api/user/{user.uuid}/pfp",
            files=_files("me.png", _image((20, 20), "PNG", color), "image/png"),
            headers=bearer(tokens),
        )
        assert put.status_code == 204
        served = await client.get(
            f"/api/user/{user.uuid}/pfp",
            headers={**bearer(tokens), **({"If-None-Match": etags[-1]} if etags else {})},
        )
        assert served.status_code == 200, etags  # never "not modified" for a new picture
        assert Image.open(io.BytesIO(served.content)).getpixel((5, 5)) == color
        etags.append(served.headers["ETag"])
    assert len(set(etags)) == len(etags)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("notes.png", b"just some text, not an image at all\n" * 20),
        ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
        ("scan.tiff", _image((10, 10), "TIFF")),
        ("scan.png", _image((10, 10), "TIFF")),
        ("photo.webp", _image((10, 10), "WEBP")),
        ("bomb.png", _bomb_png()),
        ("truncated.png", _image((50, 50), "PNG")[:60]),
    ],
)
async def test_unacceptable_pictures_are_refused(
    app: FastAPI, client: httpx.AsyncClient, name: str, data: bytes
) -> None:
    user, tokens = await user_with_tokens(app, client)
    response = await client.put(
        f"/api/user/{user.uuid}/pfp", files=_files(name, data), headers=bearer(tokens)
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "INVALID_IMAGE"
    assert await _count_files(app) == 0
    assert _stored(app, user.uuid) == []


async def test_a_gif_with_html_appended_is_served_without_it(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user, tokens = await user_with_tokens(app, client)
    payload = _image((40, 40), "GIF") + b"<html><script>alert(document.cookie)</script></html>"
    put = await client.put(
        f"/api/user/{user.uuid}/pfp", files=_files("polyglot.gif", payload), headers=bearer(tokens)
    )
    assert put.status_code == 204
    response = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert b"<script" not in response.content
    assert b"<html" not in response.content
    assert Image.open(io.BytesIO(response.content)).format == "GIF"


# General uploads -----------------------------------------------------------------------


async def test_a_path_in_the_file_name_stays_inside_the_data_dir(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user, tokens = await user_with_tokens(app, client)
    response = await client.post(
        "/api/file", files=_files("../../etc/passwd", b"root:x:0:0"), headers=bearer(tokens)
    )
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["file_name"] == "passwd"
    assert "file_path" not in info
    stored = _stored(app, user.uuid)
    assert len(stored) == 1
    data_dir = app.state.settings.DATA_DIR.resolve()
    assert stored[0].resolve().is_relative_to(data_dir)
    assert stored[0].read_bytes() == b"root:x:0:0"
    content = await client.get(f"/api/file/{info['id']}/content", headers=bearer(tokens))
    assert content.content == b"root:x:0:0"
    assert content.headers["content-type"] == "application/octet-stream"
    assert content.headers["content-disposition"].startswith("attachment")
    assert content.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("...", "file"),
        ("a" * 300 + ".txt", "a" * 100 + ".txt"),
        ("what?<is>this|.pdf", "what__is_this_.pdf"),
    ],
)
async def test_file_names_are_made_safe(
    app: FastAPI, client: httpx.AsyncClient, given: str, kept: str
) -> None:
    _, tokens = await user_with_tokens(app, client)
    response = await client.post("/api/file", files=_files(given, b"x"), headers=bearer(tokens))
    assert response.status_code == 201
    assert response.json()["file_name"] == kept


def test_control_characters_are_dropped_from_names() -> None:
    # httpx percent-encodes them in multipart headers, so this rule is checked directly.
    assert safe_file_name("re\x00port\x07\u202e.txt") == "report.txt"
    assert safe_file_name(None) == "file"


async def test_images_are_typed_by_content(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, tokens = await user_with_tokens(app, client)
    png = await client.post(
        "/api/file",
        files=_files("photo.txt", _image((4, 4), "PNG"), "text/plain"),
        data={"description": "holiday"},
        headers=bearer(tokens),
    )
    info = png.json()
    assert info["file_type"] == "image/png"
    assert info["description"] == "holiday"
    content = await client.get(f"/api/file/{info['id']}/content", headers=bearer(tokens))
    assert content.headers["content-type"] == "image/png"
    assert content.headers["content-disposition"].startswith("inline")
    html = await client.post(
        "/api/file",
        files=_files("page.html", b"<script>1</script>", "text/html"),
        headers=bearer(tokens),
    )
    served = await client.get(f"/api/file/{html.json()['id']}/content", headers=bearer(tokens))
    assert served.headers["content-disposition"].startswith("attachment")


async def test_names_are_unique_even_in_parallel(app: FastAPI, client: httpx.AsyncClient) -> None:
    user, tokens = await user_with_tokens(app, client)
    first = await client.post("/api/file", files=_files("report.pdf", b"0"), headers=bearer(tokens))
    assert first.json()["file_name"] == "report.pdf"
    responses = await asyncio.gather(
        *(
            client.post("/api/file", files=_files("report.pdf", b"%d" % i), headers=bearer(tokens))
            for i in range(1, 26)
        )
    )
    assert [r.status_code for r in responses] == [201] * 25, [r.text for r in responses]
    names = {r.json()["file_name"] for r in responses}
    assert names == {f"report_{i}.pdf" for i in range(1, 26)}
    assert len(_stored(app, user.uuid)) == 26
    assert await _count_files(app) == 26


async def test_names_are_unique_per_owner(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Nobody learns which names other users hold: theirs never make a name taken."""
    alice, alice_tokens = await user_with_tokens(app, client)
    _, bob_tokens = await user_with_tokens(app, client)
    alices = await client.post(
        "/api/file", files=_files("plan.pdf", b"alice"), headers=bearer(alice_tokens)
    )
    assert alices.json()["file_name"] == "plan.pdf"

    uploaded = await client.post(
        "/api/file", files=_files("plan.pdf", b"bob"), headers=bearer(bob_tokens)
    )
    assert uploaded.status_code == 201
    assert uploaded.json()["file_name"] == "plan.pdf"  # not plan_1.pdf
    other = await client.post("/api/file", files=_files("x.txt", b"x"), headers=bearer(bob_tokens))
    renamed = await client.patch(
        f"/api/file/{other.json()['id']}",
        json={"file_name": "budget.xlsx"},
        headers=bearer(bob_tokens),
    )
    assert renamed.status_code == 200
    alice_renamed = await client.patch(
        f"/api/file/{alices.json()['id']}",
        json={"file_name": "budget.xlsx"},
        headers=bearer(alice_tokens),
    )
    assert alice_renamed.status_code == 200, alice_renamed.text
    assert alice_renamed.json()["file_name"] == "budget.xlsx"

    # Bob's own names still clash with each other.
    clash = await client.patch(
        f"/api/file/{uploaded.json()['id']}",
        json={"file_name": "budget.xlsx"},
        headers=bearer(bob_tokens),
    )
    assert clash.status_code == 409
    assert clash.json()["code"] == "FILE_NAME_TAKEN"
    listed = await client.get(f"/api/user/{alice.uuid}/files", headers=bearer(alice_tokens))
    assert [item["file_name"] for item in listed.json()["items"]] == ["budget.xlsx"]
    content = await client.get(
        f"/api/file/{alices.json()['id']}/content", headers=bearer(alice_tokens)
    )
    assert content.content == b"alice"


@pytest.mark.parametrize("squatter", ["someone else", "the user", "an admin for the user"])
async def test_a_file_named_like_the_picture_does_not_block_it(
    app: FastAPI, client: httpx.AsyncClient, squatter: str
) -> None:
    victim, victim_tokens = await user_with_tokens(app, client)
    _, other_tokens = await user_with_tokens(app, client)
    _, admin_tokens = await user_with_tokens(app, client, ("admin", "user"))
    path, tokens = {
        "someone else": ("/api/file", other_tokens),
        "the user": ("/api/file", victim_tokens),
        "an admin for the user": (f"/api/user/{victim.uuid}/file", admin_tokens),
    }[squatter]
    squat_name = f"pfp_{victim.uuid}.png"
    squatted = await client.post(
        path, files=_files(squat_name, _image((8, 8), "PNG", (0, 0, 255))), headers=bearer(tokens)
    )
    assert squatted.status_code == 201
    assert squatted.json()["file_name"] == squat_name

    for color, size in (((255, 0, 0), (40, 20)), ((0, 255, 0), (20, 40))):  # set, then replace
        put = await client.put(
            f"/api/user/{victim.uuid}/pfp",
            files=_files("me.png", _image(size, "PNG", color), "image/png"),
            headers=bearer(victim_tokens),
        )
        assert put.status_code == 204, put.text
        served = await client.get(f"/api/user/{victim.uuid}/pfp", headers=bearer(victim_tokens))
        assert served.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(served.content))
        assert picture.size == size
        assert picture.convert("RGB").getpixel((1, 1)) == color

    listed = await client.get(f"/api/user/{victim.uuid}/files", headers=bearer(victim_tokens))
    expected = {("picture", squat_name)}
    if squatter != "someone else":
        expected.add(("file", squat_name))
    assert {(item["kind"], item["file_name"]) for item in listed.json()["items"]} == expected
    assert len(_stored(app, victim.uuid)) == len(expected)  # the first picture is gone
    # The plain file is untouched.
    kept = await client.get(f"/api/file/{squatted.json()['id']}/content", headers=bearer(tokens))
    assert kept.status_code == 200
    assert Image.open(io.BytesIO(kept.content)).convert("RGB").getpixel((1, 1)) == (0, 0, 255)


async def test_parallel_pictures_leave_one(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Parallel picture uploads replace each other: all succeed, one picture stays."""
    user, tokens = await user_with_tokens(app, client)
    uploads = [
        _files(f"me{i}.{kind}", _image((10 + i, 10), fmt))
        for i, (kind, fmt) in enumerate([("png", "PNG"), ("jpeg", "JPEG")] * 4)
    ]
    responses = await asyncio.gather(
        *(
            client.put(f"/api/user/{user.uuid}/pfp", files=files, headers=bearer(tokens))
            for files in uploads
        )
    )
    assert [r.status_code for r in responses] == [204] * len(uploads), [r.text for r in responses]
    listed = await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))
    assert listed.json()["total"] == 1
    assert len(_stored(app, user.uuid)) == 1
    served = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert served.status_code == 200
    assert served.content == _stored(app, user.uuid)[0].read_bytes()


async def test_a_provider_picture_is_adopted_despite_a_file_with_its_name(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """OAuth picture adoption stores through ``store_picture``; a same-named file cannot stop it.

    (The loopback test provider's pictures are never fetched, so the adoption's last step
    is called directly, with bytes already validated.)
    """
    user, tokens = await user_with_tokens(app, client)
    squatted = await client.post(
        "/api/file", files=_files(f"pfp_{user.uuid}.png", b"not a picture"), headers=bearer(tokens)
    )
    assert squatted.status_code == 201
    data = _image((30, 30), "PNG")
    async with app.state.session_factory() as session:
        owner = await session.get_one(User, user.uuid)
        await store_picture(
            session, app.state.settings, owner, owner.uuid, data, "png", "image/png", SYSTEM
        )
    served = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert served.headers["content-type"] == "image/png"
    assert served.content == data


class TestUploadCap:
    """MAX_UPLOAD_SIZE_MB=1: bigger uploads get 413 and leave nothing behind."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"MAX_UPLOAD_SIZE_MB": 1}

    async def test_declared_size_over_the_cap(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        user, tokens = await user_with_tokens(app, client)
        response = await client.post(
            "/api/file", files=_files("big.bin", b"x" * 1_500_000), headers=bearer(tokens)
        )
        assert response.status_code == 413
        assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
        assert _stored(app, user.uuid) == []
        assert await _count_files(app) == 0

    async def test_streamed_body_over_the_cap(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        user, tokens = await user_with_tokens(app, client)
        boundary = "capboundary"
        sent = 0

        async def body():
            nonlocal sent
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            for _ in range(40):  # 40 x 64 KiB = 2.5 MiB, no Content-Length
                sent += 1
                yield b"x" * 65536
            yield f"\r\n--{boundary}--\r\n".encode()

        response = await client.post(
            "/api/file",
            content=body(),
            headers={**bearer(tokens), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413
        assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
        assert sent < 40  # refused while streaming, before the whole body was read
        assert _stored(app, user.uuid) == []
        assert await _count_files(app) == 0

    async def test_a_file_just_over_the_cap(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        user, tokens = await user_with_tokens(app, client)
        response = await client.post(
            "/api/file", files=_files("edge.bin", b"x" * (1024 * 1024 + 1)), headers=bearer(tokens)
        )
        assert response.status_code == 413
        assert _stored(app, user.uuid) == []
        ok = await client.post(
            "/api/file", files=_files("edge.bin", b"x" * (1024 * 1024)), headers=bearer(tokens)
        )
        assert ok.status_code == 201


# Access --------------------------------------------------------------------------------


async def test_file_access(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner, owner_tokens = await user_with_tokens(app, client)
    _, other_tokens = await user_with_tokens(app, client)
    _, moderator_tokens = await user_with_tokens(app, client, ("moderator", "user"))
    info = (
        await client.post(
            "/api/file", files=_files("a.txt", b"hello"), headers=bearer(owner_tokens)
        )
    ).json()
    file_id = info["id"]
    assert info["file_url"] == f"http://localhost:8000/api/file/{file_id}/content"
    for path in (f"/api/file/{file_id}", f"/api/file/{file_id}/content"):
        hidden = await client.get(path, headers=bearer(other_tokens))
        assert hidden.status_code == 404
        assert hidden.json()["code"] == "FILE_NOT_FOUND"
        assert (await client.get(path, headers=bearer(moderator_tokens))).status_code == 200
    denied = await client.delete(f"/api/file/{file_id}", headers=bearer(moderator_tokens))
    assert denied.status_code == 403
    other_list = await client.get(f"/api/user/{owner.uuid}/files", headers=bearer(other_tokens))
    assert other_list.status_code == 403

    renamed = await client.patch(
        f"/api/file/{file_id}",
        json={"file_name": "b.txt", "description": "renamed"},
        headers=bearer(owner_tokens),
    )
    assert renamed.json()["file_name"] == "b.txt"
    second = await client.post(
        "/api/file", files=_files("c.txt", b"x"), headers=bearer(owner_tokens)
    )
    clash = await client.patch(
        f"/api/file/{second.json()['id']}",
        json={"file_name": "b.txt"},
        headers=bearer(owner_tokens),
    )
    assert clash.status_code == 409
    assert clash.json()["code"] == "FILE_NAME_TAKEN"

    deleted = await client.delete(f"/api/file/{file_id}", headers=bearer(owner_tokens))
    assert deleted.status_code == 204
    assert (
        await client.get(f"/api/file/{file_id}", headers=bearer(owner_tokens))
    ).status_code == 404
    assert len(_stored(app, owner.uuid)) == 1
    too_big_id = await client.get("/api/file/99999999999", headers=bearer(owner_tokens))
    assert too_big_id.status_code == 422


async def test_an_admin_upload_for_a_user_links_both(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user, user_tokens = await user_with_tokens(app, client)
    admin, admin_tokens = await user_with_tokens(app, client, ("admin", "user"))
    _, other_tokens = await user_with_tokens(app, client)
    response = await client.post(
        f"/api/user/{user.uuid}/file",
        files=_files("notice.txt", b"hi"),
        headers=bearer(admin_tokens),
    )
    assert response.status_code == 201
    assert response.json()["created_by_uuid"] == admin.uuid
    for tokens, uuid in ((user_tokens, user.uuid), (admin_tokens, admin.uuid)):
        listed = await client.get(f"/api/user/{uuid}/files", headers=bearer(tokens))
        assert [item["file_name"] for item in listed.json()["items"]] == ["notice.txt"]
    assert len(_stored(app, user.uuid)) == 1
    not_for_others = await client.post(
        f"/api/user/{user.uuid}/file", files=_files("x.txt", b"x"), headers=bearer(other_tokens)
    )
    assert not_for_others.status_code == 403


async def test_a_blocked_user_sees_neither_files_nor_picture(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    blocker, blocker_tokens = await user_with_tokens(app, client)
    blocked, blocked_tokens = await user_with_tokens(app, client)
    await client.post(f"/api/user/{blocked.uuid}/block", headers=bearer(blocker_tokens))
    for path in (f"/api/user/{blocker.uuid}/pfp", f"/api/user/{blocker.uuid}/files"):
        response = await client.get(path, headers=bearer(blocked_tokens))
        assert response.status_code == 404, path
        assert response.json()["code"] == "USER_NOT_FOUND"


async def test_deleting_a_user_removes_their_files(app: FastAPI, client: httpx.AsyncClient) -> None:
    user, tokens = await user_with_tokens(app, client)
    await client.post("/api/file", files=_files("one.txt", b"1"), headers=bearer(tokens))
    await client.put(
        f"/api/user/{user.uuid}/pfp",
        files=_files("me.png", _image((64, 64), "PNG")),
        headers=bearer(tokens),
    )
    assert await _count_files(app) == 2
    assert len(_stored(app, user.uuid)) == 2
    assert (await delete_user(client, user.uuid, tokens)).status_code == 204
    assert await _count_files(app) == 0
    assert not (app.state.settings.DATA_DIR / "users" / user.uuid).exists()
    async with app.state.session_factory() as session:
        assert await session.get(User, user.uuid) is None


# Migration -----------------------------------------------------------------------------

_USER_AT_0004 = text(
    'INSERT INTO "user" (uuid, username, display_name, email, email_verified, otp_method,'
    " roles, created_at, updated_at, is_external_only, is_active, user_history, blocked_uuids)"
    " VALUES (:uuid, :name, :name, :email, false, 'none', '[\"user\"]', 0, 0, false, true,"
    " '[]', '[]')"
)
_FILE_AT_0004 = text(
    "INSERT INTO file (id, file_name, file_type, file_path, created_at, created_by_uuid)"
    " VALUES (:id, :name, 'text/plain', :path, 0, :by)"
)


async def test_the_migration_gives_every_file_its_owner(db_backend: str) -> None:
    """A database at 0004 with two users' files upgrades with every row, link and picture kept."""
    alice, bob, gone = (str(uuid4()) for _ in range(3))
    files = [
        # id, name, owner folder, uploaded by, linked users
        (1, "report.pdf", alice, alice, [alice]),
        (2, "report_1.pdf", bob, bob, [bob]),
        (3, f"pfp_{alice}.png", alice, alice, [alice]),
        (4, "notice.txt", bob, alice, [alice, bob]),  # an admin's upload for bob
        (5, "lost.txt", gone, None, []),  # left by a user deleted by hand
    ]
    engine = create_engine(db_backend)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0004"))
            for user_uuid, name in ((alice, "alice"), (bob, "bob")):
                await connection.execute(
                    _USER_AT_0004, {"uuid": user_uuid, "name": name, "email": f"{name}@x.org"}
                )
            for file_id, name, folder, by, linked in files:
                path = f"users/{folder}/{uuid4().hex}"
                await connection.execute(
                    _FILE_AT_0004, {"id": file_id, "name": name, "path": path, "by": by}
                )
                for user_uuid in linked:
                    await connection.execute(
                        text("INSERT INTO user_file (user_uuid, file_id) VALUES (:u, :f)"),
                        {"u": user_uuid, "f": file_id},
                    )
            await connection.execute(
                text('UPDATE "user" SET profile_picture_id = 3 WHERE uuid = :u'), {"u": alice}
            )
        await upgrade_database(engine)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT id, file_name, owner_uuid, kind FROM file ORDER BY id")
                )
            ).all()
            links = (
                await connection.execute(
                    text("SELECT file_id, user_uuid FROM user_file ORDER BY file_id, user_uuid")
                )
            ).all()
            picture = await connection.scalar(
                text('SELECT profile_picture_id FROM "user" WHERE uuid = :u'), {"u": alice}
            )
        assert [tuple(row) for row in rows] == [
            (1, "report.pdf", alice, "file"),
            (2, "report_1.pdf", bob, "file"),
            (3, f"pfp_{alice}.png", alice, "picture"),
            (4, "notice.txt", bob, "file"),
        ]
        assert [tuple(link) for link in links] == sorted(
            (file_id, user_uuid) for file_id, *_, linked in files for user_uuid in linked
        )
        assert picture == 3

        # Names are now per owner: bob may take alice's name, but not hold it twice.
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE file SET file_name = 'report.pdf' WHERE id = 2"))
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(
                    text("UPDATE file SET file_name = 'report.pdf' WHERE id = 4")
                )

        # Going back makes names unique across users again, without losing a row.
        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(alembic_config(c), "0004"))
            names = (await connection.execute(text("SELECT file_name FROM file ORDER BY id"))).all()
        assert [name for (name,) in names] == [
            "report.pdf",
            "2_report.pdf",
            f"pfp_{alice}.png",
            "notice.txt",
        ]
    finally:
        await engine.dispose()
