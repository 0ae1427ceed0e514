"""Security review of recovery codes (issue 19 item 2): attacks from outside.

Each test is an attack or an invariant an attacker would probe. Those that fail
show a defect (see the review report); those that pass are what held up.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from app.models import RecoveryCode, User
from app.services import two_factor
from app.services.two_factor import ACCOUNT_FAILURE_LIMIT, MAX_FAILED_ATTEMPTS
from app.test.factories import PASSWORD, bearer, signup_and_login
from app.test.mail import MailCatcher

INTERVAL = 30
WRONG_RECOVERY = "AAAA-BBBB-CCCC-DDDD"


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest, smtp_server: MailCatcher) -> dict:
    """Mail to the test SMTP server; a test may add settings with indirect parametrize."""
    return {**smtp_server.settings(), **getattr(request, "param", {})}


async def _enable(client: httpx.AsyncClient, tokens: dict) -> tuple[pyotp.TOTP, list[str]]:
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
    return totp, enabled.json()["recovery_codes"]


async def _pending(client: httpx.AsyncClient, username: str) -> str:
    response = await client.post(
        "/api/auth/login", data={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert response.json()["otp_required"] is True, response.text
    return response.json()["otp_token"]


async def _recover(client: httpx.AsyncClient, otp_token: str, code: str) -> httpx.Response:
    # ensure_ascii: a lone surrogate goes as a \\ud800 escape, as a hostile client sends it.
    return await client.post(
        "/api/auth/otp/recovery-codes/verify",
        content=json.dumps({"otp_token": otp_token, "recovery_code": code}, ensure_ascii=True),
        headers={"Content-Type": "application/json"},
    )


async def _otp(client: httpx.AsyncClient, otp_token: str, code: str) -> httpx.Response:
    return await client.post("/api/auth/otp/verify", json={"otp_token": otp_token, "code": code})


def _wrong_otp(totp: pyotp.TOTP) -> str:
    """A six-digit code that is none of the codes accepted now (drift included)."""
    accepted = {totp.at(time.time() + d * INTERVAL) for d in (-2, -1, 0, 1, 2)}
    return next(c for c in ("000000", "111111", "222222", "333333", "444444") if c not in accepted)


async def _left(client: httpx.AsyncClient, tokens: dict) -> int:
    response = await client.get("/api/auth/otp/recovery-codes", headers=bearer(tokens))
    assert response.status_code == 200, response.text
    return response.json()["remaining"]


async def _reauth(client: httpx.AsyncClient, tokens: dict) -> None:
    response = await client.post(
        "/api/auth/reauthenticate", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert response.status_code == 200, response.text


# Who may use a code ---------------------------------------------------------------------


async def test_a_code_of_one_user_never_finishes_another_users_login(
    client: httpx.AsyncClient,
) -> None:
    _, alice_tokens = await signup_and_login(client)
    bob, bob_tokens = await signup_and_login(client)
    _, alice_codes = await _enable(client, alice_tokens)
    _, bob_codes = await _enable(client, bob_tokens)
    bob_login = await _pending(client, bob["username"])
    for code in alice_codes[:3]:
        response = await _recover(client, bob_login, code)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "INVALID_OTP_CODE"
    # Alice's codes are untouched; Bob's own code still finishes his login.
    assert await _left(client, alice_tokens) == 10
    assert (await _recover(client, bob_login, bob_codes[0])).status_code == 200


async def test_a_stolen_access_token_alone_cannot_touch_the_codes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The thief has the access token (no password, no re-authentication) and even one
    recovery code (say, photographed): regenerating or turning 2FA off is refused."""
    user, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    stolen = bearer(tokens)
    regenerate = await client.post("/api/auth/otp/recovery-codes", json={}, headers=stolen)
    assert regenerate.status_code == 403, regenerate.text
    assert regenerate.json()["code"] == "REAUTHENTICATION_REQUIRED"
    disable = await client.post(
        "/api/auth/otp/disable", json={"recovery_code": codes[0]}, headers=stolen
    )
    assert disable.status_code == 403, disable.text
    assert disable.json()["code"] == "REAUTHENTICATION_REQUIRED"
    # A recovery code is no re-authentication either.
    reauth = await client.post("/api/auth/reauthenticate", json={"code": codes[0]}, headers=stolen)
    assert reauth.status_code in (400, 401, 422), reauth.text
    assert (
        await client.post("/api/auth/otp/recovery-codes", json={}, headers=stolen)
    ).status_code == 403
    # The count is readable (it reveals no code); nothing was used up or changed.
    assert await _left(client, tokens) == 10
    async with app.state.session_factory() as db:
        row = await db.get(User, user["uuid"])
        assert row is not None
        assert row.otp_method == "authenticator"


# Single use under races ------------------------------------------------------------------


