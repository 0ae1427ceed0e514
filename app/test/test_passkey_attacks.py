"""Security review of passkeys (WebAuthn): attacks on challenges, verification, account
state, stolen tokens and hostile input, through the HTTP API with the software
authenticator. Each test states the invariant the relying party must keep."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from app.core.auth_cache.writes import bulk_write
from app.core.config import Settings
from app.models import Passkey, User, WebAuthnChallenge
from app.services import passkeys as passkey_service
from app.test.authenticator import SoftAuthenticator, b64url
from app.test.factories import PASSWORD, bearer, login, reauthenticate
from app.test.mail import MailCatcher
from app.test.test_floods import client_from
from app.test.test_passkeys import (
    _authenticator,
    _begin,
    _finish,
    _pending,
    _refused,
    _register,
    _register_begin,
    _register_finish,
    _sign_in,
    _stored,
    _verified_user,
    _with_authenticator_2fa,
)

REGISTER_BEGIN = "/api/auth/passkeys/register/begin"
FINISH_PATH = "/api/auth/passkeys/sign-in/finish"
SECOND_BEGIN = "/api/auth/passkeys/second-factor/begin"
SECOND_FINISH = "/api/auth/passkeys/second-factor/finish"


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    return smtp_server.settings()


class _Absent(SoftAuthenticator):
    """An authenticator that answers without the user present (UP flag clear)."""

    def _flags(self, extra: int = 0) -> bytes:
        return bytes([super()._flags(extra)[0] & ~0x01])


# Challenge binding ---------------------------------------------------------------------


async def test_a_sign_in_challenge_does_not_register_and_back(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    signing = await _begin(client)
    fresh = _authenticator(settings)
    fresh.user_handle = authenticator.user_handle
    # A sign-in challenge as a registration challenge.
    registration = fresh.create(
        {"challenge": signing["options"]["challenge"], "user": {"id": "AA"}}
    )
    _refused(
        await _register_finish(client, tokens, signing, registration),
        400,
        "PASSKEY_CHALLENGE_INVALID",
    )
    # A registration challenge as a sign-in challenge.
    registering = await _register_begin(client, tokens)
    answer = authenticator.get({"challenge": registering["options"]["challenge"]})
    _refused(await _finish(client, registering, answer), 400, "PASSKEY_CHALLENGE_INVALID")


async def test_a_second_factor_challenge_is_its_pending_logins_only(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    own, _ = await _register(client, settings, tokens)
    other, other_tokens = await _verified_user(app, client)
    others, _ = await _register(client, settings, other_tokens)
    await _with_authenticator_2fa(app, user)
    await _with_authenticator_2fa(app, other)
    first = await _pending(client, user.username)
    second = await _pending(client, user.username)
    foreign = await _pending(client, other.username)
    begun = (await client.post(SECOND_BEGIN, json={"otp_token": first})).json()
    # Another pending login of the same user.
    answer = own.get(begun["options"])
    moved = await client.post(
        SECOND_FINISH,
        json={"otp_token": second, "challenge_id": begun["challenge_id"], "credential": answer},
    )
    _refused(moved, 400, "PASSKEY_CHALLENGE_INVALID")
    # Another user's pending login, with that user's own passkey.
    begun = (await client.post(SECOND_BEGIN, json={"otp_token": first})).json()
    crossed = await client.post(
        SECOND_FINISH,
        json={
            "otp_token": foreign,
            "challenge_id": begun["challenge_id"],
            "credential": others.get(begun["options"]),
        },
    )
    _refused(crossed, 400, "PASSKEY_CHALLENGE_INVALID")
    # A sign-in challenge as a second-factor challenge.
    signing = await _begin(client)
    swapped = await client.post(
        SECOND_FINISH,
        json={
            "otp_token": first,
            "challenge_id": signing["challenge_id"],
            "credential": own.get(signing["options"]),
        },
    )
    _refused(swapped, 400, "PASSKEY_CHALLENGE_INVALID")


# Verification --------------------------------------------------------------------------


async def test_no_user_presence_neither_registers_nor_signs_in(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    absent = _Absent(settings.WEBAUTHN_RP_ID, settings.WEBAUTHN_ORIGINS[0])
    begun = await _register_begin(client, tokens)
    _refused(
        await _register_finish(client, tokens, begun, absent.create(begun["options"])),
        400,
        "PASSKEY_NOT_ACCEPTED",
    )
    present, _ = await _register(client, settings, tokens)
    absent.key, absent.credential_id = present.key, present.credential_id
    absent.user_handle, absent.sign_count = present.user_handle, present.sign_count
    _refused(await _sign_in(client, absent), 401, "INVALID_PASSKEY")


async def test_registration_without_user_verification_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    unverified = _authenticator(settings, user_verified=False)
    begun = await _register_begin(client, tokens)
    _refused(
        await _register_finish(client, tokens, begun, unverified.create(begun["options"])),
        400,
        "PASSKEY_NOT_ACCEPTED",
    )


async def test_the_user_handle_of_another_account_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    mine, _ = await _register(client, settings, tokens)
    _, other_tokens = await _verified_user(app, client)
    theirs, _ = await _register(client, settings, other_tokens)
    _refused(await _sign_in(client, mine, user_handle=theirs.user_handle), 401, "INVALID_PASSKEY")
    begun = await _begin(client)
    no_handle = mine.get(begun["options"])
    no_handle["response"]["userHandle"] = None
    _refused(await _finish(client, begun, no_handle), 401, "INVALID_PASSKEY")


async def test_a_credential_id_of_a_signed_by_b_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    victim, _ = await _register(client, settings, tokens)
    _, other_tokens = await _verified_user(app, client)
    attacker, _ = await _register(client, settings, other_tokens)
    forged = attacker.clone()
    forged.credential_id, forged.user_handle = victim.credential_id, victim.user_handle
    forged.sign_count = 100
    _refused(await _sign_in(client, forged), 401, "INVALID_PASSKEY")
    assert (await _sign_in(client, victim)).status_code == 200


async def test_a_counting_passkey_that_falls_back_to_zero_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    assert (await _sign_in(client, authenticator)).status_code == 200
    authenticator.counting, authenticator.sign_count = False, 0
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")
    authenticator.counting = True
    authenticator.sign_count = 0  # rollback to 1 (stored: 1)
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")


async def test_two_copies_racing_with_one_counter_sign_in_once(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    original, _ = await _register(client, settings, tokens)
    copies = [original.clone() for _ in range(5)]
    begun = [await _begin(client) for _ in copies]
    answers = [copy.get(b["options"]) for copy, b in zip(copies, begun, strict=True)]
    responses = await asyncio.gather(
        *(_finish(client, b, a) for b, a in zip(begun, answers, strict=True))
    )
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401, 401]


async def test_one_credential_is_registered_once_across_accounts(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    _, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    again = await _register_begin(client, tokens)
    _refused(
        await _register_finish(client, tokens, again, authenticator.create(again["options"])),
        409,
        "PASSKEY_EXISTS",
    )
    _, other_tokens = await _verified_user(app, client)
    theirs = await _register_begin(client, other_tokens)
    _refused(
        await _register_finish(
            client, other_tokens, theirs, authenticator.create(theirs["options"])
        ),
        409,
        "PASSKEY_EXISTS",
    )


# Account state -------------------------------------------------------------------------


async def test_an_account_being_deleted_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    async with app.state.session_factory() as db:
        await bulk_write(
            db,
            update(User)
            .where(User.uuid == user.uuid)
            .values(is_active=False, deactivated_reason="deleting"),
            users=[user.uuid],
        )
        await db.commit()
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")


async def test_an_account_deleted_meanwhile_is_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    begun = await _begin(client)
    answer = authenticator.get(begun["options"])
    async with app.state.session_factory() as db:
        row = await db.get(User, user.uuid)
        await db.delete(row)
        await db.commit()
    _refused(await _finish(client, begun, answer), 401, "INVALID_PASSKEY")


# Stolen access token -------------------------------------------------------------------


async def test_a_fresh_login_token_alone_cannot_register_a_passkey(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A stolen access token (even right after its login) must not plant a passkey."""
    _, tokens = await _verified_user(app, client)
    _refused(
        await client.post(REGISTER_BEGIN, json={}, headers=bearer(tokens)),
        403,
        "REAUTHENTICATION_REQUIRED",
    )


