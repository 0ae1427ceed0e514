"""Attacks on the OpenID Connect provider: odd inputs, parameter tricks, token confusion,
logout forgery, leaks into the logs, key rotation across replicas.

Each test is what an attacker (or a careless client) sends and what they must see:
a 4xx in the protocol's JSON shape or a page that goes nowhere, never a 500, never a
token where it does not belong.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI

from app.core.config import Settings
from app.test.factories import PASSWORD, bearer, login, signup_and_login
from app.test.test_oidc import (
    ORIGIN,
    REDIRECT,
    admin_tokens,
    authorize_params,
    exchange,
    get_code,
    pkce,
    provider_setup,
    redirect_query,
    refresh,
    register_client,
    sign_in_to_provider,
    userinfo,
)


@pytest.fixture
async def signed_in(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    """A confidential client and a user signed in at the provider."""
    return await provider_setup(app, client)


def assert_protocol_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx in the protocol's shape: ``error``/``error_description`` and
    ``detail``/``code``."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    body = response.json()
    assert {"error", "detail", "code"} <= set(body), body
    return body


async def tokens_for(client: httpx.AsyncClient, rp: dict[str, Any]) -> dict[str, Any]:
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    answer = await exchange(client, rp, code, verifier)
    assert answer.status_code == 200, answer.text
    return answer.json()


# Parameters given twice ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["redirect_uri", "client_id", "state", "scope", "response_type"])
async def test_an_authorization_request_with_a_parameter_twice_is_refused(
    client: httpx.AsyncClient, signed_in: dict[str, Any], name: str
) -> None:
    params = list(authorize_params(signed_in["rp"], pkce()[1]).items())
    second = {
        "redirect_uri": "https://evil.example/callback",
        "client_id": "umc_other",
        "state": "other",
        "scope": "openid roles",
        "response_type": "token",
    }[name]
    response = await client.get("/oauth2/authorize", params=[*params, (name, second)])
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert "Multiple" in response.text


async def test_a_token_request_with_a_parameter_twice_is_refused(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp = signed_in["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code", "another"),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ]
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    answer = await client.post(
        "/oauth2/token",
        content=urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=auth,
    )
    assert assert_protocol_error(answer, 400)["error"] == "invalid_request"
    # The code was not spent by the refused request.
    assert (await exchange(client, rp, code, verifier)).status_code == 200


async def test_the_token_endpoint_reads_its_parameters_from_the_body_only(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    # Codes, refresh tokens and secrets in a URL end up in proxies' logs.
    rp = signed_in["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    query = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    answer = await client.post(
        "/oauth2/token", params=query, data={"code_verifier": verifier}, auth=auth
    )
    assert_protocol_error(answer, 400)
    tokens = (await exchange(client, rp, code, verifier)).json()
    introspected = await client.post(
        "/oauth2/introspect", params={"token": tokens["access_token"]}, data={}, auth=auth
    )
    assert_protocol_error(introspected, 400)


# Odd inputs: never a 500 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "client_id",
    ["umc_\x00nul", "x" * 10_000, "\udcff", "é" * 70],
)
async def test_odd_client_ids_are_refused_in_the_protocol_shape(
    client: httpx.AsyncClient, signed_in: dict[str, Any], client_id: str
) -> None:
    form = {"grant_type": "authorization_code", "code": "x", "redirect_uri": REDIRECT}
    raw = "&".join(
        f"{key}={value}" for key, value in {**form, "client_id": client_id}.items()
    ).encode("utf-8", "surrogateescape")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    assert_protocol_error(await client.post("/oauth2/token", content=raw, headers=headers))
    assert_protocol_error(
        await client.post("/oauth2/introspect", content=b"token=x&" + raw, headers=headers)
    )
    assert_protocol_error(
        await client.post("/oauth2/revoke", content=b"token=x&" + raw, headers=headers)
    )
    basic = base64.b64encode(client_id.encode("utf-8", "surrogateescape") + b":secret").decode()
    answer = await client.post(
        "/oauth2/token",
        data=form,
        headers={"Authorization": f"Basic {basic}"},
    )
    assert_protocol_error(answer)
    raw_id = quote(client_id.encode("utf-8", "surrogateescape"))
    params = {k: v for k, v in authorize_params(signed_in["rp"], pkce()[1]).items()}
    del params["client_id"]
    page = await client.get(f"/oauth2/authorize?{urlencode(params)}&client_id={raw_id}")
    assert page.status_code == 400
    assert "location" not in page.headers
    inner = quote(f"/oauth2/authorize?client_id={raw_id}")
    signin = await client.get(f"/oauth2/signin?next={inner}")
    assert signin.status_code in (200, 422)


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(b"umc_x%00:%00").decode(),
        "Basic !!!",
        "Basic",
        "Basic " + base64.b64encode(b"x" * 5000 + b":y").decode(),
    ],
)
async def test_a_malformed_basic_header_is_an_invalid_client(
    client: httpx.AsyncClient, header: str
) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "x"}
    for path in ("/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"):
        answer = await client.post(
            path, data={**form, "token": "x"}, headers={"Authorization": header}
        )
        assert_protocol_error(answer)


@pytest.mark.parametrize(
    "field",
    [
        ("nonce", "n\x00once"),
        ("nonce", "n" * 300),
        ("state", "s\x00tate"),
        ("scope", "openid\x00profile"),
        ("redirect_uri", REDIRECT + "\x00"),
        ("code_challenge", "c" * 129),
        ("code_challenge", "\x00" * 43),
        ("prompt", "\x00"),
        ("max_age", "9" * 40),
        ("max_age", "-1"),
    ],
)
async def test_odd_authorization_parameters_never_fail_the_server(
    client: httpx.AsyncClient, signed_in: dict[str, Any], field: tuple[str, str]
) -> None:
    name, value = field
    params = {**authorize_params(signed_in["rp"], pkce()[1]), name: value}
    answer = await client.get("/oauth2/authorize", params=params)
    assert answer.status_code in (200, 302, 303, 400), answer.text
    if answer.status_code == 200:  # the consent page: allowing must not fail either
        answer = await client.post(
            "/oauth2/authorize", data={**params, "decision": "allow"}, headers=ORIGIN
        )
        assert answer.status_code in (302, 400), answer.text
    if answer.status_code == 302:
        location = answer.headers["location"]
        assert location.startswith(REDIRECT + "?"), location


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (
            b"grant_type=authorization_code&code=%FF%FE&client_id=%FF",
            "application/x-www-form-urlencoded",
        ),
        (b"\xff\xfe\x00\x01", "application/x-www-form-urlencoded"),
        (
            b'--b\r\nContent-Disposition: form-data; name="code"\r\n\r\nx',
            "multipart/form-data; boundary=b",
        ),
        (b"--b\r\nbroken", "multipart/form-data"),
        (b'{"grant_type": "authorization_code"}', "application/json"),
        (b"token=" + b"x" * 70_000, "application/x-www-form-urlencoded"),
    ],
)
async def test_odd_bodies_get_protocol_errors(
    client: httpx.AsyncClient, signed_in: dict[str, Any], content: bytes, content_type: str
) -> None:
    rp = signed_in["rp"]
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    for path in ("/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"):
        answer = await client.post(
            path, content=content, headers={"Content-Type": content_type}, auth=auth
        )
        if path != "/oauth2/token" and answer.status_code == 200:
            continue  # introspection/revocation of an unknown token: 200 is the rule
        if answer.status_code == 413:
            assert {"detail", "code"} <= set(answer.json())
            continue
        assert_protocol_error(answer)


async def test_odd_logout_and_session_inputs_never_fail_the_server(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    for params in (
        {"id_token_hint": "\x00"},
        {"id_token_hint": "a.b.c"},
        {"id_token_hint": "x" * 20_000},
        {"client_id": "\x00", "post_logout_redirect_uri": "https://x"},
        {"client_id": "x" * 5000},
    ):
        answer = await client.get("/oauth2/logout", params=params)
        assert answer.status_code in (200, 400), (params, answer.text)
        assert "location" not in answer.headers
    for next_url in ("/oauth2/authorize?\r\nSet-Cookie: x=1", "/oauth2/authorize?\x00"):
        answer = await client.post(
            "/oauth2/session",
            data={"token": signed_in["tokens"]["access_token"], "next": next_url},
            headers=ORIGIN,
        )
        assert answer.status_code in (303, 422), answer.text
        if answer.status_code == 303:
            assert answer.headers["location"].startswith("/oauth2/authorize?")
            assert "\n" not in answer.headers["location"]


# Redirect URIs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "https://RP.example/callback",
        "https://rp.example/Callback",
        "https://rp.example/callback/",
        "https://rp.example/callback?x=1",
        "https://rp.example/callback#x",
        "https://rp.example/%63allback",
        "https://rp.example@evil.example/callback",
        "https://evil.example/callback?https://rp.example/callback",
        "https://rp.example/callback/../callback",
        "https://rp.example:443/callback",
        " https://rp.example/callback",
        "",
    ],
)
async def test_a_redirect_uri_not_registered_exactly_is_never_followed(
    client: httpx.AsyncClient, signed_in: dict[str, Any], uri: str
) -> None:
    params = authorize_params(signed_in["rp"], pkce()[1], redirect_uri=uri)
    answer = await client.get("/oauth2/authorize", params=params)
    assert answer.status_code == 400, answer.text
    assert "location" not in answer.headers


async def test_a_code_exchanged_with_another_redirect_uri_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await admin_tokens(app, client)
    other = REDIRECT.replace("callback", "other")
    rp = await register_client(client, admin, redirect_uris=[REDIRECT, other])
    _, tokens = await signup_and_login(client)
    await sign_in_to_provider(client, tokens)
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    for redirect_uri in (other, None):
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
        if redirect_uri is not None:
            form["redirect_uri"] = redirect_uri
        answer = await client.post("/oauth2/token", data=form, auth=auth)
        assert assert_protocol_error(answer, 400)["error"] == "invalid_grant"
    assert (await exchange(client, rp, code, verifier)).status_code == 200


# PKCE ------------------------------------------------------------------------------------


async def test_pkce_cannot_be_downgraded(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp = signed_in["rp"]
    verifier, challenge = pkce()
    # A code asked for with a challenge needs its verifier, even for a confidential client.
    code, _ = await get_code(client, rp, challenge)
    answer = await exchange(client, rp, code, None)
    assert assert_protocol_error(answer, 400)["error"] in ("invalid_request", "invalid_grant")
    # plain is refused outright.
    params = authorize_params(rp, verifier, code_challenge_method="plain")
    refused = redirect_query(await client.get("/oauth2/authorize", params=params))
    assert refused["error"] == "invalid_request"
    # A verifier for a code asked without a challenge is not a way in either.
    code, _ = await get_code(client, rp, None)
    answer = await exchange(client, rp, code, verifier)
    assert answer.status_code in (200, 400)


# Token confusion ---------------------------------------------------------------------------


async def test_tokens_are_accepted_only_where_they_belong(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp = signed_in["rp"]
    given = await tokens_for(client, rp)
    service = signed_in["tokens"]["access_token"]
    # A client's access token and an ID token are not keys to this service's API.
    for token in (given["access_token"], given["id_token"]):
        assert (await client.get("/api/users/me", headers=bearer(token))).status_code == 401
    # The service's own access token and an ID token are not a client's access token.
    for token in (service, given["id_token"]):
        assert (await userinfo(client, token)).status_code == 401
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    for token in (service, given["id_token"]):
        facts = await client.post("/oauth2/introspect", data={"token": token}, auth=auth)
        assert facts.json() == {"active": False}
        revoked = await client.post("/oauth2/revoke", data={"token": token}, auth=auth)
        assert revoked.status_code == 200
    # Revoking the service's token through a client did nothing to the session.
    assert (await client.get("/api/users/me", headers=bearer(service))).status_code == 200
    assert (await userinfo(client, given["access_token"])).status_code == 200


async def test_a_token_of_an_unknown_or_pruned_key_is_refused(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    given = await tokens_for(client, signed_in["rp"])
    claims = jwt.decode(given["access_token"], options={"verify_signature": False})
    header = jwt.get_unverified_header(given["access_token"])
    forged = jwt.encode(
        claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers=header
    )
    assert (await userinfo(client, forged)).status_code == 401
    unknown = jwt.encode(
        claims,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={**header, "kid": "nope"},
    )
    assert (await userinfo(client, unknown)).status_code == 401
    none = jwt.encode(claims, "", algorithm="none", headers={"kid": header["kid"]})
    assert (await userinfo(client, none)).status_code == 401


async def test_hs256_mode_never_accepts_the_public_key_as_a_secret(
    tmp_path: Any, db_backend: str
) -> None:
    from app.main import create_app
    from app.test.conftest import make_settings

    settings = make_settings(tmp_path / "data", db_backend, JWT_ALGORITHM="HS256")
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        _, tokens = await signup_and_login(client)
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        jwk = (await client.get("/.well-known/jwks.json")).json()["keys"][0]
        public_pem = jwt.PyJWK(jwk).key.public_bytes(
            encoding=Encoding.PEM, format=PublicFormat.SubjectPublicKeyInfo
        )

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        for header in ({"alg": "HS256", "typ": "JWT"}, {"alg": "HS256", "kid": jwk["kid"]}):
            signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
            signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
            forged = f"{signing_input}.{b64(signature)}"
            assert (await client.get("/api/users/me", headers=bearer(forged))).status_code == 401
            assert (await userinfo(client, forged)).status_code == 401


# Logout ------------------------------------------------------------------------------------


async def test_only_an_id_token_of_this_sign_in_logs_out_without_asking(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp = signed_in["rp"]
    given = await tokens_for(client, rp)
    service = signed_in["tokens"]["access_token"]
    # Tokens of the same user that are not ID tokens: the user is asked first.
    for hint in (service, given["access_token"]):
        page = await client.get("/oauth2/logout", params={"id_token_hint": hint})
        assert page.status_code in (200, 400), page.text
        assert "signed out" not in page.text.lower() or "Sign out?" in page.text
        assert (await client.get("/api/users/me", headers=bearer(service))).status_code == 200
    # An ID token of an earlier sign-in (another session of the same user) asks too.
    fresh = await login(client, signed_in["user"]["username"], PASSWORD)
    await sign_in_to_provider(client, fresh)
    page = await client.get("/oauth2/logout", params={"id_token_hint": given["id_token"]})
    assert page.status_code == 200
    assert "Sign out?" in page.text
    assert (await client.get("/api/users/me", headers=bearer(fresh))).status_code == 200


async def test_a_banned_user_s_sign_in_cookie_gets_no_code(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp, user, admin = signed_in["rp"], signed_in["user"], signed_in["admin"]
    await tokens_for(client, rp)  # consented once
    banned = await client.patch(
        f"/api/admin/user/{user['uuid']}", json={"is_active": False}, headers=bearer(admin)
    )
    assert banned.status_code == 200
    for prompt in ("", "none"):
        params = authorize_params(rp, pkce()[1], **({"prompt": prompt} if prompt else {}))
        answer = await client.get("/oauth2/authorize", params=params)
        if prompt == "none":
            assert redirect_query(answer)["error"] == "login_required"
        else:
            assert answer.status_code == 303


async def test_unbanning_does_not_revive_the_grants_a_ban_ended(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp, user, admin = signed_in["rp"], signed_in["user"], signed_in["admin"]
    given = await tokens_for(client, rp)
    for active in (False, True):
        changed = await client.patch(
            f"/api/admin/user/{user['uuid']}", json={"is_active": active}, headers=bearer(admin)
        )
        assert changed.status_code == 200
    assert (await refresh(client, rp, given["refresh_token"])).status_code == 400
    assert (await userinfo(client, given["access_token"])).status_code == 401


# max_age -----------------------------------------------------------------------------------


async def test_max_age_zero_asks_to_sign_in_once_not_forever(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp = signed_in["rp"]
    await tokens_for(client, rp)
    params = authorize_params(rp, pkce()[1], max_age="0")
    await asyncio.sleep(1.1)  # the sign-in is older than max_age
    first = await client.get("/oauth2/authorize", params=params)
    assert first.status_code == 303
    next_url = parse_qs(urlsplit(first.headers["location"]).query)["next"][0]
    fresh = await login(client, signed_in["user"]["username"], PASSWORD)
    await asyncio.sleep(1.1)  # the user takes a moment: a second passes
    await sign_in_to_provider(client, fresh)
    answer = await client.get(next_url)
    assert answer.status_code == 302, answer.headers.get("location")
    assert "code" in redirect_query(answer)


# Logs ----------------------------------------------------------------------------------------


async def test_no_token_or_secret_reaches_the_logs(
    client: httpx.AsyncClient, signed_in: dict[str, Any], captured_logs: list[str]
) -> None:
    import logging

    logging.getLogger("authlib").debug("probe")  # the cap holds whatever LOG_LEVEL says
    rp = signed_in["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    given = (await exchange(client, rp, code, verifier)).json()
    newer = (await refresh(client, rp, given["refresh_token"])).json()
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    await client.post("/oauth2/introspect", data={"token": newer["access_token"]}, auth=auth)
    await client.post("/oauth2/revoke", data={"token": newer["refresh_token"]}, auth=auth)
    await exchange(client, rp, code, verifier)  # a replay, logged as a refusal at most
    text = "\n".join(captured_logs)
    secrets_given = [
        code,
        verifier,
        rp["client_secret"],
        given["access_token"],
        given["refresh_token"],
        given["id_token"],
        newer["access_token"],
        newer["refresh_token"],
        signed_in["tokens"]["access_token"],
    ]
    for secret in secrets_given:
        assert secret not in text
    assert "probe" not in text


# Key rotation ----------------------------------------------------------------------------


async def test_two_rotations_within_the_activation_delay_keep_signing(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    from app.core.signing_keys import rotate_keys

    async with app.state.session_factory() as db:
        await rotate_keys(db, settings, activate_in_seconds=60)
        await rotate_keys(db, settings, activate_in_seconds=60)
    await app.state.authenticator.keyring.reload()
    _, tokens = await signup_and_login(client)
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 200
    assert (await client.get("/.well-known/openid-configuration")).status_code == 200


# Replicas share one database on PostgreSQL (each data directory below would hold a
# SQLite database of its own).
@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
async def test_two_replicas_starting_together_verify_each_other_s_tokens(
    tmp_path: Any, db_backend: str
) -> None:
    from app.main import create_app
    from app.test.conftest import make_settings

    apps = [create_app(make_settings(tmp_path / f"data{index}", db_backend)) for index in range(2)]
    # Both migrate and create their first key at the same moment.
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        await asyncio.gather(
            *(stack.enter_async_context(app.router.lifespan_context(app)) for app in apps)
        )
        keyrings = [app.state.authenticator.keyring for app in apps]
        token = keyrings[1].sign({"sub": "x", "iat": int(time.time())})
        keyrings[0].verify(token, require=["sub"])
        token = keyrings[0].sign({"sub": "x", "iat": int(time.time())})
        keyrings[1].verify(token, require=["sub"])


async def test_a_replica_starting_during_a_rotation_adds_no_key_of_its_own(
    app: FastAPI, settings: Settings
) -> None:
    from sqlalchemy import func, select

    from app.core.signing_keys import rotate_keys
    from app.main import create_app
    from app.models import SigningKey

    running = app.state.authenticator.keyring
    async with app.state.session_factory() as db:
        await rotate_keys(db, settings, activate_in_seconds=60)
    # A replica starts (a deploy, a scale-up) while the new key waits for its time.
    replica = create_app(settings)
    async with replica.router.lifespan_context(replica):
        async with app.state.session_factory() as db:
            assert await db.scalar(select(func.count()).select_from(SigningKey)) == 2
        started = replica.state.authenticator.keyring
        assert started.signing_key().kid == running.signing_key().kid
        token = started.sign({"sub": "x", "iat": int(time.time())})
        running.verify(token, require=["sub"])


async def test_a_code_exchanged_while_the_user_is_banned_gives_nothing_that_lasts(
    client: httpx.AsyncClient, signed_in: dict[str, Any]
) -> None:
    rp, user, admin = signed_in["rp"], signed_in["user"], signed_in["admin"]
    path = f"/api/admin/user/{user['uuid']}"
    for _ in range(4):
        verifier, challenge = pkce()
        code, _ = await get_code(client, rp, challenge)
        ban = client.patch(path, json={"is_active": False}, headers=bearer(admin))
        answer, banned = await asyncio.gather(exchange(client, rp, code, verifier), ban)
        assert banned.status_code == 200
        assert answer.status_code in (200, 400), answer.text
        unbanned = await client.patch(path, json={"is_active": True}, headers=bearer(admin))
        assert unbanned.status_code == 200
        if answer.status_code == 200:
            # Whichever came first, the ban ended what the exchange gave.
            assert (await refresh(client, rp, answer.json()["refresh_token"])).status_code == 400
        fresh = await login(client, user["username"], PASSWORD)
        await sign_in_to_provider(client, fresh)


# Documentation -------------------------------------------------------------------------------


async def test_the_protocol_endpoints_document_their_forms(app: FastAPI) -> None:
    document = app.openapi()
    expected = {
        "/oauth2/token": {"grant_type", "code", "redirect_uri", "code_verifier", "refresh_token"},
        "/oauth2/introspect": {"token", "token_type_hint"},
        "/oauth2/revoke": {"token", "token_type_hint"},
    }
    for path, fields in expected.items():
        body = document["paths"][path]["post"]["requestBody"]["content"]
        schema = body["application/x-www-form-urlencoded"]["schema"]
        assert fields <= set(schema["properties"]), path


async def test_replicas_adding_the_first_key_at_once_add_one(
    app: FastAPI, settings: Settings
) -> None:
    from sqlalchemy import delete, func, select

    from app.core.signing_keys import ensure_signing_key
    from app.models import SigningKey

    factory = app.state.session_factory

    async def ensure() -> None:
        async with factory() as db:
            await ensure_signing_key(db, settings)

    for _ in range(5):
        async with factory() as db:
            await db.execute(delete(SigningKey))
            await db.commit()
        await asyncio.gather(*(ensure() for _ in range(4)))
        async with factory() as db:
            assert await db.scalar(select(func.count()).select_from(SigningKey)) == 1
