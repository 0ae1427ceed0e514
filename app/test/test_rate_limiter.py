"""Rate limiting: the global limit, keys, proxies, the brute-force guard, Redis, replicas."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis import Redis

from app.core.config import Settings
from app.test.conftest import empty_redis, replicas
from app.test.factories import PASSWORD, bearer, login, signup, user_with_tokens
from app.test.server import LiveServer


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis, emptied before and after (counts and flags start from nothing)."""
    url = empty_redis()
    client = Redis.from_url(url)
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


class TestGlobalLimit:
    """RATE_LIMITER_ENABLED with 5 requests per minute."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {
            "RATE_LIMITER_ENABLED": True,
            "RATE_LIMITER_MAX_REQUESTS": 5,
            "RATE_LIMITER_WINDOW_SECONDS": 60,
        }

    async def test_over_the_limit_is_429_with_headers(self, client: httpx.AsyncClient) -> None:
        statuses = [(await client.get("/api/users/me")).status_code for _ in range(5)]
        assert statuses == [401] * 5
        limited = await client.get("/api/users/me")
        assert limited.status_code == 429
        assert limited.json() == {
            "detail": "Too many requests; try again later",
            "code": "RATE_LIMITED",
        }
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["RateLimit-Limit"] == "5"
        assert limited.headers["RateLimit-Remaining"] == "0"
        assert (await client.get("/health")).status_code == 200  # never limited

    async def test_a_signed_in_user_has_a_budget_of_their_own(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # Logging in two users spends 2 of this address's 5 requests.
        _, first = await user_with_tokens(app, client)
        _, second = await user_with_tokens(app, client)
        for tokens in (first, second):
            statuses = [
                (await client.get("/api/users/me", headers=bearer(tokens))).status_code
                for _ in range(6)
            ]
            assert statuses == [200] * 5 + [429]
        # The address still has its own 3 requests left.
        assert (await client.get("/api/users/me")).status_code == 401

    async def test_a_forged_forwarded_for_does_not_change_the_key(
        self, client: httpx.AsyncClient
    ) -> None:
        statuses = [
            (
                await client.get("/api/users/me", headers={"X-Forwarded-For": f"203.0.113.{i}"})
            ).status_code
            for i in range(6)
        ]
        assert statuses == [401] * 5 + [429]


class TestTrustedProxy:
    """FORWARDED_ALLOW_IPS names the proxy: its X-Forwarded-For is the client's address."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {
            "RATE_LIMITER_ENABLED": True,
            "RATE_LIMITER_MAX_REQUESTS": 2,
            "RATE_LIMITER_WINDOW_SECONDS": 60,
            "FORWARDED_ALLOW_IPS": ["127.0.0.0/8"],
        }

    async def test_each_forwarded_client_has_its_own_budget(
        self, client: httpx.AsyncClient
    ) -> None:
        for i in range(3):
            headers = {"X-Forwarded-For": f"198.51.100.7, 203.0.113.{i}"}
            statuses = [
                (await client.get("/api/users/me", headers=headers)).status_code for _ in range(3)
            ]
            assert statuses == [401, 401, 429]

    async def test_the_forwarded_address_reaches_the_history(
        self, client: httpx.AsyncClient
    ) -> None:
        user = await signup(client, username="proxied_user")
        tokens = (
            await client.post(
                "/api/auth/login",
                data={"username": user["username"], "password": PASSWORD},
                headers={"X-Forwarded-For": "203.0.113.99"},
            )
        ).json()
        sessions = await client.get(
            "/api/auth/sessions", headers={**bearer(tokens), "X-Forwarded-For": "203.0.113.99"}
        )
        assert sessions.json()["items"][0]["ip"] == "203.0.113.99"


