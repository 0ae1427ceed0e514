"""Accounts and sessions: sign-up rules, login, tokens, refresh, logout, sessions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import select

from app.core.config import Settings
from app.core.security import create_token
from app.models import User
from app.test.factories import (
    PASSWORD,
    bearer,
    create_user,
    history,
    login,
    refreshed,
    signup,
    signup_and_login,
    signup_body,
    unique_name,
)


async def _user_row(app: FastAPI, uuid: str) -> User:
    async with app.state.session_factory() as session:
        return await session.scalar(select(User).where(User.uuid == uuid))


# Sign-up -------------------------------------------------------------------------------


async def test_signup_creates_a_user(app: FastAPI, client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/auth/signup",
        json={
            "username": "john_doe",
            "display_name": "John Doe",
            "email": "John.Doe@Example.COM",
            "password": PASSWORD,
            "description": "hello",
        },
    )
    assert response.status_code == 201
    user = response.json()
    assert user["username"] == "john_doe"
    assert user["display_name"] == "John Doe"
    assert user["email"] == "john.doe@example.com"
    assert user["roles"] == ["user"]
    assert user["email_verified"] is False
    assert user["otp_method"] == "none"
    assert user["is_active"] is True
    assert len(user["uuid"]) == 36
    assert user["uuid"][14] == "4"  # UUID version 4
    assert "password" not in response.text
    assert "hashed" not in response.text
    row = await _user_row(app, user["uuid"])
    assert [event.action for event in await history(app.state.session_factory, row.uuid)] == [
        "signup"
    ]
    assert row.hashed_password is not None
    assert row.hashed_password.startswith("$2b$")


async def test_display_name_defaults_to_the_username(client: httpx.AsyncClient) -> None:
    user = await signup(client, username="alice_bob")
    assert user["display_name"] == "alice_bob"


@pytest.mark.parametrize(
    ("overrides", "field", "rule"),
    [
        ({"username": "John"}, "username", "username_invalid"),
        ({"username": "a" * 32}, "username", "username_invalid"),
        ({"username": "bad-name"}, "username", "username_invalid"),
        ({"username": "", "email": "empty@example.com"}, "username", "username_invalid"),
        ({"display_name": "Someone Else"}, None, "display_name_mismatch"),
        ({"email": "not-an-email"}, "email", "email_invalid"),
        ({"password": "short"}, "password", "password_too_short"),
        ({"password": "x" * 129}, "password", "password_too_long"),
        ({"password": "password"}, "password", "password_too_common"),
        ({"password": "Password1234"}, "password", "password_too_common"),
        ({"description": "d" * 257}, "description", "description_too_long"),
        ({"roles": ["admin"]}, "roles", "extra_forbidden"),
    ],
)
async def test_each_signup_rule_has_its_own_422(
    client: httpx.AsyncClient, overrides: dict, field: str | None, rule: str
) -> None:
    response = await client.post("/api/auth/signup", json=signup_body(**overrides))
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert [error["type"] for error in body["errors"]] == [rule]
    if field:
        assert body["errors"][0]["loc"] == ["body", field]
    assert body["detail"]


async def test_common_password_is_refused_with_a_reason(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/signup", json=signup_body(password="password"))
    assert "too common" in response.json()["detail"]


async def test_display_name_with_spaces_and_capitals(client: httpx.AsyncClient) -> None:
    user = await signup(client, username="mary_ann_lee", display_name="Mary Ann LEE")
    assert user["display_name"] == "Mary Ann LEE"


async def test_taken_username_and_email_are_409(client: httpx.AsyncClient) -> None:
    first = await signup(client)
    same_name = await client.post(
        "/api/auth/signup", json=signup_body(username=first["username"], email="x@example.com")
    )
    assert same_name.status_code == 409
    assert same_name.json()["code"] == "USERNAME_TAKEN"
    same_email = await client.post(
        "/api/auth/signup", json=signup_body(email=first["email"].upper())
    )
    assert same_email.status_code == 409
    assert same_email.json()["code"] == "EMAIL_TAKEN"


@pytest.mark.parametrize("clash", ["username", "email"])
async def test_concurrent_signups_give_one_201_and_one_409(
    app: FastAPI, client: httpx.AsyncClient, clash: str
) -> None:
    for _ in range(3):
        shared = unique_name("race")
        bodies = []
        for i in range(2):
            body = signup_body(username=f"{shared}_{i}")
            body[clash] = shared if clash == "username" else f"{shared}@example.com"
            bodies.append(body)
        responses = await asyncio.gather(
            *(client.post("/api/auth/signup", json=body) for body in bodies)
        )
        assert sorted(r.status_code for r in responses) == [201, 409]
        conflict = next(r for r in responses if r.status_code == 409).json()
        assert conflict["code"] == ("USERNAME_TAKEN" if clash == "username" else "EMAIL_TAKEN")
        async with app.state.session_factory() as session:
            column = User.username if clash == "username" else User.email
            value = shared if clash == "username" else f"{shared}@example.com"
            rows = (await session.scalars(select(User).where(column == value))).all()
        assert len(rows) == 1


# Passwords -----------------------------------------------------------------------------


async def test_long_non_ascii_password(client: httpx.AsyncClient) -> None:
    password = "ж" * 32 + "λ" * 32  # 64 characters, 128 bytes in UTF-8
    user, _ = await signup_and_login(client, password=password)
    wrong = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": password[:-1] + "x"}
    )
    assert wrong.status_code == 401


async def test_password_beyond_72_bytes_is_not_truncated(client: httpx.AsyncClient) -> None:
    password = "abcdefgh" * 10  # 80 bytes
    user = await signup(client, password=password)
    truncated = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": password[:72]}
    )
    assert truncated.status_code == 401
    await login(client, user["username"], password)


async def test_password_is_compared_after_nfkc(client: httpx.AsyncClient) -> None:
    user = await signup(client, password="ﬁnal answer forty two")  # "fi" ligature
    await login(client, user["username"], "final answer forty two")


# Login ---------------------------------------------------------------------------------


async def test_login_with_username_or_email(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    by_name = await login(client, user["username"].upper())
    by_email = await login(client, user["email"].upper())
    for tokens in (by_name, by_email):
        assert tokens["token_type"] == "bearer"
        assert tokens["expires_in"] == 30 * 60
        assert tokens["refresh_token"]
        me = await client.get("/api/users/me", headers=bearer(tokens))
        assert me.json()["uuid"] == user["uuid"]


async def test_unknown_user_and_wrong_password_look_the_same(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    wrong = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": "not the password"}
    )
    unknown = await client.post(
        "/api/auth/login", data={"username": "nobody_here", "password": "not the password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {
            "detail": "Incorrect username/email or password",
            "code": "INVALID_CREDENTIALS",
        }
    )
    ignored = {"x-request-id", "date"}
    assert {k: v for k, v in wrong.headers.items() if k not in ignored} == {
        k: v for k, v in unknown.headers.items() if k not in ignored
    }


async def test_inactive_account_gets_the_same_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await create_user(app.state.session_factory, password=PASSWORD, is_active=False)
    response = await client.post(
        "/api/auth/login", data={"username": user.username, "password": PASSWORD}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "INVALID_CREDENTIALS"


async def test_failed_and_successful_logins_are_in_history(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await signup(client)
    await client.post(
        "/api/auth/login", data={"username": user["username"], "password": "nope" * 3}
    )
    await login(client, user["username"])
    events = await history(app.state.session_factory, user["uuid"])
    assert [event.action for event in events] == ["signup", "login_failed", "login"]
    assert events[1].details == {"reason": "wrong_password"}
    assert events[2].ip == "127.0.0.1"


# Access tokens -------------------------------------------------------------------------


def _forge(token: str, header: dict | None = None, claims: dict | None = None) -> str:
    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    head, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    new_header = header or json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    new_payload = {**payload, **(claims or {})}
    return f"{b64(new_header)}.{b64(new_payload)}.{signature}"


def _hs256_with(token: str, header: dict[str, Any], secret: bytes) -> str:
    """``token``'s claims under ``header`` as HS256, signed with ``secret`` by hand
    (PyJWT refuses to use a public key as an HMAC secret, an attacker would not)."""
    body = token.split(".")[1]
    head = base64.urlsafe_b64encode(json.dumps({**header, "alg": "HS256"}).encode()).rstrip(b"=")
    digest = hmac.new(secret, head + b"." + body.encode(), hashlib.sha256).digest()
    signature = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"{head.decode()}.{body}.{signature}"


async def test_forged_tokens_are_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await signup_and_login(client)
    good = tokens["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    keyring = app.state.authenticator.keyring
    without_exp = {k: v for k, v in claims.items() if k != "exp"}
    stranger = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        keyring.signing_key()
        .signer.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    forged = {
        "tampered": _forge(good, claims={"sub": "00000000-0000-4000-8000-000000000000"}),
        "alg_none": _forge(good, header={"alg": "none", "typ": "JWT"}).rsplit(".", 1)[0] + ".",
        "no_exp": keyring.sign(without_exp),
        "expired": keyring.sign({**claims, "exp": int(time.time()) - 10}),
        "other_issuer": keyring.sign({**claims, "iss": "https://elsewhere.example"}),
        # Another key claiming to be ours (same kid), and a key we do not know.
        "other_key": jwt.encode(claims, stranger, algorithm="ES256", headers=header),
        "unknown_kid": jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": "x"}),
        # The shared secret no longer signs access tokens; and the public key used as
        # an HMAC secret (algorithm confusion) is refused too.
        "shared_secret": jwt.encode(claims, settings.JWT_SECRET_KEY, algorithm="HS256"),
        "public_key_as_secret": _hs256_with(good, header, public_pem),
        "wrong_kind": create_token(
            subject=claims["sub"],
            token_type="otp_pending",
            secret=settings.JWT_SECRET_KEY,
            expires_in_seconds=300,
            session_id=claims["sid"],
        ),
        "wrong_typ_signed_by_us": keyring.sign({**claims, "typ": "id"}),
        "garbage": "not-a-token",
    }
    assert (await client.get("/api/users/me", headers=bearer(good))).status_code == 200
    for name, token in forged.items():
        response = await client.get("/api/users/me", headers=bearer(token))
        assert response.status_code == 401, name
        assert response.json()["code"] == "INVALID_TOKEN", name
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_missing_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/users/me")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated", "code": "INVALID_TOKEN"}


async def test_token_validate(client: httpx.AsyncClient) -> None:
    user, tokens = await signup_and_login(client)
    response = await client.get("/api/auth/token/validate", headers=bearer(tokens))
    assert response.status_code == 200
    body = response.json()
    assert body["uuid"] == user["uuid"]
    assert body["username"] == user["username"]
    assert body["expires_at"] > time.time()
    refused = await client.get("/api/auth/token/validate", headers=bearer("x.y.z"))
    assert refused.status_code == 401


# Logout and sessions -------------------------------------------------------------------


async def test_logout_ends_the_session_at_once(client: httpx.AsyncClient) -> None:
    _, tokens = await signup_and_login(client)
    response = await client.post("/api/auth/logout", headers=bearer(tokens))
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
    refresh = await client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refresh.status_code == 401


async def test_logout_all_ends_every_session(client: httpx.AsyncClient) -> None:
    user, first = await signup_and_login(client)
    second = await login(client, user["username"])
    assert (await client.post("/api/auth/logout-all", headers=bearer(second))).status_code == 204
    for tokens in (first, second):
        assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401


async def test_sessions_are_listed_and_revocable(client: httpx.AsyncClient) -> None:
    user, laptop = await signup_and_login(client)
    phone = await login(client, user["username"])
    listed = await client.get("/api/auth/sessions", headers=bearer(laptop))
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert len(items) == 2
    assert [item["current"] for item in items].count(True) == 1
    current = next(item for item in items if item["current"])
    other = next(item for item in items if not item["current"])
    assert current["ip"] == "127.0.0.1"
    revoked = await client.delete(f"/api/auth/sessions/{other['id']}", headers=bearer(laptop))
    assert revoked.status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 401
    assert (await client.get("/api/users/me", headers=bearer(laptop))).status_code == 200
    again = await client.delete(f"/api/auth/sessions/{other['id']}", headers=bearer(laptop))
    assert again.status_code == 404
    assert again.json()["code"] == "SESSION_NOT_FOUND"


async def test_someone_elses_session_is_not_found(client: httpx.AsyncClient) -> None:
    _, mine = await signup_and_login(client)
    _, theirs = await signup_and_login(client)
    their_session = (await client.get("/api/auth/token/validate", headers=bearer(theirs))).json()
    response = await client.delete(
        f"/api/auth/sessions/{their_session['session_id']}", headers=bearer(mine)
    )
    assert response.status_code == 404
    assert (await client.get("/api/users/me", headers=bearer(theirs))).status_code == 200


# Refresh -------------------------------------------------------------------------------


async def test_refresh_rotates_the_refresh_token(client: httpx.AsyncClient) -> None:
    _, tokens = await signup_and_login(client)
    response = await client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert response.status_code == 200
    renewed = response.json()
    assert renewed["refresh_token"] != tokens["refresh_token"]
    assert (await client.get("/api/users/me", headers=bearer(renewed))).status_code == 200
    again = await client.post("/api/auth/refresh", json={"refresh_token": renewed["refresh_token"]})
    assert again.status_code == 200


async def test_a_reused_refresh_token_ends_the_session(client: httpx.AsyncClient) -> None:
    _, tokens = await signup_and_login(client)
    renewed = (
        await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    ).json()
    reused = await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert reused.status_code == 401
    assert reused.json()["code"] == "REFRESH_TOKEN_REUSED"
    # Whoever held the new pair is logged out too.
    assert (await client.get("/api/users/me", headers=bearer(renewed))).status_code == 401
    refused = await client.post(
        "/api/auth/refresh", json={"refresh_token": renewed["refresh_token"]}
    )
    assert refused.status_code == 401


async def _assert_session_ended(client: httpx.AsyncClient, tokens: dict) -> None:
    """Neither the access token nor the refresh token of ``tokens`` works any more."""
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
    refused = await client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refused.status_code == 401


async def _history_actions(client: httpx.AsyncClient, user: dict) -> list[str]:
    """The actions in ``user``'s history, read by the user after a new login."""
    tokens = await login(client, user["username"])
    response = await client.get(f"/api/user/{user['uuid']}/history", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return [entry["action"] for entry in response.json()["items"]]


async def test_a_token_replaced_two_refreshes_ago_ends_the_session(
    client: httpx.AsyncClient,
) -> None:
    """A thief who refreshed the stolen token twice is logged out by the victim's use."""
    user, victim = await signup_and_login(client)
    stolen_once = await refreshed(client, victim["refresh_token"])
    thief = await refreshed(client, stolen_once["refresh_token"])
    assert (await client.get("/api/users/me", headers=bearer(thief))).status_code == 200
    reused = await client.post("/api/auth/refresh", json={"refresh_token": victim["refresh_token"]})
    assert reused.status_code == 401
    assert reused.json()["code"] == "REFRESH_TOKEN_REUSED"
    await _assert_session_ended(client, thief)
    assert (await client.get("/api/users/me", headers=bearer(victim))).status_code == 401
    assert (await _history_actions(client, user)).count("refresh_token_reused") == 1


@pytest.mark.parametrize("old", range(5))
async def test_any_replaced_token_of_a_long_chain_ends_the_session(
    client: httpx.AsyncClient, old: int
) -> None:
    _, tokens = await signup_and_login(client)
    chain = [tokens]
    for _ in range(5):
        chain.append(await refreshed(client, chain[-1]["refresh_token"]))
    reused = await client.post(
        "/api/auth/refresh", json={"refresh_token": chain[old]["refresh_token"]}
    )
    assert reused.status_code == 401
    assert reused.json()["code"] == "REFRESH_TOKEN_REUSED"
    for pair in chain:
        await _assert_session_ended(client, pair)


async def test_refreshing_does_not_extend_the_session(client: httpx.AsyncClient) -> None:
    """A login lasts REFRESH_TOKEN_EXP_DAYS however often it refreshes (this also bounds
    the replaced tokens a session remembers)."""
    _, tokens = await signup_and_login(client)
    before = (await client.get("/api/auth/sessions", headers=bearer(tokens))).json()["items"]
    await asyncio.sleep(1.1)  # timestamps are whole seconds
    renewed = await refreshed(client, tokens["refresh_token"])
    after = (await client.get("/api/auth/sessions", headers=bearer(renewed))).json()["items"]
    assert after[0]["last_used_at"] > before[0]["last_used_at"]
    assert after[0]["expires_at"] == before[0]["expires_at"]


async def test_unknown_refresh_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/refresh", json={"refresh_token": "made-up"})
    assert response.status_code == 401
    assert response.json()["code"] == "INVALID_REFRESH_TOKEN"


async def test_parallel_use_of_one_refresh_token_succeeds_once(
    client: httpx.AsyncClient,
) -> None:
    _, tokens = await signup_and_login(client)
    responses = await asyncio.gather(
        *(
            client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            for _ in range(4)
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401]


async def test_many_parallel_uses_of_one_refresh_token_end_the_session(
    client: httpx.AsyncClient,
) -> None:
    """One use wins; every other one is a reuse, and it ends the winner's session too."""
    user, tokens = await signup_and_login(client)
    responses = await asyncio.gather(
        *(
            client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            for _ in range(12)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] + [401] * 11
    assert {r.json()["code"] for r in responses if r.status_code == 401} == {"REFRESH_TOKEN_REUSED"}
    winner = next(r.json() for r in responses if r.status_code == 200)
    await _assert_session_ended(client, winner)
    assert (await _history_actions(client, user)).count("refresh_token_reused") == 1


# Password change -----------------------------------------------------------------------


async def test_password_change(client: httpx.AsyncClient) -> None:
    user, tokens = await signup_and_login(client)
    wrong = await client.post(
        "/api/auth/password/change",
        json={"current_password": "not it at all", "new_password": "a brand new passphrase"},
        headers=bearer(tokens),
    )
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "WRONG_PASSWORD"
    weak = await client.post(
        "/api/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "password"},
        headers=bearer(tokens),
    )
    assert weak.status_code == 422
    changed = await client.post(
        "/api/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=bearer(tokens),
    )
    assert changed.status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
    old = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": PASSWORD}
    )
    assert old.status_code == 401
    await login(client, user["username"], "a brand new passphrase")


# Own profile ---------------------------------------------------------------------------


async def test_update_own_profile(client: httpx.AsyncClient) -> None:
    _, tokens = await signup_and_login(client, username="jane_roe")
    response = await client.patch(
        "/api/users/me",
        json={
            "display_name": "Jane Roe",
            "description": "hi",
            "email": "JANE@example.org",
            "current_password": PASSWORD,
        },
        headers=bearer(tokens),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["display_name"] == "Jane Roe"
    assert body["description"] == "hi"
    assert body["email"] == "jane@example.org"
    assert body["email_verified"] is False


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"display_name": "Not Jane"}, 422, "DISPLAY_NAME_MISMATCH"),
        ({"roles": ["admin"]}, 422, "VALIDATION_ERROR"),
        ({"email_verified": True}, 422, "VALIDATION_ERROR"),
        ({"is_active": True}, 422, "VALIDATION_ERROR"),
        ({"description": "x" * 300}, 422, "VALIDATION_ERROR"),
    ],
)
async def test_update_own_profile_refusals(
    client: httpx.AsyncClient, change: dict, status: int, code: str
) -> None:
    _, tokens = await signup_and_login(client, username=unique_name("jane"))
    response = await client.patch("/api/users/me", json=change, headers=bearer(tokens))
    assert response.status_code == status
    assert response.json()["code"] == code
    me = (await client.get("/api/users/me", headers=bearer(tokens))).json()
    assert me["roles"] == ["user"]
    assert me["email_verified"] is False


async def test_update_own_email_to_a_taken_one(client: httpx.AsyncClient) -> None:
    other = await signup(client)
    _, tokens = await signup_and_login(client)
    response = await client.patch(
        "/api/users/me",
        json={"email": other["email"], "current_password": PASSWORD},
        headers=bearer(tokens),
    )
    assert response.status_code == 409
    assert response.json()["code"] == "EMAIL_TAKEN"
