"""Recovery codes: handed out with 2FA, one sign-in each, counted, made again, gone with 2FA."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.models import RecoveryCode, Session, User
from app.services import two_factor
from app.services.two_factor import ACCOUNT_FAILURE_LIMIT, MAX_FAILED_ATTEMPTS
from app.test.factories import (
    PASSWORD,
    bearer,
    history,
    live_signup_and_login,
    login,
    signup_and_login,
)
from app.test.mail import MailCatcher, text_body, verify_address
from app.test.server import LiveServer

CODE_SHAPE = re.compile(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){3}")
INTERVAL = 30


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    """Mail goes to the test SMTP server (security notices, email codes)."""
    return smtp_server.settings()


async def _enable_authenticator(
    client: httpx.AsyncClient, tokens: dict
) -> tuple[pyotp.TOTP, list[str]]:
    """Turn the authenticator on; its TOTP and the recovery codes the answer hands out."""
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
    assert set(enabled.json()) == {"recovery_codes"}
    return totp, enabled.json()["recovery_codes"]


async def _pending(client: httpx.AsyncClient, username: str) -> str:
    """The otp_token of a password login to an account with 2FA."""
    response = await client.post(
        "/api/auth/login", data={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert response.json()["otp_required"] is True
    return response.json()["otp_token"]


async def _recover(client: httpx.AsyncClient, otp_token: str, code: object) -> httpx.Response:
    return await client.post(
        "/api/auth/otp/recovery-codes/verify",
        json={"otp_token": otp_token, "recovery_code": code},
    )


async def _left(client: httpx.AsyncClient, tokens: dict) -> int:
    response = await client.get("/api/auth/otp/recovery-codes", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return response.json()["remaining"]


async def _stored(app: FastAPI, user_uuid: str) -> int:
    async with app.state.session_factory() as db:
        count = await db.scalar(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_uuid == user_uuid)
        )
    return count or 0


def _wrong_code(codes: list[str]) -> str:
    """A well-formed code that is none of ``codes``."""
    candidate = "AAAA-BBBB-CCCC-DDDD"
    assert candidate not in codes
    return candidate


async def test_the_whole_journey(
    app: FastAPI,
    client: httpx.AsyncClient,
    smtp_server: MailCatcher,
    captured_logs: list[str],
) -> None:
    user, tokens = await signup_and_login(client)
    address = user["email"]
    await verify_address(client, smtp_server, address)  # mail 1; notices need it verified
    totp, codes = await _enable_authenticator(client, tokens)
    assert "turned on" in (await smtp_server.wait_for(address, 2))["Subject"]

    # Ten distinct codes, readable, stored only as hashes.
    assert len(codes) == 10
    assert len(set(codes)) == 10
    assert all(CODE_SHAPE.fullmatch(code) for code in codes), codes
    assert await _left(client, tokens) == 10
    async with app.state.session_factory() as db:
        hashes = list(await db.scalars(select(RecoveryCode.code_hash)))
    assert len(hashes) == 10
    for code in codes:
        assert all(code not in h and code.replace("-", "") not in h for h in hashes)

    # A recovery code finishes a password login instead of the authenticator code.
    signed_in = await _recover(client, await _pending(client, user["username"]), codes[0])
    assert signed_in.status_code == 200, signed_in.text
    fresh = signed_in.json()
    assert (await client.get("/api/users/me", headers=bearer(fresh))).status_code == 200

    # Once only.
    again = await _recover(client, await _pending(client, user["username"]), codes[0])
    assert again.status_code == 401
    assert again.json()["code"] == "INVALID_OTP_CODE"
    assert await _left(client, fresh) == 9

    # The owner is told, with how many are left (and the code is not in the mail).
    notice = await smtp_server.wait_for(address, 3)
    assert "A recovery code was used" in notice["Subject"]
    assert "9 recovery codes left" in text_body(notice)
    assert codes[0] not in notice.as_string()

    # Making new ones needs a recent re-authentication (a login is not one).
    refused = await client.post("/api/auth/otp/recovery-codes", json={}, headers=bearer(fresh))
    assert refused.status_code == 403
    assert refused.json()["code"] == "REAUTHENTICATION_REQUIRED"
    wrong = await client.post(
        "/api/auth/otp/recovery-codes",
        json={"password": "not the password at all"},
        headers=bearer(fresh),
    )
    assert wrong.status_code == 400
    assert wrong.json()["code"] == "WRONG_PASSWORD"
    assert await _left(client, fresh) == 9
    reauth = await client.post(
        "/api/auth/reauthenticate", json={"password": PASSWORD}, headers=bearer(fresh)
    )
    assert reauth.status_code == 200, reauth.text
    regenerated = await client.post("/api/auth/otp/recovery-codes", json={}, headers=bearer(fresh))
    assert regenerated.status_code == 200, regenerated.text
    new_codes = regenerated.json()["recovery_codes"]
    assert len(set(new_codes)) == 10
    assert not set(new_codes) & set(codes)
    assert await _left(client, fresh) == 10
    made = await smtp_server.wait_for(address, 4)
    assert "New recovery codes" in made["Subject"]
    assert "no longer work" in text_body(made)

    # The old codes stop working at once; the new ones work.
    old = await _recover(client, await _pending(client, user["username"]), codes[1])
    assert old.status_code == 401
    assert old.json()["code"] == "INVALID_OTP_CODE"
    new = await _recover(client, await _pending(client, user["username"]), new_codes[0])
    assert new.status_code == 200, new.text
    assert await _left(client, fresh) == 9

    # Turning 2FA off deletes the codes.
    disabled = await client.post(
        "/api/auth/otp/disable",
        json={"password": PASSWORD, "code": totp.at(time.time() + INTERVAL)},
        headers=bearer(fresh),
    )
    assert disabled.status_code == 204, disabled.text
    assert await _left(client, fresh) == 0
    assert await _stored(app, user["uuid"]) == 0
    assert "access_token" in await login(client, user["username"])

    actions = [event.action for event in await history(app.state.session_factory, user["uuid"])]
    assert actions.count("recovery_code_used") == 2
    assert actions.count("recovery_codes_regenerated") == 1
    failed = [
        event.details
        for event in await history(app.state.session_factory, user["uuid"])
        if event.action == "otp_failed"
    ]
    assert {"purpose": "login", "method": "recovery_code"} in failed

    # No code, in any spelling, reached the logs, the history or the account's pages.
    assert any("/api/auth/otp/recovery-codes/verify" in line for line in captured_logs)
    everything = "".join(captured_logs)
    pages = [
        await client.get("/api/users/me", headers=bearer(fresh)),
        await client.get(f"/api/user/{user['uuid']}/history", headers=bearer(fresh)),
    ]
    assert [page.status_code for page in pages] == [200, 200]
    assert "recovery_code_used" in pages[1].text
    seen = [page.text for page in pages]
    seen.append(str([e.details for e in await history(app.state.session_factory, user["uuid"])]))
    for code in codes + new_codes:
        for spelling in (code, code.replace("-", ""), code.lower()):
            assert spelling not in everything
            assert all(spelling not in text for text in seen)


async def test_email_2fa_hands_out_codes_too(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    """Any method: with email codes, a recovery code finishes the login instead of the
    mailed code; typed in lower case with spaces, it still reads."""
    user, tokens = await signup_and_login(client)
    address = user["email"]
    setup = await client.post(
        "/api/auth/otp/setup",
        json={"method": "email", "password": PASSWORD},
        headers=bearer(tokens),
    )
    assert setup.status_code == 200
    message = await smtp_server.wait_for(address, 2)  # 1 is the verification link
    code = re.search(r"^\s+(\d{6})\s*$", text_body(message), flags=re.MULTILINE)
    assert code is not None
    enabled = await client.post(
        "/api/auth/otp/enable",
        json={"method": "email", "code": code.group(1)},
        headers=bearer(tokens),
    )
    assert enabled.status_code == 200, enabled.text
    codes = enabled.json()["recovery_codes"]
    assert len(codes) == 10

    otp_token = await _pending(client, user["username"])  # mails a login code, unused
    typed = codes[3].lower().replace("-", " ").replace("o", "0").replace("i", "1")
    signed_in = await _recover(client, otp_token, typed)
    assert signed_in.status_code == 200, signed_in.text
    assert await _left(client, signed_in.json()) == 9
    # The pending login is over: neither its mailed code nor another recovery code
    # opens a second session with it.
    reused = await _recover(client, otp_token, codes[4])
    assert reused.status_code == 401
    assert await _left(client, signed_in.json()) == 9


@pytest.mark.parametrize("shared_login", [False, True], ids=["twenty-logins", "one-login"])
async def test_parallel_uses_of_one_code_sign_in_once(
    app: FastAPI, client: httpx.AsyncClient, shared_login: bool
) -> None:
    """20 parallel requests with the same code: exactly one token pair."""
    user, tokens = await signup_and_login(client)
    _, codes = await _enable_authenticator(client, tokens)
    if shared_login:
        otp_tokens = [await _pending(client, user["username"])] * 20
    else:
        otp_tokens = [await _pending(client, user["username"]) for _ in range(20)]

    async def sessions() -> int:
        async with app.state.session_factory() as db:
            count = await db.scalar(
                select(func.count()).select_from(Session).where(Session.user_uuid == user["uuid"])
            )
        return count or 0

    before = await sessions()
    responses = await asyncio.gather(*(_recover(client, token, codes[0]) for token in otp_tokens))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, [r.text for r in responses]
    assert set(statuses) <= {200, 401, 429}, [r.text for r in responses]
    # Several requests were judged, not just turned away by a limit.
    assert statuses.count(401) >= 2, [r.text for r in responses]
    assert await sessions() == before + 1
    winner = next(r.json() for r in responses if r.status_code == 200)
    assert await _left(client, winner) == 9
    actions = [event.action for event in await history(app.state.session_factory, user["uuid"])]
    assert actions.count("recovery_code_used") == 1


async def test_wrong_recovery_codes_count_like_wrong_codes(client: httpx.AsyncClient) -> None:
    user, tokens = await signup_and_login(client)
    totp, codes = await _enable_authenticator(client, tokens)
    wrong = _wrong_code(codes)

    # A pending login dies after MAX_FAILED_ATTEMPTS wrong codes of either kind.
    otp_token = await _pending(client, user["username"])
    for _ in range(MAX_FAILED_ATTEMPTS):
        response = await _recover(client, otp_token, wrong)
        assert response.status_code == 401
        assert response.json()["code"] == "INVALID_OTP_CODE"
    dead = await client.post(
        "/api/auth/otp/verify",
        json={"otp_token": otp_token, "code": totp.at(time.time() + INTERVAL)},
    )
    assert dead.status_code == 401
    assert dead.json()["code"] == "INVALID_OTP_TOKEN"
    assert (await _recover(client, otp_token, codes[0])).json()["code"] == "INVALID_OTP_TOKEN"

    # Across logins, the account's limit: then even a right code is refused, unused.
    waiting = await _pending(client, user["username"])
    failures = MAX_FAILED_ATTEMPTS
    while failures < ACCOUNT_FAILURE_LIMIT:
        otp_token = await _pending(client, user["username"])
        for _ in range(min(MAX_FAILED_ATTEMPTS - 1, ACCOUNT_FAILURE_LIMIT - failures)):
            assert (await _recover(client, otp_token, wrong)).status_code == 401
            failures += 1
    refused = await _recover(client, waiting, codes[0])
    assert refused.status_code == 429
    assert refused.json()["code"] in {"OTP_THROTTLED", "RATE_LIMITED"}
    assert int(refused.headers["Retry-After"]) > 0
    throttled = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": PASSWORD}
    )
    assert throttled.status_code == 429
    assert await _left(client, tokens) == 10


async def test_malformed_input_is_refused_with_4xx(client: httpx.AsyncClient) -> None:
    user, tokens = await signup_and_login(client)
    _, codes = await _enable_authenticator(client, tokens)
    otp_token = await _pending(client, user["username"])
    path = "/api/auth/otp/recovery-codes/verify"
    for body in (
        {"otp_token": otp_token, "recovery_code": ""},
        {"otp_token": otp_token, "recovery_code": "A" * 65},
        {"otp_token": otp_token, "recovery_code": "ABCD_EFGH!JKLM"},
        {"otp_token": otp_token, "recovery_code": "ABCD\x00EFGH"},
        {"otp_token": otp_token, "recovery_code": 1234},
        {"otp_token": otp_token, "recovery_code": None},
        {"otp_token": otp_token, "recovery_code": [codes[0]]},
        {"otp_token": otp_token},
        {"recovery_code": codes[0]},
        {"otp_token": "", "recovery_code": codes[0]},
        {"otp_token": otp_token, "recovery_code": codes[0], "code": "123456"},
    ):
        response = await client.post(path, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["code"] == "VALIDATION_ERROR"
    for raw in (b"{not json", b"[]", b"null"):
        response = await client.post(
            path, content=raw, headers={"Content-Type": "application/json"}
        )
        assert 400 <= response.status_code < 500, (raw, response.text)
    # Well-formed but not a code (too short, a letter no code has): a wrong code.
    for typed in ("ABCD", "ABCD-EFGH-JKLM-NPQ9"):
        response = await _recover(client, otp_token, typed)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "INVALID_OTP_CODE"
    forged = await _recover(client, "not-a-token", codes[0])
    assert forged.status_code == 401
    assert forged.json()["code"] == "INVALID_OTP_TOKEN"
    # An access token is no 2FA-pending token.
    swapped = await _recover(client, tokens["access_token"], codes[0])
    assert swapped.status_code == 401
    assert swapped.json()["code"] == "INVALID_OTP_TOKEN"

    regenerate_bodies: list[object] = [{"password": 1}, {"password": PASSWORD, "extra": 1}, []]
    for regenerate_body in regenerate_bodies:
        response = await client.post(
            "/api/auth/otp/recovery-codes", json=regenerate_body, headers=bearer(tokens)
        )
        assert response.status_code == 422, (regenerate_body, response.text)
    assert await _left(client, tokens) == 10


async def test_without_2fa_there_are_no_codes(client: httpx.AsyncClient) -> None:
    _, tokens = await signup_and_login(client)
    assert await _left(client, tokens) == 0
    response = await client.post(
        "/api/auth/otp/recovery-codes", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert response.status_code == 409
    assert response.json()["code"] == "OTP_NOT_ENABLED"
    anonymous = await client.get("/api/auth/otp/recovery-codes")
    assert anonymous.status_code == 401
    anonymous = await client.post("/api/auth/otp/recovery-codes", json={"password": PASSWORD})
    assert anonymous.status_code == 401


async def test_reset_clears_method_secret_and_codes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The service function an admin's "reset 2FA" calls: the next login needs only the
    password, and the codes no longer exist."""
    user, tokens = await signup_and_login(client)
    _, codes = await _enable_authenticator(client, tokens)
    me = await client.get("/api/users/me", headers=bearer(tokens))
    assert me.json()["otp_method"] == "authenticator"  # now in the auth cache, if any
    otp_token = await _pending(client, user["username"])

    async with app.state.session_factory() as db:
        row = await db.get(User, user["uuid"])
        assert row is not None
        await two_factor.reset(db, row)
        await db.commit()

    async with app.state.session_factory() as db:
        row = await db.get(User, user["uuid"])
        assert row is not None
        assert (row.otp_method, row.otp_secret, row.otp_last_timestep) == ("none", None, None)
    assert await _stored(app, user["uuid"]) == 0
    me = await client.get("/api/users/me", headers=bearer(tokens))
    assert me.json()["otp_method"] == "none"
    assert await _left(client, tokens) == 0
    # A login that was waiting for its second factor is over.
    assert (await _recover(client, otp_token, codes[0])).json()["code"] == "INVALID_OTP_TOKEN"
    assert "access_token" in await login(client, user["username"])