async def test_one_code_in_parallel_login_and_disable_is_used_once(
    client: httpx.AsyncClient,
) -> None:
    """The same code sent at once to finish a login and to turn 2FA off: one wins."""
    user, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    await _reauth(client, tokens)
    logins = [await _pending(client, user["username"]) for _ in range(4)]
    disables = [
        client.post(
            "/api/auth/otp/disable", json={"recovery_code": codes[0]}, headers=bearer(tokens)
        )
        for _ in range(4)
    ]
    responses = await asyncio.gather(
        *(_recover(client, token, codes[0]) for token in logins), *disables
    )
    wins = [r for r in responses if r.status_code in (200, 204)]
    assert len(wins) == 1, [(r.status_code, r.text) for r in responses]
    assert all(r.status_code in (200, 204, 401, 429) for r in responses), [
        (r.status_code, r.text) for r in responses
    ]


@pytest.mark.parametrize("attempt", range(3))
async def test_regeneration_racing_uses_of_old_codes(
    app: FastAPI,
    client: httpx.AsyncClient,
    attempt: int,  # noqa: ARG001 (a repetition: races are won by chance)
) -> None:
    """The owner makes new codes while old ones are being used: every request gets a
    clean answer (no 5xx), and afterwards no old code works and exactly ten unused
    new ones exist."""
    user, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    await _reauth(client, tokens)
    logins = [await _pending(client, user["username"]) for _ in range(6)]
    responses = await asyncio.gather(
        *(_recover(client, token, code) for token, code in zip(logins, codes[:6], strict=True)),
        client.post("/api/auth/otp/recovery-codes", json={}, headers=bearer(tokens)),
    )
    assert all(r.status_code < 500 for r in responses), [(r.status_code, r.text) for r in responses]
    regenerated = responses[-1]
    assert regenerated.status_code == 200, regenerated.text
    async with app.state.session_factory() as db:
        stored = await db.scalar(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_uuid == user["uuid"], RecoveryCode.used_at.is_(None))
        )
    assert stored == 10
    late = await _recover(client, await _pending(client, user["username"]), codes[7])
    assert late.status_code == 401, late.text


@pytest.mark.parametrize("attempt", range(5))
async def test_parallel_disables_with_different_codes_answer_cleanly(
    client: httpx.AsyncClient,
    attempt: int,  # noqa: ARG001 (a repetition: races are won by chance)
) -> None:
    """A double submit of "turn 2FA off" with two different recovery codes (or two
    tabs): one turns it off, the others are told why not. On PostgreSQL each request
    locks its code's row, then the user's row, then deletes every code: two of them
    deadlock, and the loser gets 503 DATABASE_UNAVAILABLE (logged as an outage)."""
    _, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    await _reauth(client, tokens)
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/auth/otp/disable", json={"recovery_code": code}, headers=bearer(tokens)
            )
            for code in codes[:3]
        )
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(204) == 1, [(r.status_code, r.text) for r in responses]
    assert set(statuses) <= {204, 401, 409}, [(r.status_code, r.text) for r in responses]


@pytest.mark.parametrize("attempt", range(12))
async def test_regenerating_while_turning_2fa_off_answers_cleanly(
    client: httpx.AsyncClient, attempt: int
) -> None:
    """New codes asked for in one tab while 2FA is turned off with a recovery code in
    another: each request succeeds or is told why not (409, 401), never a 503. On
    PostgreSQL the regeneration locks the user row then the codes, the disabling a
    code then the user row: a deadlock (a race: a few of the twelve runs lose it)."""
    _, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    await _reauth(client, tokens)
    calls = [
        client.post(
            "/api/auth/otp/disable", json={"recovery_code": codes[0]}, headers=bearer(tokens)
        ),
        client.post("/api/auth/otp/recovery-codes", json={}, headers=bearer(tokens)),
    ]
    if attempt % 2:
        calls.reverse()
    responses = await asyncio.gather(*calls)
    assert all(r.status_code in (200, 204, 401, 409) for r in responses), [
        (r.status_code, r.text) for r in responses
    ]


async def test_parallel_regenerations_leave_one_working_set(
    client: httpx.AsyncClient,
) -> None:
    user, tokens = await signup_and_login(client)
    _, _ = await _enable(client, tokens)
    await _reauth(client, tokens)
    responses = await asyncio.gather(
        *(
            client.post("/api/auth/otp/recovery-codes", json={}, headers=bearer(tokens))
            for _ in range(5)
        )
    )
    assert all(r.status_code == 200 for r in responses), [
        (r.status_code, r.text) for r in responses
    ]
    assert await _left(client, tokens) == 10
    sets = [r.json()["recovery_codes"] for r in responses]
    working = 0
    for handed in sets:
        answer = await _recover(client, await _pending(client, user["username"]), handed[9])
        assert answer.status_code in (200, 401), answer.text
        working += answer.status_code == 200
    assert working == 1


