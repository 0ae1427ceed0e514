"""Real relying parties against a live server: Authlib's OAuth 2 client does the code
flow with PKCE, joserfc and PyJWT (through PyJWKClient) verify what it gets against
the published keys, and a key rotation by the command line keeps old tokens valid."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pyotp
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from app.core.config import Settings
from app.test.conftest import settings_env
from app.test.factories import PASSWORD, signup_body
from app.test.server import LiveServer, listening_socket, run_cli, start_server

REDIRECT = "https://recipes.example/callback"
SIGNED_OUT = "https://recipes.example/bye"


@pytest.fixture
def provider(settings: Settings, tmp_path: Path) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """The service on a port of its own, with BASE_URL naming it (the issuer)."""
    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**settings_env(settings), "BASE_URL": url}
    server = start_server(env, tmp_path / "server.log", sock=sock)
    try:
        yield server, env
    finally:
        server.stop()
        sock.close()


def _user_with_authenticator(url: str) -> tuple[dict[str, Any], pyotp.TOTP]:
    body = signup_body()
    created = httpx.post(f"{url}/api/auth/signup", json=body)
    assert created.status_code == 201, created.text
    body["uuid"] = created.json()["uuid"]
    tokens = httpx.post(
        f"{url}/api/auth/login", json={"username": body["username"], "password": PASSWORD}
    ).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    setup = httpx.post(
        f"{url}/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=headers,
    )
    assert setup.status_code == 200, setup.text
    totp = pyotp.parse_uri(setup.json()["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    # The previous window's code (still accepted) enables it, leaving the current one
    # for the sign-in: a code is good once.
    enabled = httpx.post(
        f"{url}/api/auth/otp/enable",
        json={"method": "authenticator", "code": totp.at(time.time() - totp.interval)},
        headers=headers,
    )
    assert enabled.status_code == 200, enabled.text
    return body, totp


def _browser_sign_in(
    browser: httpx.Client, url: str, user: dict[str, Any], totp: pyotp.TOTP
) -> None:
    """What /oauth2/signin's script does: password, then the code, then hand the
    session to the provider's cookie."""
    first = browser.post(
        f"{url}/api/auth/login", json={"username": user["username"], "password": PASSWORD}
    ).json()
    assert first["otp_required"] is True
    verified = browser.post(
        f"{url}/api/auth/otp/verify", json={"otp_token": first["otp_token"], "code": totp.now()}
    )
    assert verified.status_code == 200, verified.text
    session = browser.post(
        f"{url}/oauth2/session",
        data={"token": verified.json()["access_token"], "next": "/oauth2/authorize?resume=1"},
        headers={"Origin": url},
    )
    assert session.status_code == 303, session.text


