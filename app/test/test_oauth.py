"""Third-party login through a real local provider: create, link, refuse, unlink, redirects."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from sqlalchemy import event, func, select, update
from starlette.responses import Response

from app.core import oauth_client
from app.core.auth_cache import ALL, bulk_write
from app.core.oauth_client import UnsafeUrl, check_picture_url, fetch_picture, fetch_pinned
from app.models import ExternalAccount, OAuthToken, Session, UsedToken, User, now_epoch
from app.services import external_accounts
from app.services.maintenance import purge_expired
from app.test.conftest import empty_redis
from app.test.factories import (
    PASSWORD,
    bearer,
    create_user,
    login,
    reauthenticate,
    user_with_tokens,
)
from app.test.mail import MailCatcher, link_in, text_body, token_in
from app.test.oauth_provider import FakeProvider, ProviderServer, ProviderUser

PROVIDERS = ["github", "discord", "twitch", "google"]
FRONTEND = "https://app.example.com"
_ids = itertools.count(1000)


@pytest.fixture
def fake_provider() -> Iterator[FakeProvider]:
    server = ProviderServer()
    provider = server.start()
    try:
        yield provider
    finally:
        server.stop()


@pytest.fixture
def settings_overrides(fake_provider: FakeProvider) -> dict[str, object]:
    return _enabled(fake_provider, PROVIDERS, FRONTEND_URL=FRONTEND)


def _enabled(
    fake_provider: FakeProvider, providers: list[str], **extra: object
) -> dict[str, object]:
    """Settings with ``providers`` enabled, all served by the fake provider."""
    clients = {}
    for name in providers:
        clients[f"API_CLIENT_ID_{name.upper()}"] = f"{name}-client"
        clients[f"API_CLIENT_SECRET_{name.upper()}"] = f"{name}-secret"
    return {
        **clients,
        "OAUTH_PROVIDER_URLS": fake_provider.overrides(),
        "BASE_URL": "http://testserver",
        **extra,
    }


def _person(**overrides: Any) -> ProviderUser:
    number = next(_ids)
    values: dict[str, Any] = {
        "id": str(number),
        "username": f"Octo-Cat.{number}",
        "email": f"octo{number}@example.org",
        "name": f"Octo Cat {number}",
    }
    values.update(overrides)
    return ProviderUser(**values)


async def _flow(
    client: httpx.AsyncClient,
    provider: str,
    *,
    link: bool = False,
    headers: dict | None = None,
    params: dict | None = None,
) -> httpx.Response:
    """Start at our API, consent at the provider (real HTTP), come back to the callback."""
    path = await _callback_path(client, provider, link=link, headers=headers, params=params)
    return await client.get(path)


async def _callback_path(
    client: httpx.AsyncClient,
    provider: str,
    *,
    link: bool = False,
    headers: dict | None = None,
    params: dict | None = None,
) -> str:
    """Start a sign-in and consent at the provider: the callback path, not yet followed."""
    start = await client.get(
        f"/api/oauth/{provider}{'/link' if link else ''}", params=params, headers=headers
    )
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(start.headers["location"])
    assert consent.status_code in (302, 307), consent.text
    callback = consent.headers["location"]
    assert callback.startswith(f"http://testserver/api/oauth/{provider}/callback?")
    return callback.removeprefix("http://testserver")


async def _me(client: httpx.AsyncClient, tokens: dict) -> dict:
    return (await client.get("/api/users/me", headers=bearer(tokens))).json()


class TestWithoutEmail:
    """Reddit and X give no email: they create accounts (or log into linked ones)."""

    @pytest.fixture
    def settings_overrides(self, fake_provider: FakeProvider) -> dict[str, object]:
        return {
            "API_CLIENT_ID_REDDIT": "r-id",
            "API_CLIENT_SECRET_REDDIT": "r-secret",
            "API_CLIENT_ID_TWITTER": "x-id",
            "API_CLIENT_SECRET_TWITTER": "x-secret",
            "OAUTH_PROVIDER_URLS": fake_provider.overrides(),
            "BASE_URL": "http://testserver",
        }

    @pytest.mark.parametrize("provider", ["reddit", "twitter"])
    async def test_login_creates_then_finds_the_account(
        self, client: httpx.AsyncClient, fake_provider: FakeProvider, provider: str
    ) -> None:
        person = _person()
        fake_provider.next_user = person
        first = await _flow(client, provider)
        assert first.status_code == 200, first.text
        me = await _me(client, first.json())
        assert me["email_verified"] is False
        assert me["email"] == f"{provider}_{person.id}@users.noreply.invalid"
        fake_provider.next_user = person
        again = await _flow(client, provider)
        assert (await _me(client, again.json()))["uuid"] == me["uuid"]


async def test_enabled_providers_are_listed(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/oauth/providers")
    assert response.json() == {"providers": PROVIDERS}
    unknown = await client.get("/api/oauth/myspace")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "PROVIDER_NOT_ENABLED"
    not_configured = await client.get("/api/oauth/reddit")
    assert not_configured.status_code == 404


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_new_account_is_created(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider, provider: str
) -> None:
    person = _person()
    fake_provider.next_user = person
    response = await _flow(client, provider)
    assert response.status_code == 200, response.text
    me = await _me(client, response.json())
    assert me["email"] == person.email
    assert me["email_verified"] is True
    assert me["is_external_only"] is True
    # A username made of the provider's (Google has none: the email's local part).
    expected = f"octo{person.id}" if provider == "google" else f"octo_cat_{person.id}"
    assert me["username"] == expected
    async with app.state.session_factory() as session:
        account = await session.scalar(
            select(ExternalAccount).where(ExternalAccount.user_uuid == me["uuid"])
        )
        token = await session.scalar(select(OAuthToken).where(OAuthToken.user_uuid == me["uuid"]))
    assert (account.provider, account.external_id) == (provider, person.id)
    assert token.access_token
    assert token.refresh_token
    # Logging in again finds the same account by (provider, id).
    fake_provider.next_user = person
    again = await _flow(client, provider)
    assert (await _me(client, again.json()))["uuid"] == me["uuid"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_verified_email_links_the_local_account(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider, provider: str
) -> None:
    local = await create_user(app.state.session_factory, password=PASSWORD, email_verified=True)
    fake_provider.next_user = _person(email=local.email.upper())
    response = await _flow(client, provider)
    assert response.status_code == 200, response.text
    me = await _me(client, response.json())
    assert me["uuid"] == local.uuid
    assert me["is_external_only"] is False
    await login(client, local.username)  # the password still works


@pytest.mark.parametrize("provider", ["github", "discord", "google"])
async def test_an_unverified_provider_email_is_refused(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider, provider: str
) -> None:
    local = await create_user(app.state.session_factory, password=PASSWORD, email_verified=True)
    fake_provider.next_user = _person(email=local.email, email_verified=False)
    response = await _flow(client, provider)
    assert response.status_code == 409
    assert response.json()["code"] == "EMAIL_NOT_VERIFIED"
    async with app.state.session_factory() as session:
        linked = (await session.scalars(select(ExternalAccount))).all()
    assert linked == []


async def test_twitch_never_shows_an_unverified_email(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    local = await create_user(app.state.session_factory, password=PASSWORD, email_verified=True)
    fake_provider.next_user = _person(email=local.email, email_verified=False)
    response = await _flow(client, "twitch")
    assert response.status_code == 200
    me = await _me(client, response.json())
    assert me["uuid"] != local.uuid  # not linked: a separate, external-only account
    assert me["email_verified"] is False


class TestEmailOn:
    """With email on, an unverified local email blocks linking by email."""

    @pytest.fixture
    def settings_overrides(self, fake_provider, smtp_server) -> dict[str, object]:
        clients = {"API_CLIENT_ID_GITHUB": "id", "API_CLIENT_SECRET_GITHUB": "secret"}
        return {
            **clients,
            **smtp_server.settings(),
            "OAUTH_PROVIDER_URLS": fake_provider.overrides(),
            "BASE_URL": "http://testserver",
        }

    async def test_unverified_local_email_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
    ) -> None:
        local = await create_user(app.state.session_factory, password=PASSWORD)
        fake_provider.next_user = _person(email=local.email)
        response = await _flow(client, "github")
        assert response.status_code == 409
        assert response.json()["code"] == "EMAIL_NOT_VERIFIED"

    async def test_a_link_is_told_and_a_reset_can_undo_it(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        fake_provider: FakeProvider,
        smtp_server: MailCatcher,
    ) -> None:
        """A provider linked behind the owner's back does not survive their reset."""
        user, tokens = await user_with_tokens(app, client, email_verified=True)
        await reauthenticate(client, tokens)
        intruder = _person(email="intruder@example.org")
        fake_provider.next_user = intruder
        linked = await _flow(client, "github", link=True, headers=bearer(tokens))
        assert linked.status_code == 200, linked.text
        notice = await smtp_server.wait_for(user.email)
        assert "GitHub account was linked" in notice["Subject"]

        await client.post("/api/auth/password/forgot", json={"email": user.email})
        reset_mail = await smtp_server.wait_for(user.email, 2)
        assert "GitHub" in text_body(reset_mail)
        token = token_in(link_in(reset_mail))
        info = await client.post("/api/auth/password/reset/info", json={"token": token})
        assert info.json() == {"linked_providers": ["github"]}
        reset = await client.post(
            "/api/auth/password/reset",
            json={
                "token": token,
                "new_password": "a brand new passphrase",
                "unlink_providers": ["github"],
            },
        )
        assert reset.status_code == 204
        # Every session ended, and the intruder's GitHub login no longer opens the account.
        assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
        fake_provider.next_user = intruder
        elsewhere = await _flow(client, "github")
        assert (await _me(client, elsewhere.json()))["uuid"] != user.uuid
        assert "Your password was reset" in (await smtp_server.wait_for(user.email, 3))["Subject"]


