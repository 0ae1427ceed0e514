"""Links in mails: to the front end's pages when FRONTEND_URL is set, else to the
service's own pages, which carry the token in the fragment and never log it."""

from __future__ import annotations

import time
from email.message import EmailMessage
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from app.services.external_accounts import InvalidRedirectUri, check_redirect_uri
from app.test.conftest import make_settings
from app.test.factories import PASSWORD, bearer, live_signup_and_login, login, signup
from app.test.mail import MailCatcher, link_in, links_in, token_in, verify_address
from app.test.server import LiveServer
from app.test.test_pages import assert_cannot_be_framed_nor_injected

NEW_PASSWORD = "a brand new passphrase"
FRONTEND = "https://app.example"


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    """Mail to the test SMTP server; no front end (the default)."""
    return smtp_server.settings()


async def _reset_link(client: httpx.AsyncClient, catcher: MailCatcher) -> str:
    """Sign up, verify, ask for a reset: the link of the reset mail."""
    user = await signup(client)
    await verify_address(client, catcher, user["email"])
    await client.post("/api/auth/password/forgot", json={"email": user["email"]})
    return link_in(await catcher.wait_for(user["email"], 2))


async def _email_change_mails(
    client: httpx.AsyncClient, catcher: MailCatcher
) -> tuple[EmailMessage, EmailMessage]:
    """A verified user asks to change their email: the confirmation and the notice."""
    user = await signup(client)
    await verify_address(client, catcher, user["email"])
    tokens = await login(client, user["username"])
    new = user["username"] + "@moved.example"
    asked = await client.patch(
        "/api/users/me", json={"email": new, "current_password": PASSWORD}, headers=bearer(tokens)
    )
    assert asked.status_code == 200, asked.text
    return await catcher.wait_for(new), await catcher.wait_for(user["email"], 2)


# Without a front end: the service's own pages ------------------------------------------


async def test_links_open_the_services_own_pages_with_the_token_in_the_fragment(
    client: httpx.AsyncClient,
    smtp_server: MailCatcher,
    captured_logs: list[str],
) -> None:
    user = await signup(client)
    verify = link_in(await smtp_server.wait_for(user["email"]))
    assert verify.startswith("http://localhost:8000/account/verify#token=")
    reset = await _reset_link(client, smtp_server)
    assert reset.startswith("http://localhost:8000/account/reset#token=")
    confirmation, notice = await _email_change_mails(client, smtp_server)
    confirm = link_in(confirmation)
    assert confirm.startswith("http://localhost:8000/account/confirm-email-change#token=")
    undo, forgot = links_in(notice)
    assert undo.startswith("http://localhost:8000/account/undo-email-change#token=")
    assert forgot == "http://localhost:8000/account/forgot-password"

    tokens = [token_in(link) for link in (verify, reset, confirm, undo)]
    for link in (verify, reset, confirm, undo, forgot):
        parts = urlsplit(link)
        assert not parts.query, link  # nothing the server would see or log
        page = await client.get(parts.path)
        assert page.status_code == 200, link
        assert page.headers["cache-control"] == "no-store"
        assert_cannot_be_framed_nor_injected(page)
        assert '<script src="/static/account.js"></script>' in page.text
        assert '<link rel="stylesheet" href="/static/pages.css">' in page.text  # as /signin
    assert (await client.get("/static/account.js")).status_code == 200

    # What the pages' script does: POST each token in a body.
    verified = await client.post("/api/auth/email/verify", json={"token": tokens[0]})
    assert verified.status_code == 200, verified.text
    assert verified.json() == {"detail": "Email verified"}
    confirmed = await client.post("/api/auth/email/change/confirm", json={"token": tokens[2]})
    assert confirmed.status_code == 200, confirmed.text
    logged = "\n".join(captured_logs)
    assert logged  # the requests were logged...
    for token in tokens:
        assert token not in logged  # ...without a token


