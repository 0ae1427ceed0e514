"""Re-authentication: what a stolen access token alone cannot do, and password guesses
through the endpoints that check the current password."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from app.core.auth_cache import bulk_write
from app.models import Session, User, now_epoch
from app.test.factories import (
    PASSWORD,
    bearer,
    history,
    login,
    reauthenticate,
    user_with_tokens,
)
from app.test.mail import MailCatcher

NEW_PASSWORD = "a completely new passphrase"


def _sensitive_requests(user_uuid: str, password: str | None) -> dict[str, tuple[str, str, Any]]:
    """Each sensitive change as (method, path, body), with ``password`` when given."""
    secret = {} if password is None else {"current_password": password}
    otp_secret = {} if password is None else {"password": password}
    return {
        "email": ("PATCH", "/api/users/me", {"email": f"x{user_uuid[:8]}@example.org", **secret}),
        "password": ("POST", "/api/auth/password/change", {"new_password": NEW_PASSWORD, **secret}),
        "otp_setup": ("POST", "/api/auth/otp/setup", {"method": "authenticator", **otp_secret}),
        "deletion": ("DELETE", f"/api/user/{user_uuid}", secret or None),
        "link": ("GET", "/api/oauth/github/link", None),
    }


async def _send(
    client: httpx.AsyncClient, request: tuple[str, str, Any], tokens: dict
) -> httpx.Response:
    method, path, body = request
    return await client.request(method, path, json=body, headers=bearer(tokens))


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"API_CLIENT_ID_GITHUB": "id", "API_CLIENT_SECRET_GITHUB": "secret"}


@pytest.mark.parametrize("change", ["email", "password", "otp_setup", "deletion", "link"])
async def test_a_stolen_access_token_alone_changes_nothing_sensitive(
    app: FastAPI, client: httpx.AsyncClient, change: str
) -> None:
    user, tokens = await user_with_tokens(app, client)
    refused = await _send(client, _sensitive_requests(user.uuid, None)[change], tokens)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "REAUTHENTICATION_REQUIRED"
    me = await client.get("/api/users/me", headers=bearer(tokens))
    assert me.status_code == 200
    assert (me.json()["email"], me.json()["otp_method"]) == (user.email, "none")
    await login(client, user.username)  # the password is unchanged

    # The owner proves it is them: the same request goes through, for a few minutes.
    await reauthenticate(client, tokens)
    accepted = await _send(client, _sensitive_requests(user.uuid, None)[change], tokens)
    assert accepted.status_code in (200, 204, 302), accepted.text


@pytest.mark.parametrize("change", ["email", "password", "otp_setup", "deletion"])
async def test_the_current_password_in_the_request_is_a_proof(
    app: FastAPI, client: httpx.AsyncClient, change: str
) -> None:
    user, tokens = await user_with_tokens(app, client)
    accepted = await _send(client, _sensitive_requests(user.uuid, PASSWORD)[change], tokens)
    assert accepted.status_code in (200, 204), accepted.text


async def test_a_reauthentication_expires(app: FastAPI, client: httpx.AsyncClient) -> None:
    user, tokens = await user_with_tokens(app, client)
    answer = await client.post(
        "/api/auth/reauthenticate", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert answer.json()["reauthenticated_until"] >= now_epoch() + 299
    async with app.state.session_factory() as session:
        await bulk_write(
            session,
            update(Session)
            .where(Session.user_uuid == user.uuid)
            .values(reauthenticated_at=now_epoch() - 301),
            users=[user.uuid],
        )
        await session.commit()
    late = await _send(client, _sensitive_requests(user.uuid, None)["email"], tokens)
    assert late.json()["code"] == "REAUTHENTICATION_REQUIRED"


async def test_a_code_is_not_a_proof_for_an_account_with_a_password(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, tokens = await user_with_tokens(app, client)
    response = await client.post(
        "/api/auth/reauthenticate", json={"code": "123456"}, headers=bearer(tokens)
    )
    assert (response.status_code, response.json()["code"]) == (422, "PROOF_REQUIRED")


@pytest.mark.parametrize("endpoint", ["reauth", "email", "password", "otp_setup", "deletion"])
async def test_password_guesses_count_like_failed_logins(
    app: FastAPI, client: httpx.AsyncClient, endpoint: str
) -> None:
    """Ten wrong passwords through any endpoint that checks one, then nothing is checked
    (not even the right password, nor a login from an unknown client) until the window
    passes; the owner's known device still logs in."""
    user, tokens = await user_with_tokens(app, client)
    requests = {
        "reauth": ("POST", "/api/auth/reauthenticate", {"password": "guess"}),
        **_sensitive_requests(user.uuid, "guess"),
    }
    for _ in range(10):
        wrong = await _send(client, requests[endpoint], tokens)
        assert (wrong.status_code, wrong.json()["code"]) == (400, "WRONG_PASSWORD")
    right = {
        "reauth": ("POST", "/api/auth/reauthenticate", {"password": PASSWORD}),
        **_sensitive_requests(user.uuid, PASSWORD),
    }
    limited = await _send(client, right[endpoint], tokens)
    assert (limited.status_code, limited.json()["code"]) == (429, "RATE_LIMITED")
    assert "Retry-After" in limited.headers
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as stranger:
        refused = await stranger.post(  # no device token: an unknown client
            "/api/auth/login", data={"username": user.username, "password": PASSWORD}
        )
    assert refused.status_code == 429
    await login(client, user.username)  # the device that logged in before
    failures = [
        event
        for event in await history(app.state.session_factory, user.uuid)
        if event.action == "password_check_failed"
    ]
    assert len(failures) == 10
    assert failures[0].ip == "127.0.0.1"


async def _with_email_codes(app: FastAPI, client: httpx.AsyncClient) -> tuple[User, dict]:
    """A user signed in, whose account then turned email 2FA codes on."""
    user, tokens = await user_with_tokens(app, client)
    async with app.state.session_factory() as session:
        await bulk_write(
            session,
            update(User).where(User.uuid == user.uuid).values(otp_method="email"),
            users=[user.uuid],
        )
        await session.commit()
    return user, tokens


async def test_a_mailed_code_is_not_for_an_account_with_a_password(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, tokens = await _with_email_codes(app, client)
    response = await client.post("/api/auth/reauthenticate/code", headers=bearer(tokens))
    assert (response.status_code, response.json()["code"]) == (409, "USE_PASSWORD")


class TestMailedCodes:
    """A stolen token cannot make the service mail codes without end."""

    @pytest.fixture
    def settings_overrides(self, smtp_server: MailCatcher) -> dict[str, object]:
        return smtp_server.settings()

    async def test_codes_mailed_to_an_account_are_limited(
        self, app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
    ) -> None:
        user, tokens = await _with_email_codes(app, client)
        statuses = [
            (await client.post("/api/auth/otp/disable/code", headers=bearer(tokens))).status_code
            for _ in range(12)
        ]
        assert statuses == [202] * 10 + [429] * 2
        await app.state.mailer.drain()
        assert len(smtp_server.to(user.email)) == 10