async def test_enabling_again_kills_the_old_codes(app: FastAPI, client: httpx.AsyncClient) -> None:
    """After a reset (the admin's path) and a new enrolment, no old code works."""
    user, tokens = await signup_and_login(client)
    _, old_codes = await _enable(client, tokens)
    async with app.state.session_factory() as db:
        row = await db.get(User, user["uuid"])
        assert row is not None
        await two_factor.reset(db, row)
        await db.commit()
    _, new_codes = await _enable(client, tokens)
    assert not set(old_codes) & set(new_codes)
    otp_token = await _pending(client, user["username"])
    for old in old_codes[:4]:
        response = await _recover(client, otp_token, old)
        assert response.status_code == 401, response.text
    assert (await _recover(client, otp_token, new_codes[0])).status_code == 200


# Guessing limits, shared between the two endpoints ----------------------------------------


async def test_alternating_endpoints_share_the_pending_login_limit(
    client: httpx.AsyncClient,
) -> None:
    user, tokens = await signup_and_login(client)
    totp, codes = await _enable(client, tokens)
    otp_token = await _pending(client, user["username"])
    wrong = _wrong_otp(totp)
    for attempt in range(MAX_FAILED_ATTEMPTS):
        if attempt % 2:
            response = await _recover(client, otp_token, WRONG_RECOVERY)
        else:
            response = await _otp(client, otp_token, wrong)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "INVALID_OTP_CODE"
    # The login is dead for both kinds of code, right ones included.
    for response in (
        await _recover(client, otp_token, codes[0]),
        await _otp(client, otp_token, totp.now()),
    ):
        assert response.status_code == 401
        assert response.json()["code"] == "INVALID_OTP_TOKEN"


async def test_alternating_endpoints_share_the_account_limit(client: httpx.AsyncClient) -> None:
    user, tokens = await signup_and_login(client)
    totp, codes = await _enable(client, tokens)
    wrong = _wrong_otp(totp)
    waiting = await _pending(client, user["username"])
    failures = 0
    while failures < ACCOUNT_FAILURE_LIMIT:
        otp_token = await _pending(client, user["username"])
        for _ in range(min(MAX_FAILED_ATTEMPTS - 1, ACCOUNT_FAILURE_LIMIT - failures)):
            if failures % 2:
                response = await _recover(client, otp_token, WRONG_RECOVERY)
            else:
                response = await _otp(client, otp_token, wrong)
            assert response.status_code == 401, response.text
            failures += 1
    for response in (
        await _recover(client, waiting, codes[0]),
        await _otp(client, waiting, totp.now()),
    ):
        assert response.status_code == 429, response.text
        assert response.json()["code"] in {"OTP_THROTTLED", "RATE_LIMITED"}
    assert await _left(client, tokens) == 10


@pytest.mark.parametrize(
    "settings_overrides", [{"AUTH_RATE_LIMIT_ADDRESS": "8 per 15 minutes"}], indirect=True
)
async def test_alternating_endpoints_and_accounts_share_the_address_limit(
    client: httpx.AsyncClient,
) -> None:
    """One address guessing on two accounts, through both endpoints: one budget."""
    alice, alice_tokens = await signup_and_login(client)
    bob, bob_tokens = await signup_and_login(client)
    totp, _ = await _enable(client, alice_tokens)
    _, bob_codes = await _enable(client, bob_tokens)
    alice_login = await _pending(client, alice["username"])
    bob_login = await _pending(client, bob["username"])
    wrong = _wrong_otp(totp)
    for attempt in range(8):
        if attempt % 2:
            response = await _recover(client, bob_login, WRONG_RECOVERY)
        else:
            response = await _otp(client, alice_login, wrong)
        assert response.status_code == 401, (attempt, response.text)
    refused = await _recover(client, bob_login, bob_codes[0])
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) > 0


# Hostile input -----------------------------------------------------------------------------

#: Six characters for which ``str.isdigit()`` is true but that are not ASCII digits.
UNICODE_DIGITS = [
    "\uff11\uff12\uff13\uff14\uff15\uff16",  # full-width
    "\u0660\u0661\u0662\u0663\u0664\u0665",  # Arabic-Indic
    "\u0967\u0968\u0969\u096a\u096b\u096c",  # Devanagari
    "\u00b9\u00b2\u00b3\u2074\u2075\u2076",  # superscript
]


@pytest.mark.parametrize("digits", UNICODE_DIGITS)
async def test_unicode_digits_as_an_authenticator_code_are_a_4xx(
    client: httpx.AsyncClient, digits: str
) -> None:
    """Full-width, Arabic-Indic, Devanagari or superscript digits in place of the
    authenticator code: a wrong code (401), never a 500. Anyone with a password (or
    any signed-in authenticator user) can send it."""
    user, tokens = await signup_and_login(client)
    await _enable(client, tokens)
    otp_token = await _pending(client, user["username"])
    response = await _otp(client, otp_token, digits)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "INVALID_OTP_CODE"
    disable = await client.post(
        "/api/auth/otp/disable",
        json={"password": PASSWORD, "code": digits},
        headers=bearer(tokens),
    )
    assert disable.status_code == 401, disable.text