async def test_verification_by_post_is_single_use_and_bound_to_its_purpose(
    client: httpx.AsyncClient, smtp_server: MailCatcher
) -> None:
    reset_token = token_in(await _reset_link(client, smtp_server))
    as_verify = await client.post("/api/auth/email/verify", json={"token": reset_token})
    assert as_verify.status_code == 400
    assert as_verify.json()["code"] == "INVALID_LINK"
    user = await signup(client)
    token = token_in(link_in(await smtp_server.wait_for(user["email"])))
    for forged in (token[:-3] + "abc", ""):
        refused = await client.post("/api/auth/email/verify", json={"token": forged})
        assert refused.status_code in (400, 422)
        assert {"detail", "code"} <= set(refused.json())
    assert (await client.post("/api/auth/email/verify", json={"token": token})).status_code == 200
    again = await client.post("/api/auth/email/verify", json={"token": token})
    assert again.status_code == 400
    assert again.json()["code"] == "INVALID_LINK"


async def test_legal_pages_say_they_are_not_configured(client: httpx.AsyncClient) -> None:
    for path, name in (("/terms", "terms of service"), ("/privacy", "privacy policy")):
        response = await client.get(path)
        assert response.status_code == 404
        assert "location" not in response.headers
        assert_cannot_be_framed_nor_injected(response)
        assert f"has no {name} configured" in response.text


def test_without_a_front_end_redirects_go_to_base_url_only(tmp_path) -> None:
    """An empty FRONTEND_URL adds no origin to the OAuth redirect_uri allow list."""
    settings = make_settings(tmp_path)
    assert check_redirect_uri(settings, "http://localhost:8000/after")
    for target in ("http://localhost:3000/after", "http:///after", "/after", ""):
        with pytest.raises(InvalidRedirectUri):
            check_redirect_uri(settings, target)


def test_front_end_paths_must_be_paths(tmp_path) -> None:
    for bad in ("verify", "//evil.example/x", "https://evil.example/x", "/x?y=1", "/x#y", "/a b"):
        with pytest.raises(ValidationError, match="FRONTEND_VERIFY_PATH"):
            make_settings(tmp_path, FRONTEND_VERIFY_PATH=bad)
    assert make_settings(tmp_path, FRONTEND_URL="  ").FRONTEND_URL == ""
    assert make_settings(tmp_path).FRONTEND_URL == ""  # no front end by default


# With a front end ----------------------------------------------------------------------


class TestWithAFrontEnd:
    @pytest.fixture
    def settings_overrides(self, smtp_server: MailCatcher) -> dict[str, object]:
        return {
            **smtp_server.settings(),
            "FRONTEND_URL": FRONTEND + "/",
            "FRONTEND_VERIFY_PATH": "/welcome/verify",
        }

    async def test_links_open_the_front_ends_pages_with_the_token_in_the_query(
        self, client: httpx.AsyncClient, smtp_server: MailCatcher
    ) -> None:
        user = await signup(client)
        verify = link_in(await smtp_server.wait_for(user["email"]))
        assert verify.startswith(f"{FRONTEND}/welcome/verify?token=")
        # The front end's page forwards the token to the API as it came.
        verified = await client.post("/api/auth/email/verify", json={"token": token_in(verify)})
        assert verified.status_code == 200, verified.text
        await client.post("/api/auth/password/forgot", json={"email": user["email"]})
        reset = link_in(await smtp_server.wait_for(user["email"], 2))
        assert reset.startswith(f"{FRONTEND}/reset-password?token=")
        confirmation, notice = await _email_change_mails(client, smtp_server)
        assert link_in(confirmation).startswith(f"{FRONTEND}/confirm-email-change?token=")
        undo, forgot = links_in(notice)
        assert undo.startswith(f"{FRONTEND}/undo-email-change?token=")
        assert forgot == f"{FRONTEND}/forgot-password"

    async def test_legal_pages_redirect_to_the_front_end(self, client: httpx.AsyncClient) -> None:
        for page in ("terms", "privacy"):
            response = await client.get(f"/{page}")
            assert response.status_code == 307
            assert response.headers["location"] == f"{FRONTEND}/{page}"


# A real browser on the service's own pages ---------------------------------------------


