"""Two-factor authentication: authenticator enrolment from the QR code, email codes, limits."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pyotp
import pytest
from fastapi import FastAPI

from app.services.two_factor import ACCOUNT_FAILURE_LIMIT, MAX_FAILED_ATTEMPTS
from app.test.conftest import require_tool
from app.test.factories import PASSWORD, bearer, history, login, signup_and_login
from app.test.mail import MailCatcher, text_body, token_in, verify_address

INTERVAL = 30


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    """Mail goes to the test SMTP server (email codes)."""
    return smtp_server.settings()


def _decode_qr(png: bytes, tmp_path: Path) -> str:
    zbarimg = require_tool("zbarimg")
    path = tmp_path / "qr.png"
    path.write_bytes(png)
    result = subprocess.run(
        [zbarimg, "--raw", "--quiet", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def _code_at(totp: pyotp.TOTP, steps_from_now: int) -> str:
    return totp.at(time.time() + steps_from_now * INTERVAL)


async def _enrol_authenticator(
    client: httpx.AsyncClient, tokens: dict, tmp_path: Path
) -> pyotp.TOTP:
    """Set up the authenticator from its QR code and enable it with the current code."""
    setup = await client.post(
        "/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=bearer(tokens),
    )
    assert setup.status_code == 200, setup.text
    body = setup.json()
    uri = _decode_qr(base64.b64decode(body["qr_png"]), tmp_path)
    assert uri == body["provisioning_uri"]
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    enabled = await client.post(
        "/api/auth/otp/enable",
        json={"method": "authenticator", "code": totp.now()},
        headers=bearer(tokens),
    )
    assert enabled.status_code == 200, enabled.text
    return totp


async def _pending_login(client: httpx.AsyncClient, username: str) -> dict:
    response = await client.post(
        "/api/auth/login", data={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["otp_required"] is True
    assert "access_token" not in body
    return body


async def _verify(client: httpx.AsyncClient, otp_token: str, code: str) -> httpx.Response:
    return await client.post("/api/auth/otp/verify", json={"otp_token": otp_token, "code": code})


async def test_enrol_from_the_qr_code_and_log_in(client: httpx.AsyncClient, tmp_path: Path) -> None:
    user, tokens = await signup_and_login(client, username="qr_user")
    other_device = await login(client, user["username"])
    totp = await _enrol_authenticator(client, tokens, tmp_path)

    uri = urlsplit(totp.provisioning_uri())
    assert uri.scheme == "otpauth"
    assert "UserManager" in parse_qs(uri.query)["issuer"]
    assert len(totp.secret) == 32
    # Enabling ended the other sessions, not this one.
    assert (await client.get("/api/users/me", headers=bearer(other_device))).status_code == 401
    me = await client.get("/api/users/me", headers=bearer(tokens))
    assert me.json()["otp_method"] == "authenticator"
    assert totp.secret not in me.text

    pending = await _pending_login(client, user["username"])
    assert pending["otp_method"] == "authenticator"
    # The 2FA-pending token opens nothing else.
    for path in ("/api/users/me", "/api/auth/token/validate", "/api/auth/sessions"):
        response = await client.get(path, headers=bearer(pending["otp_token"]))
        assert response.status_code == 401, path

    # The enabling code's step is used up: the next step's code logs in.
    verified = await _verify(client, pending["otp_token"], _code_at(totp, 1))
    assert verified.status_code == 200, verified.text
    assert (await client.get("/api/users/me", headers=bearer(verified.json()))).status_code == 200


async def test_a_code_works_once_and_not_two_steps_late(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    user, tokens = await signup_and_login(client)
    totp = await _enrol_authenticator(client, tokens, tmp_path)
    code = _code_at(totp, 1)
    first = await _pending_login(client, user["username"])
    assert (await _verify(client, first["otp_token"], code)).status_code == 200

    second = await _pending_login(client, user["username"])
    replayed = await _verify(client, second["otp_token"], code)
    assert replayed.status_code == 401
    assert replayed.json()["code"] == "INVALID_OTP_CODE"
    stale = await _verify(client, second["otp_token"], _code_at(totp, -2))
    assert stale.status_code == 401
    assert stale.json()["code"] == "INVALID_OTP_CODE"


async def test_a_pending_login_dies_after_a_handful_of_wrong_codes(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    user, tokens = await signup_and_login(client)
    totp = await _enrol_authenticator(client, tokens, tmp_path)
    pending = await _pending_login(client, user["username"])
    right = _code_at(totp, 1)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    for _ in range(MAX_FAILED_ATTEMPTS):
        response = await _verify(client, pending["otp_token"], wrong)
        assert response.json()["code"] == "INVALID_OTP_CODE"
    dead = await _verify(client, pending["otp_token"], right)
    assert dead.status_code == 401
    assert dead.json()["code"] == "INVALID_OTP_TOKEN"


async def test_the_account_is_throttled_after_many_wrong_codes(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    user, tokens = await signup_and_login(client)
    totp = await _enrol_authenticator(client, tokens, tmp_path)
    wrong = f"{(int(_code_at(totp, 1)) + 1) % 10**6:06d}"
    failures = 0
    while failures < ACCOUNT_FAILURE_LIMIT:
        pending = await _pending_login(client, user["username"])
        for _ in range(min(MAX_FAILED_ATTEMPTS - 1, ACCOUNT_FAILURE_LIMIT - failures)):
            assert (await _verify(client, pending["otp_token"], wrong)).status_code == 401
            failures += 1
    throttled = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": PASSWORD}
    )
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "OTP_THROTTLED"
    assert 0 < int(throttled.headers["Retry-After"]) <= 900


async def test_parallel_submissions_of_one_code_succeed_once(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    user, tokens = await signup_and_login(client)
    totp = await _enrol_authenticator(client, tokens, tmp_path)
    pending = await _pending_login(client, user["username"])
    code = _code_at(totp, 1)
    responses = await asyncio.gather(
        *(_verify(client, pending["otp_token"], code) for _ in range(4))
    )
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401]


async def test_disable_the_authenticator(client: httpx.AsyncClient, tmp_path: Path) -> None:
    user, tokens = await signup_and_login(client)
    totp = await _enrol_authenticator(client, tokens, tmp_path)
    again = await client.post(
        "/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=bearer(tokens),
    )
    assert again.status_code == 409
    assert again.json()["code"] == "OTP_ALREADY_ENABLED"
    wrong_password = await client.post(
        "/api/auth/otp/disable",
        json={"password": "not my password", "code": _code_at(totp, 1)},
        headers=bearer(tokens),
    )
    assert wrong_password.status_code == 400
    disabled = await client.post(
        "/api/auth/otp/disable",
        json={"password": PASSWORD, "code": _code_at(totp, 1)},
        headers=bearer(tokens),
    )
    assert disabled.status_code == 204
    plain = await login(client, user["username"])
    assert "access_token" in plain


async def test_setup_needs_the_password(client: httpx.AsyncClient) -> None:
    _, tokens = await signup_and_login(client)
    response = await client.post(
        "/api/auth/otp/setup",
        json={"method": "authenticator", "password": "a guess of a thief"},
        headers=bearer(tokens),
    )
    assert response.status_code == 400
    assert response.json()["code"] == "WRONG_PASSWORD"


async def _mailed_code(smtp_server: MailCatcher, address: str, count: int) -> str:
    message = await smtp_server.wait_for(address, count)
    match = re.search(r"^\s+(\d{6})\s*$", text_body(message), flags=re.MULTILINE)
    assert match, text_body(message)
    return match.group(1)


async def test_email_codes_through_smtp(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await signup_and_login(client)
    address = user["email"]  # message 1 is the verification link
    setup = await client.post(
        "/api/auth/otp/setup",
        json={"method": "email", "password": PASSWORD},
        headers=bearer(tokens),
    )
    assert setup.status_code == 200
    assert setup.json()["qr_png"] is None
    code = await _mailed_code(smtp_server, address, 2)
    enabled = await client.post(
        "/api/auth/otp/enable", json={"method": "email", "code": code}, headers=bearer(tokens)
    )
    assert enabled.status_code == 200

    first = await _pending_login(client, user["username"])
    assert first["otp_method"] == "email"
    first_code = await _mailed_code(smtp_server, address, 3)
    # A new login mails a new code, which replaces the previous one.
    second = await _pending_login(client, user["username"])
    second_code = await _mailed_code(smtp_server, address, 4)
    stale = await _verify(client, first["otp_token"], first_code)
    assert stale.status_code == 401
    verified = await _verify(client, second["otp_token"], second_code)
    assert verified.status_code == 200
    replay = await _verify(client, second["otp_token"], second_code)
    assert replay.status_code == 401

    # Disabling email 2FA: ask for a code, then give it with the password.
    asked = await client.post("/api/auth/otp/disable/code", headers=bearer(verified.json()))
    assert asked.status_code == 202
    disable_code = await _mailed_code(smtp_server, address, 5)
    disabled = await client.post(
        "/api/auth/otp/disable",
        json={"password": PASSWORD, "code": disable_code},
        headers=bearer(verified.json()),
    )
    assert disabled.status_code == 204
    actions = [event.action for event in await history(app.state.session_factory, user["uuid"])]
    assert "otp_enabled" in actions
    assert "otp_disabled" in actions
    assert actions.count("login_otp_required") == 2


async def test_a_password_reset_keeps_2fa(
    client: httpx.AsyncClient, smtp_server: MailCatcher, tmp_path: Path
) -> None:
    user, tokens = await signup_and_login(client)
    await verify_address(client, smtp_server, user["email"])
    await _enrol_authenticator(client, tokens, tmp_path)
    await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    message = await smtp_server.wait_for(user["email"], 3)  # after "2FA turned on"
    link = re.search(r"https?://\S+", text_body(message))
    assert link is not None
    reset = await client.post(
        "/api/auth/password/reset",
        json={"token": token_in(link.group()), "new_password": "a new and long passphrase"},
    )
    assert reset.status_code == 204
    response = await client.post(
        "/api/auth/login",
        data={"username": user["username"], "password": "a new and long passphrase"},
    )
    assert response.json()["otp_required"] is True


class TestEightDigits:
    """OTP_LENGTH=8 reaches the authenticator URI and the email codes."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"OTP_LENGTH": 8}

    async def test_eight_digit_codes(self, client: httpx.AsyncClient, tmp_path: Path) -> None:
        user, tokens = await signup_and_login(client)
        totp = await _enrol_authenticator(client, tokens, tmp_path)
        assert totp.digits == 8
        pending = await _pending_login(client, user["username"])
        assert (await _verify(client, pending["otp_token"], _code_at(totp, 1))).status_code == 200


class TestEmailOff:
    """EMAIL_METHOD=none: email codes cannot be chosen."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"EMAIL_METHOD": "none"}

    async def test_email_2fa_needs_email(self, client: httpx.AsyncClient) -> None:
        _, tokens = await signup_and_login(client)
        response = await client.post(
            "/api/auth/otp/setup",
            json={"method": "email", "password": PASSWORD},
            headers=bearer(tokens),
        )
        assert response.status_code == 400
        assert response.json()["code"] == "EMAIL_DISABLED"