async def test_another_users_passkey_cannot_be_renamed_deleted_or_listed(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    owner, tokens = await _verified_user(app, client)
    _, passkey = await _register(client, settings, tokens)
    _, thief = await _verified_user(app, client)
    path = f"/api/auth/passkeys/{passkey['id']}"
    _refused(
        await client.patch(path, json={"name": "mine"}, headers=bearer(thief)),
        404,
        "PASSKEY_NOT_FOUND",
    )
    _refused(
        await client.request("DELETE", path, json={"password": PASSWORD}, headers=bearer(thief)),
        404,
        "PASSKEY_NOT_FOUND",
    )
    assert (await client.get("/api/auth/passkeys", headers=bearer(thief))).json()["items"] == []
    assert (
        await client.get(f"/api/admin/user/{owner.uuid}/passkeys", headers=bearer(thief))
    ).status_code in (403, 404)
    assert (await _stored(app, passkey["id"])).name == "Laptop"  # type: ignore[union-attr]


async def test_parallel_registrations_keep_the_passkey_limit(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_PASSKEYS holds when the last free places are raced for."""
    monkeypatch.setattr(passkey_service, "MAX_PASSKEYS", 2)
    user, tokens = await _verified_user(app, client)
    await _register(client, settings, tokens)
    await reauthenticate(client, tokens)
    begun = [await _register_begin(client, tokens) for _ in range(12)]
    responses = await asyncio.gather(
        *(
            _register_finish(client, tokens, b, _authenticator(settings).create(b["options"]))
            for b in begun
        )
    )
    async with app.state.session_factory() as db:
        held = await db.scalar(select(func.count()).where(Passkey.user_uuid == user.uuid))
    assert held == 2, [r.status_code for r in responses]


# Hostile input -------------------------------------------------------------------------


async def test_an_overlong_credential_id_is_a_clear_4xx(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """WebAuthn caps credential ids at 1023 bytes; the column holds 1400 characters."""
    _, tokens = await _verified_user(app, client)
    authenticator = _authenticator(settings)
    authenticator.credential_id = b"\x01" * 1100  # 1467 base64url characters
    begun = await _register_begin(client, tokens)
    response = await _register_finish(client, tokens, begun, authenticator.create(begun["options"]))
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "credential",
    [
        {"id": "!!!", "rawId": "!!!", "type": "public-key", "response": {}},
        {"id": 5, "rawId": [1], "type": None, "response": "x"},
        {
            "id": "AA",
            "rawId": "AA",
            "type": "public-key",
            "response": {"clientDataJSON": "%%%", "attestationObject": "@@@", "transports": [7]},
        },
        {
            "id": "AA",
            "rawId": "AA",
            "type": "public-key",
            "response": {"clientDataJSON": b64url(b"{}"), "attestationObject": b64url(b"\xff")},
        },
        {"id": "A" * 200_000, "rawId": "A" * 200_000, "type": "public-key", "response": {}},
    ],
)
async def test_garbage_registrations_are_4xx(
    app: FastAPI, client: httpx.AsyncClient, credential: dict[str, Any]
) -> None:
    _, tokens = await _verified_user(app, client)
    begun = await _register_begin(client, tokens)
    response = await _register_finish(client, tokens, begun, credential)
    assert 400 <= response.status_code < 500, response.text
    assert "code" in response.json()


@pytest.mark.parametrize(
    "credential",
    [
        {"id": "AA", "rawId": "AA", "type": "public-key", "response": {"userHandle": 5}},
        {
            "id": "A" * 3000,
            "rawId": "A" * 3000,
            "type": "public-key",
            "response": {"clientDataJSON": "AA", "authenticatorData": "AA", "signature": "AA"},
        },
        {
            "id": "AA",
            "rawId": "AA",
            "type": "public-key",
            "response": {
                "clientDataJSON": "AA",
                "authenticatorData": "AA",
                "signature": "AA",
                "userHandle": "%%%",
            },
        },
    ],
)
async def test_garbage_assertions_are_4xx(
    client: httpx.AsyncClient, credential: dict[str, Any]
) -> None:
    response = await _finish(client, await _begin(client), credential)
    assert 400 <= response.status_code < 500, response.text
    assert "code" in response.json()


async def test_deep_or_huge_credential_json_is_4xx(client: httpx.AsyncClient) -> None:
    begun = await _begin(client)
    nested = '{"a":' * 5000 + "1" + "}" * 5000
    deep = f'{{"challenge_id": "{begun["challenge_id"]}", "credential": {nested}}}'
    response = await client.post(
        "/api/auth/passkeys/sign-in/finish",
        content=deep,
        headers={"content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    huge = json.dumps({"challenge_id": "x", "credential": {"id": "A" * 2_000_000}})
    response = await client.post(
        "/api/auth/passkeys/sign-in/finish",
        content=huge,
        headers={"content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("Clé 🔑 工作", 201),
        ("\u202egnp.exe", 201),
        ("x" * 64, 201),
        ("x" * 65, 422),
        ("a\nb", 422),
        ("\ud800", 422),
        ("   ", 422),
    ],
)
async def test_passkey_names(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, name: str, status: int
) -> None:
    _, tokens = await _verified_user(app, client)
    begun = await _register_begin(client, tokens)
    credential = _authenticator(settings).create(begun["options"])
    body = json.dumps(
        {"challenge_id": begun["challenge_id"], "credential": credential, "name": name},
        ensure_ascii=True,
    )
    response = await client.post(
        "/api/auth/passkeys/register/finish",
        content=body,
        headers={**bearer(tokens), "content-type": "application/json"},
    )
    assert response.status_code == status, response.text
    if status == 201:
        assert response.json()["name"] == name.strip()


# Secrets -------------------------------------------------------------------------------


async def test_no_credential_material_in_logs_or_options(
    app: FastAPI,
    client: httpx.AsyncClient,
    settings: Settings,
    captured_logs: list[str],
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens)
    assert (await _sign_in(client, authenticator)).status_code == 200
    _refused(
        await _sign_in(client, authenticator, origin="https://evil.example"), 401, "INVALID_PASSKEY"
    )
    stored = await _stored(app, passkey["id"])
    assert stored is not None
    public_key = b64url(stored.public_key)
    secrets = [
        public_key,
        stored.public_key.hex(),
        stored.user_handle,
        b64url(authenticator.credential_id),
    ]
    for line in captured_logs:
        for secret in secrets:
            assert secret not in line, line
    begun = await _begin(client)
    assert passkey["id"] not in json.dumps(begun)
    assert user.uuid not in json.dumps(begun)


# Endpoint quality ----------------------------------------------------------------------


def test_passkey_operations_are_documented(app: FastAPI) -> None:
    schema = app.openapi()
    seen = 0
    for path, item in schema["paths"].items():
        if "passkey" not in path:
            continue
        for method, operation in item.items():
            seen += 1
            assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", operation["operationId"]), (
                path,
                operation["operationId"],
            )
            assert operation.get("tags"), (path, method)
            assert operation.get("description") or operation.get("summary"), (path, method)
            has_input = "requestBody" in operation or operation.get("parameters")
            assert ("422" in operation["responses"]) == bool(has_input), (path, method)
            assert "401" in operation["responses"] or "sign-in" in path, (path, method)
            if (
                path.endswith(("/finish", "/register/begin", "/sign-in/begin"))
                and "register/finish" not in path
            ):
                assert "429" in operation["responses"], (path, method)
            ok = operation["responses"].get("200") or operation["responses"].get("201")
            if ok is not None:
                assert "$ref" in json.dumps(ok), (path, method)
    assert seen >= 8


# Rate limits ---------------------------------------------------------------------------


async def test_opening_sign_in_ceremonies_is_limited_per_address(client: httpx.AsyncClient) -> None:
    """AUTH_RATE_LIMIT_ADDRESS (100 per 15 minutes) per address."""
    statuses = [
        (await client.post("/api/auth/passkeys/sign-in/begin")).status_code for _ in range(101)
    ]
    assert statuses[:100] == [200] * 100
    assert statuses[100] == 429


async def test_opening_second_factor_ceremonies_is_limited(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Each second-factor/begin writes a challenge row, as sign-in/begin does; without a
    limit one pending login opens rows without end (sign-in/begin is limited)."""
    user, tokens = await _verified_user(app, client)
    await _register(client, settings, tokens)
    await _with_authenticator_2fa(app, user)
    otp_token = await _pending(client, user.username)
    statuses = [
        (await client.post(SECOND_BEGIN, json={"otp_token": otp_token})).status_code
        for _ in range(101)
    ]
    assert 429 in statuses, statuses[-3:]


async def test_a_refused_registration_logs_no_credential_material(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, captured_logs: list[str]
) -> None:
    """Whatever goes wrong storing a passkey (here an overlong credential id), the log
    holds neither its public key nor its credential id nor the account's user handle."""
    _, tokens = await _verified_user(app, client)
    authenticator = _authenticator(settings)
    authenticator.credential_id = b"\x02" * 1100
    begun = await _register_begin(client, tokens)
    await _register_finish(client, tokens, begun, authenticator.create(begun["options"]))
    material = [b64url(authenticator.credential_id)[:40], begun["options"]["user"]["id"]]
    numbers = authenticator.key.public_key().public_numbers()
    material.append(numbers.x.to_bytes(32, "big").hex()[:32])
    material.append(repr(numbers.x.to_bytes(32, "big"))[2:30])
    logged = "\n".join(captured_logs)
    for item in material:
        assert item not in logged, item


async def test_a_registration_begun_in_one_session_finishes_in_no_other(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Another session of the same account (a stolen token) cannot finish a ceremony
    the owner's session re-authenticated for."""
    user, tokens = await _verified_user(app, client)
    other_session = await login(client, user.username)
    begun = await _register_begin(client, tokens)
    credential = _authenticator(settings).create(begun["options"])
    _refused(
        await _register_finish(client, other_session, begun, credential),
        400,
        "PASSKEY_CHALLENGE_INVALID",
    )


async def test_a_passkey_alone_signs_in_an_account_with_2fa(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """By design the passkey (with user verification) is the only factor: no otp step,
    but only with UV; without UV the sign-in is refused even though 2FA is on."""
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens)
    await _with_authenticator_2fa(app, user)
    signed_in = await _sign_in(client, authenticator)
    assert signed_in.status_code == 200, signed_in.text
    assert "otp_required" not in signed_in.json()
    authenticator.user_verified = False
    _refused(await _sign_in(client, authenticator), 401, "INVALID_PASSKEY")


async def test_a_token_from_a_passkey_sign_in_alone_cannot_register_a_passkey(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """A stolen token from a passkey sign-in must not plant another passkey either."""
    _, tokens = await _verified_user(app, client)
    authenticator, passkey = await _register(client, settings, tokens)
    signed_in = await _sign_in(client, authenticator)
    assert signed_in.status_code == 200, signed_in.text
    stolen = signed_in.json()
    _refused(
        await client.post(REGISTER_BEGIN, json={}, headers=bearer(stolen)),
        403,
        "REAUTHENTICATION_REQUIRED",
    )
    _refused(
        await client.request(
            "DELETE", f"/api/auth/passkeys/{passkey['id']}", headers=bearer(stolen)
        ),
        403,
        "REAUTHENTICATION_REQUIRED",
    )


async def test_parallel_second_factor_ceremonies_finish_one_login(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Several ceremonies opened for one pending login, answered at once: one session."""
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens, counting=False)
    await _with_authenticator_2fa(app, user)
    otp_token = await _pending(client, user.username)
    begun = [
        (await client.post(SECOND_BEGIN, json={"otp_token": otp_token})).json() for _ in range(5)
    ]
    responses = await asyncio.gather(
        *(
            client.post(
                SECOND_FINISH,
                json={
                    "otp_token": otp_token,
                    "challenge_id": b["challenge_id"],
                    "credential": authenticator.get(b["options"]),
                },
            )
            for b in begun
        )
    )
    assert sorted(r.status_code for r in responses) == [200, 401, 401, 401, 401], [
        r.text for r in responses
    ]


async def test_strangers_cannot_lock_the_owners_device_out_of_passkey_sign_in(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """As for passwords (test_floods): failures by strangers who know the credential id
    use up the account-wide allowance, but the owner's known device (its device cookie)
    keeps its own and still signs in."""
    _, tokens = await _verified_user(app, client)
    owner, _ = await _register(client, settings, tokens)
    first = await _sign_in(client, owner)  # the client keeps the device cookie
    assert first.status_code == 200, first.text
    assert first.json()["device_token"]
    forged = _authenticator(settings)
    forged.credential_id, forged.user_handle = owner.credential_id, owner.user_handle
    forged.sign_count = 1000
    async with client_from(app, "192.0.2.77") as stranger:
        statuses = [(await _sign_in(stranger, forged)).status_code for _ in range(12)]
    assert statuses[:10] == [401] * 10, statuses
    assert 429 in statuses[10:], statuses
    again = await _sign_in(client, owner)
    assert again.status_code == 200, again.text


async def _expire(app: FastAPI, challenge_id: str) -> None:
    async with app.state.session_factory() as db:
        await db.execute(
            update(WebAuthnChallenge)
            .where(WebAuthnChallenge.id == challenge_id)
            .values(expires_at=WebAuthnChallenge.created_at)
        )
        await db.commit()


async def test_expired_and_spent_registration_and_second_factor_challenges_are_refused(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user, tokens = await _verified_user(app, client)
    authenticator, _ = await _register(client, settings, tokens, counting=False)
    await reauthenticate(client, tokens)
    begun = await _register_begin(client, tokens)
    await _expire(app, begun["challenge_id"])
    fresh = _authenticator(settings)
    _refused(
        await _register_finish(client, tokens, begun, fresh.create(begun["options"])),
        400,
        "PASSKEY_CHALLENGE_INVALID",
    )
    # A failed answer spends the challenge: the right one after it is refused.
    begun = await _register_begin(client, tokens)
    _refused(
        await _register_finish(
            client, tokens, begun, fresh.create(begun["options"], origin="https://evil.example")
        ),
        400,
        "PASSKEY_NOT_ACCEPTED",
    )
    _refused(
        await _register_finish(client, tokens, begun, fresh.create(begun["options"])),
        400,
        "PASSKEY_CHALLENGE_INVALID",
    )
    await _with_authenticator_2fa(app, user)
    otp_token = await _pending(client, user.username)
    second = (await client.post(SECOND_BEGIN, json={"otp_token": otp_token})).json()
    await _expire(app, second["challenge_id"])
    expired = await client.post(
        SECOND_FINISH,
        json={
            "otp_token": otp_token,
            "challenge_id": second["challenge_id"],
            "credential": authenticator.get(second["options"]),
        },
    )
    _refused(expired, 400, "PASSKEY_CHALLENGE_INVALID")


async def test_passkey_sign_in_answers_are_limited_per_address(client: httpx.AsyncClient) -> None:
    """AUTH_RATE_LIMIT_ADDRESS per address, malformed answers included."""
    statuses = [
        (
            await client.post(FINISH_PATH, json={"challenge_id": "x", "credential": {"id": "x"}})
        ).status_code
        for _ in range(101)
    ]
    assert statuses[:100] == [400] * 100
    assert statuses[100] == 429