def _mail(catcher: MailCatcher, address: str, count: int = 1) -> EmailMessage:
    """The ``count``-th message to ``address``, waiting for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        received = catcher.to(address)
        if len(received) >= count:
            return received[count - 1]
        time.sleep(0.05)
    raise AssertionError(f"no message #{count} for {address}")


def _on(server: LiveServer, link: str) -> str:
    """``link`` on the live server's address: the mail names BASE_URL's, and the server
    listens on a port chosen when it started. Path and fragment stay as mailed."""
    parts = urlsplit(link)
    assert not parts.query, link
    return f"{server.url}{parts.path}#{parts.fragment}"


def _watch(page) -> list[str]:
    """Console messages and uncaught errors of ``page`` (CSP violations land here)."""
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.on("pageerror", lambda error: messages.append(str(error)))
    return messages


def test_a_browser_follows_the_verification_link(
    live_server: LiveServer, smtp_server: MailCatcher, browser
) -> None:
    user, tokens = live_signup_and_login(live_server.url)
    link = link_in(_mail(smtp_server, user["email"]))
    assert urlsplit(link).path == "/account/verify"
    page = browser.new_page()
    console = _watch(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(_on(live_server, link))
    page.wait_for_selector("#outcome:not([hidden])")
    assert page.inner_text("#outcome") == "Your email is verified."
    assert "token" not in page.url  # taken out of the address bar
    me = httpx.get(f"{live_server.url}/api/users/me", headers=bearer(tokens))
    assert me.json()["email_verified"] is True
    # Followed again, the link is spent: the page says so.
    again = browser.new_page()
    again.goto(_on(live_server, link))
    again.wait_for_selector("#error:not(:empty)")
    assert "already used" in again.inner_text("#error")
    assert [m for m in console if "Content Security Policy" in m] == []
    token = token_in(link)
    assert not [url for url in requested if token in url]  # no URL the browser asked for
    assert token not in live_server.output  # nor the server's log


def test_a_browser_sets_a_new_password_from_the_reset_link(
    live_server: LiveServer, smtp_server: MailCatcher, browser
) -> None:
    user, _ = live_signup_and_login(live_server.url)
    verify = token_in(link_in(_mail(smtp_server, user["email"])))
    httpx.post(
        f"{live_server.url}/api/auth/email/verify", json={"token": verify}
    ).raise_for_status()
    httpx.post(
        f"{live_server.url}/api/auth/password/forgot", json={"email": user["email"]}
    ).raise_for_status()
    link = link_in(_mail(smtp_server, user["email"], 2))
    assert urlsplit(link).path == "/account/reset"
    page = browser.new_page()
    console = _watch(page)
    page.goto(_on(live_server, link))
    page.wait_for_selector("#step:not([hidden])")
    assert page.is_hidden("#providers")  # no provider account linked
    page.fill("#new-password", NEW_PASSWORD)
    page.fill("#repeat-password", NEW_PASSWORD + "!")
    page.click("#submit")
    page.wait_for_selector("#error:not(:empty)")
    assert "differ" in page.inner_text("#error")
    page.fill("#repeat-password", NEW_PASSWORD)
    page.click("#submit")
    page.wait_for_selector("#outcome:not([hidden])")
    assert "password is changed" in page.inner_text("#outcome")
    credentials = {"username": user["username"]}
    old = httpx.post(
        f"{live_server.url}/api/auth/login", data={**credentials, "password": PASSWORD}
    )
    assert old.status_code == 401
    new = httpx.post(
        f"{live_server.url}/api/auth/login", data={**credentials, "password": NEW_PASSWORD}
    )
    assert new.status_code == 200, new.text
    assert [m for m in console if "Content Security Policy" in m] == []
    assert token_in(link) not in live_server.output


def test_a_browser_confirms_an_email_change(
    live_server: LiveServer, smtp_server: MailCatcher, browser
) -> None:
    url = live_server.url
    user, tokens = live_signup_and_login(url)
    verify = token_in(link_in(_mail(smtp_server, user["email"])))
    httpx.post(f"{url}/api/auth/email/verify", json={"token": verify}).raise_for_status()
    new = user["username"] + "@moved.example"
    httpx.patch(
        f"{url}/api/users/me",
        json={"email": new, "current_password": PASSWORD},
        headers=bearer(tokens),
    ).raise_for_status()
    link = link_in(_mail(smtp_server, new))
    page = browser.new_page()
    console = _watch(page)
    page.goto(_on(live_server, link))
    page.wait_for_selector("#step:not([hidden])")
    # Opening the page changed nothing: the click does.
    me = httpx.get(f"{url}/api/users/me", headers=bearer(tokens)).json()
    assert me["email"] == user["email"]
    page.click("#submit")
    page.wait_for_selector("#outcome:not([hidden])")
    me = httpx.get(f"{url}/api/users/me", headers=bearer(tokens)).json()
    assert me["email"] == new
    assert [m for m in console if "Content Security Policy" in m] == []
    assert token_in(link) not in live_server.output
