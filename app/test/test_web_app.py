"""A web app on another origin, in a real browser, using the API through fetch() only.

The app is the example shipped in ``examples/web-app``, served by its own static file
server (``serve.py``) on a port of its own (another origin). It signs up, follows the
mailed verification link (which opens the web app, since FRONTEND_URL names it), signs
in with JSON, shows the profile picture in an ``<img>``, turns on an authenticator app,
signs out and signs in again with the second factor. Nothing but the page's own fetch() calls
reaches the API; the test only types what a user would type.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest

from app.core.config import Settings
from app.test.conftest import settings_env
from app.test.mail import MailCatcher, link_in
from app.test.server import ROOT, LiveServer, listening_socket, spawn_server, wait_ready

WEB_APP = ROOT / "examples" / "web-app"
PASSWORD = "a long passphrase nobody guesses"


def _example_server() -> ModuleType:
    """The example's own static server (``examples/web-app/serve.py``)."""
    spec = importlib.util.spec_from_file_location("web_app_serve", WEB_APP / "serve.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def web_app_socket() -> Iterator[tuple[str, socket.socket]]:
    sock = listening_socket()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock
    sock.close()


@pytest.fixture
def settings_overrides(
    smtp_server: MailCatcher, web_app_socket: tuple[str, socket.socket]
) -> dict[str, object]:
    origin, _ = web_app_socket
    return {**smtp_server.settings(), "CORS_ORIGINS": origin, "FRONTEND_URL": origin}


@pytest.fixture
def api_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """The service, with BASE_URL naming the port it listens on (picture URLs use it)."""
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**settings_env(settings), "BASE_URL": url}
    server = spawn_server(env, tmp_path / "server.log", sock=sock)
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


@pytest.fixture
def web_app(web_app_socket: tuple[str, socket.socket], api_server: LiveServer) -> Iterator[str]:
    origin, sock = web_app_socket
    server = ThreadingHTTPServer(
        sock.getsockname(),
        _example_server().handler_for(f"{api_server.url}/api"),
        bind_and_activate=False,
    )
    server.socket.close()
    server.socket = sock
    server.socket.listen()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield origin
    finally:
        server.shutdown()
        thread.join()


def _mail_to(catcher: MailCatcher, address: str, count: int = 1) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        received = catcher.to(address)
        if len(received) >= count:
            return link_in(received[count - 1])
        time.sleep(0.05)
    raise AssertionError(f"no mail #{count} for {address}")


def _status_is(page, text: str) -> None:
    page.wait_for_function(
        "text => document.getElementById('status').textContent.includes(text)", arg=text
    )


def test_a_web_app_on_another_origin_does_the_whole_journey(
    browser, web_app: str, api_server: LiveServer, smtp_server: MailCatcher
) -> None:
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    api_calls: list[str] = []
    page.on(
        "request",
        lambda request: (
            api_calls.append(request.resource_type)
            if request.url.startswith(api_server.url)
            else None
        ),
    )

    page.goto(web_app)
    page.fill("#signup [name=username]", "web_app_user")
    page.fill("#signup [name=email]", "web.app@example.com")
    page.fill("#signup [name=password]", PASSWORD)
    page.click("#signup button")
    _status_is(page, "Check your mail")

    # The mailed link opens the web app's page, which sends the token to the API.
    link = _mail_to(smtp_server, "web.app@example.com")
    assert link.startswith(f"{web_app}/verify-email?token=")
    page.goto(link)
    _status_is(page, "Email verified.")
    assert "token" not in page.url  # dropped from the address bar and history

    page.click("text=Continue to sign in")
    page.fill("#login [name=username]", "web.app@example.com")
    page.fill("#login [name=password]", PASSWORD)
    page.click("#login button")
    _status_is(page, "Signed in.")
    assert page.text_content("#username") == "web_app_user"
    assert page.text_content("#verified") == "verified"

    # The picture comes from the API's origin through a signed URL, with no header.
    avatar = page.locator("#avatar")
    assert avatar.get_attribute("src").startswith(f"{api_server.url}/api/user/")
    page.wait_for_function("() => document.getElementById('avatar').complete")
    assert avatar.evaluate("img => img.naturalWidth") > 0

    # An authenticator app: the user types the code the app would show.
    page.fill("#otp-setup [name=password]", PASSWORD)
    page.click("#otp-setup button")
    _status_is(page, "Scan the code")
    assert page.locator("#qr").evaluate("img => img.naturalWidth") > 0
    uri = page.text_content("#otp-uri") or ""
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])
    page.fill("#otp-enable [name=code]", totp.now())
    page.click("#otp-enable button")
    _status_is(page, "Two-factor authentication is on.")
    assert page.text_content("#otp-method") == "authenticator"

    access_token = page.evaluate("sessionStorage.getItem('access_token')")
    page.click("#logout")
    _status_is(page, "Signed out.")
    # The session really ended on the server: its token is refused.
    refused = httpx.get(
        f"{api_server.url}/api/users/me", headers={"Authorization": f"Bearer {access_token}"}
    )
    assert refused.status_code == 401

    # Signing in again asks for the second factor (the next time step: the code used
    # to turn 2FA on cannot be used twice).
    page.fill("#login [name=username]", "web_app_user")
    page.fill("#login [name=password]", PASSWORD)
    page.click("#login button")
    _status_is(page, "Enter the code")
    page.fill("#otp [name=code]", totp.at(time.time() + 30))
    page.click("#otp button")
    _status_is(page, "Signed in.")
    assert page.text_content("#otp-method") == "authenticator"

    assert problems == []
    # Everything went through fetch() (and the <img>), no navigation to the API.
    assert set(api_calls) <= {"fetch", "image", "preflight"}, api_calls
    assert "fetch" in api_calls
    assert "image" in api_calls
    context.close()


def test_the_same_web_app_is_refused_without_cors(
    browser, web_app: str, api_server: LiveServer
) -> None:
    """Control: the same app reached under another name (``localhost``, an origin not
    in CORS_ORIGINS) is blocked by the browser, so the journey above really depends
    on the service's CORS answer."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text))
    page.goto(web_app.replace("127.0.0.1", "localhost"))
    page.fill("#signup [name=username]", "blocked_user")
    page.fill("#signup [name=email]", "blocked@example.com")
    page.fill("#signup [name=password]", PASSWORD)
    page.click("#signup button")
    _status_is(page, "Failed to fetch")
    assert any("CORS" in line for line in problems), problems
    page.close()
    # Nothing was created: the preflight failed, so the POST was never sent.
    created = httpx.post(
        f"{api_server.url}/api/auth/signup",
        json={"username": "blocked_user", "email": "blocked@example.com", "password": PASSWORD},
    )
    assert created.status_code == 201, created.text
