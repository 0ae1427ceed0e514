"""Passkeys (WebAuthn) through the HTTP API, driven by a software authenticator:
registration, sign-in with no username, passkey as second factor, and the attacks a
relying party must refuse (another origin or RP id, a replayed or raced challenge, a
cloned authenticator, a deleted passkey, a banned account)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import select, update

from app.core.config import Settings
from app.models import ExternalAccount, Passkey, User, WebAuthnChallenge
from app.services.maintenance import purge_expired
from app.test.authenticator import SoftAuthenticator, b64url
from app.test.conftest import settings_env
from app.test.factories import (
    PASSWORD,
    bearer,
    history,
    live_signup_and_login,
    login,
    reauthenticate,
    user_with_tokens,
)
from app.test.mail import MailCatcher, text_body
from app.test.server import LiveServer, listening_socket, run_cli, start_server

BEGIN = "/api/auth/passkeys/sign-in/begin"
FINISH = "/api/auth/passkeys/sign-in/finish"


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    return smtp_server.settings()


def _authenticator(settings: Settings, **options: Any) -> SoftAuthenticator:
    return SoftAuthenticator(settings.WEBAUTHN_RP_ID, settings.WEBAUTHN_ORIGINS[0], **options)


async def _register_begin(client: httpx.AsyncClient, tokens: dict) -> dict[str, Any]:
    response = await client.post(
        "/api/auth/passkeys/register/begin", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def _register_finish(
    client: httpx.AsyncClient,
    tokens: dict,
    begun: dict,
    credential: dict,
    name: str | None = "Laptop",
) -> httpx.Response:
    body = {"challenge_id": begun["challenge_id"], "credential": credential}
    if name is not None:
        body["name"] = name
    return await client.post(
        "/api/auth/passkeys/register/finish", json=body, headers=bearer(tokens)
    )


async def _register(
    client: httpx.AsyncClient, settings: Settings, tokens: dict, **options: Any
) -> tuple[SoftAuthenticator, dict[str, Any]]:
    """A new authenticator with a passkey registered on the account of ``tokens``."""
    authenticator = _authenticator(settings, **options)
    begun = await _register_begin(client, tokens)
    response = await _register_finish(client, tokens, begun, authenticator.create(begun["options"]))
    assert response.status_code == 201, response.text
    return authenticator, response.json()


async def _begin(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post(BEGIN)
    assert response.status_code == 200, response.text
    return response.json()


async def _finish(client: httpx.AsyncClient, begun: dict, credential: dict) -> httpx.Response:
    return await client.post(
        FINISH, json={"challenge_id": begun["challenge_id"], "credential": credential}
    )


async def _sign_in(
    client: httpx.AsyncClient, authenticator: SoftAuthenticator, **lie: Any
) -> httpx.Response:
    begun = await _begin(client)
    return await _finish(client, begun, authenticator.get(begun["options"], **lie))


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert (response.status_code, response.json()["code"]) == (status, code), response.text


async def _verified_user(app: FastAPI, client: httpx.AsyncClient) -> tuple[User, dict]:
    return await user_with_tokens(app, client, email_verified=True)


async def _stored(app: FastAPI, passkey_id: str) -> Passkey | None:
    async with app.state.session_factory() as db:
        return await db.get(Passkey, passkey_id)


# Settings ------------------------------------------------------------------------------


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, DATA_DIR=tmp_path, JWT_SECRET_KEY="k" * 40, **values)


def test_the_relying_party_follows_the_urls_unless_set(tmp_path: Path) -> None:
    alone = _settings(tmp_path, BASE_URL="https://api.example.com/users")
    assert alone.WEBAUTHN_RP_ID == "api.example.com"
    assert alone.WEBAUTHN_ORIGINS == ["https://api.example.com"]
    assert alone.WEBAUTHN_RP_NAME == alone.PROJECT_NAME
    # With a front end, passkeys belong to its host; the API's own pages are elsewhere.
    both = _settings(
        tmp_path, BASE_URL="https://api.example.com", FRONTEND_URL="https://App.example.com:8443"
    )
    assert both.WEBAUTHN_RP_ID == "app.example.com"
    assert both.WEBAUTHN_ORIGINS == ["https://app.example.com:8443"]
    # The parent domain serves both.
    parent = _settings(
        tmp_path,
        BASE_URL="https://api.example.com",
        FRONTEND_URL="https://app.example.com",
        WEBAUTHN_RP_ID="Example.com",
        WEBAUTHN_RP_NAME="Example",
    )
    assert parent.WEBAUTHN_RP_ID == "example.com"
    assert parent.WEBAUTHN_ORIGINS == ["https://app.example.com", "https://api.example.com"]
    assert parent.WEBAUTHN_RP_NAME == "Example"
    given = _settings(
        tmp_path,
        WEBAUTHN_RP_ID="example.com",
        WEBAUTHN_ORIGINS="https://a.example.com, https://example.com",
    )
    assert given.WEBAUTHN_ORIGINS == ["https://a.example.com", "https://example.com"]


def test_a_service_reached_by_ip_address_still_starts(tmp_path: Path) -> None:
    """Browsers refuse an IP address as relying party: a derived id skips it (a front
    end on 127.0.0.1 in development, an API reached by address) instead of stopping
    the service, and what it settles on starts a second process too."""
    front_by_ip = _settings(
        tmp_path, BASE_URL="http://localhost:8000", FRONTEND_URL="http://127.0.0.1:5173"
    )
    assert front_by_ip.WEBAUTHN_RP_ID == "localhost"
    assert front_by_ip.WEBAUTHN_ORIGINS == ["http://localhost:8000"]
    only_ips = _settings(
        tmp_path, BASE_URL="http://10.0.0.5:8000", FRONTEND_URL="http://[::1]:5173"
    )
    assert only_ips.WEBAUTHN_RP_ID == "localhost"
    assert only_ips.WEBAUTHN_ORIGINS == []  # no page can use passkeys until one is named
    again = _settings(
        tmp_path,
        BASE_URL="http://10.0.0.5:8000",
        WEBAUTHN_RP_ID=only_ips.WEBAUTHN_RP_ID,
        WEBAUTHN_ORIGINS=",".join(only_ips.WEBAUTHN_ORIGINS),
    )
    assert again.WEBAUTHN_RP_ID == "localhost"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"WEBAUTHN_RP_ID": "https://example.com"}, "must be a domain"),
        ({"WEBAUTHN_RP_ID": "10.0.0.1"}, "must be a domain"),
        ({"WEBAUTHN_ORIGINS": "https://evil.example"}, "is not on WEBAUTHN_RP_ID"),
        ({"WEBAUTHN_RP_ID": "example.com", "WEBAUTHN_ORIGINS": "https://xexample.com"}, "not on"),
        ({"WEBAUTHN_ORIGINS": "https://localhost/path"}, "an origin"),
    ],
)
def test_relying_party_settings_that_cannot_work_stop_the_start(
    tmp_path: Path, values: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(tmp_path, **values)


# Registration --------------------------------------------------------------------------


async def test_register_a_passkey_then_sign_in_with_it_alone(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(app, client)
    begun = await _register_begin(client, tokens)
    options = begun["options"]
    assert options["rp"] == {"id": settings.WEBAUTHN_RP_ID, "name": settings.WEBAUTHN_RP_NAME}
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["user"]["name"] == user.username
    assert user.uuid not in options["user"]["id"]  # an opaque handle, not the UUID
    authenticator = _authenticator(settings)
    created = await _register_finish(client, tokens, begun, authenticator.create(options))
    assert created.status_code == 201, created.text
    passkey = created.json()
    assert passkey["name"] == "Laptop"
    assert (passkey["backup_eligible"], passkey["backed_up"]) == (True, True)
    assert passkey["transports"] == ["internal", "hybrid"]
    assert "public_key" not in passkey
    notice = await smtp_server.wait_for(user.email)
    assert "A passkey was added" in notice["Subject"]
    assert "Laptop" in text_body(notice)

    listed = await client.get("/api/auth/passkeys", headers=bearer(tokens))
    assert [item["id"] for item in listed.json()["items"]] == [passkey["id"]]

    begun = await _begin(client)
    assert begun["options"]["allowCredentials"] == []
    assert begun["options"]["userVerification"] == "required"
    assert begun["options"]["rpId"] == settings.WEBAUTHN_RP_ID
    signed_in = await _finish(client, begun, authenticator.get(begun["options"]))
    assert signed_in.status_code == 200, signed_in.text
    pair = signed_in.json()
    assert set(pair) >= {"access_token", "refresh_token", "token_type", "expires_in"}
    me = await client.get("/api/users/me", headers=bearer(pair))
    assert me.json()["username"] == user.username
    stored = await _stored(app, passkey["id"])
    assert stored is not None
    assert stored.sign_count == 1
    assert stored.last_used_at is not None
    actions = [event.action for event in await history(app.state.session_factory, user.uuid)]
    assert actions[-1] == "login"
    assert "passkey_added" in actions


async def test_registration_needs_a_recent_reauthentication(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, tokens = await _verified_user(app, client)
    path = "/api/auth/passkeys/register/begin"
    _refused(
        await client.post(path, json={}, headers=bearer(tokens)), 403, "REAUTHENTICATION_REQUIRED"
    )
    _refused(
        await client.post(path, json={"password": "not the password"}, headers=bearer(tokens)),
        400,
        "WRONG_PASSWORD",
    )
    await reauthenticate(client, tokens)
    assert (await client.post(path, json={}, headers=bearer(tokens))).status_code == 200
    assert (await client.post(path, json={})).status_code == 401


async def test_registration_from_another_origin_or_rp_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator = _authenticator(settings)
    for lie in ({"origin": "https://evil.example"}, {"rp_id": "evil.example"}):
        begun = await _register_begin(client, tokens)
        refused = await _register_finish(
            client, tokens, begun, authenticator.create(begun["options"], **lie)
        )
        _refused(refused, 400, "PASSKEY_NOT_ACCEPTED")
    listed = await client.get("/api/auth/passkeys", headers=bearer(tokens))
    assert listed.json()["items"] == []


async def test_a_registration_challenge_is_the_callers_and_single_use(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    _, other_tokens = await _verified_user(app, client)
    authenticator = _authenticator(settings)
    begun = await _register_begin(client, tokens)
    credential = authenticator.create(begun["options"])
    # Someone else's session cannot finish it with their own authenticator.
    stolen = await _register_finish(client, other_tokens, begun, credential)
    _refused(stolen, 400, "PASSKEY_CHALLENGE_INVALID")
    assert (await _register_finish(client, tokens, begun, credential)).status_code == 201
    _refused(
        await _register_finish(client, tokens, begun, credential), 400, "PASSKEY_CHALLENGE_INVALID"
    )
    # The same authenticator again, on a new challenge: it is registered already.
    again = await _register_begin(client, tokens)
    assert again["options"]["excludeCredentials"][0]["id"] == b64url(authenticator.credential_id)
    _refused(
        await _register_finish(client, tokens, again, authenticator.create(again["options"])),
        409,
        "PASSKEY_EXISTS",
    )


# Signing in ----------------------------------------------------------------------------


async def test_sign_in_from_another_origin_or_rp_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    _refused(
        await _sign_in(client, authenticator, origin="https://evil.example"), 401, "INVALID_PASSKEY"
    )
    _refused(await _sign_in(client, authenticator, rp_id="evil.example"), 401, "INVALID_PASSKEY")
    assert (await _sign_in(client, authenticator)).status_code == 200


async def test_a_signature_by_another_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    forger = _authenticator(settings)
    forger.credential_id = authenticator.credential_id
    forger.user_handle = authenticator.user_handle
    forger.sign_count = 50
    _refused(await _sign_in(client, forger), 401, "INVALID_PASSKEY")
    # Nor does the account's handle fit another account's passkey.
    _refused(
        await _sign_in(client, authenticator, user_handle=b64url(b"someone else")),
        401,
        "INVALID_PASSKEY",
    )
    # An unknown passkey is refused the same way.
    _refused(await _sign_in(client, _authenticator(settings)), 401, "INVALID_PASSKEY")


async def test_a_challenge_signs_in_once(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    begun = await _begin(client)
    credential = authenticator.get(begun["options"])
    assert (await _finish(client, begun, credential)).status_code == 200
    # The same answer replayed, and a fresh answer to the used challenge.
    _refused(await _finish(client, begun, credential), 400, "PASSKEY_CHALLENGE_INVALID")
    fresh = authenticator.get(begun["options"])
    _refused(await _finish(client, begun, fresh), 400, "PASSKEY_CHALLENGE_INVALID")
    # Nor can a sign-in challenge register a passkey, or a failed attempt be retried.
    begun = await _begin(client)
    bad = authenticator.get(begun["options"], origin="https://evil.example")
    _refused(await _finish(client, begun, bad), 401, "INVALID_PASSKEY")
    _refused(
        await _finish(client, begun, authenticator.get(begun["options"])),
        400,
        "PASSKEY_CHALLENGE_INVALID",
    )


async def test_parallel_answers_to_one_challenge_sign_in_once(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens, counting=False)
    begun = await _begin(client)
    answers = [authenticator.get(begun["options"]) for _ in range(6)]
    responses = await asyncio.gather(*(_finish(client, begun, answer) for answer in answers))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 400, 400, 400, 400, 400], [r.text for r in responses]


async def test_parallel_registrations_with_one_challenge_keep_one_passkey(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    begun = await _register_begin(client, tokens)
    authenticators = [_authenticator(settings) for _ in range(4)]
    responses = await asyncio.gather(
        *(
            _register_finish(client, tokens, begun, authenticator.create(begun["options"]))
            for authenticator in authenticators
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 400, 400, 400]
    async with app.state.session_factory() as db:
        kept = list(await db.scalars(select(Passkey).where(Passkey.user_uuid == user.uuid)))
    assert len(kept) == 1


async def test_an_expired_challenge_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    begun = await _begin(client)
    async with app.state.session_factory() as db:
        await db.execute(
            update(WebAuthnChallenge)
            .where(WebAuthnChallenge.id == begun["challenge_id"])
            .values(expires_at=WebAuthnChallenge.created_at)
        )
        await db.commit()
    _refused(
        await _finish(client, begun, authenticator.get(begun["options"])),
        400,
        "PASSKEY_CHALLENGE_INVALID",
    )
    # The maintenance job deletes expired challenges, and only those.
    live = await _begin(client)
    assert (await purge_expired(app.state.session_factory))["webauthn_challenges"] == 1
    async with app.state.session_factory() as db:
        assert await db.get(WebAuthnChallenge, begun["challenge_id"]) is None
        assert await db.get(WebAuthnChallenge, live["challenge_id"]) is not None


async def test_a_cloned_authenticator_is_refused_and_the_owner_told(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens)
    clone = authenticator.clone()
    assert (await _sign_in(client, authenticator)).status_code == 200  # counter 1
    assert (await _sign_in(client, authenticator)).status_code == 200  # counter 2
    _refused(await _sign_in(client, clone), 401, "INVALID_PASSKEY")  # counter 1: behind
    clone.sign_count = 1
    _refused(await _sign_in(client, clone), 401, "INVALID_PASSKEY")  # counter 2: not ahead
    stored = await _stored(app, passkey["id"])
    assert stored is not None
    assert stored.sign_count == 2
    notice = await smtp_server.wait_for(user.email, 2)  # after "a passkey was added"
    assert "copy of your passkey" in notice["Subject"]
    events = await history(app.state.session_factory, user.uuid)
    assert [e.details["reason"] for e in events if e.action == "login_failed"] == [
        "sign_count",
        "sign_count",
    ]
    assert (await _sign_in(client, authenticator)).status_code == 200  # counter 3


async def test_an_authenticator_that_does_not_count_signs_in_again(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens, counting=False)
    for _ in range(2):
        assert (await _sign_in(client, authenticator)).status_code == 200
    stored = await _stored(app, passkey["id"])
    assert stored is not None
    assert stored.sign_count == 0
    # Once it reported counting, going back to 0 is a clone's doing.
    authenticator.counting = True
    assert (await _sign_in(client, authenticator)).status_code == 200
    authenticator.counting, authenticator.sign_count = False, 0
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")


async def test_a_sign_in_without_user_verification_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    authenticator.user_verified = False
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")


async def test_a_deleted_passkey_signs_in_no_more(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens)
    path = f"/api/auth/passkeys/{passkey['id']}"
    _refused(
        await client.request("DELETE", path, headers=bearer(tokens)),
        403,
        "REAUTHENTICATION_REQUIRED",
    )
    assert (await _sign_in(client, authenticator)).status_code == 200
    deleted = await client.request(
        "DELETE", path, json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert deleted.status_code == 204, deleted.text
    notice = await smtp_server.wait_for(user.email, 2)
    assert "A passkey was removed" in notice["Subject"]
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")
    _refused(
        await client.request("DELETE", path, json={"password": PASSWORD}, headers=bearer(tokens)),
        404,
        "PASSKEY_NOT_FOUND",
    )
    assert (await client.get("/api/auth/passkeys", headers=bearer(tokens))).json()["items"] == []


async def test_a_banned_user_is_refused_like_a_wrong_passkey(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    _, admin_tokens = await user_with_tokens(app, client, roles=("admin",))
    banned = await client.patch(
        f"/api/admin/user/{user.uuid}", json={"is_active": False}, headers=bearer(admin_tokens)
    )
    assert banned.status_code == 200, banned.text
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")
    events = await history(app.state.session_factory, user.uuid)
    assert events[-1].action == "login_failed"
    assert events[-1].details["reason"] == "inactive"


async def test_failed_passkey_sign_ins_are_limited_per_account(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """AUTH_RATE_LIMIT_ACCOUNT (10 per 15 minutes) failures, then even the right answer
    is refused for a while, as for passwords."""
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    for _ in range(10):
        _refused(
            await _sign_in(client, authenticator, origin="https://evil.example"),
            401,
            "INVALID_PASSKEY",
        )
    refused = await _sign_in(client, authenticator)
    _refused(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["Retry-After"]) > 0


async def test_a_malformed_credential_is_a_clear_4xx(client: httpx.AsyncClient) -> None:
    begun = await _begin(client)
    _refused(await _finish(client, begun, {"id": "x"}), 400, "MALFORMED_CREDENTIAL")
    broken = {
        "id": "AA",
        "rawId": "AA",
        "type": "public-key",
        "response": {"clientDataJSON": "!!", "authenticatorData": "AA", "signature": "AA"},
    }
    response = await _finish(client, await _begin(client), broken)
    _refused(response, 401, "INVALID_PASSKEY")  # well-formed enough: an unknown passkey
    not_a_dict = await client.post(FINISH, json={"challenge_id": "x", "credential": "text"})
    assert not_a_dict.status_code == 422


# Managing passkeys ---------------------------------------------------------------------


async def test_rename_and_list_only_ones_own(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    _, other_tokens = await _verified_user(app, client)
    _, passkey = await _register(client, settings, tokens)
    path = f"/api/auth/passkeys/{passkey['id']}"
    renamed = await client.patch(path, json={"name": "  Phone  "}, headers=bearer(tokens))
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Phone"
    _refused(
        await client.patch(path, json={"name": "Mine"}, headers=bearer(other_tokens)),
        404,
        "PASSKEY_NOT_FOUND",
    )
    _refused(
        await client.request(
            "DELETE", path, json={"password": PASSWORD}, headers=bearer(other_tokens)
        ),
        404,
        "PASSKEY_NOT_FOUND",
    )
    assert (await client.get("/api/auth/passkeys", headers=bearer(other_tokens))).json() == {
        "items": []
    }
    bad_name = await client.patch(path, json={"name": "a\nb"}, headers=bearer(tokens))
    assert bad_name.status_code == 422
    # Unnamed, a passkey is named after the day it was added.
    authenticator = _authenticator(settings)
    begun = await _register_begin(client, tokens)
    unnamed = await _register_finish(
        client, tokens, begun, authenticator.create(begun["options"]), name=None
    )
    assert unnamed.json()["name"].startswith("Passkey added 20"), unnamed.text


# Second factor -------------------------------------------------------------------------


async def _with_authenticator_2fa(app: FastAPI, user: User) -> pyotp.TOTP:
    async with app.state.session_factory() as db:
        row = await db.get(User, user.uuid)
        assert row is not None
        assert row.otp_secret
        row.otp_method = "authenticator"
        await db.commit()
        return pyotp.TOTP(row.otp_secret)


async def _pending(client: httpx.AsyncClient, username: str) -> str:
    response = await client.post(
        "/api/auth/login", data={"username": username, "password": PASSWORD}
    )
    assert response.json()["otp_required"] is True, response.text
    return response.json()["otp_token"]


async def _second_factor(
    client: httpx.AsyncClient, otp_token: str, authenticator: SoftAuthenticator
) -> httpx.Response:
    begun = await client.post(
        "/api/auth/passkeys/second-factor/begin", json={"otp_token": otp_token}
    )
    assert begun.status_code == 200, begun.text
    body = begun.json()
    return await client.post(
        "/api/auth/passkeys/second-factor/finish",
        json={
            "otp_token": otp_token,
            "challenge_id": body["challenge_id"],
            "credential": authenticator.get(body["options"]),
        },
    )


async def test_a_passkey_as_second_factor_after_the_password(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    totp = await _with_authenticator_2fa(app, user)
    otp_token = await _pending(client, user.username)
    begun = await client.post(
        "/api/auth/passkeys/second-factor/begin", json={"otp_token": otp_token}
    )
    allowed = begun.json()["options"]["allowCredentials"]
    assert [item["id"] for item in allowed] == [b64url(authenticator.credential_id)]
    done = await client.post(
        "/api/auth/passkeys/second-factor/finish",
        json={
            "otp_token": otp_token,
            "challenge_id": begun.json()["challenge_id"],
            "credential": authenticator.get(begun.json()["options"]),
        },
    )
    assert done.status_code == 200, done.text
    me = await client.get("/api/users/me", headers=bearer(done.json()))
    assert me.json()["username"] == user.username
    # The pending login is used up: neither a code nor another passkey finishes it again.
    code = await client.post(
        "/api/auth/otp/verify", json={"otp_token": otp_token, "code": totp.now()}
    )
    _refused(code, 401, "INVALID_OTP_TOKEN")
    _refused(await _second_factor(client, otp_token, authenticator), 401, "INVALID_OTP_TOKEN")


async def test_a_second_factor_passkey_must_be_the_accounts_and_valid(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    own, _ = await _register(client, settings, tokens)
    _, other_tokens = await _verified_user(app, client)
    others, _ = await _register(client, settings, other_tokens)
    await _with_authenticator_2fa(app, user)
    otp_token = await _pending(client, user.username)
    _refused(await _second_factor(client, otp_token, others), 401, "INVALID_PASSKEY")
    assert (await _sign_in(client, own)).status_code == 200  # counter 1
    own.sign_count = 0  # the next answer reports 1 again: a copy's
    _refused(await _second_factor(client, otp_token, own), 401, "INVALID_PASSKEY")
    own.sign_count = 5
    assert (await _second_factor(client, otp_token, own)).status_code == 200
    # Not a 2FA-pending token: refused before any ceremony.
    bogus = await client.post(
        "/api/auth/passkeys/second-factor/begin", json={"otp_token": tokens["access_token"]}
    )
    _refused(bogus, 401, "INVALID_OTP_TOKEN")


async def test_a_code_and_a_passkey_at_once_finish_one_login(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """The pending login is used once, whichever second factor comes first."""
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens, counting=False)
    totp = await _with_authenticator_2fa(app, user)
    for _ in range(3):
        otp_token = await _pending(client, user.username)
        begun = await client.post(
            "/api/auth/passkeys/second-factor/begin", json={"otp_token": otp_token}
        )
        ceremonies = [
            begun.json(),
            (
                await client.post(
                    "/api/auth/passkeys/second-factor/begin", json={"otp_token": otp_token}
                )
            ).json(),
        ]
        answers = await asyncio.gather(
            client.post("/api/auth/otp/verify", json={"otp_token": otp_token, "code": totp.now()}),
            *(
                client.post(
                    "/api/auth/passkeys/second-factor/finish",
                    json={
                        "otp_token": otp_token,
                        "challenge_id": ceremony["challenge_id"],
                        "credential": authenticator.get(ceremony["options"]),
                    },
                )
                for ceremony in ceremonies
            ),
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses[0] == 200, [a.text for a in answers]
        assert statuses[1:] == [401, 401], [a.text for a in answers]
        # Let the next round's code be this step's again (a code works once).
        async with app.state.session_factory() as db:
            row = await db.get(User, user.uuid)
            assert row is not None
            row.otp_last_timestep = None
            await db.commit()


async def test_second_factor_needs_a_passkey(app: FastAPI, client: httpx.AsyncClient) -> None:
    user, _ = await _verified_user(app, client)
    await _with_authenticator_2fa(app, user)
    otp_token = await _pending(client, user.username)
    begun = await client.post(
        "/api/auth/passkeys/second-factor/begin", json={"otp_token": otp_token}
    )
    _refused(begun, 409, "NO_PASSKEY")


async def test_only_the_passkeys_left_to_an_account_appear(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Two passkeys share the account's user handle; both sign in to it."""
    user, tokens = await _verified_user(app, client)
    first, _ = await _register(client, settings, tokens)
    second, _ = await _register(client, settings, tokens)
    assert first.user_handle == second.user_handle
    for authenticator in (first, second):
        pair = (await _sign_in(client, authenticator)).json()
        me = await client.get("/api/users/me", headers=bearer(pair))
        assert me.json()["uuid"] == user.uuid
    async with app.state.session_factory() as db:
        count = len(list(await db.scalars(select(Passkey).where(Passkey.user_uuid == user.uuid))))
    assert count == 2
    tokens = await login(client, user.username)
    listed = (await client.get("/api/auth/passkeys", headers=bearer(tokens))).json()["items"]
    assert len(listed) == 2