async def test_hostile_recovery_codes_are_4xx(client: httpx.AsyncClient) -> None:
    user, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    otp_token = await _pending(client, user["username"])
    hostile = [
        "A" * 10_000,
        codes[0] + "\x00",
        "\x00" * 16,
        "".join(chr(0xFEE0 + ord(c)) if c != "-" else c for c in codes[0]),  # full-width
        codes[0].replace("-", "\u2010"),  # unicode hyphen
        "\ud800" * 16,
        codes[0] + "\n",
        " " * 64,
        "-" * 64,
        "8" * 16,
    ]
    for code in hostile:
        response = await _recover(client, otp_token, code)
        assert response.status_code in (401, 422), (code[:20], response.text)
        assert response.json()["code"] in {"INVALID_OTP_CODE", "VALIDATION_ERROR"}
    for code in hostile[:4]:
        response = await client.post(
            "/api/auth/otp/disable",
            json={"password": PASSWORD, "recovery_code": code},
            headers=bearer(tokens),
        )
        assert response.status_code in (401, 422), (code[:20], response.text)
    assert await _left(client, tokens) == 10


# Leaks -------------------------------------------------------------------------------------


async def test_codes_never_leak_on_error_paths(
    app: FastAPI, client: httpx.AsyncClient, captured_logs: list[str]
) -> None:
    """A code sent with a typo, with a wrong password, twice, or with both proofs: it
    is in no error body, no log line, no history detail."""
    user, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    otp_token = await _pending(client, user["username"])
    answers = [
        await _recover(client, otp_token, codes[0] + "!"),
        await _recover(client, otp_token, codes[0] + "X" * 60),
        await client.post(
            "/api/auth/otp/disable",
            json={"password": PASSWORD, "code": "123456", "recovery_code": codes[1]},
            headers=bearer(tokens),
        ),
        await client.post(
            "/api/auth/otp/disable",
            json={"password": "wrong password entirely", "recovery_code": codes[2]},
            headers=bearer(tokens),
        ),
        await client.post(
            "/api/auth/otp/disable",
            json={"recovery_code": codes[3]},
            headers=bearer(tokens),
        ),
        await client.post(
            "/api/auth/otp/recovery-codes/verify",
            json={"otp_token": otp_token, "recovery_code": codes[4], "extra": codes[5]},
        ),
    ]
    assert all(400 <= a.status_code < 500 for a in answers), [a.text for a in answers]
    used = await _recover(client, otp_token, codes[6])
    assert used.status_code == 200
    answers.append(await _recover(client, await _pending(client, user["username"]), codes[6]))
    text = "".join(a.text for a in answers) + "".join(captured_logs)
    async with app.state.session_factory() as db:
        from app.models import UserEvent

        events = (await db.scalars(select(UserEvent.details))).all()
    text += repr(events)
    for code in codes:
        for spelling in (code, code.replace("-", ""), code.lower(), code.replace("-", "")[:8]):
            assert spelling not in text, spelling


async def test_openapi_shows_no_real_code(app: FastAPI, client: httpx.AsyncClient) -> None:
    """The examples are made up: no code handed out is ever in the document."""
    _, tokens = await signup_and_login(client)
    _, codes = await _enable(client, tokens)
    document = json.dumps(app.openapi())
    assert "ABCD-EFGH-JKLM-NPQR" in document  # the document was read
    for code in codes:
        assert code not in document


async def test_answers_that_hand_out_codes_are_not_stored_by_caches(
    client: httpx.AsyncClient,
) -> None:
    """The two answers that carry codes in clear say ``Cache-Control: no-store`` (as a
    token answer must, RFC 6749 5.1; OWASP ASVS 8.2.1), so no browser or proxy cache
    keeps them on disk."""
    _, tokens = await signup_and_login(client)
    setup = await client.post(
        "/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=bearer(tokens),
    )
    totp = pyotp.parse_uri(setup.json()["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    enabled = await client.post(
        "/api/auth/otp/enable",
        json={"method": "authenticator", "code": totp.now()},
        headers=bearer(tokens),
    )
    assert enabled.status_code == 200, enabled.text
    regenerated = await client.post(
        "/api/auth/otp/recovery-codes", json={"password": PASSWORD}, headers=bearer(tokens)
    )
    assert regenerated.status_code == 200, regenerated.text
    for answer in (enabled, regenerated):
        assert "no-store" in answer.headers.get("Cache-Control", ""), dict(answer.headers)
