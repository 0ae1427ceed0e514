"""Signed picture URLs: ``picture_url`` works in an ``<img>`` (no Authorization header),
cannot be bent to another user, version or expiry, expires, and changes with the picture."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.core.picture_links import (
    PictureLinkExpired,
    check_picture_link,
    expiry,
    picture_version,
    signature,
    signed_picture_url,
)
from app.test.conftest import make_settings
from app.test.factories import bearer, live_signup_and_login, make_user, user_with_tokens
from app.test.server import LiveServer

RED, GREEN = (200, 0, 0), (0, 200, 0)


def _png(color: tuple[int, int, int], size: tuple[int, int] = (20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


async def _picture_url(client: httpx.AsyncClient, tokens: dict, user_uuid: str) -> str:
    """``picture_url`` of a profile as the holder of ``tokens`` sees it."""
    response = await client.get(f"/api/user/{user_uuid}", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return response.json()["picture_url"]


def _local(url: str) -> str:
    """Path and query of an issued URL (it names BASE_URL; the test client is in-process)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _with(url: str, **changes: str | None) -> str:
    """``url`` with some query parameters changed (None: left out)."""
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    kept = {key: value for key, value in {**query, **changes}.items() if value is not None}
    return f"{parts.path}?{urlencode(kept)}"


async def _upload(client: httpx.AsyncClient, tokens: dict, user_uuid: str, data: bytes) -> None:
    response = await client.put(
        f"/api/user/{user_uuid}/pfp",
        files={"file": ("me.png", data, "image/png")},
        headers=bearer(tokens),
    )
    assert response.status_code == 204, response.text


def _color(response: httpx.Response) -> tuple[int, ...]:
    pixel = Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((5, 5))
    assert isinstance(pixel, tuple)
    return pixel


async def test_an_img_fetch_needs_no_header(app: FastAPI, client: httpx.AsyncClient) -> None:
    """What an ``<img>`` sends: no Authorization, no cookie; cacheable by anyone."""
    user, tokens = await user_with_tokens(app, client, display_name="John Doe")
    url = await _picture_url(client, tokens, user.uuid)
    assert url.startswith(f"{app.state.settings.BASE_URL}/api/user/{user.uuid}/pfp?")

    served = await client.get(_local(url))
    assert served.status_code == 200, served.text
    assert served.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(served.content)).size == (256, 256)
    version = parse_qs(urlsplit(url).query)["v"][0]
    assert served.headers["ETag"] == f'"{version}"'
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    cache = served.headers["Cache-Control"]
    assert cache.startswith("public, max-age=")
    max_age = int(cache.split("max-age=")[1].split(",")[0])
    expires = int(parse_qs(urlsplit(url).query)["exp"][0])
    assert 0 < max_age <= expires - time.time() + 1

    revalidated = await client.get(_local(url), headers={"If-None-Match": served.headers["ETag"]})
    assert revalidated.status_code == 304
    assert revalidated.content == b""
    assert revalidated.headers["ETag"] == served.headers["ETag"]
    stale_tag = await client.get(_local(url), headers={"If-None-Match": '"something-else"'})
    assert stale_tag.status_code == 200

    # Everyone who may see the profile gets the same URL (nothing in it names the viewer),
    # and reading the profile again within the same period gives it again.
    _, other_tokens = await user_with_tokens(app, client)
    assert await _picture_url(client, other_tokens, user.uuid) == url
    assert await _picture_url(client, tokens, user.uuid) == url
    me = await client.get("/api/users/me", headers=bearer(tokens))
    assert me.json()["picture_url"] == url


