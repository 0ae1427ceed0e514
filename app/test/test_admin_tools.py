"""The admins' account tools, end to end over HTTP with real mail: reset 2FA, clear a
sign-in lock, list and end sessions, mail a reset link, list and unlink providers; and
who is refused each of them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import httpx
import jwt
import pyotp
import pytest
from fastapi import FastAPI

from app.core.config import Settings
from app.models import ExternalAccount, User
from app.test.conftest import empty_redis, settings_env
from app.test.factories import (
    PASSWORD,
    bearer,
    login,
    signup_and_login,
    user_with_tokens,
)
from app.test.mail import MailCatcher, link_in, text_body, token_in, verify_address
from app.test.server import run_cli

NEW_PASSWORD = "a completely new passphrase"


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    """Real mail, and a small account allowance so that a lock is quick to reach."""
    return {**smtp_server.settings(), "AUTH_RATE_LIMIT_ACCOUNT": "3 per 15 minutes"}


async def _verified_user(client: httpx.AsyncClient, smtp_server: MailCatcher) -> tuple[dict, dict]:
    """A signed-up user with a verified email (notices go only there), and their tokens."""
    user, tokens = await signup_and_login(client)
    await verify_address(client, smtp_server, user["email"])
    return user, tokens


async def _admin(app: FastAPI, client: httpx.AsyncClient) -> tuple[str, dict]:
    admin, tokens = await user_with_tokens(app, client, roles=("admin", "user"))
    return admin.uuid, tokens


async def _moderator(app: FastAPI, client: httpx.AsyncClient) -> tuple[str, dict]:
    moderator, tokens = await user_with_tokens(app, client, roles=("moderator", "user"))
    return moderator.uuid, tokens


async def _history(client: httpx.AsyncClient, user_uuid: str, tokens: dict) -> list[dict]:
    response = await client.get(f"/api/user/{user_uuid}/history", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def _notice(smtp_server: MailCatcher, address: str, count: int) -> str:
    message = await smtp_server.wait_for(address, count)
    return f"{message['Subject']}\n{text_body(message)}"


async def _enrol_authenticator(client: httpx.AsyncClient, tokens: dict) -> pyotp.TOTP:
    setup = await client.post(
        "/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=bearer(tokens),
    )
    assert setup.status_code == 200, setup.text
    totp = pyotp.parse_uri(setup.json()["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    enabled = await client.post(
        "/api/auth/otp/enable",
        json={"method": "authenticator", "code": totp.now()},
        headers=bearer(tokens),
    )
    assert enabled.status_code == 200, enabled.text
    assert len(enabled.json()["recovery_codes"]) == 10
    return totp


async def _login_answer(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", data={"username": username, "password": password})


# Journeys ------------------------------------------------------------------------------


async def test_reset_two_factor(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(client, smtp_server)
    await _enrol_authenticator(client, tokens)
    pending = await _login_answer(client, user["username"], PASSWORD)
    assert pending.json()["otp_required"] is True  # the phone is lost: stuck here

    admin_uuid, admin_tokens = await _admin(app, client)
    reset = await client.post(
        f"/api/admin/user/{user['uuid']}/two-factor/reset", headers=bearer(admin_tokens)
    )
    assert reset.status_code == 200, reset.text
    assert reset.json()["otp_method"] == "none"

    # The password alone opens the account now; the old sessions are over.
    fresh = await login(client, user["username"])
    assert "access_token" in fresh
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
    # The recovery codes went with the method.
    left = await client.get("/api/auth/otp/recovery-codes", headers=bearer(fresh))
    assert left.json() == {"remaining": 0}
    # The pending login of the old method leads nowhere.
    stale = await client.post(
        "/api/auth/otp/verify",
        json={"otp_token": pending.json()["otp_token"], "code": "000000"},
    )
    assert stale.status_code == 401

    # Mails: the verification, "2FA turned on", then this.
    assert "turned off by an administrator" in await _notice(smtp_server, user["email"], 3)
    for viewer in (fresh, admin_tokens):
        events = await _history(client, user["uuid"], viewer)
        reset_event = next(event for event in events if event["action"] == "otp_reset")
        assert reset_event["by"] == admin_uuid
        assert reset_event["details"] == {"method": "authenticator"}

    again = await client.post(
        f"/api/admin/user/{user['uuid']}/two-factor/reset", headers=bearer(admin_tokens)
    )
    assert again.status_code == 409
    assert again.json()["code"] == "OTP_NOT_ENABLED"


async def test_clear_login_lock(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, _ = await _verified_user(client, smtp_server)
    # Strangers (no device token of the account) use up its allowance; the owner, on
    # a new device, is refused even with the right password.
    for _attempt in range(3):
        client.cookies.clear()
        assert (await _login_answer(client, user["username"], "wrong")).status_code == 401
    client.cookies.clear()
    locked = await _login_answer(client, user["username"], PASSWORD)
    assert locked.status_code == 429

    moderator_uuid, moderator_tokens = await _moderator(app, client)
    cleared = await client.delete(
        f"/api/admin/user/{user['uuid']}/login-lock", headers=bearer(moderator_tokens)
    )
    assert cleared.status_code == 204, cleared.text
    client.cookies.clear()
    tokens = await login(client, user["username"])

    assert "cleared the lock" in await _notice(smtp_server, user["email"], 2)
    events = await _history(client, user["uuid"], tokens)
    cleared_event = next(event for event in events if event["action"] == "login_lock_cleared")
    assert cleared_event["by"] == moderator_uuid


class TestTwoFactorCodeLock:
    """Wrong 2FA codes lock an account too (counted in the database, per account)."""

    @pytest.fixture
    def settings_overrides(self, smtp_server: MailCatcher) -> dict[str, object]:
        return {**smtp_server.settings(), "AUTH_RATE_LIMIT_ACCOUNT": "50 per 15 minutes"}

    async def test_clear_a_code_lock(
        self, app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
    ) -> None:
        user, tokens = await _verified_user(client, smtp_server)
        totp = await _enrol_authenticator(client, tokens)
        for _login in range(2):
            pending = (await _login_answer(client, user["username"], PASSWORD)).json()
            for _code in range(5):
                wrong = await client.post(
                    "/api/auth/otp/verify",
                    json={"otp_token": pending["otp_token"], "code": "000000"},
                )
                assert wrong.status_code in (400, 401), wrong.text
        locked = await _login_answer(client, user["username"], PASSWORD)
        assert locked.status_code == 429
        assert locked.json()["code"] == "OTP_THROTTLED"

        _, admin_tokens = await _admin(app, client)
        cleared = await client.delete(
            f"/api/admin/user/{user['uuid']}/login-lock", headers=bearer(admin_tokens)
        )
        assert cleared.status_code == 204
        pending = (await _login_answer(client, user["username"], PASSWORD)).json()
        verified = await client.post(
            "/api/auth/otp/verify",
            json={"otp_token": pending["otp_token"], "code": totp.at(time.time() + 30)},
        )
        assert verified.status_code == 200, verified.text
        assert "access_token" in verified.json()


async def test_list_and_revoke_sessions(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, phone = await _verified_user(client, smtp_server)
    laptop = await login(client, user["username"])
    # Both tokens are answered from the auth cache from now on.
    for tokens in (phone, laptop):
        assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 200

    admin_uuid, admin_tokens = await _admin(app, client)
    listed = await client.get(
        f"/api/admin/user/{user['uuid']}/sessions", headers=bearer(admin_tokens)
    )
    assert listed.status_code == 200, listed.text
    sessions = listed.json()["items"]
    assert len(sessions) == 2
    assert not any(session["current"] for session in sessions)
    validated = await client.get("/api/auth/token/validate", headers=bearer(laptop))
    laptop_session = validated.json()["session_id"]
    assert laptop_session in {session["id"] for session in sessions}

    ended = await client.delete(
        f"/api/admin/user/{user['uuid']}/sessions/{laptop_session}", headers=bearer(admin_tokens)
    )
    assert ended.status_code == 204, ended.text
    # At once, although the token was cached: the laptop is out, the phone is not.
    assert (await client.get("/api/users/me", headers=bearer(laptop))).status_code == 401
    refreshed = await client.post(
        "/api/auth/refresh", json={"refresh_token": laptop["refresh_token"]}
    )
    assert refreshed.status_code == 401
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 200
    again = await client.delete(
        f"/api/admin/user/{user['uuid']}/sessions/{laptop_session}", headers=bearer(admin_tokens)
    )
    assert again.status_code == 404
    assert again.json()["code"] == "SESSION_NOT_FOUND"

    every = await client.delete(
        f"/api/admin/user/{user['uuid']}/sessions", headers=bearer(admin_tokens)
    )
    assert every.json() == {"revoked": 1}
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 401

    assert "signed you out" in await _notice(smtp_server, user["email"], 2)
    events = await _history(client, user["uuid"], admin_tokens)
    revoked = [event for event in events if event["action"] == "sessions_revoked"]
    assert [event["details"] for event in revoked] == [
        {"sessions": 1},
        {"session": laptop_session},
    ]
    assert {event["by"] for event in revoked} == {admin_uuid}


async def test_send_password_reset(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, _ = await _verified_user(client, smtp_server)
    admin_uuid, admin_tokens = await _admin(app, client)
    sent = await client.post(
        f"/api/admin/user/{user['uuid']}/password-reset", headers=bearer(admin_tokens)
    )
    assert sent.status_code == 202, sent.text
    mail = await smtp_server.wait_for(user["email"], 2)
    assert "Reset your" in mail["Subject"]
    reset = await client.post(
        "/api/auth/password/reset",
        json={"token": token_in(link_in(mail)), "new_password": NEW_PASSWORD},
    )
    assert reset.status_code == 204, reset.text
    tokens = await login(client, user["username"], NEW_PASSWORD)
    events = await _history(client, user["uuid"], tokens)
    sent_event = next(event for event in events if event["action"] == "password_reset_sent")
    assert sent_event["by"] == admin_uuid

    unverified, _ = await signup_and_login(client)
    refused = await client.post(
        f"/api/admin/user/{unverified['uuid']}/password-reset", headers=bearer(admin_tokens)
    )
    assert refused.status_code == 409
    assert refused.json()["code"] == "EMAIL_NOT_VERIFIED"


async def _link(app: FastAPI, user_uuid: str, provider: str) -> None:
    async with app.state.session_factory() as db:
        db.add(
            ExternalAccount(
                provider=provider,
                external_id=f"{provider}-{user_uuid}",
                username=f"{provider}_name",
                email="someone@provider.example",
                user_uuid=user_uuid,
            )
        )
        await db.commit()


async def test_list_and_unlink_external_accounts(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(client, smtp_server)
    await _link(app, user["uuid"], "github")
    await _link(app, user["uuid"], "discord")
    admin_uuid, admin_tokens = await _admin(app, client)
    path = f"/api/admin/user/{user['uuid']}/external-accounts"

    listed = await client.get(path, headers=bearer(admin_tokens))
    assert listed.status_code == 200, listed.text
    assert [(a["provider"], a["username"]) for a in listed.json()["items"]] == [
        ("discord", "discord_name"),
        ("github", "github_name"),
    ]
    unlinked = await client.delete(f"{path}/github", headers=bearer(admin_tokens))
    assert unlinked.status_code == 204, unlinked.text
    listed = await client.get(path, headers=bearer(admin_tokens))
    assert [a["provider"] for a in listed.json()["items"]] == ["discord"]
    missing = await client.delete(f"{path}/github", headers=bearer(admin_tokens))
    assert missing.status_code == 404
    assert missing.json()["code"] == "OAUTH_ACCOUNT_NOT_LINKED"
    unknown = await client.delete(f"{path}/myspace", headers=bearer(admin_tokens))
    assert unknown.status_code == 422

    assert "unlinked a GitHub account" in await _notice(smtp_server, user["email"], 2)
    events = await _history(client, user["uuid"], tokens)
    event = next(event for event in events if event["action"] == "oauth_unlinked")
    assert (event["by"], event["details"]) == (admin_uuid, {"provider": "github"})


async def test_unlink_never_leaves_an_account_without_a_way_in(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user, _ = await user_with_tokens(app, client)
    async with app.state.session_factory() as db:
        stored = await db.get(User, user.uuid)
        assert stored is not None
        stored.hashed_password = None  # a provider-only account
        await db.commit()
    await _link(app, user.uuid, "github")
    _, admin_tokens = await _admin(app, client)
    path = f"/api/admin/user/{user.uuid}/external-accounts/github"
    refused = await client.delete(path, headers=bearer(admin_tokens))
    assert refused.status_code == 409
    assert refused.json()["code"] == "LAST_LOGIN_METHOD"
    listed = await client.get(
        f"/api/admin/user/{user.uuid}/external-accounts", headers=bearer(admin_tokens)
    )
    assert [a["provider"] for a in listed.json()["items"]] == ["github"]


async def test_parallel_unlinks_leave_a_way_in(app: FastAPI, client: httpx.AsyncClient) -> None:
    """The user's and an admin's unlinks of the last two providers at the same moment:
    one succeeds, the other is refused, whatever the timing."""
    for _round in range(5):
        user, user_tokens = await user_with_tokens(app, client)
        async with app.state.session_factory() as db:
            stored = await db.get(User, user.uuid)
            assert stored is not None
            stored.hashed_password = None
            await db.commit()
        await _link(app, user.uuid, "github")
        await _link(app, user.uuid, "discord")
        _, admin_tokens = await _admin(app, client)
        answers = await asyncio.gather(
            client.delete("/api/oauth/github", headers=bearer(user_tokens)),
            client.delete(
                f"/api/admin/user/{user.uuid}/external-accounts/discord",
                headers=bearer(admin_tokens),
            ),
        )
        assert sorted(answer.status_code for answer in answers) == [204, 409], [
            answer.text for answer in answers
        ]
        listed = await client.get(
            f"/api/admin/user/{user.uuid}/external-accounts", headers=bearer(admin_tokens)
        )
        assert len(listed.json()["items"]) == 1


# Who may use them -----------------------------------------------------------------------

#: Every tool: method, path after /api/admin/user/{uuid}, and whether moderators may
#: use it on users who are not staff.
TOOLS = [
    ("POST", "/two-factor/reset", False),
    ("DELETE", "/login-lock", True),
    ("GET", "/sessions", True),
    ("DELETE", "/sessions", True),
    ("DELETE", "/sessions/00000000-0000-4000-8000-000000000000", True),
    ("POST", "/password-reset", True),
    ("GET", "/external-accounts", True),
    ("DELETE", "/external-accounts/github", False),
]


async def _use(
    client: httpx.AsyncClient, tool: tuple[str, str, bool], target: str, tokens: dict
) -> httpx.Response:
    method, path, _ = tool
    return await client.request(method, f"/api/admin/user/{target}{path}", headers=bearer(tokens))


@pytest.mark.parametrize("tool", TOOLS, ids=[f"{m} {p}" for m, p, _ in TOOLS])
async def test_who_is_refused(
    app: FastAPI, client: httpx.AsyncClient, tool: tuple[str, str, bool]
) -> None:
    plain, plain_tokens = await user_with_tokens(app, client)
    other, _ = await user_with_tokens(app, client)
    admin_uuid, admin_tokens = await _admin(app, client)
    moderator_uuid, moderator_tokens = await _moderator(app, client)

    # A plain user: not on others, not on themselves.
    for target in (other.uuid, plain.uuid, admin_uuid):
        refused = await _use(client, tool, target, plain_tokens)
        assert refused.status_code == 403, (target, refused.text)
        assert refused.json()["code"] == "FORBIDDEN"
    # A moderator: never on an admin, nor on a moderator (themselves included); on a
    # plain user only where ROLES says so.
    for target in (admin_uuid, moderator_uuid):
        assert (await _use(client, tool, target, moderator_tokens)).status_code == 403
    on_plain = await _use(client, tool, other.uuid, moderator_tokens)
    if tool[2]:
        assert on_plain.status_code != 403, on_plain.text
    else:
        assert on_plain.status_code == 403
    # Nobody reaches an unknown user: 404.
    unknown = await _use(client, tool, "00000000-0000-4000-8000-0000000000ff", admin_tokens)
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "USER_NOT_FOUND"
    # The refused attempts changed nothing: their targets' sessions still work.
    for tokens in (plain_tokens, admin_tokens, moderator_tokens):
        assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 200


async def test_admins_change_their_own_second_factor_and_providers_themselves(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin_uuid, admin_tokens = await _admin(app, client)
    for path in ("/two-factor/reset", "/external-accounts/github"):
        method = "POST" if path.startswith("/two") else "DELETE"
        own = await _use(client, (method, path, False), admin_uuid, admin_tokens)
        assert own.status_code == 403, own.text
    # Another admin may help them.
    _, other_admin_tokens = await _admin(app, client)
    other = await _use(client, ("POST", "/two-factor/reset", False), admin_uuid, other_admin_tokens)
    assert other.status_code == 409  # allowed; there is just no 2FA to reset
    assert other.json()["code"] == "OTP_NOT_ENABLED"


# The command line ---------------------------------------------------------------------


def _session_of(tokens: dict) -> str:
    """The session an access token names (read, not verified: the test made it)."""
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return run_cli(settings_env(settings), "users", *args)


async def test_cli_reset_two_factor_and_send_reset(
    settings: Settings, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(client, smtp_server)
    await _enrol_authenticator(client, tokens)
    await smtp_server.wait_for(user["email"], 2)  # "turned on", before the command runs

    reset = _cli(settings, "reset-2fa", user["username"])
    assert reset.returncode == 0, reset.stderr
    assert "is off" in reset.stdout
    assert "turned off by an administrator" in await _notice(smtp_server, user["email"], 3)
    fresh = await login(client, user["username"])
    events = await _history(client, user["uuid"], fresh)
    event = next(event for event in events if event["action"] == "otp_reset")
    assert event["by"] is None  # the operator, not a user

    again = _cli(settings, "reset-2fa", user["uuid"])
    assert again.returncode == 1
    assert "OTP_NOT_ENABLED" in again.stderr

    sent = _cli(settings, "send-reset", user["email"].upper())
    assert sent.returncode == 0, sent.stderr
    mail = await smtp_server.wait_for(user["email"], 4)
    assert "Reset your" in mail["Subject"]
    applied = await client.post(
        "/api/auth/password/reset",
        json={"token": token_in(link_in(mail)), "new_password": NEW_PASSWORD},
    )
    assert applied.status_code == 204, applied.text

    unknown = _cli(settings, "send-reset", "nobody_here")
    assert unknown.returncode == 1
    assert "USER_NOT_FOUND" in unknown.stderr


async def test_cli_sessions_and_providers(
    app: FastAPI, settings: Settings, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, phone = await _verified_user(client, smtp_server)
    laptop = await login(client, user["username"])
    listed = _cli(settings, "sessions", user["username"])
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    # Without Redis the service hears of the command's changes only when its cached
    # copies expire (TestWithRedis: at once); these tokens are not cached yet.
    laptop_session = _session_of(laptop)
    assert {session["id"] for session in sessions} == {_session_of(phone), laptop_session}

    one = _cli(settings, "revoke-sessions", user["username"], "--session", laptop_session)
    assert one.returncode == 0, one.stderr
    assert (await client.get("/api/users/me", headers=bearer(laptop))).status_code == 401
    left = json.loads(_cli(settings, "sessions", user["username"]).stdout)
    assert [session["id"] for session in left] == [_session_of(phone)]
    every = _cli(settings, "revoke-sessions", user["uuid"])
    assert every.stdout.strip() == "1 session(s) ended."
    assert (await client.get("/api/users/me", headers=bearer(phone))).status_code == 401
    assert "signed you out" in await _notice(smtp_server, user["email"], 2)

    await _link(app, user["uuid"], "github")
    providers = _cli(settings, "providers", user["username"])
    assert [a["provider"] for a in json.loads(providers.stdout)] == ["github"]
    unlinked = _cli(settings, "unlink", user["username"], "github")
    assert unlinked.returncode == 0, unlinked.stderr
    assert json.loads(_cli(settings, "providers", user["username"]).stdout) == []
    missing = _cli(settings, "unlink", user["username"], "github")
    assert missing.returncode == 1
    assert "OAUTH_ACCOUNT_NOT_LINKED" in missing.stderr


async def test_cli_unlock_needs_redis(settings: Settings, client: httpx.AsyncClient) -> None:
    user, _ = await signup_and_login(client)
    refused = _cli(settings, "unlock", user["username"])
    assert refused.returncode == 1
    assert "REDIS_URL" in refused.stderr


class TestWithRedis:
    """The service and the command line share Redis: the guard's counts and the
    invalidations of the auth cache."""

    @pytest.fixture
    def settings_overrides(self, smtp_server: MailCatcher) -> dict[str, object]:
        return {
            **smtp_server.settings(),
            "AUTH_RATE_LIMIT_ACCOUNT": "3 per 15 minutes",
            "REDIS_URL": empty_redis(),
        }

    async def test_cli_unlock_and_revoke(
        self, settings: Settings, client: httpx.AsyncClient, smtp_server: MailCatcher
    ) -> None:
        user, tokens = await _verified_user(client, smtp_server)
        for _attempt in range(3):
            client.cookies.clear()
            assert (await _login_answer(client, user["username"], "wrong")).status_code == 401
        client.cookies.clear()
        assert (await _login_answer(client, user["username"], PASSWORD)).status_code == 429

        unlocked = _cli(settings, "unlock", user["username"])
        assert unlocked.returncode == 0, unlocked.stderr
        client.cookies.clear()
        fresh = await login(client, user["username"])
        assert "cleared the lock" in await _notice(smtp_server, user["email"], 2)

        # A cached token is refused as soon as the command has ended its session.
        for pair in (tokens, fresh):
            assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 200
        ended = _cli(settings, "revoke-sessions", user["username"])
        assert ended.returncode == 0, ended.stderr
        for pair in (tokens, fresh):
            assert (await client.get("/api/users/me", headers=bearer(pair))).status_code == 401