# A real browser ------------------------------------------------------------------------

#: What a web app's settings page does to add a passkey: the API's options to
#: navigator.credentials.create(), its answer back (run in the page, with a token).
REGISTER_IN_PAGE = """
async ({ token, password }) => {
  const fromB64 = (text) => {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    return Uint8Array.from(binary, (c) => c.charCodeAt(0)).buffer;
  };
  const toB64 = (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer)))
    .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const headers = { "Content-Type": "application/json", Authorization: "Bearer " + token };
  const begun = await (await fetch("/api/auth/passkeys/register/begin", {
    method: "POST", headers, body: JSON.stringify({ password }),
  })).json();
  const options = begun.options;
  const credential = await navigator.credentials.create({ publicKey: {
    ...options,
    challenge: fromB64(options.challenge),
    user: { ...options.user, id: fromB64(options.user.id) },
    excludeCredentials: options.excludeCredentials.map((c) => ({ ...c, id: fromB64(c.id) })),
  } });
  const finished = await fetch("/api/auth/passkeys/register/finish", {
    method: "POST", headers, body: JSON.stringify({
      challenge_id: begun.challenge_id,
      name: "Chromium",
      credential: {
        id: credential.id,
        rawId: toB64(credential.rawId),
        type: credential.type,
        response: {
          clientDataJSON: toB64(credential.response.clientDataJSON),
          attestationObject: toB64(credential.response.attestationObject),
          transports: credential.response.getTransports(),
        },
        clientExtensionResults: credential.getClientExtensionResults(),
      },
    }),
  });
  return { status: finished.status, body: await finished.json() };
}
"""


