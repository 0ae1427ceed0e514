"""Email: verification and password reset through a real SMTP server, Mailjet, failures."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.core.email import Mailer, MailjetEmailSender, OutgoingEmail
from app.models import User
from app.test.conftest import make_settings
from app.test.factories import (
    PASSWORD,
    bearer,
    create_user,
    history,
    login,
    reauthenticate,
    signup,
    signup_and_login,
    signup_body,
)
from app.test.mail import (
    MailCatcher,
    html_body,
    link_in,
    links_in,
    text_body,
    token_in,
    verify_address,
)

NEW_PASSWORD = "a completely new passphrase"


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    """Send this module's mail to the test SMTP server."""
    return smtp_server.settings()


def _token(link: str) -> str:
    return token_in(link)


async def _mail_link(smtp_server: MailCatcher, address: str, count: int = 1) -> str:
    return link_in(await smtp_server.wait_for(address, count))


async def test_the_whole_journey(
    app: FastAPI,
    client: httpx.AsyncClient,
    smtp_server: MailCatcher,
    captured_logs: list[str],
) -> None:
    """Sign up, verify, forget, reset: old sessions refused, new login works."""
    user = await signup(client, username="journey_user", display_name="Journey User")
    address = user["email"]

    verification = await smtp_server.wait_for(address)
    assert verification["From"] == "no-reply@usermanager.example"
    assert "Verify your email" in verification["Subject"]
    assert "Journey User" in text_body(verification)
    assert "support@usermanager.example" in text_body(verification)
    link = link_in(verification)
    assert link.startswith("http://localhost:8000/account/verify#token=")
    assert link in html_body(verification)

    verified = await client.get("/api/auth/email/verify", params={"token": _token(link)})
    assert verified.status_code == 200
    assert verified.json() == {"detail": "Email verified"}
    again = await client.post("/api/auth/email/verify", json={"token": _token(link)})
    assert again.status_code == 400
    assert again.json()["code"] == "INVALID_LINK"

    tokens = await login(client, user["username"])
    me = await client.get("/api/users/me", headers=bearer(tokens))
    assert me.json()["email_verified"] is True

    forgot = await client.post("/api/auth/password/forgot", json={"email": address.upper()})
    assert forgot.status_code == 202
    reset_mail = await smtp_server.wait_for(address, count=2)
    assert "Reset your" in reset_mail["Subject"]
    reset_link = link_in(reset_mail)
    assert reset_link.startswith("http://localhost:8000/account/reset#token=")

    reset = await client.post(
        "/api/auth/password/reset",
        json={"token": _token(reset_link), "new_password": NEW_PASSWORD},
    )
    assert reset.status_code == 204

    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
    stale_refresh = await client.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert stale_refresh.status_code == 401
    old_password = await client.post(
        "/api/auth/login", data={"username": user["username"], "password": PASSWORD}
    )
    assert old_password.status_code == 401
    fresh = await login(client, user["username"], NEW_PASSWORD)
    assert (await client.get("/api/users/me", headers=bearer(fresh))).status_code == 200

    replay = await client.post(
        "/api/auth/password/reset",
        json={"token": _token(reset_link), "new_password": "yet another passphrase"},
    )
    assert replay.status_code == 400

    async with app.state.session_factory() as session:
        row = await session.scalar(select(User).where(User.uuid == user["uuid"]))
    actions = [event.action for event in await history(app.state.session_factory, user["uuid"])]
    assert actions == [
        "signup",
        "email_verified",
        "login",
        "password_forgot",
        "password_reset",
        "login_failed",
        "login",
    ]

    # Nothing secret was logged along the way.
    logs = "".join(captured_logs)
    secrets = [
        PASSWORD,
        NEW_PASSWORD,
        tokens["access_token"],
        tokens["refresh_token"],
        fresh["access_token"],
        fresh["refresh_token"],
        _token(link),
        _token(reset_link),
        row.hashed_password,
    ]
    for secret in secrets:
        assert secret not in logs
    assert "email 'Verify your email for UserManager' sent via smtp" in logs


