"""Sign in with Bluesky against a local AT Protocol world (PLC directory, PDS, a strict
authorization server, DNS): create, sign in again, link, unlink, refresh, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.core.atproto_keys import new_private_key
from app.core.atproto_oauth import ClientKeys
from app.core.config import ConfigError, load_settings
from app.models import BlueskyClientKey, BlueskySession, ExternalAccount, User
from app.test.atproto_server import AtprotoServer, FakeAtproto
from app.test.factories import (
    bearer,
    login,
    reauthenticate,
    user_with_tokens,
)

FRONTEND = "https://app.example.com"


@pytest.fixture
def atproto_server() -> AtprotoServer:
    return AtprotoServer()


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
    assert stored.did == alice.did
    assert stored.issuer == atproto.issuer
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


async def _nothing_stored(app: FastAPI) -> None:
    assert await _count(app, User) == 0
    assert await _count(app, ExternalAccount) == 0
    assert await _count(app, BlueskySession) == 0


@pytest.mark.usefixtures("atproto")
async def test_the_client_documents(client: httpx.AsyncClient) -> None:
    url = "http://testserver/api/oauth/bluesky/client-metadata.json"
    metadata = (await client.get(url)).json()
    assert metadata["client_id"] == url
    assert metadata["redirect_uris"] == ["http://testserver/api/oauth/bluesky/callback"]
    assert metadata["token_endpoint_auth_method"] == "private_key_jwt"
    assert metadata["dpop_bound_access_tokens"] is True
    jwks = (await client.get(metadata["jwks_uri"])).json()
    (key,) = jwks["keys"]
    assert (key["kty"], key["crv"], key["alg"]) == ("EC", "P-256", "ES256")
    assert "d" not in key  # the public half only
    assert (await client.get("/api/oauth/providers")).json() == {"providers": ["bluesky"]}


@pytest.mark.parametrize(
    ("misbehaviour", "status", "code"),
    [
        ("iss_override", 400, "OAUTH_FAILED"),  # the answer names another server
        ("sub_override", 502, "OAUTH_PROVIDER_ERROR"),  # tokens for another DID
        ("deny", 400, "OAUTH_FAILED"),  # the user said no
        ("wrong_challenge", 400, "OAUTH_FAILED"),  # PKCE verifier refused
        ("nonce_every_request", 502, "OAUTH_PROVIDER_ERROR"),  # a nonce never settles
    ],
)
async def test_refusals_at_the_callback_store_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    atproto: FakeAtproto,
    misbehaviour: str,
    status: int,
    code: str,
) -> None:
    atproto.add_account("mallory.test")
    other = atproto.add_account("victim.test")
    value = {"iss_override": "http://127.0.0.1:1", "sub_override": other.did}.get(
        misbehaviour, True
    )
    at_the_token_request = misbehaviour in ("sub_override", "nonce_every_request")
    if not at_the_token_request:
        setattr(atproto, misbehaviour, value)
    path = await _callback_path(client, "mallory.test")
    setattr(atproto, misbehaviour, value)
    response = await client.get(path)
    assert (response.status_code, response.json()["code"]) == (status, code), response.text
    await _nothing_stored(app)


@pytest.mark.parametrize("reason", ["htm", "htu", "jti", "signature"])
async def test_a_refused_dpop_proof_is_a_502(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto, reason: str
) -> None:
    atproto.add_account("carol.test")
    path = await _callback_path(client, "carol.test")
    atproto.refuse_proofs = reason
    response = await client.get(path)
    assert (response.status_code, response.json()["code"]) == (502, "OAUTH_PROVIDER_ERROR")
    assert "token invalid_dpop_proof" in atproto.refusals
    await _nothing_stored(app)


async def test_a_stale_nonce_is_retried_with_the_new_one(
    client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("dave.test")
    path = await _callback_path(client, "dave.test")
    atproto.rotate_nonce()  # the nonce the sign-in kept from its PAR is stale now
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert "token use_dpop_nonce" in atproto.refusals


async def test_an_assertion_signed_by_another_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto, settings: Any
) -> None:
    """The server keeps the client's published keys; a client that signs with another
    key (here: a key rotated without waiting) is refused, and nothing is stored."""

    atproto.add_account("erin.test")
    assert (await _flow(client, "erin.test")).status_code == 200  # the keys are fetched
    other = new_private_key().as_pem(private=True).decode()
    app.state.bluesky_keys = ClientKeys(settings.model_copy(update={"BLUESKY_CLIENT_KEY": other}))
    atproto.add_account("frank.test")
    refused = await client.get("/api/oauth/bluesky/login", params={"handle": "frank.test"})
    assert (refused.status_code, refused.json()["code"]) == (502, "OAUTH_PROVIDER_ERROR")
    assert "par invalid_client" in atproto.refusals
    assert await _count(app, User) == 1


async def test_the_authorization_server_refuses_a_request_that_was_not_pushed(
    atproto: FakeAtproto,
) -> None:
    async with httpx.AsyncClient() as browser:
        response = await browser.get(
            f"{atproto.url}/oauth/authorize",
            params={
                "client_id": "http://testserver/api/oauth/bluesky/client-metadata.json",
                "response_type": "code",
                "redirect_uri": "http://testserver/api/oauth/bluesky/callback",
                "state": "s",
            },
        )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("handle", "code"),
    [
        ("not a handle", "INVALID_BLUESKY_HANDLE"),
        ("alice.localhost", "INVALID_BLUESKY_HANDLE"),
        ("nobody.test", "BLUESKY_IDENTITY_NOT_FOUND"),
        ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "BLUESKY_IDENTITY_NOT_FOUND"),
    ],
)
@pytest.mark.usefixtures("atproto")
async def test_handles_that_lead_nowhere(client: httpx.AsyncClient, handle: str, code: str) -> None:
    response = await client.get("/api/oauth/bluesky/login", params={"handle": handle})
    assert (response.status_code, response.json()["code"]) == (400, code)


async def test_a_handle_its_did_does_not_name_back_is_refused(
    client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    alice = atproto.add_account("alice.test")
    atproto.dns_records["impostor.test"] = alice.did  # claims Alice's DID
    response = await client.get("/api/oauth/bluesky/login", params={"handle": "impostor.test"})
    assert (response.status_code, response.json()["code"]) == (400, "BLUESKY_IDENTITY_NOT_FOUND")


async def test_a_pds_on_a_private_address_is_never_asked(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("inside.test", pds_url="http://10.0.0.1")
    response = await client.get("/api/oauth/bluesky/login", params={"handle": "inside.test"})
    assert (response.status_code, response.json()["code"]) == (502, "OAUTH_PROVIDER_ERROR")
    assert "protected-resource" not in atproto.requests
    await _nothing_stored(app)


async def test_link_sign_in_unlink(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    user, tokens = await user_with_tokens(app, client)
    grace = atproto.add_account("grace.test", display_name="Grace")
    refused = await client.get(
        "/api/oauth/bluesky/link", params={"handle": "grace.test"}, headers=bearer(tokens)
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "REAUTHENTICATION_REQUIRED")
    await reauthenticate(client, tokens)
    linked = await _flow(client, "grace.test", link=True, headers=bearer(tokens))
    assert linked.status_code == 200, linked.text
    assert linked.json() == {"detail": "bluesky account linked"}

    signed_in = await _flow(client, grace.did)
    assert (await _me(client, signed_in.json()))["uuid"] == user.uuid

    unlinked = await client.delete("/api/oauth/bluesky", headers=bearer(tokens))
    assert unlinked.status_code == 204, unlinked.text
    assert await _count(app, BlueskySession) == 0
    await login(client, user.username)  # the password still opens the account
    elsewhere = await _flow(client, "grace.test")
    assert (await _me(client, elsewhere.json()))["uuid"] != user.uuid


async def test_a_bluesky_account_linked_elsewhere_is_refused(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("henry.test")
    assert (await _flow(client, "henry.test")).status_code == 200
    _, tokens = await user_with_tokens(app, client)
    await reauthenticate(client, tokens)
    response = await _flow(client, "henry.test", link=True, headers=bearer(tokens))
    assert (response.status_code, response.json()["code"]) == (
        409,
        "OAUTH_ACCOUNT_LINKED_TO_ANOTHER_USER",
    )


async def test_the_only_way_in_cannot_be_unlinked(
    client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("ivy.test")
    tokens = (await _flow(client, "ivy.test")).json()
    response = await client.delete("/api/oauth/bluesky", headers=bearer(tokens))
    assert (response.status_code, response.json()["code"]) == (409, "LAST_LOGIN_METHOD")


async def test_refresh_renews_the_tokens_and_the_profile(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    jane = atproto.add_account("jane.test", display_name="Jane")
    tokens = (await _flow(client, "jane.test")).json()
    async with app.state.session_factory() as session:
        before = await session.scalar(select(BlueskySession))
    jane.display_name = "Jane Doe"
    refreshed = await client.post("/api/oauth/bluesky/refresh", headers=bearer(tokens))
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    assert (body["did"], body["handle"], body["display_name"]) == (
        jane.did,
        "jane.test",
        "Jane Doe",
    )
    assert "token refresh_token" in atproto.requests
    async with app.state.session_factory() as session:
        after = await session.scalar(select(BlueskySession))
        link = await session.scalar(select(ExternalAccount))
    assert after.refresh_token != before.refresh_token
    assert link.display_name == "Jane Doe"
    # The old refresh token was used up: the new one works, again and again.
    again = await client.post("/api/oauth/bluesky/refresh", headers=bearer(tokens))
    assert again.status_code == 200, again.text


async def test_refresh_refused_by_bluesky_asks_to_sign_in_again(
    client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("kim.test")
    tokens = (await _flow(client, "kim.test")).json()
    atproto.refresh_tokens.clear()  # the session was revoked at Bluesky
    response = await client.post("/api/oauth/bluesky/refresh", headers=bearer(tokens))
    assert (response.status_code, response.json()["code"]) == (409, "BLUESKY_SIGN_IN_AGAIN")


async def test_refresh_without_a_bluesky_account(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, tokens = await user_with_tokens(app, client)
    response = await client.post("/api/oauth/bluesky/refresh", headers=bearer(tokens))
    assert (response.status_code, response.json()["code"]) == (404, "OAUTH_ACCOUNT_NOT_LINKED")


async def test_parallel_refreshes_keep_one_working_session(
    client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("leo.test")
    tokens = (await _flow(client, "leo.test")).json()
    responses = await asyncio.gather(
        *(client.post("/api/oauth/bluesky/refresh", headers=bearer(tokens)) for _ in range(4))
    )
    statuses = [response.status_code for response in responses]
    assert 200 in statuses, [r.text for r in responses]
    assert set(statuses) <= {200, 409}, [r.text for r in responses]
    # Whoever won, what is stored still refreshes.
    after = await client.post("/api/oauth/bluesky/refresh", headers=bearer(tokens))
    assert after.status_code == 200, after.text


async def test_two_first_sign_ins_of_one_account_at_once(
    app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("mia.test")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        paths = [await _callback_path(client, "mia.test"), await _callback_path(other, "mia.test")]
        responses = await asyncio.gather(client.get(paths[0]), other.get(paths[1]))
    statuses = sorted(response.status_code for response in responses)
    assert statuses in ([200, 200], [200, 409]), [r.text for r in responses]
    assert await _count(app, User) == 1
    assert await _count(app, BlueskySession) == 1


async def test_a_replayed_callback_is_refused(
    client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("ned.test")
    start = await client.get("/api/oauth/bluesky/login", params={"handle": "ned.test"})
    cookie = client.cookies.get("user_manager_oauth")
    assert cookie is not None
    async with httpx.AsyncClient() as browser:
        consent = await browser.get(start.headers["location"])
    path = consent.headers["location"].removeprefix("http://testserver")
    assert (await client.get(path)).status_code == 200
    client.cookies.set("user_manager_oauth", cookie, path="/api/oauth/")
    replay = await client.get(path)
    assert (replay.status_code, replay.json()["code"]) == (400, "INVALID_STATE")


async def test_a_redirect_carries_a_one_time_code(
    client: httpx.AsyncClient, atproto: FakeAtproto
) -> None:
    atproto.add_account("olga.test")
    response = await _flow(client, "olga.test", params={"redirect_uri": f"{FRONTEND}/done"})
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"{FRONTEND}/done?code=")
    foreign = await client.get(
        "/api/oauth/bluesky/login",
        params={"handle": "olga.test", "redirect_uri": "https://evil.example/"},
    )
    assert (foreign.status_code, foreign.json()["code"]) == (400, "INVALID_REDIRECT_URI")


async def test_a_generated_client_key_is_kept_sealed_and_shared(app: FastAPI) -> None:
    from app.core.atproto_oauth import ClientKeys

    settings = app.state.settings
    holders = [ClientKeys(settings) for _ in range(4)]

    async def first_use(holder: ClientKeys) -> str:
        async with app.state.session_factory() as session:
            return (await holder.get(session)).kid

    kids = await asyncio.gather(*(first_use(holder) for holder in holders))
    assert len(set(kids)) == 1
    async with app.state.session_factory() as session:
        (row,) = (await session.scalars(select(BlueskyClientKey))).all()
    assert row.private_jwk.startswith("fernet1:")
    assert row.kid == kids[0]


class TestClientKey:
    @pytest.fixture
    def settings_overrides(self, atproto_server: AtprotoServer) -> dict[str, object]:
        self.key = new_private_key()
        return {
            **atproto_server.fake.settings(),
            "BLUESKY_CLIENT_KEY": self.key.as_pem(private=True).decode(),
        }

    async def test_a_configured_key_is_published_and_used(
        self, app: FastAPI, client: httpx.AsyncClient, atproto: FakeAtproto
    ) -> None:
        (published,) = (await client.get("/api/oauth/bluesky/jwks.json")).json()["keys"]
        assert (published["x"], published["y"]) == (self.key["x"], self.key["y"])
        atproto.add_account("pia.test")
        assert (await _flow(client, "pia.test")).status_code == 200
        assert await _count(app, BlueskyClientKey) == 0


class TestDisabled:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {}

    async def test_every_route_answers_not_enabled(self, client: httpx.AsyncClient) -> None:
        for path in (
            "/api/oauth/bluesky/client-metadata.json",
            "/api/oauth/bluesky/jwks.json",
            "/api/oauth/bluesky/login?handle=alice.test",
            "/api/oauth/bluesky/callback?state=x",
        ):
            response = await client.get(path)
            assert (response.status_code, response.json()["code"]) == (404, "PROVIDER_NOT_ENABLED")
        assert (await client.get("/api/oauth/providers")).json() == {"providers": []}


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"BLUESKY_CLIENT_KEY": "not a key"}, "BLUESKY_CLIENT_KEY"),
        ({"BLUESKY_SCOPE": "transition:generic"}, "BLUESKY_SCOPE"),
        ({"BLUESKY_DNS_SERVERS": "dns.example"}, "BLUESKY_DNS_SERVERS"),
        (
            {
                "BLUESKY_ALLOW_LOOPBACK": "true",
                "ENVIRONMENT": "production",
                "JWT_SECRET_KEY": "x" * 40,
            },
            "BLUESKY_ALLOW_LOOPBACK",
        ),
    ],
)
def test_unusable_settings_stop_the_start(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, values: dict[str, str], named: str
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_settings(_env_file=None)


def test_a_did_longer_than_its_columns_is_not_a_did() -> None:
    """A did:web of up to 269 characters fits the pattern; the columns keep 255: a
    longer one is refused as input, never a database error."""
    from app.core.atproto_identity import is_did

    assert is_did("did:web:" + "a" * 247)  # 255 characters
    assert not is_did("did:web:" + "a" * 253)
    assert not is_did("did:web:example.com\n")


# The fetch guard as it runs in production (no loopback) ---------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/.well-known/atproto-did",  # not https
        "https://127.0.0.1/xrpc",
        "https://10.0.0.1/xrpc",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:127.0.0.1]/xrpc",
        "https://[::1]/xrpc",
        "https://user:secret@example.com/",
        "ftp://example.com/",
    ],
)
async def test_the_guard_refuses_what_production_must_never_fetch(tmp_path: Any, url: str) -> None:
    from app.core.atproto_identity import UnsafeServer, guarded_request
    from app.test.conftest import make_settings

    settings = make_settings(tmp_path, BLUESKY_ALLOW_LOOPBACK=False)
    with pytest.raises(UnsafeServer):
        await guarded_request(settings, "GET", url)


async def test_the_guard_follows_no_redirect_and_caps_what_it_reads(tmp_path: Any) -> None:
    """Against a loopback server (loopback allowed for the test): a redirect is handed
    back, not followed; an answer over the cap or compressed is refused."""
    from aiohttp import web

    from app.core.atproto_identity import MAX_BODY_BYTES, guarded_request
    from app.test.conftest import make_settings

    async def redirect(_: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://10.0.0.1/"})

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_BODY_BYTES + 1))

    async def gzipped(_: web.Request) -> web.Response:
        return web.Response(body=b"x", headers={"Content-Encoding": "gzip"})

    server = web.Application()
    server.router.add_get("/redirect", redirect)
    server.router.add_get("/huge", huge)
    server.router.add_get("/gzip", gzipped)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = make_settings(tmp_path, BLUESKY_ALLOW_LOOPBACK=True)
    try:
        answer = await guarded_request(settings, "GET", f"http://127.0.0.1:{port}/redirect")
        assert answer.status_code == 302
        for path in ("/huge", "/gzip"):
            with pytest.raises(httpx.DecodingError):
                await guarded_request(settings, "GET", f"http://127.0.0.1:{port}{path}")
    finally:
        await runner.cleanup()