def _wait_for_keys(url: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        keys = httpx.get(f"{url}/.well-known/jwks.json").json()["keys"]
        if len(keys) >= count:
            return keys
        time.sleep(0.5)
    raise AssertionError(f"the server did not publish {count} keys")


def test_relying_parties_sign_in_verify_refresh_and_log_out(
    provider: tuple[LiveServer, dict[str, str]],
) -> None:
    server, env = provider
    url = server.url
    added = run_cli(
        env,
        "clients",
        "add",
        "--name",
        "Recipes",
        "--redirect-uri",
        REDIRECT,
        "--post-logout-redirect-uri",
        SIGNED_OUT,
        "--scope",
        "openid",
        "--scope",
        "profile",
        "--scope",
        "email",
    )
    assert added.returncode == 0, added.stderr
    registered = json.loads(added.stdout)
    assert registered["client_secret"].startswith("umcs_")
    listed = run_cli(env, "clients", "list")
    assert registered["client_secret"] not in listed.stdout  # shown once

    metadata = httpx.get(f"{url}/.well-known/openid-configuration").json()
    assert metadata["issuer"] == url
    user, totp = _user_with_authenticator(url)

    rp = OAuth2Client(
        client_id=registered["client_id"],
        client_secret=registered["client_secret"],
        scope="openid profile email",
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
    )
    verifier = "v" * 20 + "erifier-" + "x" * 30
    nonce = "n-0S6_WzA2Mj"
    authorize_url, state = rp.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )

    with httpx.Client(follow_redirects=False) as browser:
        # Not signed in yet: the provider sends the browser to its sign-in page.
        first = browser.get(authorize_url)
        assert first.status_code == 303
        assert first.headers["location"].startswith("/oauth2/signin?next=")
        assert browser.get(url + first.headers["location"]).status_code == 200
        _browser_sign_in(browser, url, user, totp)
        consent = browser.get(authorize_url)
        assert consent.status_code == 200
        assert "Recipes" in consent.text
        params = dict(parse_qs(urlsplit(authorize_url).query))
        form = {key: values[0] for key, values in params.items()}
        allowed = browser.post(
            f"{url}/oauth2/authorize", data={**form, "decision": "allow"}, headers={"Origin": url}
        )
        assert allowed.status_code == 302
        callback = allowed.headers["location"]
        assert callback.startswith(REDIRECT)

        token = rp.fetch_token(
            metadata["token_endpoint"], authorization_response=callback, code_verifier=verifier
        )
        assert parse_qs(urlsplit(callback).query)["state"] == [state]

        # Relying party one: joserfc over the whole key set, every claim checked.
        key_set = KeySet.import_key_set(httpx.get(metadata["jwks_uri"]).json())
        decoded = jose_jwt.decode(token["id_token"], key_set, algorithms=["ES256", "EdDSA"])
        jose_jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": url},
            aud={"essential": True, "value": registered["client_id"]},
            nonce={"essential": True, "value": nonce},
            sub={"essential": True, "value": user["uuid"]},
        ).validate(decoded.claims)
        assert decoded.claims["email"] == user["email"]

        # Relying party two: PyJWT, fetching the key named by the token's kid.
        jwks_client = jwt.PyJWKClient(metadata["jwks_uri"])
        signing_key = jwks_client.get_signing_key_from_jwt(token["id_token"])
        claims = jwt.decode(
            token["id_token"],
            signing_key.key,
            algorithms=["ES256", "EdDSA"],
            audience=registered["client_id"],
            issuer=url,
        )
        assert claims["preferred_username"] == user["username"]

        info = rp.get(metadata["userinfo_endpoint"])
        assert info.status_code == 200
        assert info.json()["email"] == user["email"]

        refreshed = rp.refresh_token(metadata["token_endpoint"])
        assert refreshed["access_token"] != token["access_token"]
        assert rp.get(metadata["userinfo_endpoint"]).status_code == 200

        # Rotation: the command line adds a key; old tokens keep verifying.
        old_kid = jwt.get_unverified_header(token["id_token"])["kid"]
        rotated = run_cli(env, "keys", "rotate", "--activate-in", "0")
        assert rotated.returncode == 0, rotated.stderr
        keys = _wait_for_keys(url, 2)
        assert old_kid in {key["kid"] for key in keys}
        new_tokens = rp.refresh_token(metadata["token_endpoint"])
        assert jwt.get_unverified_header(new_tokens["access_token"])["kid"] != old_kid
        fresh_client = jwt.PyJWKClient(metadata["jwks_uri"])
        old_key = fresh_client.get_signing_key_from_jwt(token["id_token"])
        jwt.decode(
            token["id_token"],
            old_key.key,
            algorithms=["ES256", "EdDSA"],
            audience=registered["client_id"],
            issuer=url,
        )
        listed_keys = run_cli(env, "keys", "list")
        assert "retired" in listed_keys.stdout

        # Logout: back to the registered address with the state; tokens end.
        logout = browser.get(
            metadata["end_session_endpoint"],
            params={
                "id_token_hint": token["id_token"],
                "post_logout_redirect_uri": SIGNED_OUT,
                "state": "s1",
            },
        )
        assert logout.status_code == 302
        assert logout.headers["location"] == f"{SIGNED_OUT}?state=s1"
        assert rp.get(metadata["userinfo_endpoint"]).status_code == 401
        ended = httpx.post(
            metadata["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": new_tokens["refresh_token"]},
            auth=(registered["client_id"], registered["client_secret"]),
        )
        assert ended.status_code == 400
        assert ended.json()["error"] == "invalid_grant"
        # The browser is signed out too: the next authorization asks to sign in.
        again_url, _ = rp.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce="n-2"
        )
        again = browser.get(again_url)
        assert again.status_code == 303
        assert again.headers["location"].startswith("/oauth2/signin?next=")
        # A nonce is good for one sign-in: the first request, replayed, is refused.
        replayed = browser.get(authorize_url)
        assert replayed.status_code == 302
        assert "error=invalid_request" in replayed.headers["location"]
    assert registered["client_secret"] not in server.output
    assert token["refresh_token"] not in server.output


def test_a_browser_signs_in_with_its_code_and_consents(
    provider: tuple[LiveServer, dict[str, str]], browser: Any
) -> None:
    """The real pages in Chromium: the client's redirect, the sign-in page with the
    second factor, the consent page, and back to the client with a code."""
    server, env = provider
    url = server.url
    added = run_cli(env, "clients", "add", "--name", "Recipes", "--redirect-uri", REDIRECT)
    assert added.returncode == 0, added.stderr
    registered = json.loads(added.stdout)
    user, totp = _user_with_authenticator(url)
    rp = OAuth2Client(
        client_id=registered["client_id"],
        client_secret=registered["client_secret"],
        scope="openid profile",
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
    )
    verifier = "browser-" + "v" * 50
    authorize_url, state = rp.create_authorization_url(
        f"{url}/oauth2/authorize", code_verifier=verifier, nonce="n-browser"
    )

    page = browser.new_page()
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.on("pageerror", lambda error: messages.append(str(error)))
    arrived: list[str] = []

    def at_the_client(route: Any) -> None:
        arrived.append(route.request.url)
        route.fulfill(status=200, body="signed in at Recipes", content_type="text/plain")

    page.route(f"{REDIRECT}**", at_the_client)
    page.goto(authorize_url)
    page.wait_for_url("**/oauth2/signin?**")
    assert "Recipes" in page.locator("main").inner_text()
    page.fill("#username", user["username"])
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.locator("#code-step").wait_for(state="visible")
    page.fill("#code", totp.now())
    page.click("#verify")
    page.locator("#consent").wait_for()
    scopes = page.locator("#scopes li").all_inner_texts()
    assert any("username" in text for text in scopes)
    page.click("#allow")
    page.wait_for_url(f"{REDIRECT}**")
    assert len(arrived) == 1
    query = parse_qs(urlsplit(arrived[0]).query)
    assert query["state"] == [state]
    token = rp.fetch_token(
        f"{url}/oauth2/token", authorization_response=arrived[0], code_verifier=verifier
    )
    claims = jwt.decode(token["id_token"], options={"verify_signature": False})
    assert claims["sub"] == user["uuid"]
    assert claims["preferred_username"] == user["username"]
    assert [m for m in messages if "Content Security Policy" in m] == []