async def test_forgot_password_for_an_unknown_email_sends_nothing(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    response = await client.post("/api/auth/password/forgot", json={"email": "ghost@example.com"})
    assert response.status_code == 202
    assert response.json()["detail"] == "If an account has this email, a reset link is on its way"
    await app.state.mailer.drain()
    assert smtp_server.to("ghost@example.com") == []


async def test_verification_can_be_requested_again(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user = await signup(client)
    first = await _mail_link(smtp_server, user["email"])
    response = await client.post("/api/auth/email/verify/request", json={"email": user["email"]})
    assert response.status_code == 202
    second = await _mail_link(smtp_server, user["email"], count=2)
    assert first != second
    assert (
        await client.get("/api/auth/email/verify", params={"token": _token(second)})
    ).status_code == 200
    unknown = await client.post("/api/auth/email/verify/request", json={"email": "no@example.com"})
    assert unknown.status_code == 202


async def _verified_user(client: httpx.AsyncClient, smtp_server: MailCatcher) -> tuple[dict, dict]:
    """A signed-up user whose email is verified, and a token pair."""
    user = await signup(client)
    await verify_address(client, smtp_server, user["email"])
    return user, await login(client, user["username"])


async def _ask_email_change(
    client: httpx.AsyncClient, smtp_server: MailCatcher, user: dict, tokens: dict, new: str
) -> tuple[str, str]:
    """Ask to move ``user`` to ``new``; the confirmation token (mailed to ``new``) and
    the undo token (in the notice mailed to the old address)."""
    sent_before = len(smtp_server.to(user["email"]))
    asked = await client.patch(
        "/api/users/me", json={"email": new, "current_password": PASSWORD}, headers=bearer(tokens)
    )
    assert asked.status_code == 200, asked.text
    confirmation = link_in(await smtp_server.wait_for(new, len(smtp_server.to(new)) + 1))
    assert confirmation.startswith("http://localhost:8000/account/confirm-email-change#token=")
    notice = await smtp_server.wait_for(user["email"], sent_before + 1)
    assert new in text_body(notice)
    undo = links_in(notice)[0]
    assert undo.startswith("http://localhost:8000/account/undo-email-change#token=")
    return token_in(confirmation), token_in(undo)


async def _confirm(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/auth/email/change/confirm", json={"token": token})


async def _undo(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/auth/email/change/undo", json={"token": token})


async def test_an_email_change_waits_for_the_new_address(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    """A stolen access token alone cannot move an account to the thief's address."""
    user, tokens = await _verified_user(client, smtp_server)
    old, new = user["email"], f"moved_{user['username']}@example.org"
    for body, status, code in (
        ({"email": new}, 403, "REAUTHENTICATION_REQUIRED"),
        ({"email": new, "current_password": "not my password"}, 400, "WRONG_PASSWORD"),
    ):
        refused = await client.patch("/api/users/me", json=body, headers=bearer(tokens))
        assert (refused.status_code, refused.json()["code"]) == (status, code)
    confirm, undo = await _ask_email_change(client, smtp_server, user, tokens, new)
    me = (await client.get("/api/users/me", headers=bearer(tokens))).json()
    assert (me["email"], me["pending_email"]) == (old, new)

    # Until the new address confirms, the old one is the account's: logins, resets.
    refused = await client.post("/api/auth/login", data={"username": new, "password": PASSWORD})
    assert refused.status_code == 401
    await client.post("/api/auth/password/forgot", json={"email": new})
    await app.state.mailer.drain()
    assert len(smtp_server.to(new)) == 1  # the confirmation only: no reset link
    # Opening the mailed link (as a mail scanner does) confirms nothing: it is a POST.
    scanned = await client.get("/api/auth/email/change/confirm", params={"token": confirm})
    assert scanned.status_code == 405

    assert (await _confirm(client, confirm)).status_code == 200
    me = (await client.get("/api/users/me", headers=bearer(tokens))).json()
    assert (me["email"], me["email_verified"], me["pending_email"]) == (new, True, None)
    assert (await _confirm(client, confirm)).status_code == 400
    await login(client, new)

    # The old address refuses the change: it is back, every session ends, the
    # password is cleared and a reset link goes to the old address.
    assert (await _undo(client, undo)).status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
    cleared = await client.post("/api/auth/login", data={"username": old, "password": PASSWORD})
    assert cleared.status_code == 401
    reset_mail = await smtp_server.wait_for(old, 3)  # verification, notice, reset
    reset = await client.post(
        "/api/auth/password/reset",
        json={"token": token_in(link_in(reset_mail)), "new_password": NEW_PASSWORD},
    )
    assert reset.status_code == 204
    fresh = await login(client, old, NEW_PASSWORD)
    me = (await client.get("/api/users/me", headers=bearer(fresh))).json()
    assert (me["email"], me["email_verified"], me["pending_email"]) == (old, True, None)
    assert (await _undo(client, undo)).status_code == 400
    actions = [event.action for event in await history(app.state.session_factory, user["uuid"])]
    assert "email_changed" in actions
    assert "email_change_undone" in actions


async def test_refusing_a_pending_change_cancels_it(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(client, smtp_server)
    new = f"thief_{user['username']}@example.org"
    confirm, undo = await _ask_email_change(client, smtp_server, user, tokens, new)
    assert (await _undo(client, undo)).status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
    assert (await _confirm(client, confirm)).status_code == 400


async def test_the_current_email_again_cancels_a_pending_change(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(client, smtp_server)
    new = f"other_{user['username']}@example.org"
    confirm, _ = await _ask_email_change(client, smtp_server, user, tokens, new)
    back = await client.patch(
        "/api/users/me", json={"email": user["email"]}, headers=bearer(tokens)
    )
    assert back.status_code == 200
    assert back.json()["pending_email"] is None
    assert (await _confirm(client, confirm)).status_code == 400


@pytest.mark.parametrize("how", ["change", "reset"])
async def test_a_new_password_stops_a_pending_change(
    client: httpx.AsyncClient, smtp_server: MailCatcher, how: str
) -> None:
    """The owner answers an unexpected notice by changing (or resetting) the password:
    the intruder's confirmation link is dead with it."""
    user, tokens = await _verified_user(client, smtp_server)
    new = f"intruder_{user['username']}@example.org"
    confirm, _ = await _ask_email_change(client, smtp_server, user, tokens, new)
    if how == "change":
        changed = await client.post(
            "/api/auth/password/change",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=bearer(tokens),
        )
        assert changed.status_code == 204
    else:
        count = len(smtp_server.to(user["email"]))
        await client.post("/api/auth/password/forgot", json={"email": user["email"]})
        reset_link = link_in(await smtp_server.wait_for(user["email"], count + 1))
        reset = await client.post(
            "/api/auth/password/reset",
            json={"token": token_in(reset_link), "new_password": NEW_PASSWORD},
        )
        assert reset.status_code == 204
    assert (await _confirm(client, confirm)).status_code == 400
    me = (
        await client.get(
            "/api/users/me", headers=bearer(await login(client, user["email"], NEW_PASSWORD))
        )
    ).json()
    assert (me["email"], me["pending_email"]) == (user["email"], None)


async def test_the_old_address_cannot_be_taken_while_it_can_come_back(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    """An intruder who confirmed their address cannot squat the old one to defeat the
    undo; if another account holds it unverified anyway, the verified owner wins."""
    user, tokens = await _verified_user(client, smtp_server)
    old, new = user["email"], f"squat_{user['username']}@example.org"
    confirm, undo = await _ask_email_change(client, smtp_server, user, tokens, new)
    assert (await _confirm(client, confirm)).status_code == 200
    squat = await client.post("/api/auth/signup", json=signup_body(email=old))
    assert (squat.status_code, squat.json()["code"]) == (409, "EMAIL_TAKEN")
    # Had a sign-up slipped in at the very moment of the confirmation:
    squatter = await create_user(app.state.session_factory, password=PASSWORD, email=old)
    squatter_tokens = await login(client, squatter.username)
    assert (await _undo(client, undo)).status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(squatter_tokens))).status_code == 401
    async with app.state.session_factory() as session:
        owner = await session.get(User, user["uuid"])
        held = await session.get(User, squatter.uuid)
    assert (owner.email, owner.email_verified) == (old, True)
    assert held.email != old


async def test_a_confirmation_and_an_undo_at_once(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    """Whatever the order, an undo that says it worked leaves the old email in place."""
    for round_ in range(4):
        user, tokens = await _verified_user(client, smtp_server)
        new = f"race{round_}_{user['username']}@example.org"
        confirm, undo = await _ask_email_change(client, smtp_server, user, tokens, new)
        confirmed, undone = await asyncio.gather(_confirm(client, confirm), _undo(client, undo))
        assert confirmed.status_code in (200, 400), confirmed.text
        assert undone.status_code in (204, 400), undone.text
        assert 204 in (undone.status_code,) or confirmed.status_code == 200
        async with app.state.session_factory() as session:
            row = await session.get(User, user["uuid"])
        if undone.status_code == 204:
            assert (row.email, row.pending_email) == (user["email"], None)
        else:
            assert row.email == new


async def test_email_change_mails_are_limited(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    """Re-authenticated once, nobody mails a stranger's address again and again."""
    _, tokens = await _verified_user(client, smtp_server)
    await reauthenticate(client, tokens)
    statuses = [
        (
            await client.patch(
                "/api/users/me",
                json={"email": f"stranger{i % 2}@example.org"},
                headers=bearer(tokens),
            )
        ).status_code
        for i in range(12)
    ]
    assert statuses == [200] * 10 + [429] * 2


async def test_an_unverified_address_gets_no_reset_link(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    """Reset links go only to an address that proved to be the owner's."""
    user = await signup(client)
    await smtp_server.wait_for(user["email"])  # the verification link
    accepted = await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    assert accepted.status_code == 202  # the same answer as ever
    await app.state.mailer.drain()
    assert len(smtp_server.to(user["email"])) == 1
    await verify_address(client, smtp_server, user["email"])
    await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    reset = await smtp_server.wait_for(user["email"], 2)
    assert "/account/reset#token=" in link_in(reset)


async def test_verification_requests_are_limited(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    """One address asking again and again may not flood an inbox."""
    user = await signup(client)
    statuses = [
        (
            await client.post("/api/auth/email/verify/request", json={"email": user["email"]})
        ).status_code
        for _ in range(12)
    ]
    assert statuses == [202] * 10 + [429] * 2
    await app.state.mailer.drain()
    assert len(smtp_server.to(user["email"])) == 11  # the sign-up's link and ten more
    refused = await client.post("/api/auth/email/verify/request", json={"email": user["email"]})
    assert "Retry-After" in refused.headers


async def test_links_are_bound_to_their_purpose(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user = await signup(client)
    verify_link = await _mail_link(smtp_server, user["email"])
    as_reset = await client.post(
        "/api/auth/password/reset",
        json={"token": _token(verify_link), "new_password": NEW_PASSWORD},
    )
    assert as_reset.status_code == 400
    tampered = _token(verify_link)[:-3] + "abc"
    response = await client.get("/api/auth/email/verify", params={"token": tampered})
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_LINK"


async def test_a_reset_link_dies_when_the_password_changes(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, tokens = await _verified_user(client, smtp_server)
    await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    reset_link = await _mail_link(smtp_server, user["email"], count=2)
    await client.post(
        "/api/auth/password/change",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(tokens),
    )
    response = await client.post(
        "/api/auth/password/reset",
        json={"token": _token(reset_link), "new_password": "yet another passphrase"},
    )
    assert response.status_code == 400
    await login(client, user["username"], NEW_PASSWORD)


class TestDeactivateOnForgot:
    """DEACTIVATE_ON_PASSWORD_FORGOT=True: the account sleeps until the reset."""

    @pytest.fixture
    def settings_overrides(self, smtp_server: MailCatcher) -> dict[str, object]:
        return {**smtp_server.settings(), "DEACTIVATE_ON_PASSWORD_FORGOT": True}

    async def test_forgot_deactivates_and_reset_reactivates(
        self, client: httpx.AsyncClient, smtp_server: MailCatcher
    ) -> None:
        user, tokens = await _verified_user(client, smtp_server)
        await client.post("/api/auth/password/forgot", json={"email": user["email"]})
        reset_link = await _mail_link(smtp_server, user["email"], count=2)
        assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 401
        refused = await client.post(
            "/api/auth/login", data={"username": user["username"], "password": PASSWORD}
        )
        assert refused.status_code == 401
        # A second request while inactive still sends a link.
        await client.post("/api/auth/password/forgot", json={"email": user["email"]})
        await smtp_server.wait_for(user["email"], count=3)
        reset = await client.post(
            "/api/auth/password/reset",
            json={"token": _token(reset_link), "new_password": NEW_PASSWORD},
        )
        assert reset.status_code == 204
        await login(client, user["username"], NEW_PASSWORD)


async def test_a_banned_account_cannot_reset_its_way_back(
    app: FastAPI, client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    user, _ = await _verified_user(client, smtp_server)
    await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    reset_link = await _mail_link(smtp_server, user["email"], count=2)
    async with app.state.session_factory() as session:
        row = await session.get(User, user["uuid"])
        row.is_active = False
        row.deactivated_reason = "banned"
        await session.commit()
    response = await client.post(
        "/api/auth/password/reset",
        json={"token": _token(reset_link), "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 400
    await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    await app.state.mailer.drain()
    assert len(smtp_server.to(user["email"])) == 2


class TestSmtpDown:
    """The SMTP server is unreachable: sign-up still succeeds, the failure is logged."""

    @pytest.fixture
    def settings_overrides(self, smtp_server: MailCatcher) -> dict[str, object]:
        smtp_server.stop()
        return smtp_server.settings()

    @pytest.fixture
    def smtp_server(self) -> MailCatcher:
        catcher = MailCatcher()
        catcher.start()
        return catcher

    async def test_signup_succeeds_and_the_failure_is_logged(
        self, app: FastAPI, client: httpx.AsyncClient, captured_logs: list[str]
    ) -> None:
        user = await signup(client)
        await app.state.mailer.drain()
        failures = [line for line in captured_logs if "failed" in line and "email" in line]
        assert len(failures) == 1
        assert "ERROR" in failures[0]
        assert "Verify your email" in failures[0]
        await login(client, user["username"])


class TestEmailOff:
    """EMAIL_METHOD=none: nothing is sent and an unverified email is not held against anyone."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"EMAIL_METHOD": "none"}

    async def test_nothing_is_sent_and_login_works(
        self, app: FastAPI, client: httpx.AsyncClient, captured_logs: list[str]
    ) -> None:
        user, tokens = await signup_and_login(client)
        me = await client.get("/api/users/me", headers=bearer(tokens))
        assert me.json()["email_verified"] is False
        forgot = await client.post("/api/auth/password/forgot", json={"email": user["email"]})
        assert forgot.status_code == 202
        await app.state.mailer.drain()
        assert not any("sent via" in line for line in captured_logs)


class _MailjetStub(BaseHTTPRequestHandler):
    """Plays Mailjet's Send API v3.1 on loopback."""

    received: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        payload = json.dumps({"Messages": [{"Status": "success"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


async def test_mailjet_sender_speaks_the_send_api(tmp_path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _MailjetStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _MailjetStub.received = []
    try:
        settings = make_settings(
            tmp_path,
            EMAIL_METHOD="mj",
            MJ_APIKEY_PUBLIC="public-key",
            MJ_APIKEY_PRIVATE="private-key",
            MJ_SENDER_EMAIL="no-reply@usermanager.example",
        )
        sender = MailjetEmailSender(settings, api_url=f"http://127.0.0.1:{server.server_port}/")
        mailer = Mailer(settings, sender)
        mailer.send_later(
            OutgoingEmail(to="ann@example.com", subject="Hello", text="plain", html="<p>html</p>")
        )
        await mailer.drain()
    finally:
        server.shutdown()
    assert len(_MailjetStub.received) == 1
    request = _MailjetStub.received[0]
    assert request["path"] == "/v3.1/send"
    expected_auth = "Basic " + base64.b64encode(b"public-key:private-key").decode()
    assert request["auth"] == expected_auth
    message = request["body"]["Messages"][0]
    assert message["To"] == [{"Email": "ann@example.com"}]
    assert message["From"]["Email"] == "no-reply@usermanager.example"
    assert message["Subject"] == "Hello"
    assert message["TextPart"] == "plain"
    assert message["HTMLPart"] == "<p>html</p>"
