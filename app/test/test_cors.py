"""CORS: preflights answered before everything else, exact origins, exposed headers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.core.config import ConfigError, load_settings
from app.test.factories import bearer, user_with_tokens

WEB_APP = "http://localhost:5173"
OTHER_SITE = "https://evil.example"


def preflight(origin: str, method: str = "POST", headers: str = "authorization,content-type"):
    """The headers of a browser's preflight for a cross-origin call."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


class TestAllowedOrigins:
    """CORS_ORIGINS names the web app; the global limit and the flags are on, tight."""

    @pytest.fixture
    def settings_overrides(self, tmp_path: Path) -> dict[str, object]:
        data_dir = tmp_path / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Every flag off but the ones the test needs: a preflight must not ask them.
        (data_dir / "feature_flags.json").write_text(json.dumps({"READ_ME": False}))
        return {
            "CORS_ORIGINS": f"{WEB_APP}, https://admin.example",
            "RATE_LIMITER_ENABLED": True,
            "RATE_LIMITER_MAX_REQUESTS": 5,
            "RATE_LIMITER_WINDOW_SECONDS": 60,
            "FEATURE_FLAGS_ENABLED": True,
        }

    async def test_a_preflight_from_an_allowed_origin_is_answered(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.options("/api/auth/login", headers=preflight(WEB_APP))
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == WEB_APP
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        methods = response.headers["Access-Control-Allow-Methods"].split(", ")
        assert {"GET", "POST", "PATCH", "PUT", "DELETE"} <= set(methods)
        allowed = response.headers["Access-Control-Allow-Headers"].lower()
        for header in ("authorization", "content-type", "x-device-token"):
            assert header in allowed
        assert "Origin" in response.headers["Vary"]

    async def test_another_origin_is_refused_without_allow_origin(
        self, client: httpx.AsyncClient
    ) -> None:
        refused = await client.options("/api/auth/login", headers=preflight(OTHER_SITE))
        assert refused.status_code == 400
        assert "Access-Control-Allow-Origin" not in refused.headers
        assert refused.json()["code"] == "CORS_REFUSED"
        assert "CORS_ORIGINS" in refused.json()["detail"]
        # A lookalike (another port, a suffix) is another origin.
        for lookalike in ("http://localhost:5174", "http://localhost:5173.evil.example"):
            answer = await client.options("/api/users/me", headers=preflight(lookalike, "GET"))
            assert "Access-Control-Allow-Origin" not in answer.headers
        simple = await client.get("/health", headers={"Origin": OTHER_SITE})
        assert simple.status_code == 200
        assert "Access-Control-Allow-Origin" not in simple.headers

    async def test_a_preflight_flood_is_neither_limited_nor_flagged_nor_logged_as_error(
        self, client: httpx.AsyncClient, captured_logs: list[str]
    ) -> None:
        for _ in range(50):
            response = await client.options("/api/users/me", headers=preflight(WEB_APP, "GET"))
            assert response.status_code == 200
        # READ_ME is off: the preflight passed, the call itself is refused by its flag.
        # The budget is whole: no preflight was counted.
        call = await client.get("/api/users/me", headers={"Origin": WEB_APP})
        assert call.status_code == 403
        assert call.json()["code"] == "FEATURE_DISABLED"
        assert call.headers["RateLimit-Remaining"] == "4"
        assert call.headers["Access-Control-Allow-Origin"] == WEB_APP
        assert not [line for line in captured_logs if line.startswith(("ERROR", "WARNING"))]

    async def test_rate_limit_headers_come_with_a_200_and_are_exposed(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        _, tokens = await user_with_tokens(app, client)
        response = await client.get(
            "/api/auth/sessions", headers={**bearer(tokens), "Origin": WEB_APP}
        )
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "5"
        assert response.headers["RateLimit-Remaining"] == "4"  # the user's own budget
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 60
        assert "Retry-After" not in response.headers
        assert response.headers["Access-Control-Allow-Origin"] == WEB_APP
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        exposed = {
            h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
        }
        assert {
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "retry-after",
            "x-request-id",
        } <= exposed
        for _ in range(4):
            await client.get("/api/auth/sessions", headers=bearer(tokens))
        limited = await client.get(
            "/api/auth/sessions", headers={**bearer(tokens), "Origin": WEB_APP}
        )
        assert limited.status_code == 429
        assert limited.headers["Access-Control-Allow-Origin"] == WEB_APP  # readable
        assert limited.headers["RateLimit-Remaining"] == "0"


class TestNoOrigins:
    """The default: no CORS_ORIGINS, no cross-origin access, and nothing else changes."""

    async def test_no_cors_headers(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health", headers={"Origin": WEB_APP})
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Expose-Headers" not in response.headers
        assert "RateLimit-Limit" not in response.headers  # the global limit is off


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("*", "'*' is refused: credentials"),
        (f"{WEB_APP}, *", "'*' is refused"),
        ("http://localhost:5173/app", "no path"),
        ("localhost:5173", "origin as a browser sends it"),
        ("http://localhost:99999", "not an origin"),
    ],
)
def test_bad_origins_stop_the_service_with_a_message(
    tmp_path: Path, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None, DATA_DIR=tmp_path, CORS_ORIGINS=value)
    assert "CORS_ORIGINS" in str(error.value)
    assert message in str(error.value)


def test_origins_are_kept_as_browsers_send_them(tmp_path: Path) -> None:
    settings = load_settings(
        _env_file=None, DATA_DIR=tmp_path, CORS_ORIGINS="https://App.Example:8443/, http://x.test"
    )
    assert settings.CORS_ORIGINS == ["https://app.example:8443", "http://x.test"]


def test_default_ports_are_left_out_as_browsers_do(tmp_path: Path) -> None:
    """A browser never sends ``:443`` for https (nor ``:80`` for http): an origin listed
    with it would match nothing."""
    settings = load_settings(
        _env_file=None,
        DATA_DIR=tmp_path,
        CORS_ORIGINS="https://app.example:443,http://x.test:80,http://[::1]:5173,http://x.test:443",
    )
    assert settings.CORS_ORIGINS == [
        "https://app.example",
        "http://x.test",
        "http://[::1]:5173",
        "http://x.test:443",
    ]