async def test_a_lost_phone_turns_2fa_off_with_a_recovery_code(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Signed in with a recovery code, the owner swaps the lost authenticator: 2FA off
    with the password and another recovery code, then a new one set up."""
    user, tokens = await signup_and_login(client)
    _, codes = await _enable_authenticator(client, tokens)
    signed_in = await _recover(client, await _pending(client, user["username"]), codes[0])
    assert signed_in.status_code == 200
    fresh = signed_in.json()

    disable = "/api/auth/otp/disable"
    for body in (
        {"password": PASSWORD},
        {"password": PASSWORD, "code": "123456", "recovery_code": codes[1]},
        {"password": PASSWORD, "recovery_code": "not/a code"},
    ):
        response = await client.post(disable, json=body, headers=bearer(fresh))
        assert response.status_code == 422, (body, response.text)
    used = await client.post(
        disable, json={"password": PASSWORD, "recovery_code": codes[0]}, headers=bearer(fresh)
    )
    assert used.status_code == 401
    assert used.json()["code"] == "INVALID_OTP_CODE"
    wrong_password = await client.post(
        disable,
        json={"password": "a wrong password here", "recovery_code": codes[1]},
        headers=bearer(fresh),
    )
    assert wrong_password.status_code == 400
    assert await _left(client, fresh) == 9  # a refused request used nothing up

    disabled = await client.post(
        disable, json={"password": PASSWORD, "recovery_code": codes[1]}, headers=bearer(fresh)
    )
    assert disabled.status_code == 204, disabled.text
    assert await _stored(app, user["uuid"]) == 0
    events = await history(app.state.session_factory, user["uuid"])
    assert events[-1].action == "otp_disabled"
    assert events[-1].details == {"method": "authenticator", "with": "recovery_code"}
    _, new_codes = await _enable_authenticator(client, fresh)
    assert not set(new_codes) & set(codes)
    assert await _left(client, fresh) == 10


def test_the_sign_in_page_takes_a_recovery_code(live_server: LiveServer, browser) -> None:
    """On /signin, "Use a recovery code instead" finishes the 2FA step with one."""
    url = live_server.url
    user, tokens = live_signup_and_login(url)
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
    codes = enabled.json()["recovery_codes"]

    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{url}/docs")
    page.wait_for_url("**/signin**")
    page.fill("#username", user["username"])
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_selector("#code-step:not([hidden])")
    page.click("#use-recovery-code")
    page.wait_for_selector("text=Enter one of the recovery codes")
    page.fill("#code", "AAAA-BBBB-CCCC-DDDD")
    page.click("#verify")
    page.wait_for_selector("text=Incorrect or already used code")
    page.fill("#code", codes[0].lower())
    page.click("#verify")
    page.wait_for_selector("text=Not allowed")  # signed in: a plain user may not read the docs
    assert user["username"] in page.content()
    assert [m for m in problems if "Content Security Policy" in m] == []
    left = httpx.get(f"{url}/api/auth/otp/recovery-codes", headers=bearer(tokens))
    assert left.json() == {"remaining": 9}