async def test_the_bearer_route_still_serves_api_clients(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user, tokens = await user_with_tokens(app, client)
    served = await client.get(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert served.status_code == 200
    assert served.headers["Cache-Control"] == "private, no-cache"
    unsigned = await client.get(f"/api/user/{user.uuid}/pfp")
    assert unsigned.status_code == 401


@pytest.mark.parametrize("field", ["v", "exp", "sig"])
async def test_a_tampered_url_is_refused(
    app: FastAPI, client: httpx.AsyncClient, field: str
) -> None:
    user, tokens = await user_with_tokens(app, client)
    url = await _picture_url(client, tokens, user.uuid)
    query = {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
    original = query[field]
    if field == "exp":
        tampered = str(int(original) + 86_400)
    else:  # one character changed
        tampered = ("a" if original[0] != "a" else "b") + original[1:]
    for changed in (tampered, None, ""):
        response = await client.get(_with(url, **{field: changed}))
        assert "image" not in response.headers["content-type"]
        if field == "exp" and changed == "":  # not a number at all: a plain 422
            assert response.status_code == 422, response.text
            continue
        assert response.status_code == 403, (field, changed, response.text)
        assert response.json()["code"] == "PICTURE_LINK_INVALID"


async def test_a_url_cannot_be_moved_to_another_user(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The UUID is signed: one user's URL (or the caller's own) opens nobody else's picture."""
    alice, alice_tokens = await user_with_tokens(app, client, display_name="Alice A")
    bob, bob_tokens = await user_with_tokens(app, client, display_name="Bob B")
    bobs_url = await _picture_url(client, bob_tokens, bob.uuid)
    await client.post(f"/api/user/{bob.uuid}/block", headers=bearer(alice_tokens))
    assert (
        await client.get(f"/api/user/{alice.uuid}", headers=bearer(bob_tokens))
    ).status_code == 404

    # Bob, blocked, puts Alice's UUID in his own URL: refused.
    moved = _local(bobs_url).replace(bob.uuid, alice.uuid)
    response = await client.get(moved)
    assert response.status_code == 403
    assert response.json()["code"] == "PICTURE_LINK_INVALID"
    # Upper-case is the same UUID: still his own picture, nobody else's.
    assert (
        await client.get(_local(bobs_url).replace(bob.uuid, bob.uuid.upper()))
    ).status_code == 200


async def test_a_blocked_user_is_issued_no_url(app: FastAPI, client: httpx.AsyncClient) -> None:
    blocker, blocker_tokens = await user_with_tokens(app, client)
    blocked, blocked_tokens = await user_with_tokens(app, client)
    _, bystander_tokens = await user_with_tokens(app, client)
    await client.post(f"/api/user/{blocked.uuid}/block", headers=bearer(blocker_tokens))
    hidden = await client.get(f"/api/user/{blocker.uuid}", headers=bearer(blocked_tokens))
    assert hidden.status_code == 404
    assert "picture_url" not in hidden.text
    # Others still get a URL that works.
    url = await _picture_url(client, bystander_tokens, blocker.uuid)
    assert (await client.get(_local(url))).status_code == 200


async def test_a_new_picture_changes_the_url(app: FastAPI, client: httpx.AsyncClient) -> None:
    """The old URL keeps naming the old picture: it answers 404 ``PICTURE_REPLACED``, never
    the new image (which a cache would keep under the old URL)."""
    user, tokens = await user_with_tokens(app, client)
    generated = await _picture_url(client, tokens, user.uuid)

    await _upload(client, tokens, user.uuid, _png(RED))
    red = await _picture_url(client, tokens, user.uuid)
    assert red != generated
    assert _color(await client.get(_local(red))) == RED
    gone = await client.get(_local(generated))
    assert gone.status_code == 404
    assert gone.json()["code"] == "PICTURE_REPLACED"

    # Within the same second, and whatever id the database hands the new row.
    await _upload(client, tokens, user.uuid, _png(GREEN))
    green = await _picture_url(client, tokens, user.uuid)
    assert green not in (red, generated)
    assert _color(await client.get(_local(green))) == GREEN
    old = await client.get(_local(red))
    assert old.status_code == 404
    # Revalidating the old URL does not get a "not modified" for a picture that changed.
    revalidated = await client.get(
        _local(red), headers={"If-None-Match": old.headers.get("ETag", '"x"')}
    )
    assert revalidated.status_code == 404

    # Removing it: back to the generated picture, under a URL of its own.
    removed = await client.delete(f"/api/user/{user.uuid}/pfp", headers=bearer(tokens))
    assert removed.status_code == 204
    back = await _picture_url(client, tokens, user.uuid)
    assert back not in (red, green)
    assert (await client.get(_local(green))).status_code == 404
    assert (await client.get(_local(back))).headers["content-type"] == "image/png"


async def test_deleting_the_picture_file_changes_the_url(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """``DELETE /file/{id}`` on the picture's row (the database clears the user's picture)."""
    user, tokens = await user_with_tokens(app, client)
    await _upload(client, tokens, user.uuid, _png(RED))
    url = await _picture_url(client, tokens, user.uuid)
    files = (await client.get(f"/api/user/{user.uuid}/files", headers=bearer(tokens))).json()
    [picture] = files["items"]
    deleted = await client.delete(f"/api/file/{picture['id']}", headers=bearer(tokens))
    assert deleted.status_code == 204
    assert (await client.get(_local(url))).status_code == 404
    now = await _picture_url(client, tokens, user.uuid)
    assert now != url
    served = await client.get(_local(now))
    assert served.status_code == 200
    assert _color(served) == (128, 128, 128)  # the generated gray square


async def test_an_expired_url_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    settings = app.state.settings
    period = settings.PICTURE_URL_SECONDS
    user, _ = await user_with_tokens(app, client)
    now = time.time()
    # Handed out two periods ago: expired. One period ago: still valid.
    expired = signed_picture_url(settings, user, now=now - 2 * period - 1)
    response = await client.get(_local(expired))
    assert response.status_code == 403
    assert response.json()["code"] == "PICTURE_LINK_EXPIRED"
    assert (
        await client.get(_local(signed_picture_url(settings, user, now=now - period)))
    ).status_code == 200
    # Its expiry moved forward by hand: the signature no longer matches.
    moved = _with(expired, exp=str(expiry(settings, now)))
    assert (await client.get(moved)).json()["code"] == "PICTURE_LINK_INVALID"


async def test_only_the_derived_key_signs(app: FastAPI, client: httpx.AsyncClient) -> None:
    """Neither the JWT secret itself nor another deployment's key makes a valid URL, and
    an access token is no signature."""
    settings = app.state.settings
    user, tokens = await user_with_tokens(app, client)
    url = signed_picture_url(settings, user)
    query = parse_qs(urlsplit(url).query)
    message = f"{user.uuid}\n{query['v'][0]}\n{query['exp'][0]}".encode()
    raw = hmac.new(settings.JWT_SECRET_KEY.encode(), message, hashlib.sha256).digest()
    other = settings.model_copy(update={"JWT_SECRET_KEY": "another-deployment-" + "x" * 40})
    forgeries = [
        base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
        urlsplit(signed_picture_url(other, user)).query.split("sig=")[1],
    ]
    assert (await client.get(_local(url))).status_code == 200
    for sig in forgeries:
        response = await client.get(_with(url, sig=sig))
        assert response.status_code == 403
        assert response.json()["code"] == "PICTURE_LINK_INVALID"
    # An access token is longer than any signature: refused before any check.
    assert (await client.get(_with(url, sig=tokens["access_token"]))).status_code == 422


def test_a_url_stays_the_same_for_a_period_and_valid_for_one_to_two(tmp_path: Path) -> None:
    """Same URL for every read in a period (caches keep one copy); never valid for less
    than a period after it is handed out, nor for more than two."""
    settings = make_settings(tmp_path, PICTURE_URL_SECONDS=3600)
    user = make_user(uuid="6f1c1a6e-2f3c-4c43-9d55-0d3c6f1e9a10", display_name="John Doe")
    start = 1_800_000_000 // 3600 * 3600
    urls = {signed_picture_url(settings, user, now=start + offset) for offset in (0, 1, 1800, 3599)}
    assert len(urls) == 1
    assert signed_picture_url(settings, user, now=start + 3600) not in urls
    for issued in (start, start + 3599):
        expires = expiry(settings, issued)
        assert 3600 < expires - issued <= 7200
        version = picture_version(user)
        sig = signature(settings, user.uuid, version, expires)
        link = check_picture_link(settings, user.uuid, version, expires, sig, now=issued)
        assert link.seconds_left > 3600
        with pytest.raises(PictureLinkExpired):
            check_picture_link(settings, user.uuid, version, expires, sig, now=expires)


def test_the_version_follows_the_picture() -> None:
    first = make_user(display_name="John Doe")
    assert picture_version(first) == picture_version(make_user(display_name="John Doe"))
    assert picture_version(first) != picture_version(make_user(display_name="Mary Major"))
    uploaded = make_user(display_name="John Doe", picture_version="abc")
    assert picture_version(uploaded) not in (
        picture_version(first),
        picture_version(make_user(display_name="John Doe", picture_version="abd")),
    )


# A real browser ------------------------------------------------------------------------


@contextmanager
def _front_end(html: str) -> Iterator[str]:
    """A second origin on this machine (a real server: the browser lets a page reach
    loopback addresses only from one) that serves ``html``; its URL."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_page_on_another_origin_shows_the_picture(live_server: LiveServer, browser) -> None:
    """An ``<img>`` on a front end's page (another origin, no token, no cookie) decodes the
    signed URL; a tampered one shows nothing."""
    _, tokens = live_signup_and_login(live_server.url)
    me = httpx.get(f"{live_server.url}/api/users/me", headers=bearer(tokens)).json()
    url = live_server.url + _local(me["picture_url"])  # BASE_URL is not this test's port
    tampered = live_server.url + _with(url, v="0" * 20)
    page_html = f'<img id="good" src="{url}"><img id="bad" src="{tampered}">'
    sent: list[dict[str, str]] = []
    page = browser.new_page()
    page.on(
        "request", lambda request: sent.append(request.headers) if "/pfp" in request.url else None
    )
    with _front_end(page_html) as front_end:
        assert front_end.split(":")[-1] != live_server.url.split(":")[-1]
        page.goto(f"{front_end}/profile")
        page.wait_for_function("[...document.images].every((image) => image.complete)")
    assert page.eval_on_selector("#good", "image => image.naturalWidth") == 256
    assert page.eval_on_selector("#bad", "image => image.naturalWidth") == 0
    assert len(sent) == 2
    assert not [headers for headers in sent if "authorization" in headers or "cookie" in headers]
