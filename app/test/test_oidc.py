"""The OpenID Connect provider, in process: discovery, the code flow with PKCE, consent,
tokens, and every refusal the protocol asks for.

The journey with real relying-party libraries against a live server is in
``test_oidc_live.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select, update

from app.core.config import Settings
from app.models import OidcCode, SigningKey
from app.services.maintenance import purge_expired
from app.test.factories import PASSWORD, bearer, create_user, login, signup_and_login

ORIGIN = {"Origin": "http://testserver"}
REDIRECT = "https://rp.example/callback"
LOGOUT_REDIRECT = "https://rp.example/signed-out"


def pkce() -> tuple[str, str]:
    """A code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def admin_tokens(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    admin = await create_user(app.state.session_factory, password=PASSWORD, roles=["admin"])
    return await login(client, admin.username, PASSWORD)


async def register_client(
    client: httpx.AsyncClient, admin: dict[str, Any], **overrides: Any
) -> dict[str, Any]:
    body = {
        "name": "Recipes",
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": [LOGOUT_REDIRECT],
        "scopes": ["openid", "profile", "email", "roles"],
        **overrides,
    }
    response = await client.post("/api/admin/oidc-clients", json=body, headers=bearer(admin))
    assert response.status_code == 201, response.text
    return response.json()


async def sign_in_to_provider(client: httpx.AsyncClient, tokens: dict[str, Any]) -> None:
    """What the sign-in page does once the API login (and second factor) succeeded."""
    response = await client.post(
        "/oauth2/session",
        data={"token": tokens["access_token"], "next": "/oauth2/authorize?x=1"},
        headers=ORIGIN,
    )
    assert response.status_code == 303, response.text
    assert "user_manager_sso" in response.headers["set-cookie"]


def authorize_params(rp: dict[str, Any], challenge: str | None, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": rp["client_id"],
        "redirect_uri": REDIRECT,
        "scope": "openid profile email",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
    }
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    params.update(extra)
    return params


def redirect_query(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT), location
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


async def get_code(
    client: httpx.AsyncClient, rp: dict[str, Any], challenge: str | None = None, **extra: str
) -> tuple[str, dict[str, str]]:
    """Authorize (consenting when asked) and return the code and the request sent."""
    params = authorize_params(rp, challenge, **extra)
    response = await client.get("/oauth2/authorize", params=params)
    if response.status_code == 200:  # the consent page
        assert "Allow" in response.text
        response = await client.post(
            "/oauth2/authorize", data={**params, "decision": "allow"}, headers=ORIGIN
        )
    query = redirect_query(response)
    assert query["state"] == params["state"]
    return query["code"], params


async def exchange(
    client: httpx.AsyncClient, rp: dict[str, Any], code: str, verifier: str | None = None
) -> httpx.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        form["code_verifier"] = verifier
    if rp.get("client_secret"):
        auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
        return await client.post("/oauth2/token", data=form, auth=auth)
    return await client.post("/oauth2/token", data={**form, "client_id": rp["client_id"]})


async def refresh(client: httpx.AsyncClient, rp: dict[str, Any], token: str) -> httpx.Response:
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    form = {"grant_type": "refresh_token", "refresh_token": token}
    return await client.post("/oauth2/token", data=form, auth=auth)


async def userinfo(client: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await client.get("/oauth2/userinfo", headers=bearer(access_token))


@pytest.fixture
async def setup(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    """A confidential client and a user signed in at the provider."""
    admin = await admin_tokens(app, client)
    rp = await register_client(client, admin)
    user, tokens = await signup_and_login(client)
    await sign_in_to_provider(client, tokens)
    return {"admin": admin, "rp": rp, "user": user, "tokens": tokens}


# Discovery and keys ----------------------------------------------------------------------------


async def test_discovery_names_the_endpoints_and_the_keys(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    metadata = (await client.get("/.well-known/openid-configuration")).json()
    issuer = settings.BASE_URL.rstrip("/")
    assert metadata["issuer"] == issuer
    assert metadata["authorization_endpoint"] == f"{issuer}/oauth2/authorize"
    assert metadata["token_endpoint"] == f"{issuer}/oauth2/token"
    assert metadata["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "profile", "email", "roles"} <= set(metadata["scopes_supported"])
    keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
    assert keys
    assert all("d" not in key for key in keys)  # never a private part
    # The service's own access tokens are signed by a published key.
    _, tokens = await signup_and_login(client)
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    assert kid in {key["kid"] for key in keys}


# The code flow ---------------------------------------------------------------------------------


async def test_code_flow_consent_tokens_userinfo_refresh(
    client: httpx.AsyncClient, setup: dict[str, Any], settings: Settings
) -> None:
    rp, user = setup["rp"], setup["user"]
    verifier, challenge = pkce()
    code, params = await get_code(client, rp, challenge, scope="openid profile email roles")
    answer = await exchange(client, rp, code, verifier)
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer"
    assert set(tokens["scope"].split()) == {"openid", "profile", "email", "roles"}
    assert answer.headers["cache-control"] == "no-store"

    jwks = jwt.PyJWKSet.from_dict((await client.get("/.well-known/jwks.json")).json())
    header = jwt.get_unverified_header(tokens["id_token"])
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    claims = jwt.decode(
        tokens["id_token"],
        key.key,
        algorithms=[header["alg"]],
        audience=rp["client_id"],
        issuer=settings.issuer,
    )
    assert claims["sub"] == user["uuid"]
    assert claims["nonce"] == params["nonce"]
    assert claims["email"] == user["email"]
    assert claims["preferred_username"] == user["username"]
    assert claims["roles"] == ["user"]
    assert "at_hash" in claims
    assert "auth_time" in claims

    info = await userinfo(client, tokens["access_token"])
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == user["uuid"]
    assert info.json()["email"] == user["email"]

    # The client's access token is not a key to the service's own API.
    assert (
        await client.get("/api/users/me", headers=bearer(tokens["access_token"]))
    ).status_code == 401

    again = await refresh(client, rp, tokens["refresh_token"])
    assert again.status_code == 200, again.text
    assert again.json()["refresh_token"] != tokens["refresh_token"]
    assert (await userinfo(client, again.json()["access_token"])).status_code == 200

    # The consent is remembered: the next request goes straight back with a code.
    second = await client.get("/oauth2/authorize", params=authorize_params(rp, pkce()[1]))
    assert "code" in redirect_query(second)
    apps = await client.get("/api/users/me/connected-apps", headers=bearer(setup["tokens"]))
    assert [item["client_id"] for item in apps.json()["items"]] == [rp["client_id"]]


async def test_scopes_limit_the_claims(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge, scope="openid")
    tokens = (await exchange(client, rp, code, verifier)).json()
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert "email" not in claims
    assert "roles" not in claims
    assert "name" not in claims
    info = (await userinfo(client, tokens["access_token"])).json()
    assert set(info) == {"sub"}


async def test_unsigned_in_user_goes_to_the_sign_in_page_and_comes_back(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await admin_tokens(app, client)
    rp = await register_client(client, admin)
    params = authorize_params(rp, pkce()[1], prompt="login consent")
    response = await client.get("/oauth2/authorize", params=params)
    assert response.status_code == 303
    target = response.headers["location"]
    assert target.startswith("/oauth2/signin?next=")
    page = await client.get(target)
    assert page.status_code == 200
    assert "Recipes" in page.text  # "to continue to Recipes"
    next_url = parse_qs(urlsplit(target).query)["next"][0]
    # Once signed in, the request continues without prompt=login (or it would loop).
    assert "login" not in parse_qs(urlsplit(next_url).query)["prompt"][0]
    # prompt=none without a sign-in goes back to the client with login_required.
    silent = await client.get("/oauth2/authorize", params={**params, "prompt": "none"})
    assert redirect_query(silent)["error"] == "login_required"


async def test_two_factor_users_sign_in_with_their_code(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    rp = await register_client(client, admin)
    secret = pyotp.random_base32()
    user = await create_user(
        app.state.session_factory, password=PASSWORD, otp_method="authenticator", otp_secret=secret
    )
    first = await client.post(
        "/api/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert first.json()["otp_required"] is True
    # The pending token is not a sign-in: the provider refuses it.
    refused = await client.post(
        "/oauth2/session",
        data={"token": first.json()["otp_token"], "next": "/oauth2/authorize?x=1"},
        headers=ORIGIN,
    )
    assert refused.status_code == 303
    assert refused.headers["location"].startswith("/oauth2/signin")
    verified = await client.post(
        "/api/auth/otp/verify",
        json={"otp_token": first.json()["otp_token"], "code": pyotp.TOTP(secret).now()},
    )
    assert verified.status_code == 200, verified.text
    await sign_in_to_provider(client, verified.json())
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    assert (await exchange(client, rp, code, verifier)).status_code == 200


async def test_public_client_must_use_pkce_s256(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    spa = await register_client(client, setup["admin"], name="SPA", public=True)
    assert spa["client_secret"] is None
    assert spa["public"] is True
    no_pkce = await client.get("/oauth2/authorize", params=authorize_params(spa, None))
    assert redirect_query(no_pkce)["error"] == "invalid_request"
    verifier, challenge = pkce()
    plain = authorize_params(spa, verifier, code_challenge_method="plain")
    assert redirect_query(await client.get("/oauth2/authorize", params=plain))["error"] == (
        "invalid_request"
    )
    code, _ = await get_code(client, spa, challenge)
    missing = await exchange(client, spa, code)
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    assert missing.json()["code"] == "INVALID_REQUEST"  # the service's shape too
    code, _ = await get_code(client, spa, challenge)
    assert (await exchange(client, spa, code, verifier)).status_code == 200


# Refusals --------------------------------------------------------------------------------------


async def test_wrong_redirect_uri_is_never_followed(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    for uri in (
        "https://evil.example/callback",
        REDIRECT + "/more",
        REDIRECT + "?x=1",
        REDIRECT.upper(),
    ):
        params = authorize_params(rp, pkce()[1], redirect_uri=uri)
        response = await client.get("/oauth2/authorize", params=params)
        assert response.status_code == 400, uri
        assert "location" not in response.headers
        assert "not valid" in response.text
    unknown = authorize_params({"client_id": "umc_nobody"}, pkce()[1])
    assert (await client.get("/oauth2/authorize", params=unknown)).status_code == 400
    # The token request must name the same redirect URI as the authorization.
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "https://evil.example/callback",
        "code_verifier": verifier,
    }
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    answer = await client.post("/oauth2/token", data=form, auth=auth)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


async def test_wrong_verifier_wrong_secret_and_a_code_of_another_client(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    other = await register_client(client, setup["admin"], name="Other")
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    wrong = await exchange(client, rp, code, pkce()[0])
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    stolen = await exchange(client, other, code, verifier)
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    bad_secret = await exchange(client, {**rp, "client_secret": "umcs_guess"}, code, verifier)
    assert bad_secret.status_code == 401
    assert bad_secret.json()["error"] == "invalid_client"
    # None of these used the code up: the rightful exchange still works.
    assert (await exchange(client, rp, code, verifier)).status_code == 200


async def test_a_reused_code_is_refused_and_ends_what_it_gave(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    again = await exchange(client, rp, code, verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert (await userinfo(client, tokens["access_token"])).status_code == 401
    assert (await refresh(client, rp, tokens["refresh_token"])).json()["error"] == "invalid_grant"


async def test_an_expired_code_is_refused(
    app: FastAPI, client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    async with app.state.session_factory() as db:
        await db.execute(update(OidcCode).values(expires_at=OidcCode.created_at - 1))
        await db.commit()
    answer = await exchange(client, rp, code, verifier)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    purged = await purge_expired(app.state.session_factory)
    assert purged["oidc_codes"] == 1


async def test_a_banned_user_gets_nothing_more(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp, user, admin = setup["rp"], setup["user"], setup["admin"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    pending_code, _ = await get_code(client, rp, challenge)
    banned = await client.patch(
        f"/api/admin/user/{user['uuid']}", json={"is_active": False}, headers=bearer(admin)
    )
    assert banned.status_code == 200, banned.text
    assert (await userinfo(client, tokens["access_token"])).status_code == 401
    assert (await refresh(client, rp, tokens["refresh_token"])).status_code == 400
    answer = await exchange(client, rp, pending_code, verifier)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    facts = await client.post(
        "/oauth2/introspect", data={"token": tokens["access_token"]}, auth=auth
    )
    assert facts.json() == {"active": False}
    # The sign-in cookie's session ended with the ban: the next request asks to sign in.
    assert (
        await client.get("/oauth2/authorize", params=authorize_params(rp, challenge))
    ).status_code == 303


async def test_revoked_consent_ends_the_tokens_and_asks_again(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    gone = await client.delete(
        f"/api/users/me/connected-apps/{rp['client_id']}", headers=bearer(setup["tokens"])
    )
    assert gone.status_code == 204
    assert (await userinfo(client, tokens["access_token"])).status_code == 401
    assert (await refresh(client, rp, tokens["refresh_token"])).status_code == 400
    asked = await client.get("/oauth2/authorize", params=authorize_params(rp, challenge))
    assert asked.status_code == 200
    assert "Allow" in asked.text
    denied = await client.post(
        "/oauth2/authorize",
        data={**authorize_params(rp, challenge), "decision": "deny"},
        headers=ORIGIN,
    )
    assert redirect_query(denied)["error"] == "access_denied"
    missing = await client.delete(
        f"/api/users/me/connected-apps/{rp['client_id']}", headers=bearer(setup["tokens"])
    )
    assert missing.status_code == 404


async def test_consent_and_sign_in_forms_refuse_other_origins(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    params = authorize_params(setup["rp"], pkce()[1])
    forged = await client.post(
        "/oauth2/authorize",
        data={**params, "decision": "allow"},
        headers={"Origin": "https://evil.example"},
    )
    assert forged.status_code == 403
    assert forged.json()["code"] == "CROSS_ORIGIN_REQUEST"
    planted = await client.post(
        "/oauth2/session",
        data={"token": setup["tokens"]["access_token"], "next": "/oauth2/authorize?x"},
        headers={"Origin": "https://evil.example"},
    )
    assert planted.status_code == 403
    # next goes only to an authorization request of this service.
    away = await client.post(
        "/oauth2/session",
        data={"token": setup["tokens"]["access_token"], "next": "https://evil.example/"},
        headers=ORIGIN,
    )
    assert away.status_code == 400
    assert "location" not in away.headers


# Refresh tokens, revocation, introspection -------------------------------------------------------


async def test_a_refresh_token_works_once(client: httpx.AsyncClient, setup: dict[str, Any]) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    newer = (await refresh(client, rp, tokens["refresh_token"])).json()
    replay = await refresh(client, rp, tokens["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # A replay means the token leaked: the whole grant ends, the newer token too.
    assert (await refresh(client, rp, newer["refresh_token"])).status_code == 400
    assert (await userinfo(client, newer["access_token"])).status_code == 401


async def test_introspection_and_revocation(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    other = await register_client(client, setup["admin"], name="Other")
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    auth = httpx.BasicAuth(rp["client_id"], rp["client_secret"])
    other_auth = httpx.BasicAuth(other["client_id"], other["client_secret"])
    facts = (
        await client.post("/oauth2/introspect", data={"token": tokens["access_token"]}, auth=auth)
    ).json()
    assert facts["active"] is True
    assert facts["sub"] == setup["user"]["uuid"]
    assert facts["client_id"] == rp["client_id"]
    refresh_facts = await client.post(
        "/oauth2/introspect", data={"token": tokens["refresh_token"]}, auth=auth
    )
    assert refresh_facts.json()["active"] is True
    # Another client learns nothing about these tokens.
    nosy = await client.post(
        "/oauth2/introspect", data={"token": tokens["access_token"]}, auth=other_auth
    )
    assert nosy.json() == {"active": False}
    unauthenticated = await client.post(
        "/oauth2/introspect", data={"token": tokens["access_token"]}
    )
    assert unauthenticated.status_code == 401
    # Another client cannot revoke them either.
    assert (
        await client.post(
            "/oauth2/revoke", data={"token": tokens["refresh_token"]}, auth=other_auth
        )
    ).status_code == 400
    revoked = await client.post(
        "/oauth2/revoke", data={"token": tokens["refresh_token"]}, auth=auth
    )
    assert revoked.status_code == 200
    assert (await userinfo(client, tokens["access_token"])).status_code == 401
    after = await client.post(
        "/oauth2/introspect", data={"token": tokens["access_token"]}, auth=auth
    )
    assert after.json() == {"active": False}
    unknown = await client.post("/oauth2/revoke", data={"token": "nothing-we-gave"}, auth=auth)
    assert unknown.status_code == 200


# Races -----------------------------------------------------------------------------------------


async def test_parallel_exchanges_of_one_code_give_tokens_once(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    answers = await asyncio.gather(*(exchange(client, rp, code, verifier) for _ in range(8)))
    assert sorted(answer.status_code for answer in answers) == [200] + [400] * 7


async def test_parallel_refreshes_of_one_token_succeed_once(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    answers = await asyncio.gather(
        *(refresh(client, rp, tokens["refresh_token"]) for _ in range(8))
    )
    assert [answer.status_code for answer in answers].count(200) <= 1
    assert all(answer.status_code in (200, 400) for answer in answers)


# Logout ----------------------------------------------------------------------------------------


async def test_logout_with_a_hint_ends_the_sign_in_and_the_grants(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    response = await client.get(
        "/oauth2/logout",
        params={
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": LOGOUT_REDIRECT,
            "state": "bye",
        },
    )
    assert response.status_code == 302
    assert response.headers["location"] == f"{LOGOUT_REDIRECT}?state=bye"
    assert (await refresh(client, rp, tokens["refresh_token"])).status_code == 400
    # The sign-in page's session ended: its token is refused by the API too.
    assert (await client.get("/api/users/me", headers=bearer(setup["tokens"]))).status_code == 401
    # An unregistered return address is not followed.
    elsewhere = await client.get(
        "/oauth2/logout",
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": REDIRECT},
    )
    assert elsewhere.status_code == 200
    assert "location" not in elsewhere.headers


async def test_logout_without_a_matching_hint_asks_first(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    # Another site links to the logout endpoint: the user is asked, not signed out.
    page = await client.get("/oauth2/logout")
    assert page.status_code == 200
    assert "Sign out?" in page.text
    assert (await client.get("/api/users/me", headers=bearer(setup["tokens"]))).status_code == 200
    forged = await client.post("/oauth2/logout", headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403
    confirmed = await client.post("/oauth2/logout", headers=ORIGIN)
    assert confirmed.status_code == 200
    assert "signed out" in confirmed.text
    assert (await client.get("/api/users/me", headers=bearer(setup["tokens"]))).status_code == 401


# Clients ---------------------------------------------------------------------------------------


async def test_only_admins_manage_clients_and_secrets_show_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    _, user = await signup_and_login(client)
    body = {"name": "X", "redirect_uris": [REDIRECT]}
    assert (
        await client.post("/api/admin/oidc-clients", json=body, headers=bearer(user))
    ).status_code == 403
    assert (await client.get("/api/admin/oidc-clients", headers=bearer(user))).status_code == 403
    created = await register_client(client, admin)
    assert created["client_secret"].startswith("umcs_")
    listed = (await client.get("/api/admin/oidc-clients", headers=bearer(admin))).json()["items"]
    assert all("client_secret" not in item for item in listed)
    assert created["client_secret"] not in str(listed)
    rotated = await client.post(
        f"/api/admin/oidc-clients/{created['client_id']}/secret", headers=bearer(admin)
    )
    assert rotated.status_code == 200
    assert rotated.json()["client_secret"] != created["client_secret"]
    deleted = await client.delete(
        f"/api/admin/oidc-clients/{created['client_id']}", headers=bearer(admin)
    )
    assert deleted.status_code == 204
    log = await client.get("/api/admin/audit", params={"action": "client.*"}, headers=bearer(admin))
    assert log.status_code == 200, log.text
    actions = [item["action"] for item in log.json()["items"]]
    assert actions == ["client.deleted", "client.secret_rotated", "client.created"]
    assert created["client_secret"] not in log.text
    assert rotated.json()["client_secret"] not in log.text
    missing = await client.get(
        f"/api/admin/oidc-clients/{created['client_id']}", headers=bearer(admin)
    )
    assert missing.status_code == 404
    assert missing.json()["code"] == "CLIENT_NOT_FOUND"


@pytest.mark.parametrize(
    "uri",
    [
        "https://rp.example/*",
        "https://*.rp.example/callback",
        "http://rp.example/callback",
        "https://rp.example/callback#frag",
        "javascript:alert(1)",
        "rp.example/callback",
        "",
    ],
)
async def test_redirect_uris_must_be_exact_and_safe(
    app: FastAPI, client: httpx.AsyncClient, uri: str
) -> None:
    admin = await admin_tokens(app, client)
    body = {"name": "X", "redirect_uris": [uri]}
    response = await client.post("/api/admin/oidc-clients", json=body, headers=bearer(admin))
    assert response.status_code == 422, uri
    assert response.json()["code"] == "VALIDATION_ERROR"


async def test_a_deleted_client_s_tokens_stop_working(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    rp = setup["rp"]
    verifier, challenge = pkce()
    code, _ = await get_code(client, rp, challenge)
    tokens = (await exchange(client, rp, code, verifier)).json()
    deleted = await client.delete(
        f"/api/admin/oidc-clients/{rp['client_id']}", headers=bearer(setup["admin"])
    )
    assert deleted.status_code == 204
    assert (await userinfo(client, tokens["access_token"])).status_code == 401


# Keys ------------------------------------------------------------------------------------------


async def test_rotation_keeps_old_tokens_verifiable_until_they_expire(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    from app.core.signing_keys import rotate_keys

    _, before = await signup_and_login(client)
    old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
    async with app.state.session_factory() as db:
        new = await rotate_keys(db, settings, activate_in_seconds=0)
    keyring = app.state.authenticator.keyring
    await keyring.reload()
    kids = {key["kid"] for key in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert {old_kid, new.kid} <= kids
    _, after = await signup_and_login(client)
    assert jwt.get_unverified_header(after["access_token"])["kid"] == new.kid
    # The token signed by the old key still works.
    assert (await client.get("/api/users/me", headers=bearer(before))).status_code == 200
    # Once every token it signed has expired, the old key is dropped.
    async with app.state.session_factory() as db:
        await db.execute(
            update(SigningKey).where(SigningKey.kid == old_kid).values(publish_until=1)
        )
        await db.commit()
    await purge_expired(app.state.session_factory)
    await keyring.reload()
    kids = {key["kid"] for key in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert old_kid not in kids
    assert new.kid in kids
    async with app.state.session_factory() as db:
        assert await db.get(SigningKey, old_kid) is None


async def test_a_key_the_encryption_key_cannot_open_is_replaced(tmp_path, db_backend: str) -> None:
    from app.main import create_app
    from app.test.conftest import make_settings

    first = make_settings(tmp_path / "data", db_backend, DATA_ENCRYPTION_KEY="a" * 40)
    app = create_app(first)
    async with app.router.lifespan_context(app):
        old_kid = app.state.authenticator.keyring.signing_key().kid
    second = make_settings(tmp_path / "data", db_backend, DATA_ENCRYPTION_KEY="b" * 40)
    app = create_app(second)
    async with app.router.lifespan_context(app):
        keyring = app.state.authenticator.keyring
        assert keyring.signing_key().kid != old_kid
        assert old_kid in {key["kid"] for key in keyring.jwks()["keys"]}
        async with app.state.session_factory() as db:
            rows = (await db.scalars(select(SigningKey))).all()
        assert all("PRIVATE KEY" not in row.private_key for row in rows)


async def test_shared_secret_mode_keeps_hs256_access_tokens(tmp_path, db_backend: str) -> None:
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
        assert jwt.get_unverified_header(tokens["access_token"])["alg"] == "HS256"
        claims = jwt.decode(tokens["access_token"], settings.JWT_SECRET_KEY, algorithms=["HS256"])
        assert claims["typ"] == "access"
        assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 200
        # OpenID Connect still signs with the published keys.
        assert (await client.get("/.well-known/jwks.json")).json()["keys"]


async def test_forms_may_end_at_the_client_s_registered_address_only(
    client: httpx.AsyncClient, setup: dict[str, Any]
) -> None:
    """Browsers hold a form's redirects to form-action: the consent and sign-in pages
    allow the client's registered address, and nothing else."""
    rp = setup["rp"]
    consent = await client.get(
        "/oauth2/authorize", params=authorize_params(rp, pkce()[1], prompt="consent")
    )
    assert consent.status_code == 200
    policy = consent.headers["content-security-policy"]
    assert "form-action 'self' https://rp.example;" in policy
    assert "frame-ancestors 'none'" in policy
    params = authorize_params(rp, pkce()[1])
    registered = "/oauth2/authorize?" + urlencode(params)
    page = await client.get("/oauth2/signin", params={"next": registered})
    assert "form-action 'self' https://rp.example;" in page.headers["content-security-policy"]
    foreign = "/oauth2/authorize?" + urlencode({**params, "redirect_uri": "https://evil.example/"})
    page = await client.get("/oauth2/signin", params={"next": foreign})
    assert "form-action 'self';" in page.headers["content-security-policy"]
    assert "evil.example" not in page.headers["content-security-policy"]


async def test_replicas_starting_together_agree_on_one_key(
    app: FastAPI, settings: Settings
) -> None:
    from app.core.signing_keys import ensure_signing_key, rotate_keys

    async with app.state.session_factory() as db:
        await db.execute(delete(SigningKey))
        await db.commit()

    async def start() -> None:
        async with app.state.session_factory() as db:
            await ensure_signing_key(db, settings)

    await asyncio.gather(*(start() for _ in range(4)))
    async with app.state.session_factory() as db:
        assert len((await db.scalars(select(SigningKey))).all()) == 1
        # During a rotation's delay the old key still signs: a replica starting then
        # adds nothing.
        await rotate_keys(db, settings, activate_in_seconds=600)
    await start()
    async with app.state.session_factory() as db:
        assert len((await db.scalars(select(SigningKey))).all()) == 2


async def test_a_nul_in_a_client_id_is_refused_not_a_server_error(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """PostgreSQL cannot compare text with NUL: a client id carrying one is refused
    (400 invalid_request at the token endpoint, no name on the sign-in page, 422 in a
    path), never a 500."""
    admin = await admin_tokens(app, client)
    rp = await register_client(client, admin)
    token = await client.post(
        "/oauth2/token",
        data={"grant_type": "authorization_code", "code": "x", "client_id": "a\x00b"},
    )
    assert token.status_code == 400, token.text
    assert (token.json()["error"], token.json()["code"]) == ("invalid_request", "INVALID_REQUEST")
    signin = await client.get(
        "/oauth2/signin", params={"next": "/oauth2/authorize?client_id=%00&x=1"}
    )
    assert signin.status_code == 200
    assert rp["name"] not in signin.text
    for method, path in [
        ("GET", "/api/admin/oidc-clients/a%00b"),
        ("PATCH", "/api/admin/oidc-clients/a%00b"),
        ("DELETE", "/api/admin/oidc-clients/a%00b"),
        ("POST", "/api/admin/oidc-clients/a%00b/secret"),
        ("DELETE", "/api/users/me/connected-apps/a%00b"),
    ]:
        response = await client.request(
            method, path, headers=bearer(admin), json={} if method == "PATCH" else None
        )
        assert response.status_code == 422, (method, path, response.text)
        assert response.json()["code"] == "VALIDATION_ERROR"


async def test_a_nul_in_the_nonce_is_refused_not_a_server_error(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await admin_tokens(app, client)
    rp = await register_client(client, admin)
    await sign_in_to_provider(client, admin)
    _, challenge = pkce()
    response = await client.get(
        "/oauth2/authorize", params=authorize_params(rp, challenge, nonce="a\x00b")
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_REQUEST"