@pytest.fixture
def localhost_server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """The app on http://localhost:<port>: browsers allow WebAuthn on localhost (a
    secure context and a valid relying party id), not on an IP address."""
    sock = listening_socket()
    origin = f"http://localhost:{sock.getsockname()[1]}"
    env = {
        **settings_env(settings),
        "BASE_URL": origin,
        "WEBAUTHN_RP_ID": "localhost",
        "WEBAUTHN_ORIGINS": origin,
    }
    server = start_server(env, tmp_path / "server.log", sock=sock, host="localhost")
    try:
        yield server
    finally:
        server.stop()


def _virtual_authenticator(context: Any, page: Any) -> tuple[Any, str]:
    """Chromium's virtual platform authenticator (CDP ``WebAuthn``), user verified."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, added["authenticatorId"]


def _console(page: Any) -> list[str]:
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.on("pageerror", lambda error: messages.append(str(error)))
    return messages


def test_a_browser_registers_a_passkey_and_signs_in_without_typing(
    localhost_server: LiveServer, browser: Any
) -> None:
    url = localhost_server.url
    user, tokens = live_signup_and_login(url)
    context = browser.new_context()
    page = context.new_page()
    console = _console(page)
    cdp, authenticator_id = _virtual_authenticator(context, page)
    page.goto(f"{url}/signin")
    created = page.evaluate(
        REGISTER_IN_PAGE, {"token": tokens["access_token"], "password": PASSWORD}
    )
    assert created["status"] == 201, created
    stored = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})
    assert [c["isResidentCredential"] for c in stored["credentials"]] == [True]

    page.goto(f"{url}/signin?next=/interactive-docs")
    button = page.get_by_role("button", name="Sign in with a passkey")
    button.click()
    # A plain user may not read the docs: the page says so, naming who signed in.
    page.wait_for_selector("text=Not allowed")
    assert user["username"] in page.content()
    after = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})
    assert after["credentials"][0]["signCount"] >= 1
    assert [m for m in console if "Content Security Policy" in m] == []


def test_a_browser_uses_a_passkey_instead_of_the_code(
    localhost_server: LiveServer, browser: Any
) -> None:
    url = localhost_server.url
    user, tokens = live_signup_and_login(url)
    context = browser.new_context()
    page = context.new_page()
    console = _console(page)
    _virtual_authenticator(context, page)
    page.goto(f"{url}/signin")
    created = page.evaluate(
        REGISTER_IN_PAGE, {"token": tokens["access_token"], "password": PASSWORD}
    )
    assert created["status"] == 201, created
    setup = httpx.post(
        f"{url}/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=bearer(tokens),
    )
    totp = pyotp.parse_uri(setup.json()["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    enabled = httpx.post(
        f"{url}/api/auth/otp/enable",
        json={"method": "authenticator", "code": totp.now()},
        headers=bearer(tokens),
    )
    assert enabled.status_code == 200, enabled.text
    page.goto(f"{url}/signin?next=/interactive-docs")
    page.fill("#username", user["username"])
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.get_by_role("button", name="Use a passkey instead").click()
    page.wait_for_selector("text=Not allowed")
    assert user["username"] in page.content()
    assert [m for m in console if "Content Security Policy" in m] == []


# Admins ---------------------------------------------------------------------------------


async def test_an_admin_lists_and_removes_a_users_passkey(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens)
    admin, admin_tokens = await user_with_tokens(app, client, roles=("admin", "user"))
    _, moderator_tokens = await user_with_tokens(app, client, roles=("moderator", "user"))
    _, plain_tokens = await user_with_tokens(app, client)
    listing = f"/api/admin/user/{user.uuid}/passkeys"
    removal = f"{listing}/{passkey['id']}"
    for outsider in (moderator_tokens, plain_tokens):
        _refused(await client.get(listing, headers=bearer(outsider)), 403, "FORBIDDEN")
        _refused(await client.delete(removal, headers=bearer(outsider)), 403, "FORBIDDEN")
    listed = await client.get(listing, headers=bearer(admin_tokens))
    assert [item["id"] for item in listed.json()["items"]] == [passkey["id"]]
    assert (await _sign_in(client, authenticator)).status_code == 200

    removed = await client.delete(removal, headers=bearer(admin_tokens))
    assert removed.status_code == 204, removed.text
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")
    notice = await smtp_server.wait_for(user.email, 2)
    assert "removed by an administrator" in notice["Subject"]
    events = await history(app.state.session_factory, user.uuid)
    assert [e.by for e in events if e.action == "passkey_removed"] == [admin.uuid]
    _refused(await client.delete(removal, headers=bearer(admin_tokens)), 404, "PASSKEY_NOT_FOUND")
    unknown = f"/api/admin/user/{admin.uuid[:-4]}0000/passkeys"
    assert (await client.get(unknown, headers=bearer(admin_tokens))).status_code == 404


async def _drop_password(app: FastAPI, user: User) -> None:
    """The account signs in without a password from now on (as a provider's does)."""
    async with app.state.session_factory() as db:
        row = await db.get(User, user.uuid)
        assert row is not None
        row.hashed_password = None
        await db.commit()


async def test_the_last_way_in_is_never_deleted(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Without a password or a provider, two passkeys deleted at once leave one, and
    that one can be deleted neither by the user nor by an admin."""
    user, tokens = await _verified_user(app, client)
    _, first = await _register(client, settings, tokens)
    kept_authenticator, second = await _register(client, settings, tokens)
    reauthenticated = await client.post(
        "/api/auth/reauthenticate", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert reauthenticated.status_code == 200, reauthenticated.text
    await _drop_password(app, user)
    # Re-authenticated: the deletions need no body.
    answers = await asyncio.gather(
        *(
            client.request("DELETE", f"/api/auth/passkeys/{passkey['id']}", headers=bearer(tokens))
            for passkey in (first, second)
        )
    )
    assert sorted(answer.status_code for answer in answers) == [204, 409]
    refused = next(answer for answer in answers if answer.status_code == 409)
    assert refused.json()["code"] == "LAST_LOGIN_METHOD"
    left = (await client.get("/api/auth/passkeys", headers=bearer(tokens))).json()["items"]
    assert len(left) == 1
    _refused(
        await client.request(
            "DELETE", f"/api/auth/passkeys/{left[0]['id']}", headers=bearer(tokens)
        ),
        409,
        "LAST_LOGIN_METHOD",
    )
    _, admin_tokens = await user_with_tokens(app, client, roles=("admin", "user"))
    _refused(
        await client.delete(
            f"/api/admin/user/{user.uuid}/passkeys/{left[0]['id']}", headers=bearer(admin_tokens)
        ),
        409,
        "LAST_LOGIN_METHOD",
    )
    if left[0]["id"] == second["id"]:
        assert (await _sign_in(client, kept_authenticator)).status_code == 200


async def test_a_passkey_is_a_way_in_when_a_provider_is_unlinked(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """An account with a provider and a passkey, no password: the provider may go."""
    user, tokens = await _verified_user(app, client)
    await _register(client, settings, tokens)
    await _drop_password(app, user)
    async with app.state.session_factory() as db:
        db.add(ExternalAccount(provider="github", external_id="4242", user_uuid=user.uuid))
        await db.commit()
    _, admin_tokens = await user_with_tokens(app, client, roles=("admin", "user"))
    unlinked = await client.delete(
        f"/api/admin/user/{user.uuid}/external-accounts/github", headers=bearer(admin_tokens)
    )
    assert unlinked.status_code == 204, unlinked.text


async def test_the_command_line_lists_and_removes_a_users_passkey(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens)
    env = settings_env(settings)
    listed = await asyncio.to_thread(run_cli, env, "users", "passkeys", user.username)
    assert listed.returncode == 0, listed.stderr
    assert [item["id"] for item in json.loads(listed.stdout)] == [passkey["id"]]
    assert "public_key" not in listed.stdout
    removed = await asyncio.to_thread(
        run_cli, env, "users", "remove-passkey", user.email, passkey["id"]
    )
    assert removed.returncode == 0, removed.stderr
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")
    notice = await smtp_server.wait_for(user.email, 2)
    assert "removed by an administrator" in notice["Subject"]
    events = await history(app.state.session_factory, user.uuid)
    assert [e.by for e in events if e.action == "passkey_removed"] == [None]
    again = await asyncio.to_thread(
        run_cli, env, "users", "remove-passkey", user.username, passkey["id"]
    )
    assert again.returncode == 1


async def test_a_deleted_account_takes_its_passkeys_along(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens)
    deleted = await client.request(
        "DELETE",
        f"/api/user/{user.uuid}",
        json={"current_password": PASSWORD},
        headers=bearer(tokens),
    )
    assert deleted.status_code == 204, deleted.text
    assert await _stored(app, passkey["id"]) is None
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")
