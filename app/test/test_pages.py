"""Pages: the protected docs (also in a real browser), sign-in, legal redirects, OpenAPI."""

from __future__ import annotations

import re
import time

import httpx
import pyotp
import pytest
from fastapi import FastAPI

from app.test.factories import PASSWORD, bearer, user_with_tokens
from app.test.server import LiveServer

#: The in-process client's own origin (its base URL); the sign-in page sends it.
OWN_ORIGIN = {"Origin": "http://testserver"}
#: The settings' default BASE_URL.
BASE_URL_ORIGIN = {"Origin": "http://localhost:8000"}
#: What a page on another site sends, and what a sandboxed page sends.
FOREIGN_REQUESTS = [
    {},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://testserver.evil.example"},
    {"Origin": "https://testserver"},  # same host, another scheme
    {"Origin": "http://testserver:8080"},  # same host, another port
    {"Origin": "http://testserver/"},  # not an origin (browsers send none such)
    {"Origin": "http://user@testserver"},
    {"Origin": "http://[::1"},  # unparsable
    {**OWN_ORIGIN, "Sec-Fetch-Site": "cross-site"},
]


async def _docs_sign_in(
    client: httpx.AsyncClient, token: str, headers: dict[str, str] = OWN_ORIGIN
) -> httpx.Response:
    """What the sign-in page does once it holds a token: POST it to /interactive-docs."""
    return await client.post("/interactive-docs", data={"token": token}, headers=headers)