class TestBruteForceGuard:
    """Always on, even with RATE_LIMITER_ENABLED=False."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"AUTH_RATE_LIMIT_ACCOUNT": "3 per 15 minutes"}

    async def test_failed_logins_lock_the_account_for_a_while(
        self, client: httpx.AsyncClient
    ) -> None:
        user = await signup(client)
        other = await signup(client)
        await login(client, user["username"])  # successes do not count
        for _ in range(3):
            wrong = await client.post(
                "/api/auth/login", data={"username": user["username"], "password": "wrong" * 3}
            )
            assert wrong.status_code == 401
        locked = await client.post(
            "/api/auth/login", data={"username": user["email"].upper(), "password": PASSWORD}
        )
        assert locked.status_code == 429
        assert locked.json()["code"] == "RATE_LIMITED"
        assert int(locked.headers["Retry-After"]) > 0
        await login(client, other["username"])  # other accounts are not affected

    async def test_reset_requests_are_limited_per_email(self, client: httpx.AsyncClient) -> None:
        statuses = [
            (
                await client.post("/api/auth/password/forgot", json={"email": "a@example.com"})
            ).status_code
            for _ in range(4)
        ]
        assert statuses == [202, 202, 202, 429]


class TestAddressGuard:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"AUTH_RATE_LIMIT_ADDRESS": "3 per 1 minute"}

    async def test_login_attempts_are_limited_per_address(self, client: httpx.AsyncClient) -> None:
        statuses = [
            (
                await client.post(
                    "/api/auth/login", data={"username": f"nobody{i}", "password": "x" * 8}
                )
            ).status_code
            for i in range(4)
        ]
        assert statuses == [401, 401, 401, 429]


class TestRedisDown:
    """An unreachable Redis: the limiter lets requests through and warns; nothing is a 500."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {
            "RATE_LIMITER_ENABLED": True,
            "RATE_LIMITER_MAX_REQUESTS": 2,
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }

    async def test_fails_open(self, client: httpx.AsyncClient, captured_logs: list[str]) -> None:
        statuses = [(await client.get("/api/users/me")).status_code for _ in range(4)]
        assert statuses == [401] * 4
        user = await signup(client)
        await login(client, user["username"])
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"] == "unreachable"
        warnings = [line for line in captured_logs if "rate limiter storage unavailable" in line]
        assert len(warnings) == 1


# Two replicas sharing Redis ------------------------------------------------------------


@pytest.fixture
def two_replicas(settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[list[LiveServer]]:
    """Two replicas with flags and the global limit on, and a first admin."""
    configured = settings.model_copy(
        update={
            "FEATURE_FLAGS_ENABLED": True,
            "RATE_LIMITER_ENABLED": True,
            "RATE_LIMITER_MAX_REQUESTS": 10,
            "RATE_LIMITER_WINDOW_SECONDS": 60,
            "FIRST_ADMIN_USERNAME": "replica_admin",
            "FIRST_ADMIN_EMAIL": "replica_admin@example.com",
            "FIRST_ADMIN_PASSWORD": PASSWORD,
        }
    )
    with replicas(configured, redis_url, tmp_path) as servers:
        yield servers


def test_replicas_share_flags_and_limits(two_replicas: list[LiveServer], redis_url: str) -> None:
    first, second = two_replicas
    token = httpx.post(
        f"{first.url}/api/auth/login", data={"username": "replica_admin", "password": PASSWORD}
    ).json()["access_token"]
    headers = bearer(token)

    # A flag change on one replica is seen by the other within 2 seconds.
    changed = httpx.patch(
        f"{first.url}/api/admin/feature-flags",
        json={"add": {"LIST_PROVIDERS": False}},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    deadline = time.monotonic() + 2
    status = None
    while time.monotonic() < deadline:
        status = httpx.get(f"{second.url}/api/oauth/providers").status_code
        if status == 403:
            break
        time.sleep(0.05)
    assert status == 403
    listed = httpx.get(f"{second.url}/api/admin/feature-flags", headers=headers)
    assert listed.json()["flags"]["LIST_PROVIDERS"] is False

    # A burst split across both replicas is limited to MAX_REQUESTS in total.
    with Redis.from_url(redis_url) as redis:
        for key in redis.scan_iter("LIMITS*"):
            redis.delete(key)
    statuses = [
        httpx.get(f"{server.url}/api/users/me").status_code
        for _ in range(10)
        for server in (first, second)
    ]
    assert statuses.count(401) == 10
    assert statuses.count(429) == 10