async def test_linking_needs_a_recent_reauthentication(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    """A stolen access token alone cannot plant a provider login on the account."""
    user, tokens = await user_with_tokens(app, client)
    refused = await client.get("/api/oauth/github/link", headers=bearer(tokens))
    assert refused.status_code == 403
    assert refused.json()["code"] == "REAUTHENTICATION_REQUIRED"
    wrong = await client.post(
        "/api/auth/reauthenticate", json={"password": "guessing"}, headers=bearer(tokens)
    )
    assert (wrong.status_code, wrong.json()["code"]) == (400, "WRONG_PASSWORD")
    assert (await client.get("/api/oauth/github/link", headers=bearer(tokens))).status_code == 403
    await reauthenticate(client, tokens)
    fake_provider.next_user = _person()
    assert (await _flow(client, "github", link=True, headers=bearer(tokens))).status_code == 200
    # The proof lasts REAUTH_WINDOW_SECONDS, and only for the session that gave it.
    other = await login(client, user.username)
    assert (await client.get("/api/oauth/discord/link", headers=bearer(other))).status_code == 403
    async with app.state.session_factory() as session:
        await bulk_write(
            session,
            update(Session)
            .where(Session.user_uuid == user.uuid)
            .values(reauthenticated_at=now_epoch() - 301),
            users=[user.uuid],
        )
        await session.commit()
    stale = await client.get("/api/oauth/discord/link", headers=bearer(tokens))
    assert stale.status_code == 403


async def test_a_link_started_before_every_session_ended_does_not_complete(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    """A thief starts a link while the session is fresh; the owner changes the password
    (every session ends) before the thief comes back from the provider."""
    user, tokens = await user_with_tokens(app, client)
    await reauthenticate(client, tokens)
    fake_provider.next_user = _person()
    start = await client.get("/api/oauth/github/link", headers=bearer(tokens))
    assert start.status_code == 302
    changed = await client.post(
        "/api/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "the owner's new password"},
        headers=bearer(tokens),
    )
    assert changed.status_code == 204
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(start.headers["location"])
    callback = await client.get(consent.headers["location"].removeprefix("http://testserver"))
    assert (callback.status_code, callback.json()["code"]) == (403, "REAUTHENTICATION_REQUIRED")
    async with app.state.session_factory() as session:
        linked = (
            await session.scalars(
                select(ExternalAccount).where(ExternalAccount.user_uuid == user.uuid)
            )
        ).all()
    assert linked == []


async def test_a_provider_login_is_a_fresh_proof_for_an_account_without_password(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.next_user = _person()
    tokens = (await _flow(client, "google")).json()
    me = await _me(client, tokens)
    moved = await client.patch(
        "/api/users/me",
        json={"email": f"moved{me['username']}@example.org"},
        headers=bearer(tokens),
    )
    assert moved.status_code == 200, moved.text
    first_password = await client.post(
        "/api/auth/password/change",
        json={"new_password": "my very first password"},
        headers=bearer(tokens),
    )
    assert first_password.status_code == 204
    # A provider login without password: the proof is the login, for a few minutes.
    fake_provider.next_user = _person()
    later = (await _flow(client, "google")).json()
    async with app.state.session_factory() as session:
        await bulk_write(
            session, update(Session).values(reauthenticated_at=now_epoch() - 301), users=[ALL]
        )
        await session.commit()
    stale = await client.post(
        "/api/auth/password/change",
        json={"new_password": "my very first password"},
        headers=bearer(later),
    )
    assert (stale.status_code, stale.json()["code"]) == (403, "REAUTHENTICATION_REQUIRED")
    no_way = await client.post("/api/auth/reauthenticate", json={}, headers=bearer(later))
    assert (no_way.status_code, no_way.json()["code"]) == (400, "SIGN_IN_AGAIN")


async def test_with_email_off_an_unverified_local_account_loses_its_password(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    local, local_tokens = await user_with_tokens(app, client)
    fake_provider.next_user = _person(email=local.email)
    response = await _flow(client, "github")
    assert response.status_code == 200
    assert (await _me(client, response.json()))["uuid"] == local.uuid
    # Whoever set that password is out: sessions ended, password gone.
    assert (await client.get("/api/users/me", headers=bearer(local_tokens))).status_code == 401
    refused = await client.post(
        "/api/auth/login", data={"username": local.username, "password": PASSWORD}
    )
    assert refused.status_code == 401


async def test_explicit_link_and_unlink(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    user, tokens = await user_with_tokens(app, client)
    await reauthenticate(client, tokens)
    person = _person(email="someone.else@example.org")
    fake_provider.next_user = person
    linked = await _flow(client, "discord", link=True, headers=bearer(tokens))
    assert linked.status_code == 200, linked.text
    assert linked.json() == {"detail": "discord account linked"}

    fake_provider.next_user = person
    login_with_it = await _flow(client, "discord")
    assert (await _me(client, login_with_it.json()))["uuid"] == user.uuid

    fake_provider.next_user = person
    twice = await _flow(client, "discord", link=True, headers=bearer(tokens))
    assert twice.status_code == 409
    assert twice.json()["code"] == "OAUTH_ACCOUNT_ALREADY_LINKED"

    _, other_tokens = await user_with_tokens(app, client)
    await reauthenticate(client, other_tokens)
    fake_provider.next_user = person
    stolen = await _flow(client, "discord", link=True, headers=bearer(other_tokens))
    assert stolen.status_code == 409
    assert stolen.json()["code"] == "OAUTH_ACCOUNT_LINKED_TO_ANOTHER_USER"

    unlinked = await client.delete("/api/oauth/discord", headers=bearer(tokens))
    assert unlinked.status_code == 204
    missing = await client.delete("/api/oauth/discord", headers=bearer(tokens))
    assert missing.status_code == 404


async def test_the_only_way_in_cannot_be_unlinked(
    client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.next_user = _person()
    tokens = (await _flow(client, "google")).json()
    response = await client.delete("/api/oauth/google", headers=bearer(tokens))
    assert response.status_code == 409
    assert response.json()["code"] == "LAST_LOGIN_METHOD"


async def test_missing_forged_and_replayed_state(
    client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    no_flow = await client.get("/api/oauth/github/callback?code=x&state=y")
    assert no_flow.status_code == 400
    assert no_flow.json()["code"] == "INVALID_STATE"

    fake_provider.next_user = _person()
    start = await client.get("/api/oauth/github")
    async with httpx.AsyncClient() as browser:
        callback = (await browser.get(start.headers["location"])).headers["location"]
    path = callback.removeprefix("http://testserver")
    forged = path.replace("state=", "state=forged")
    assert (await client.get(forged)).json()["code"] == "INVALID_STATE"

    fake_provider.next_user = _person()
    start = await client.get("/api/oauth/github")
    async with httpx.AsyncClient() as browser:
        callback = (await browser.get(start.headers["location"])).headers["location"]
    path = callback.removeprefix("http://testserver")
    assert (await client.get(path)).status_code == 200
    replayed = await client.get(path)
    assert replayed.status_code == 400
    assert replayed.json()["code"] == "INVALID_STATE"


async def test_a_refusal_at_the_provider(client: httpx.AsyncClient, fake_provider) -> None:
    fake_provider.next_user = None  # the user says no
    response = await _flow(client, "github")
    assert response.status_code == 400
    assert response.json()["code"] == "OAUTH_FAILED"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.test",
        "//evil.test",
        "/\\evil.test",
        "https://app.example.com.evil.test",
        "https://app.example.com@evil.test",
        "javascript:alert(1)",
        "http://app.example.com/callback",  # wrong scheme for the origin
        "https://app.example.com:8443/callback",
    ],
)
async def test_foreign_redirect_uris_are_refused(
    client: httpx.AsyncClient, redirect_uri: str
) -> None:
    response = await client.get("/api/oauth/github", params={"redirect_uri": redirect_uri})
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_REDIRECT_URI"


async def test_a_redirect_carries_a_one_time_code_not_tokens(
    client: httpx.AsyncClient, fake_provider: FakeProvider, captured_logs: list[str]
) -> None:
    fake_provider.next_user = _person()
    response = await _flow(
        client, "twitch", params={"redirect_uri": f"{FRONTEND}/signed-in?from=twitch"}
    )
    assert response.status_code == 303
    target = urlsplit(response.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{FRONTEND}/signed-in"
    query = parse_qs(target.query)
    assert set(query) == {"from", "code"}
    exchanged = await client.post("/api/auth/token/exchange", json={"code": query["code"][0]})
    assert exchanged.status_code == 200
    tokens = exchanged.json()
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 200
    reused = await client.post("/api/auth/token/exchange", json={"code": query["code"][0]})
    assert reused.status_code == 400
    assert reused.json()["code"] == "INVALID_CODE"
    logs = "".join(captured_logs)
    assert tokens["access_token"] not in logs
    assert tokens["refresh_token"] not in logs
    assert query["code"][0] not in logs


async def test_a_2fa_account_still_needs_its_code(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    local = await create_user(
        app.state.session_factory,
        password=PASSWORD,
        email_verified=True,
        otp_method="authenticator",
        otp_secret="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    )
    fake_provider.next_user = _person(email=local.email)
    response = await _flow(client, "github")
    assert response.status_code == 200
    assert response.json()["otp_required"] is True


async def test_a_picture_on_a_loopback_address_is_never_fetched(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.next_user = _person(picture_url=f"{fake_provider.url}/picture.png")
    tokens = (await _flow(client, "github")).json()
    me = await _me(client, tokens)
    assert "picture" not in fake_provider.requests
    async with app.state.session_factory() as session:
        assert (await session.get(User, me["uuid"])).profile_picture_id is None


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.png",
        "https://127.0.0.1/a.png",
        "https://localhost/a.png",
        "https://10.0.0.5/a.png",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/a.png",
        "https://user:pass@example.com/a.png",
        "file:///etc/passwd",
    ],
)
def test_unsafe_picture_urls(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        check_picture_url(url)


# Misbehaving providers -------------------------------------------------------------------

ALL_PROVIDERS = ["github", "discord", "twitch", "google", "reddit", "twitter"]
#: OAUTH_PROVIDER_DEADLINE_SECONDS for the tests of slow providers: short enough to
#: wait for, long enough that a well-behaved exchange on a loaded machine (parallel
#: test workers on two cores) never hits it.
DEADLINE_SECONDS = 5
LONG = "x" * 5000
MISSING = object()

# Where each part of a profile sits in each provider's answers: (answer, path in its JSON).
PROFILE_FIELDS: dict[str, dict[str, tuple[str, tuple[Any, ...]]]] = {
    "github": {
        "id": ("user", ("id",)),
        "username": ("user", ("login",)),
        "name": ("user", ("name",)),
        "email": ("user/emails", (1, "email")),
        "verified": ("user/emails", (1, "verified")),
        "picture": ("user", ("avatar_url",)),
    },
    "discord": {
        "id": ("users/@me", ("id",)),
        "username": ("users/@me", ("username",)),
        "name": ("users/@me", ("global_name",)),
        "email": ("users/@me", ("email",)),
        "verified": ("users/@me", ("verified",)),
        "picture": ("users/@me", ("avatar",)),
    },
    "twitch": {
        "id": ("users", ("data", 0, "id")),
        "username": ("users", ("data", 0, "login")),
        "name": ("users", ("data", 0, "display_name")),
        "email": ("users", ("data", 0, "email")),
        "picture": ("users", ("data", 0, "profile_image_url")),
    },
    "google": {
        "id": ("userinfo", ("sub",)),
        "name": ("userinfo", ("name",)),
        "email": ("userinfo", ("email",)),
        "verified": ("userinfo", ("email_verified",)),
        "picture": ("userinfo", ("picture",)),
    },
    "reddit": {
        "id": ("api/v1/me", ("id",)),
        "username": ("api/v1/me", ("name",)),
        "picture": ("api/v1/me", ("icon_img",)),
    },
    "twitter": {
        "id": ("users/me", ("data", "id")),
        "username": ("users/me", ("data", "username")),
        "name": ("users/me", ("data", "name")),
        "picture": ("users/me", ("data", "profile_image_url")),
    },
}
# The external_account column that shows a profile field.
COLUMNS = {"username": "username", "name": "display_name", "picture": "picture_url"}
REFUSED = "502 OAUTH_PROVIDER_ERROR, nothing stored"
DROPPED, CUT, CLEANED = "dropped", "cut", "cleaned"

# (what, profile field, value sent, outcome). An id, an email or its verified flag that is
# not exactly right refuses the sign-in; a shown field (username, name, picture) that is
# unusable is dropped, or cut when too long, and the sign-in works.
BAD_FIELDS: list[tuple[str, str, Any, str]] = [
    ("id missing", "id", MISSING, REFUSED),
    ("id null", "id", None, REFUSED),
    ("id a list", "id", [1], REFUSED),
    ("id a dict", "id", {"id": 1}, REFUSED),
    ("id a boolean", "id", True, REFUSED),
    ("id a float", "id", 1.5, REFUSED),
    ("id of 5000 characters", "id", LONG, REFUSED),
    ("id with a NUL", "id", "12\x0034", REFUSED),
    ("username a number", "username", 12345, DROPPED),
    ("username of 5000 characters", "username", LONG, CUT),
    ("username a list", "username", ["octo"], DROPPED),
    ("name of 5000 characters", "name", "N" * 5000, CUT),
    ("name a dict", "name", {"first": "Octo"}, DROPPED),
    ("name with a NUL and a lone surrogate", "name", "Bad\x00Name\ud800", CLEANED),
    ("email not an email", "email", "not an email", REFUSED),
    ("email a dict", "email", {"address": "octo@example.org"}, REFUSED),
    ("email of 5000 characters", "email", LONG + "@example.org", REFUSED),
    ("email with a NUL", "email", "octo\x00@example.org", REFUSED),
    ("verified a string", "verified", "yes", REFUSED),
    ("verified a number", "verified", 1, REFUSED),
    ("picture a dict", "picture", {"url": "https://cdn.example.com/a.png"}, DROPPED),
    ("picture not a URL", "picture", "javascript:alert(1)", DROPPED),
    ("picture of 5000 characters", "picture", "https://cdn.example.com/" + LONG, DROPPED),
]
# Whole answers replaced (each answer of the provider, and its token answer).
BAD_ANSWERS: list[tuple[str, Callable[[Any], Any]]] = [
    ("a list", lambda body: [body]),
    ("null", lambda _body: None),
    ("a string", lambda _body: "surprise"),
    ("not JSON", lambda _body: Response("<html>Oops</html>", media_type="text/html")),
    ("a server error", lambda _body: Response("{}", 500, media_type="application/json")),
]
# The token answer with one member changed.
BAD_TOKENS: list[tuple[str, dict[str, Any]]] = [
    ("access_token missing", {"access_token": MISSING}),
    ("access_token a dict", {"access_token": {"value": "t"}}),
    ("access_token with a line break", {"access_token": "abc\r\nX-Injected: 1"}),
    ("access_token of 100000 characters", {"access_token": "t" * 100_000}),
    ("token_type unknown", {"token_type": "mac"}),
    ("token_type of 5000 characters", {"token_type": LONG}),
    ("refresh_token a list", {"refresh_token": ["r"]}),
    ("expires_in a word", {"expires_in": "soon"}),
    ("expires_in a dict", {"expires_in": {"seconds": 1}}),
    ("expires_in beyond any date", {"expires_in": 10**30}),
]


def _changed(path: tuple[Any, ...], value: Any) -> Callable[[Any], Any]:
    def tamper(body: Any) -> Any:
        body = copy.deepcopy(body)
        *parents, last = path
        target = body
        for key in parents:
            target = target[key]
        if value is MISSING:
            del target[last]
        else:
            target[last] = value
        return body

    return tamper


def _with_members(changes: dict[str, Any]) -> Callable[[Any], Any]:
    return _changed_all([((key,), value) for key, value in changes.items()])


def _changed_all(changes: list[tuple[tuple[Any, ...], Any]]) -> Callable[[Any], Any]:
    def tamper(body: Any) -> Any:
        for path, value in changes:
            body = _changed(path, value)(body)
        return body

    return tamper


def _malformed_cases(provider: str) -> list[tuple[str, dict[str, Callable], str | Callable]]:
    """(what, provider.tamper, expected outcome) for every case that applies to ``provider``."""
    fields = PROFILE_FIELDS[provider]
    cases: list[tuple[str, dict[str, Callable], Any]] = []
    for what, field, value, outcome in BAD_FIELDS:
        if field in fields:
            answer, path = fields[field]
            expected = outcome if outcome == REFUSED else (field, outcome)
            cases.append((what, {f"{provider} {answer}": _changed(path, value)}, expected))
    for answer in sorted({answer for answer, _ in fields.values()} | {"token"}):
        for what, tamper in BAD_ANSWERS:
            cases.append((f"{answer} answer {what}", {f"{provider} {answer}": tamper}, REFUSED))
    for what, changes in BAD_TOKENS:
        cases.append((what, {f"{provider} token": _with_members(changes)}, REFUSED))
    if provider == "twitch":
        cases.append(("no user in data", {"twitch users": lambda _body: {"data": []}}, REFUSED))
    if provider == "github":
        tamper = _changed((1,), "octo@example.org")
        cases.append(("an email entry not an object", {"github user/emails": tamper}, REFUSED))
    return cases


async def _stored(app: FastAPI) -> tuple[int, int, int]:
    """How many users, external accounts and provider tokens exist."""
    async with app.state.session_factory() as session:
        return (
            await session.scalar(select(func.count()).select_from(User)),
            await session.scalar(select(func.count()).select_from(ExternalAccount)),
            await session.scalar(select(func.count()).select_from(OAuthToken)),
        )


def _expected(provider: str, person: ProviderUser, expected: Any) -> str:
    if expected == REFUSED:
        return REFUSED
    field, outcome = expected
    column = COLUMNS[field]
    if outcome == CUT:
        return f"200, {column} of 255 characters"
    if outcome == CLEANED:
        return f"200, {column}='BadName'"
    # Dropped: GitHub and Discord show the username when the name is unusable, Reddit
    # has one name for both.
    fallback = None
    if field == "name" and provider in ("github", "discord"):
        fallback = person.username
    return f"200, {column}={fallback!r}"


async def _observed(
    app: FastAPI, response: httpx.Response, before: tuple, provider: str, person, expected: Any
) -> str:
    after = await _stored(app)
    if response.status_code != 200:
        code = response.json().get("code")
        left = "nothing stored" if after == before else f"rows left behind {before} -> {after}"
        return f"{response.status_code} {code}, {left}"
    async with app.state.session_factory() as session:
        account = await session.scalar(
            select(ExternalAccount).where(
                ExternalAccount.provider == provider, ExternalAccount.external_id == person.id
            )
        )
    if account is None or expected == REFUSED:
        return f"200, account {'missing' if account is None else 'created'}"
    value = getattr(account, COLUMNS[expected[0]])
    if isinstance(value, str) and len(value) > 100:
        return f"200, {COLUMNS[expected[0]]} of {len(value)} characters"
    return f"200, {COLUMNS[expected[0]]}={value!r}"


class TestMisbehavingProviders:
    """A provider's answer is read into a typed profile: an unusable one is a 502 that
    leaves nothing behind (the review found 500s and accounts that could never log in),
    a slow or huge one is cut off."""

    @pytest.fixture
    def settings_overrides(self, fake_provider: FakeProvider) -> dict[str, object]:
        return _enabled(
            fake_provider, ALL_PROVIDERS, OAUTH_PROVIDER_DEADLINE_SECONDS=DEADLINE_SECONDS
        )

    @pytest.mark.parametrize("provider", ALL_PROVIDERS)
    async def test_malformed_answers(
        self, app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider, provider: str
    ) -> None:
        observed, expected = {}, {}
        for what, tamper, outcome in _malformed_cases(provider):
            person = _person()
            fake_provider.next_user = person
            fake_provider.tamper = tamper
            before = await _stored(app)
            response = await _flow(client, provider)
            observed[what] = await _observed(app, response, before, provider, person, outcome)
            expected[what] = _expected(provider, person, outcome)
        assert observed == expected
        # And the provider, behaving again, still signs people in.
        fake_provider.tamper = {}
        fake_provider.next_user = _person()
        assert (await _flow(client, provider)).status_code == 200

    async def test_a_trickling_provider_is_cut_off_at_the_deadline(
        self, client: httpx.AsyncClient, fake_provider: FakeProvider
    ) -> None:
        """One byte every 0.25 s: each read is quick, the whole would take half a minute."""
        fake_provider.tamper = {
            "github user": lambda body: fake_provider.trickling(
                json.dumps(body).encode() + b" " * 40, interval_seconds=0.25
            )
        }
        fake_provider.next_user = _person()
        path = await _callback_path(client, "github")
        started = time.monotonic()
        response = await client.get(path)
        elapsed = time.monotonic() - started
        assert (response.status_code, response.json().get("code")) == (502, "OAUTH_PROVIDER_ERROR")
        assert elapsed < DEADLINE_SECONDS + 5

    @pytest.mark.parametrize("declare_length", [False, True], ids=["chunked", "content-length"])
    async def test_a_huge_answer_is_not_read_whole(
        self, client: httpx.AsyncClient, fake_provider: FakeProvider, declare_length: bool
    ) -> None:
        size = 64 * 1024 * 1024
        fake_provider.tamper = {
            "github user": lambda _body: fake_provider.endless(size, declare_length=declare_length)
        }
        fake_provider.next_user = _person()
        response = await _flow(client, "github")
        assert (response.status_code, response.json().get("code")) == (502, "OAUTH_PROVIDER_ERROR")
        # The app stopped reading long before the end (what was sent is socket buffers).
        assert fake_provider.streamed_bytes < size // 4

    async def test_a_huge_token_answer_is_not_read_whole(
        self, client: httpx.AsyncClient, fake_provider: FakeProvider
    ) -> None:
        size = 64 * 1024 * 1024
        fake_provider.tamper = {"github token": lambda _body: fake_provider.endless(size)}
        fake_provider.next_user = _person()
        response = await _flow(client, "github")
        assert (response.status_code, response.json().get("code")) == (502, "OAUTH_PROVIDER_ERROR")
        assert fake_provider.streamed_bytes < size // 4


async def test_a_failure_after_the_user_insert_leaves_nothing(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    """The user, its link and the provider's token are one transaction: a failure while
    storing the link (here, injected) leaves no account that could never log in."""

    def fail(*_args: object) -> None:
        raise RuntimeError("the link could not be stored")

    event.listen(ExternalAccount, "before_insert", fail)
    try:
        fake_provider.next_user = _person()
        response = await _flow(client, "github")
    finally:
        event.remove(ExternalAccount, "before_insert", fail)
    assert response.status_code == 500
    assert await _stored(app) == (0, 0, 0)


@pytest.mark.parametrize("local_account", [False, True], ids=["new account", "linked by email"])
async def test_two_first_sign_ins_of_one_person_at_once(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider, local_account: bool
) -> None:
    """Two browsers come back for the same person at the same moment: one account, one
    link, one token; the other browser gets a 409 or the same account, never a 500."""
    person = _person()
    if local_account:
        local = await create_user(app.state.session_factory, email_verified=True)
        person = _person(email=local.email)
    fake_provider.next_user = person
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        paths = [await _callback_path(client, "discord"), await _callback_path(other, "discord")]
        responses = await asyncio.gather(client.get(paths[0]), other.get(paths[1]))
    statuses = {response.status_code for response in responses}
    assert statuses <= {200, 409}, [response.text for response in responses]
    assert 200 in statuses
    assert await _stored(app) == (1, 1, 1)


# Single-use states -----------------------------------------------------------------------


class TestSingleUseStates:
    """A callback replayed with the cookie from before it (against a provider that takes
    a code twice) is refused: the state is used up on the server."""

    @pytest.fixture(params=["without Redis", "with Redis"])
    def settings_overrides(
        self, request: pytest.FixtureRequest, fake_provider: FakeProvider
    ) -> dict[str, object]:
        extra = {"REDIS_URL": empty_redis()} if request.param == "with Redis" else {}
        return _enabled(fake_provider, ALL_PROVIDERS, **extra)

    async def test_a_replayed_callback_is_refused(
        self, client: httpx.AsyncClient, fake_provider: FakeProvider
    ) -> None:
        fake_provider.codes_reusable = True
        fake_provider.next_user = _person()
        path = await _callback_path(client, "github")
        before_callback = dict(client.cookies)
        first = await client.get(path)
        assert first.status_code == 200, first.text
        client.cookies.clear()
        client.cookies.update(before_callback)
        replayed = await client.get(path)
        assert (replayed.status_code, replayed.json().get("code")) == (400, "INVALID_STATE")
        # Refused before the code reached the provider again.
        assert fake_provider.requests.count("github token authorization_code") == 1

    async def test_parallel_replays_log_in_once(
        self, app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
    ) -> None:
        fake_provider.codes_reusable = True
        fake_provider.next_user = _person()
        path = await _callback_path(client, "github")
        requests = [client.build_request("GET", path) for _ in range(4)]
        responses = await asyncio.gather(*(client.send(request) for request in requests))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200, 400, 400, 400], [response.text for response in responses]
        assert {r.json()["code"] for r in responses if r.status_code == 400} == {"INVALID_STATE"}
        assert await _stored(app) == (1, 1, 1)


async def test_a_sign_in_older_than_its_state_is_refused(
    client: httpx.AsyncClient, fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cookie is signed again on every OAuth request, so it alone does not bound
    the age of the sign-in it carries: the state does."""
    fake_provider.next_user = _person()
    path = await _callback_path(client, "github")
    later = now_epoch() + external_accounts.STATE_MAX_AGE_SECONDS + 1
    monkeypatch.setattr(external_accounts, "now_epoch", lambda: later)
    response = await client.get(path)
    assert (response.status_code, response.json().get("code")) == (400, "INVALID_STATE")


async def test_used_states_are_purged_once_expired(
    app: FastAPI, client: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.next_user = _person()
    assert (await _flow(client, "github")).status_code == 200
    used = select(UsedToken).where(UsedToken.purpose == external_accounts.STATE_PURPOSE)
    async with app.state.session_factory() as session:
        assert len((await session.scalars(used)).all()) == 1
    await purge_expired(app.state.session_factory)
    async with app.state.session_factory() as session:
        assert len((await session.scalars(used)).all()) == 1  # not expired yet
        await session.execute(
            update(UsedToken)
            .where(UsedToken.purpose == external_accounts.STATE_PURPOSE)
            .values(expires_at=now_epoch())
        )
        await session.commit()
    await purge_expired(app.state.session_factory)
    async with app.state.session_factory() as session:
        assert (await session.scalars(used)).all() == []


# Pictures: the address checked is the address connected to ------------------------------


class _Listener:
    """A TCP server on loopback that records who connected (and answers nothing)."""

    def __init__(self) -> None:
        self.connections = 0

    async def __aenter__(self) -> _Listener:
        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_a_picture_name_that_rebinds_to_loopback_is_not_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS answers a public address when the URL is checked and 127.0.0.1 afterwards:
    the download goes to the address that was checked, never to the local server."""
    real_getaddrinfo = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != "pictures.example":
            return real_getaddrinfo(host, port, *args, **kwargs)
        answers.append("93.184.215.14" if not answers else "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[-1], int(port or 443)))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(oauth_client, "PICTURE_FETCH_TIMEOUT_SECONDS", 2)
    async with _Listener() as local:
        assert await fetch_picture(f"https://pictures.example:{local.port}/a.png") is None
        await asyncio.sleep(0.1)
    assert local.connections == 0
    assert answers[0] == "93.184.215.14"


def _certificate(name: str, folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (PEM files: certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_a_pinned_download_keeps_the_name_for_tls_and_host(tmp_path: Path) -> None:
    """Connected to an address, the download still sends the name as SNI and Host, and
    checks the certificate against the name."""
    cert_path, key_path = _certificate("pictures.example", tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    seen: dict[str, Any] = {}

    def sni(_connection: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        seen["sni"] = name

    server_tls.sni_callback = sni

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen["host"] = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"host:")
        )
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nimage")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    trusted = ssl.create_default_context(cafile=str(cert_path))
    try:
        url = f"https://pictures.example:{port}/a.png"
        assert await fetch_pinned(url, "127.0.0.1", verify=trusted) == b"image"
        assert seen == {"sni": "pictures.example", "host": f"pictures.example:{port}"}
        # A certificate for another name is refused, although the address is the same.
        other = f"https://elsewhere.example:{port}/a.png"
        assert await fetch_pinned(other, "127.0.0.1", verify=trusted) is None
    finally:
        server.close()
        await server.wait_closed()
