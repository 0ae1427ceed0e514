"""Pages: the protected docs (also in a real browser), sign-in, legal redirects, OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from app.test.conftest import require_tool
from app.test.factories import PASSWORD, user_with_tokens
from app.test.server import LiveServer

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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
    signed_in = await client.post("/interactive-docs", data={"token": tokens["access_token"]})
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
    response = await client.post("/interactive-docs", data={"token": tokens["access_token"]})
    assert response.status_code == 403
    assert "Not allowed" in response.text
    assert user.username in response.text
    bearer_schema = await client.get(
        "/openapi.json", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert bearer_schema.status_code == 403


async def test_a_bad_token_goes_back_to_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.post("/interactive-docs", data={"token": "nonsense"})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/signin")


async def test_legal_pages_redirect_to_the_front_end(client: httpx.AsyncClient) -> None:
    for page in ("terms", "privacy"):
        response = await client.get(f"/{page}")
        assert response.status_code == 307
        assert response.headers["location"] == f"http://localhost:3000/{page}"


class TestPublicDocs:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"PROTECTED_INTERACTIVE_DOCS": False}

    async def test_docs_are_public(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200


class TestProduction:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"ENVIRONMENT": "production", "JWT_SECRET_KEY": "p" * 40}

    async def test_the_cookie_is_secure(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        _, tokens = await user_with_tokens(app, client, ("admin", "user"))
        response = await client.post("/interactive-docs", data={"token": tokens["access_token"]})
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
                if operation.get("parameters") or operation.get("requestBody"):
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


@pytest.fixture
def browser() -> Iterator[object]:
    executable = require_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def _sign_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/docs")
    page.wait_for_url("**/signin**")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#sign-in")


def test_a_browser_signs_in_and_tries_an_endpoint(live_server: LiveServer, browser) -> None:
    page = browser.new_page()
    _sign_in(page, live_server.url, "docs_admin")
    page.wait_for_url(f"{live_server.url}/docs")
    operation = page.locator("#operations-users-read_me_api_users_me_get")
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    operation.locator(".execute").click()
    status = operation.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip() == "200"
    assert "docs_admin" in operation.locator(".live-responses-table").inner_text()


def test_a_browser_with_a_plain_user_is_refused(live_server: LiveServer, browser) -> None:
    httpx.post(
        f"{live_server.url}/api/auth/signup",
        json={"username": "plain_reader", "email": "plain@example.com", "password": PASSWORD},
    ).raise_for_status()
    page = browser.new_page()
    _sign_in(page, live_server.url, "plain_reader")
    page.wait_for_selector("text=Not allowed")
    assert "plain_reader" in page.content()


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
