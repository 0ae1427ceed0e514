"""Breached passwords: the k-anonymity check against a range API on loopback.

The API here is a real HTTP server started by the test that speaks the Pwned
Passwords range protocol (``GET /range/{5 hex}`` -> ``SUFFIX:COUNT`` lines, padded
with count-0 lines when asked); it can also stall, trickle, fail or talk nonsense.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from app.core.config import ConfigError, load_settings
from app.test.factories import PASSWORD, bearer, signup_and_login, signup_body
from app.test.mail import MailCatcher, link_in, token_in, verify_address

BREACHED = "monkey see monkey do 1999"
#: A password whose suffix the API lists only as padding (count 0): not a breach.
PADDED_ONLY = "only padding knows me 42"
CLEAN = "a completely new passphrase"


def _sha1(password: str) -> str:
    return hashlib.sha1(password.encode(), usedforsecurity=False).hexdigest().upper()


@dataclass
class RangeApi:
    """What the server knows and how it behaves; what it was asked."""

    breached: dict[str, int] = field(default_factory=lambda: {BREACHED: 3861493})
    padded: list[str] = field(default_factory=lambda: [PADDED_ONLY])
    mode: str = "normal"  # normal, stall, trickle, error, nonsense
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def answer(self, prefix: str) -> str:
        known = self.breached.items()
        lines = [f"{_sha1(p)[5:]}:{count}" for p, count in known if _sha1(p)[:5] == prefix]
        lines += [f"{_sha1(p)[5:]}:0" for p in self.padded if _sha1(p)[:5] == prefix]
        # Other suffixes under the prefix, and padding, as the real API sends them.
        lines += ["0" * 34 + "A:12", "F" * 35 + ":0"]
        return "\r\n".join(lines)


def _handler(api: RangeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_GET(self) -> None:
            api.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            prefix = self.path.rsplit("/", 1)[-1]
            if api.mode == "stall":
                time.sleep(3)
            if api.mode == "error":
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"oops")
                return
            body = b"<html>not a range answer</html>"
            if api.mode != "nonsense":
                body = api.answer(prefix).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if api.mode == "trickle":
                # Headers at once, then a byte now and then: every read is quick, the
                # whole answer is not.
                self.end_headers()
                for byte in body[:30]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def range_api() -> Iterator[RangeApi]:
    api = RangeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}/range/"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings_overrides(range_api: RangeApi, smtp_server: MailCatcher) -> dict[str, object]:
    return {
        **smtp_server.settings(),
        "PASSWORD_BREACH_CHECK_URL": range_api.url,
        "PASSWORD_BREACH_CHECK_TIMEOUT_SECONDS": 0.5,
    }


def _breached_error(response: httpx.Response, field_name: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["errors"] == [
        {
            "loc": ["body", field_name],
            "msg": "password appears in a known data breach: choose another one",
            "type": "password_breached",
        }
    ]


async def test_signup_with_a_breached_password_is_refused(
    client: httpx.AsyncClient, range_api: RangeApi
) -> None:
    response = await client.post("/api/auth/signup", json=signup_body(password=BREACHED))
    _breached_error(response, "password")
    # Only the first 5 characters of the SHA-1 left, with padding asked for.
    [(path, headers)] = range_api.requests
    digest = _sha1(BREACHED)
    assert path == f"/range/{digest[:5]}"
    assert digest[5:] not in path
    assert headers["add-padding"] == "true"
    assert (await client.post("/api/auth/signup", json=signup_body())).status_code == 201


async def test_padding_lines_and_unknown_suffixes_are_not_breaches(
    client: httpx.AsyncClient, range_api: RangeApi
) -> None:
    for password in (PADDED_ONLY, CLEAN):
        response = await client.post("/api/auth/signup", json=signup_body(password=password))
        assert response.status_code == 201, response.text
    assert len(range_api.requests) == 2


async def test_the_common_list_still_applies_without_asking(
    client: httpx.AsyncClient, range_api: RangeApi
) -> None:
    response = await client.post("/api/auth/signup", json=signup_body(password="password123"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "password_too_common"
    assert range_api.requests == []


@pytest.mark.parametrize("mode", ["stall", "trickle", "error", "nonsense"])
async def test_a_failing_api_never_blocks_signup(
    client: httpx.AsyncClient, range_api: RangeApi, captured_logs: list[str], mode: str
) -> None:
    range_api.mode = mode
    started = time.monotonic()
    response = await client.post("/api/auth/signup", json=signup_body(password=BREACHED))
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    assert len(range_api.requests) == 1
    # The timeout bounds the whole exchange (0.5 s), not each read.
    assert elapsed < 2.5
    warnings = [line for line in captured_logs if "breached-password check skipped" in line]
    assert len(warnings) == 1
    digest = _sha1(BREACHED)
    assert digest[:5] not in warnings[0]
    # Neither the password nor its hash is logged (the prefix, which the API sees, may
    # be in the HTTP client's request line).
    for line in captured_logs:
        assert BREACHED not in line
        assert digest[5:] not in line


async def test_password_change_and_reset_are_checked(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await signup_and_login(client)
    changed = await client.post(
        "/api/auth/password/change",
        json={"current_password": PASSWORD, "new_password": BREACHED},
        headers=bearer(tokens),
    )
    _breached_error(changed, "new_password")
    # Refused before anything changed: the session and the old password still work.
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 200

    await verify_address(client, smtp_server, user["email"])
    forgot = await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    assert forgot.status_code == 202
    token = token_in(link_in(await smtp_server.wait_for(user["email"], count=2)))
    refused = await client.post(
        "/api/auth/password/reset", json={"token": token, "new_password": BREACHED}
    )
    _breached_error(refused, "new_password")
    # The link was not used up by the refused attempt.
    reset = await client.post(
        "/api/auth/password/reset", json={"token": token, "new_password": CLEAN}
    )
    assert reset.status_code == 204, reset.text
    login = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": CLEAN}
    )
    assert login.status_code == 200


class TestOffByDefault:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {}

    async def test_nothing_is_asked(self, client: httpx.AsyncClient, range_api: RangeApi) -> None:
        response = await client.post("/api/auth/signup", json=signup_body(password=BREACHED))
        assert response.status_code == 201
        assert range_api.requests == []


@pytest.mark.parametrize("url", ["ftp://passwords.example/range/", "not a url"])
def test_a_bad_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="PASSWORD_BREACH_CHECK_URL"):
        load_settings(_env_file=None, PASSWORD_BREACH_CHECK_URL=url)