async def test_signed_out_visits_go_to_sign_in(client: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc", "/interactive-docs"):
        response = await client.get(path)
        assert response.status_code == 307, path
        assert response.headers["location"].startswith("/signin?next=")
    schema = await client.get("/openapi.json")
    assert schema.status_code == 401
    assert schema.json()["code"] == "UNAUTHORIZED"
    page = await client.get("/signin")
    assert page.status_code == 200
    assert 'id="username"' in page.text
    assert page.headers["cache-control"] == "no-store"


async def test_staff_get_a_cookie_and_the_docs(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, tokens = await user_with_tokens(app, client, ("moderator", "user"))
    signed_in = await _docs_sign_in(client, tokens["access_token"])
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/docs"
    cookie = signed_in.headers["set-cookie"]
    assert "user_manager_docs=" in cookie
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Secure" not in cookie
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "/docs-static/swagger-ui-bundle.js" in docs.text
    assert (await client.get("/docs-static/swagger-ui-bundle.js")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200
    schema = await client.get("/openapi.json")
    assert schema.status_code == 200
    assert "/api/users/me" in schema.json()["paths"]
    assert (await client.get("/interactive-docs")).headers["location"] == "/docs"


async def test_a_plain_user_sees_a_403_page(app: FastAPI, client: httpx.AsyncClient) -> None:
    user, tokens = await user_with_tokens(app, client)
    response = await _docs_sign_in(client, tokens["access_token"])
    assert response.status_code == 403
    assert "Not allowed" in response.text
    assert user.username in response.text
    bearer_schema = await client.get(
        "/openapi.json", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert bearer_schema.status_code == 403


async def test_a_bad_token_goes_back_to_sign_in(client: httpx.AsyncClient) -> None:
    response = await _docs_sign_in(client, "nonsense")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin")


async def test_no_page_carries_the_access_token(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, tokens = await user_with_tokens(app, client, ("admin", "user"))
    token = tokens["access_token"]
    assert (await _docs_sign_in(client, token)).status_code == 303
    for path in ("/docs", "/redoc", "/signin", "/docs/oauth2-redirect"):
        page = await client.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html"), path
        assert token not in page.text, path
        assert "eyJ" not in page.text, path  # no JWT of any kind


async def test_the_docs_page_gets_its_token_from_a_same_origin_call(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, tokens = await user_with_tokens(app, client, ("admin", "user"))
    token = tokens["access_token"]
    await _docs_sign_in(client, token)
    credential = await client.post("/docs/token", headers=OWN_ORIGIN)
    assert credential.status_code == 200
    assert credential.json()["access_token"] == token
    assert credential.json()["token_type"] == "bearer"
    assert 0 < credential.json()["expires_in"] <= 30 * 60
    assert credential.headers["cache-control"] == "no-store"
    for headers in FOREIGN_REQUESTS:
        refused = await client.post("/docs/token", headers=headers)
        assert refused.status_code == 403, headers
        assert refused.json()["code"] == "CROSS_ORIGIN_REQUEST", headers
        assert token not in refused.text
    # A GET (a <script src> or an <img> from another site) gets nothing either.
    assert (await client.get("/docs/token")).status_code == 405
    # The cookie is the credential: a bearer token alone opens nothing here.
    client.cookies.clear()
    alone = await client.post("/docs/token", headers={**OWN_ORIGIN, **bearer(token)})
    assert alone.status_code == 401
    assert alone.json()["code"] == "UNAUTHORIZED"


async def test_a_demoted_user_gets_no_docs_token(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, admin_tokens = await user_with_tokens(app, client, ("admin", "user"))
    moderator, tokens = await user_with_tokens(app, client, ("moderator", "user"))
    await _docs_sign_in(client, tokens["access_token"])
    assert (await client.post("/docs/token", headers=OWN_ORIGIN)).status_code == 200
    demoted = await client.patch(
        f"/api/admin/user/{moderator.uuid}", json={"roles": ["user"]}, headers=bearer(admin_tokens)
    )
    assert demoted.status_code == 200, demoted.text
    refused = await client.post("/docs/token", headers=OWN_ORIGIN)
    assert refused.status_code == 403
    assert refused.json()["code"] == "FORBIDDEN"


async def test_sign_out_ends_the_docs_session(app: FastAPI, client: httpx.AsyncClient) -> None:
    _, tokens = await user_with_tokens(app, client, ("admin", "user"))
    token = tokens["access_token"]
    await _docs_sign_in(client, token)
    cookie = client.cookies["user_manager_docs"]
    assert (await client.get("/api/users/me", headers=bearer(token))).status_code == 200
    signed_out = await client.get("/signout")
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/signin"
    assert "user_manager_docs" not in client.cookies
    # The session is over on the server: its token is refused by the API.
    me = await client.get("/api/users/me", headers=bearer(token))
    assert me.status_code == 401
    assert me.json()["code"] == "INVALID_TOKEN"
    # The signed-out cookie, replayed, opens nothing.
    client.cookies.set("user_manager_docs", cookie)
    replayed = await client.get("/docs")
    assert replayed.status_code == 307
    assert replayed.headers["location"].startswith("/signin")
    assert (await client.get("/openapi.json")).status_code == 401
    assert (await client.post("/docs/token", headers=OWN_ORIGIN)).status_code == 401
    assert (await client.get("/interactive-docs")).headers["location"].startswith("/signin")
    # Signing out with a dead cookie (or none) still clears it and goes to /signin.
    again = await client.get("/signout")
    assert again.status_code == 303
    assert "Max-Age=0" in again.headers["set-cookie"]
    assert (await client.get("/signout")).status_code == 303


async def test_sign_in_is_accepted_only_from_this_service(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    _, tokens = await user_with_tokens(app, client, ("admin", "user"))
    token = tokens["access_token"]
    for headers in FOREIGN_REQUESTS:
        refused = await _docs_sign_in(client, token, headers)
        assert refused.status_code == 403, headers
        assert refused.json()["code"] == "CROSS_ORIGIN_REQUEST", headers
        assert "set-cookie" not in refused.headers, headers
    assert "user_manager_docs" not in client.cookies
    for headers in (OWN_ORIGIN, BASE_URL_ORIGIN, {**OWN_ORIGIN, "Sec-Fetch-Site": "same-origin"}):
        client.cookies.clear()
        accepted = await _docs_sign_in(client, token, headers)
        assert accepted.status_code == 303, headers
        assert "user_manager_docs" in client.cookies, headers


def _policy(response: httpx.Response) -> dict[str, list[str]]:
    """The response's Content-Security-Policy, as {directive: sources}."""
    directives = {}
    for directive in response.headers["content-security-policy"].split(";"):
        name, *sources = directive.split()
        directives[name] = sources
    return directives


def assert_cannot_be_framed_nor_injected(response: httpx.Response) -> None:
    """The headers every HTML page sends, and no inline script (the policy forbids it)."""
    where = response.request.url.path
    assert response.headers["content-type"].startswith("text/html"), where
    assert response.headers["x-frame-options"] == "DENY", where
    policy = _policy(response)
    assert policy["frame-ancestors"] == ["'none'"], where
    assert policy["script-src"] == ["'self'"], where
    assert policy["object-src"] == ["'none'"], where
    assert policy["base-uri"] == ["'none'"], where
    assert policy["form-action"] == ["'self'"], where
    assert policy["default-src"] == ["'none'"], where
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", response.text), where
    assert not re.search(r"<[^>]+\son[a-z]+=", response.text), where  # no inline handlers


async def test_every_html_page_forbids_framing_and_inline_scripts(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    pages = [await client.get("/signin"), await client.get("/docs/oauth2-redirect")]
    _, plain = await user_with_tokens(app, client)
    forbidden = await _docs_sign_in(client, plain["access_token"])
    assert forbidden.status_code == 403
    pages.append(forbidden)
    pages.append(await client.get("/docs", headers=bearer(plain)))  # the 403 page again
    _, staff = await user_with_tokens(app, client, ("moderator", "user"))
    await _docs_sign_in(client, staff["access_token"])
    pages += [await client.get("/docs"), await client.get("/redoc")]
    assets = set()
    for page in pages:
        assert_cannot_be_framed_nor_injected(page)
        assets |= set(re.findall(r'<(?:script src|link rel="[a-z ]+" href)="([^"]+)"', page.text))
    assert {"/static/signin.js", "/static/swagger.js", "/static/oauth2-redirect.js"} <= assets
    # What the pages load instead of inline code is served, from this origin.
    for asset in assets:
        assert asset.startswith("/"), asset
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert "content-security-policy" not in served.headers, asset  # not HTML


class TestPublicDocs:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"PROTECTED_INTERACTIVE_DOCS": False}

    async def test_docs_are_public(self, client: httpx.AsyncClient) -> None:
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert 'data-signed-in="false"' in docs.text  # no token to ask for
        assert_cannot_be_framed_nor_injected(docs)
        assert_cannot_be_framed_nor_injected(await client.get("/redoc"))
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.post("/docs/token", headers=OWN_ORIGIN)).status_code == 401


class TestProduction:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"ENVIRONMENT": "production", "JWT_SECRET_KEY": "p" * 40}

    async def test_the_cookie_is_secure(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        _, tokens = await user_with_tokens(app, client, ("admin", "user"))
        response = await _docs_sign_in(client, tokens["access_token"])
        assert "Secure" in response.headers["set-cookie"]


class TestOpenApiTellsTheTruth:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"PROTECTED_INTERACTIVE_DOCS": False}

    async def test_every_operation_is_documented(self, client: httpx.AsyncClient) -> None:
        schema = (await client.get("/openapi.json")).json()
        assert (
            schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"][
                "tokenUrl"
            ]
            == "/api/auth/login"
        )
        assert "HTTPValidationError" not in schema["components"]["schemas"]
        for path, item in schema["paths"].items():
            for method, operation in item.items():
                where = f"{method.upper()} {path}"
                assert operation.get("tags"), where
                assert operation.get("description"), where
                responses = operation["responses"]
                assert any(code.startswith(("2", "3")) for code in responses), where
                if path.startswith("/oauth2/") and operation.get("requestBody"):
                    # The protocol's endpoints answer bad input with its own 400
                    # (invalid_request), never FastAPI's 422.
                    assert "422" not in responses, where
                    ref = responses["400"]["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/OAuthErrorResponse"), where
                elif operation.get("parameters") or operation.get("requestBody"):
                    assert "422" in responses, where
                    ref = responses["422"]["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ValidationErrorResponse"), where
                for code, response in responses.items():
                    json_body = response.get("content", {}).get("application/json")
                    if code.startswith("4") and code != "422" and json_body:
                        ref = json_body["schema"]["$ref"]
                        assert ref.endswith("ErrorResponse"), (where, code)


# A real browser ------------------------------------------------------------------------


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "FIRST_ADMIN_USERNAME": "docs_admin",
        "FIRST_ADMIN_EMAIL": "docs_admin@example.com",
        "FIRST_ADMIN_PASSWORD": PASSWORD,
    }


def _sign_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/docs")
    page.wait_for_url("**/signin**")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")


def _console(page) -> list[str]:
    """Every console message and uncaught error of ``page`` (CSP violations land here)."""
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.on("pageerror", lambda error: messages.append(str(error)))
    return messages


def test_a_browser_signs_in_and_tries_an_endpoint(live_server: LiveServer, browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    console = _console(page)
    authorizations: list[str] = []
    page.on("request", lambda request: authorizations.append(request.headers.get("authorization")))
    docs_url = f"{live_server.url}/docs"
    with page.expect_response(lambda r: r.url == docs_url and r.status == 200) as docs:
        _sign_in(page, live_server.url, "docs_admin")
    page.wait_for_url(docs_url)
    assert "frame-ancestors 'none'" in docs.value.headers["content-security-policy"]
    html = docs.value.text()
    assert page.locator(".docs-bar").inner_text().startswith("Signed in as docs_admin")
    operation = page.locator("#operations-users-users-read-me")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()
    statuses = operation.locator(".live-responses-table tr.response .response-col_status")
    statuses.first.wait_for()
    assert statuses.first.inner_text().strip() == "200"
    assert "docs_admin" in operation.locator(".live-responses-table").inner_text()
    # "Try it out" sent a token, which the page got by a call, not in its HTML.
    tokens = {value.removeprefix("Bearer ") for value in authorizations if value}
    assert len(tokens) == 1
    assert tokens.pop() not in html

    # ReDoc renders under its policy too.
    redoc = context.new_page()
    redoc_console = _console(redoc)
    response = redoc.goto(f"{live_server.url}/redoc")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    redoc.get_by_role("heading", name="Read Me").first.wait_for()
    redoc.get_by_placeholder("Search...").fill("Read Me")  # searched in a blob: worker
    redoc.locator("[data-role='search:results'] li").first.wait_for()

    # Signing out (in another tab) ends the session the docs page holds a token of.
    redoc.goto(f"{live_server.url}/signout")
    redoc.wait_for_url(f"{live_server.url}/signin")
    operation.locator(".execute").click()
    statuses.filter(has_text="401").first.wait_for()
    redoc.goto(f"{live_server.url}/docs")
    redoc.wait_for_url("**/signin?next=/docs")

    violations = [m for m in console + redoc_console if "Content Security Policy" in m]
    # ReDoc's footer logo comes from its CDN: blocked on purpose (no third-party requests).
    assert [m for m in violations if "https://cdn.redoc.ly/" not in m] == []


def test_a_browser_with_a_plain_user_is_refused(live_server: LiveServer, browser) -> None:
    """Through the 2FA step of the sign-in page, to the "not allowed" page."""
    url = live_server.url
    credentials = {"username": "plain_reader", "password": PASSWORD}
    httpx.post(
        f"{url}/api/auth/signup", json={**credentials, "email": "plain@example.com"}
    ).raise_for_status()
    tokens = httpx.post(f"{url}/api/auth/login", data=credentials).json()
    setup = httpx.post(
        f"{url}/api/auth/otp/setup",
        json={"method": "authenticator", "password": PASSWORD},
        headers=bearer(tokens),
    )
    totp = pyotp.parse_uri(setup.json()["provisioning_uri"])
    assert isinstance(totp, pyotp.TOTP)
    httpx.post(
        f"{url}/api/auth/otp/enable",
        json={"method": "authenticator", "code": totp.now()},
        headers=bearer(tokens),
    ).raise_for_status()
    page = browser.new_page()
    console = _console(page)
    _sign_in(page, url, "plain_reader")
    page.wait_for_selector("#code-step:not([hidden])")
    page.fill("#code", totp.at(time.time() + 30))  # the next step: this one is spent
    page.click("#verify")
    page.wait_for_selector("text=Not allowed")
    assert "plain_reader" in page.content()
    assert [m for m in console if "Content Security Policy" in m] == []


class TestMetrics:
    """METRICS_ENABLED with the default METRICS_ALLOW_IPS (127.0.0.1)."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"METRICS_ENABLED": True}

    async def test_requests_and_logins_are_counted(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        user, _ = await user_with_tokens(app, client)
        await client.post("/api/auth/login", data={"username": user.username, "password": "x" * 9})
        await client.get("/api/user/00000000-0000-4000-8000-000000000000")
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert 'route="/auth/login",status="200"' in text
        assert (
            'user_manager_http_request_duration_seconds_count{method="POST",route="/auth/login"}'
            in text
        )
        assert 'user_manager_logins_total{result="success"}' in text
        assert 'user_manager_logins_total{result="failure"}' in text
        assert 'route="/user/{uuid}",status="401"' in text  # templates, not raw paths

    async def test_only_allowed_addresses(self, app: FastAPI) -> None:
        transport = httpx.ASGITransport(app=app, client=("198.51.100.3", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as outsider:
            response = await outsider.get("/metrics")
        assert response.status_code == 403


async def test_metrics_are_off_by_default(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404
