"""The abuse catalogue: hostile input of every kind gets a 4xx in the common shape."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from sqlalchemy import func, select

from app.core.security import create_one_time_token, create_token
from app.models import User
from app.test.documents import complete_document
from app.test.factories import PASSWORD, bearer, login, signup_body, user_with_tokens

ANY_UUID = "4b7e1c9a-2f3d-4e5a-9b8c-7d6e5f4a3b2c"


def _assert_error_shape(response: httpx.Response, where: str) -> None:
    assert 400 <= response.status_code < 500, (where, response.status_code, response.text)
    body = response.json()
    assert isinstance(body.get("detail"), str), where
    assert isinstance(body.get("code"), str), where
    assert body["code"] == body["code"].upper(), where


def _operations(app: FastAPI) -> list[tuple[str, str, bool]]:
    """Every (method, concrete path, needs a body) of the API, with harmless path values."""
    found = []
    for path, item in app.openapi()["paths"].items():
        concrete = (
            path.replace("{uuid}", ANY_UUID)
            .replace("{file_id}", "1")
            .replace("{session_id}", ANY_UUID)
            .replace("{provider}", "github")
            .replace("{client_id}", "some-client")
        )
        for method, operation in item.items():
            found.append((method.upper(), concrete, "requestBody" in operation))
    return found


# Bodies --------------------------------------------------------------------------------

JSON_ENDPOINTS = [
    "/api/auth/signup",
    "/api/auth/refresh",
    "/api/auth/password/forgot",
    "/api/auth/password/reset",
    "/api/auth/otp/verify",
    "/api/auth/otp/recovery-codes/verify",
    "/api/auth/token/exchange",
    "/api/auth/email/verify/request",
    # The OpenID Connect provider's client endpoints read forms.
    "/oauth2/token",
    "/oauth2/introspect",
    "/oauth2/revoke",
    "/oauth2/userinfo",
]


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
async def test_malformed_and_mistyped_bodies(client: httpx.AsyncClient, path: str) -> None:
    bodies = [
        (b"{not json", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"[]", "application/json"),
        (b'"just a string"', "application/json"),
        (b"null", "application/json"),
        (b'{"a": 1}', "text/plain"),
        (b"a=1&b=2", "application/x-www-form-urlencoded"),
        (b"", "application/json"),
    ]
    for content, content_type in bodies:
        response = await client.post(path, content=content, headers={"Content-Type": content_type})
        _assert_error_shape(response, f"{path} {content_type} {content[:10]!r}")


async def test_a_huge_body_is_413(client: httpx.AsyncClient) -> None:
    body = json.dumps(signup_body(description="x" * 3_000_000))
    response = await client.post(
        "/api/auth/signup", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    _assert_error_shape(response, "huge body")


async def test_huge_headers_are_harmless(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/users/me",
        headers={"X-Padding": "x" * 60_000, "Authorization": "Bearer " + "a" * 20_000},
    )
    assert response.status_code == 401
    _assert_error_shape(response, "huge headers")


# Text fields ---------------------------------------------------------------------------

HOSTILE_TEXT = [
    "\x00",
    "abc\x00def",
    "\ud800",  # a lone surrogate
    "\u202eevil\u202c",  # right-to-left override
    "e\u0301" * 20,  # combining marks
    "👩‍👩‍👧‍👦" * 10,
    "' OR 1=1 --",
    '\'; DROP TABLE "user"; --',
    "{{7*7}} ${7*7} <%= 7*7 %>",
    "<script>alert(1)</script>",
    "../../../etc/passwd",
    "%00%2e%2e%2f",
    "\u0000\u0001\u001f\u007f",
    "\uffff\ufffe",
]


def _json(body: dict) -> bytes:
    # ensure_ascii keeps lone surrogates as \\ud800 escapes, as a hostile client would send.
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.mark.parametrize("text", HOSTILE_TEXT)
async def test_hostile_text_in_every_field(
    app: FastAPI, client: httpx.AsyncClient, text: str
) -> None:
    _, tokens = await user_with_tokens(app, client)
    headers = {**bearer(tokens), "Content-Type": "application/json"}
    requests = [
        ("POST", "/api/auth/signup", signup_body(username=text)),
        ("POST", "/api/auth/signup", signup_body(display_name=text)),
        ("POST", "/api/auth/signup", signup_body(email=f"{text}@example.com")),
        ("POST", "/api/auth/signup", signup_body(password=text * 8)),
        ("POST", "/api/auth/signup", signup_body(description=text)),
        ("PATCH", "/api/users/me", {"description": text}),
        ("PATCH", "/api/users/me", {"display_name": text}),
        ("POST", "/api/auth/password/forgot", {"email": text}),
        ("POST", "/api/auth/refresh", {"refresh_token": text}),
        ("POST", "/api/auth/password/reset", {"token": text, "new_password": PASSWORD}),
        ("POST", "/api/auth/otp/verify", {"otp_token": text, "code": text}),
        ("POST", "/api/auth/otp/recovery-codes/verify", {"otp_token": text, "recovery_code": text}),
        ("POST", "/api/auth/token/exchange", {"code": text}),
        ("POST", "/api/auth/password/change", {"current_password": text, "new_password": text}),
    ]
    for method, path, body in requests:
        response = await client.request(method, path, content=_json(body), headers=headers)
        assert response.status_code < 500, (method, path, body, response.text)
        if response.status_code >= 400:
            _assert_error_shape(response, f"{method} {path}")
    # Query strings and forms carry the raw bytes (httpx will not encode a lone surrogate).
    raw = quote(text.encode("utf-8", "surrogatepass"))
    for name in ("search", "role"):
        response = await client.get(f"/api/users?{name}={raw}", headers=bearer(tokens))
        assert response.status_code in (403, 422), response.text
    login = await client.post(
        "/api/auth/login",
        content=f"username={raw}&password={raw}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert login.status_code in (401, 422), login.text
    verify = await client.get(f"/api/auth/email/verify?token={raw}")
    _assert_error_shape(verify, "email verify")
    # The OpenID Connect provider: its forms answer in the common shape, its pages
    # with a page, never a server error.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for path, fields in [
        ("/oauth2/token", f"grant_type=authorization_code&code={raw}&client_id={raw}"),
        ("/oauth2/token", f"grant_type=refresh_token&refresh_token={raw}&client_id={raw}"),
        ("/oauth2/token", f"grant_type={raw}&client_id={raw}&client_secret={raw}"),
        ("/oauth2/introspect", f"token={raw}&client_id={raw}&client_secret={raw}"),
        ("/oauth2/revoke", f"token={raw}&token_type_hint={raw}&client_id={raw}"),
    ]:
        response = await client.post(path, content=fields.encode(), headers=form)
        _assert_error_shape(response, f"{path} {fields}")
    for page in [
        f"/oauth2/authorize?response_type=code&client_id={raw}&redirect_uri={raw}&scope={raw}",
        f"/oauth2/signin?next=/oauth2/authorize%3Fclient_id%3D{raw}",
        f"/oauth2/logout?client_id={raw}&id_token_hint={raw}&post_logout_redirect_uri={raw}",
    ]:
        response = await client.get(page)
        assert response.status_code < 500, (page, response.text)
    safe = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    upload = await client.post(
        "/api/file",
        files={"file": (safe, b"content", "text/plain")},
        data={"description": safe},
        headers=bearer(tokens),
    )
    assert upload.status_code in (201, 422), upload.text


async def test_injection_strings_are_stored_as_text(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, tokens = await user_with_tokens(app, client)
    for text in ("' OR 1=1 --", "{{7*7}}", "<script>alert(1)</script>"):
        response = await client.patch(
            "/api/users/me", json={"description": text}, headers=bearer(tokens)
        )
        assert response.json()["description"] == text
    async with app.state.session_factory() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 1


# Paths ---------------------------------------------------------------------------------

TRAVERSALS = ["..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..\\..\\windows", "%00", "-1", "9" * 40]


async def test_path_traversal_in_every_path_parameter(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, tokens = await user_with_tokens(app, client, ("admin", "user"))
    templates = [
        path
        for path in app.openapi()["paths"]
        if "{" in path and not path.startswith("/api/oauth/{provider}")
    ]
    assert len(templates) >= 8
    for template in templates:
        methods = app.openapi()["paths"][template].keys()
        for value in TRAVERSALS:
            path = (
                template.replace("{uuid}", value)
                .replace("{file_id}", value)
                .replace("{session_id}", value)
                .replace("{client_id}", value)
            )
            for method in methods:
                response = await client.request(method.upper(), path, headers=bearer(tokens))
                _assert_error_shape(response, f"{method} {path}")
    for value in TRAVERSALS:
        response = await client.get(f"/api/oauth/{value}")
        _assert_error_shape(response, f"oauth {value}")


# Tokens --------------------------------------------------------------------------------


async def test_bad_tokens_on_every_endpoint(
    app: FastAPI, client: httpx.AsyncClient, settings
) -> None:
    user, tokens = await user_with_tokens(app, client)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    secret = settings.JWT_SECRET_KEY
    keyring = app.state.authenticator.keyring
    _, payload, _ = tokens["access_token"].split(".")
    bad_tokens = {
        "expired": keyring.sign({**claims, "exp": int(time.time()) - 1}),
        "forged": jwt.encode(
            claims,
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
            headers=jwt.get_unverified_header(tokens["access_token"]),
        ),
        "shared_secret": jwt.encode(claims, secret, algorithm="HS256"),
        "alg_none": base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
        + f".{payload}.",
        "otp_pending": create_token(
            subject=user.uuid, token_type="otp_pending", secret=secret, expires_in_seconds=60
        ),
        "email_link": create_one_time_token(secret, "email-verify", {"uuid": user.uuid}),
        "refresh_token": tokens["refresh_token"],
        "unknown_session": keyring.sign_access_token(
            subject=user.uuid, session_id=str(uuid.uuid4()), expires_in_seconds=60
        ),
    }
    public = {
        ("POST", "/api/auth/signup"),
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/refresh"),
        ("POST", "/api/auth/password/forgot"),
        ("POST", "/api/auth/password/reset"),
        ("POST", "/api/auth/otp/verify"),
        ("POST", "/api/auth/otp/recovery-codes/verify"),
        ("POST", "/api/auth/passkeys/sign-in/begin"),
        ("POST", "/api/auth/passkeys/sign-in/finish"),
        ("POST", "/api/auth/passkeys/second-factor/begin"),
        ("POST", "/api/auth/passkeys/second-factor/finish"),
        ("POST", "/api/auth/token/exchange"),
        ("POST", "/api/auth/email/verify/request"),
        ("GET", "/api/auth/email/verify"),
        ("POST", "/api/auth/email/verify"),
        ("GET", "/api/oauth/providers"),
        ("GET", "/api/oauth/bluesky/client-metadata.json"),
        ("GET", "/api/oauth/bluesky/jwks.json"),
        ("GET", "/api/oauth/bluesky/login"),
        ("GET", "/api/oauth/bluesky/callback"),
        # Open to anonymous callers; a refused token is one (as for the flags themselves).
        ("GET", "/api/feature-flags/me"),
    }
    checked = 0
    for method, path, has_body in _operations(app):
        if not path.startswith("/api/") or (method, path) in public or "/oauth/github" in path:
            continue
        for name, token in bad_tokens.items():
            response = await client.request(
                method,
                path,
                headers=bearer(token),
                json={} if has_body and "file" not in path and "pfp" not in path else None,
            )
            assert response.status_code in (401, 422), (name, method, path, response.text)
            _assert_error_shape(response, f"{name} {method} {path}")
            checked += 1
    assert checked > 100
    # A client's userinfo takes a client's access token only: none of these (nor a
    # live token of the service's own API) is one.
    for name, token in {**bad_tokens, "own_api_token": tokens["access_token"]}.items():
        for method in ("GET", "POST"):
            response = await client.request(method, "/oauth2/userinfo", headers=bearer(token))
            assert response.status_code == 401, (name, method, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            _assert_error_shape(response, f"{name} {method} /oauth2/userinfo")


# Roles against admin endpoints ---------------------------------------------------------


async def test_each_role_against_every_admin_endpoint(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    target, _ = await user_with_tokens(app, client, ("moderator", "user"))
    calls = [
        ("GET", "/api/admin/feature-flags", None),
        ("PATCH", "/api/admin/feature-flags", {"add": ["X"]}),
        ("PATCH", f"/api/admin/user/{target.uuid}", {"roles": ["user"]}),
        ("PATCH", f"/api/admin/user/{target.uuid}", {"is_active": False}),
        ("GET", "/api/users", None),
    ]
    expectations = {
        ("user",): {403},
        ("tester", "user"): {403},
        ("moderator", "user"): {403, 200},  # moderators may list users, not change staff
    }
    for roles, allowed in expectations.items():
        _, tokens = await user_with_tokens(app, client, roles)
        for method, path, body in calls:
            response = await client.request(method, path, json=body, headers=bearer(tokens))
            if response.status_code == 200:
                assert (method, path) == ("GET", "/api/users")
                assert "moderator" in roles
            else:
                assert response.status_code in allowed, (roles, method, path, response.text)
                _assert_error_shape(response, f"{roles} {method} {path}")


# Concurrency ---------------------------------------------------------------------------


async def test_fifty_parallel_signups_on_ten_usernames(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    names = [f"crowd_{i}" for i in range(10)]
    bodies = [signup_body(username=names[i % 10], email=f"crowd{i}@example.com") for i in range(50)]
    responses = await asyncio.gather(
        *(client.post("/api/auth/signup", json=body) for body in bodies)
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 10
    assert statuses.count(409) == 40
    async with app.state.session_factory() as session:
        usernames = list(await session.scalars(select(User.username)))
    assert sorted(usernames) == sorted(names)


async def test_responses_never_carry_secrets(app: FastAPI, client: httpx.AsyncClient) -> None:
    user, tokens = await user_with_tokens(app, client, ("admin", "user"))
    async with app.state.session_factory() as session:
        row = await session.get(User, user.uuid)
    texts = [
        (await client.get("/api/users/me", headers=bearer(tokens))).text,
        (await client.get(f"/api/user/{user.uuid}", headers=bearer(tokens))).text,
        (await client.get("/api/users", headers=bearer(tokens))).text,
        (await client.get(f"/api/user/{user.uuid}/history", headers=bearer(tokens))).text,
        (await client.get("/api/auth/sessions", headers=bearer(tokens))).text,
    ]
    for text in texts:
        assert row.hashed_password not in text
        assert row.otp_secret not in text
        assert tokens["refresh_token"] not in text
        assert "hashed_password" not in text
        assert "otp_secret" not in text


# Other users' private fields ----------------------------------------------------------


@pytest.mark.parametrize("target_state", ["active", "blocked_the_caller", "banned"])
async def test_no_endpoint_shows_a_plain_user_another_users_email(
    app: FastAPI, client: httpx.AsyncClient, target_state: str
) -> None:
    """Every operation of the API, called by a plain user about another user (their
    UUID, file, session), with an empty body and with no-op bodies: the other user's
    email and pending email appear in no answer (only ``read_private`` may show them,
    and a plain user holds it for themself only)."""
    target, target_tokens = await user_with_tokens(
        app, client, email=f"target-{uuid.uuid4().hex[:8]}@private.example", description="d"
    )
    pending = f"pending-{uuid.uuid4().hex[:8]}@private.example"
    upload = await client.post(
        f"/api/user/{target.uuid}/file",
        files={"file": ("notes.txt", b"notes", "text/plain")},
        headers=bearer(target_tokens),
    )
    assert upload.status_code == 201, upload.text
    sessions = await client.get("/api/auth/sessions", headers=bearer(target_tokens))
    caller, _ = await user_with_tokens(app, client)
    async with app.state.session_factory() as session:
        row = await session.get(User, target.uuid)
        row.pending_email = pending
        if target_state == "banned":
            row.is_active = False
            row.deactivated_reason = "banned"
        if target_state == "blocked_the_caller":
            row.blocked_uuids = [caller.uuid]
        await session.commit()
    values = {
        "{uuid}": target.uuid,
        "{file_id}": str(upload.json()["id"]),
        "{session_id}": sessions.json()["items"][0]["id"],
        "{provider}": "github",
        "{client_id}": "some-client",
    }
    bodies = [{}, {"is_active": True}, {"description": "d"}, {"email": target.email}]
    tokens = await login(client, caller.username)
    calls = 0
    for path, item in complete_document(app)["paths"].items():
        for placeholder, value in values.items():
            path = path.replace(placeholder, value)
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            variants: list[dict[str, Any]]
            if "multipart/form-data" in content:
                variants = [{"files": {"file": ("x.png", b"not an image", "image/png")}}]
            elif "application/x-www-form-urlencoded" in content:
                variants = [{"data": {"username": target.email, "password": "wrong password"}}]
            elif content:
                variants = [{"json": body} for body in bodies]
            else:
                variants = [{}]
            for variant in variants:
                response = await client.request(
                    method.upper(), path, headers=bearer(tokens), **variant
                )
                calls += 1
                where = f"{method.upper()} {path} {variant}"
                assert response.status_code < 500, (where, response.text)
                seen = (response.text + str(response.headers)).lower()
                assert target.email not in seen, where
                assert pending not in seen, where
                if response.status_code == 401:  # the caller logged itself out: again
                    tokens = await login(client, caller.username)
    assert calls > 60
