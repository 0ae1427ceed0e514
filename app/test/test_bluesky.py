"""Sign in with Bluesky against a local AT Protocol world (PLC directory, PDS, a strict
authorization server, DNS): create, sign in again, link, unlink, refresh, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.models import BlueskyClientKey, BlueskySession, ExternalAccount, User
from app.test.atproto_server import AtprotoServer, FakeAtproto
from app.test.factories import PASSWORD, bearer, create_user, login, reauthenticate, user_with_tokens

FRONTEND = "https://app.example.com"


@pytest.fixture
def atproto_server() -> Iterator[AtprotoServer]:
    yield AtprotoServer()


@pytest.fixture
def settings_overrides(atproto_server: AtprotoServer) -> dict[str, object]:
    return {**atproto_server.fake.settings(), "FRONTEND_URL": FRONTEND}


@pytest.fixture
async def atproto(app: FastAPI, atproto_server: AtprotoServer) -> AsyncIterator[FakeAtproto]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        fake = await atproto_server.start(http)
        try:
            yield fake
        finally:
            await atproto_server.stop()


async def _callback_path(
    client: httpx.AsyncClient,
    handle: str,
    *,
    link: bool = False,
    headers: dict | None = None,
    params: dict | None = None,
) -> str:
    """Start at our API, consent at the authorization server: the callback path."""
    start = await client.get(
        f"/api/oauth/bluesky/{'link' if link else 'login'}",
        params={"handle": handle, **(params or {})},
        headers=headers,
    )
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(start.headers["location"])
    assert consent.status_code == 302, consent.text
    callback = consent.headers["location"]
    assert callback.startswith("http://testserver/api/oauth/bluesky/callback?")
    return callback.removeprefix("http://testserver")


async def _flow(client: httpx.AsyncClient, handle: str, **kwargs: Any) -> httpx.Response:
    return await client.get(await _callback_path(client, handle, **kwargs))


async def _me(client: httpx.AsyncClient, tokens: dict) -> dict:
    return (await client.get("/api/users/me", headers=bearer(tokens))).json()


async def _count(app: FastAPI, model: Any) -> int:
    async with app.state.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_new_account_then_the_same_one_again(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    alice = atproto.add_account("alice.test", display_name="Alice Liddell")
    first = await _flow(client, "@Alice.test")
    assert first.status_code == 200, first.text
    me = await _me(client, first.json())
    assert me["username"] == "alice_test"
    assert me["is_external_only"] is True
    assert me["email_verified"] is False
    assert me["email"].endswith("@users.noreply.invalid")
    async with app.state.session_factory() as session:
        link = await session.scalar(select(ExternalAccount))
        stored = await session.scalar(select(BlueskySession))
    assert (link.provider, link.external_id) == ("bluesky", alice.did)
    assert (link.username, link.display_name) == ("alice.test", "Alice Liddell")
    # Tokens and the DPoP key are sealed, never stored as they are.
    assert stored.did == alice.did and stored.issuer == atproto.issuer
    for sealed in (stored.access_token, stored.refresh_token, stored.dpop_key):
        assert sealed.startswith("fernet1:")
    assert not any(token in stored.access_token for token in atproto.access_tokens)
    # Every server nonce was asked for once, and then used.
    assert "par use_dpop_nonce" in atproto.refusals
    assert "pds use_dpop_nonce" in atproto.refusals

    again = await _flow(client, alice.did)  # by DID this time
    assert again.status_code == 200, again.text
    assert (await _me(client, again.json()))["uuid"] == me["uuid"]
    assert await _count(app, User) == 1
