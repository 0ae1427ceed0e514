"""Floods and bursts: a login flood answers 503 (never 500) while reads keep going;
parallel guesses never check more passwords or codes than the limit; the guard keeps
counting without Redis; strangers' wrong passwords do not lock out the owner's device."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.core.brute_force import FallbackAttemptLog
from app.models import OtpChallenge, User
from app.test.conftest import empty_redis
from app.test.factories import PASSWORD, bearer, history, login, signup, user_with_tokens


@asynccontextmanager
async def client_from(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from ``address`` (and that keeps no cookie of others)."""
    transport = httpx.ASGITransport(app=app, client=(address, 50000), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def _address(number: int) -> str:
    return f"10.{number // 65536}.{number // 256 % 256}.{number % 256}"


async def _failed_checks(app: FastAPI, user_uuid: str) -> int:
    """How many wrong passwords were checked for the account (each leaves an event)."""
    return sum(
        event.action in ("login_failed", "password_check_failed")
        for event in await history(app.state.session_factory, user_uuid)
    )


# Item: a login flood ------------------------------------------------------------------


class TestLoginFlood:
    """bcrypt at a real cost: 200 wrong logins at once from 20 addresses."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"PASSWORD_BCRYPT_ROUNDS": 10}

    async def test_only_503s_and_reads_keep_answering(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        reader = await signup(client)
        tokens = await login(client, reader["username"])
        stop = asyncio.Event()
        read_times: list[float] = []
        read_statuses: Counter[int] = Counter()

        async def read_profile() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                response = await client.get("/api/users/me", headers=bearer(tokens))
                read_times.append(time.perf_counter() - started)
                read_statuses[response.status_code] += 1
                await asyncio.sleep(0.005)

        async def wrong_logins(address: str) -> list[httpx.Response]:
            async with client_from(app, address) as attacker:
                return await asyncio.gather(
                    *(
                        attacker.post(
                            "/api/auth/login",
                            data={"username": f"nobody_{address}_{i}", "password": "wrong" * 3},
                        )
                        for i in range(10)
                    )
                )

        reading = asyncio.create_task(read_profile())
        floods = await asyncio.gather(*(wrong_logins(_address(i)) for i in range(20)))
        stop.set()
        await reading
        answers = [response for flood in floods for response in flood]
        statuses = Counter(response.status_code for response in answers)
        assert len(answers) == 200
        assert set(statuses) <= {401, 429, 503}, statuses
        assert statuses[401] > 0
        for response in answers:
            if response.status_code == 503:
                assert response.json()["code"] == "SERVER_BUSY"
                assert int(response.headers["Retry-After"]) >= 1
        assert set(read_statuses) == {200}, read_statuses
        p99 = statistics.quantiles(read_times, n=100)[98] if len(read_times) > 1 else read_times[0]
        print(
            f"\nlogin flood: {dict(statuses)}; GET /api/users/me during it: "
            f"{len(read_times)} reads, p99 {p99 * 1000:.1f} ms"
        )


# Item: bursts against the limits -------------------------------------------------------


async def test_parallel_logins_check_at_most_the_limit(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """100 logins at once from 100 addresses, one account limited to 10 failures."""
    victim, _ = await user_with_tokens(app, client)

    async def guess(number: int) -> httpx.Response:
        async with client_from(app, _address(number)) as attacker:
            return await attacker.post(
                "/api/auth/login", data={"username": victim.username, "password": f"guess{number}"}
            )

    answers = await asyncio.gather(*(guess(i) for i in range(100)))
    statuses = Counter(response.status_code for response in answers)
    assert statuses[401] == await _failed_checks(app, victim.uuid)
    assert statuses[401] <= 10, statuses
    assert statuses[429] == 100 - statuses[401]


async def test_parallel_password_checks_of_a_stolen_token_stop_at_the_limit(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    victim, tokens = await user_with_tokens(app, client)
    answers = await asyncio.gather(
        *(
            client.post(
                "/api/auth/reauthenticate", json={"password": f"guess{i}"}, headers=bearer(tokens)
            )
            for i in range(60)
        )
    )
    statuses = Counter(response.status_code for response in answers)
    assert statuses[400] == await _failed_checks(app, victim.uuid)
    assert statuses[400] <= 10, statuses
    assert statuses[429] == 60 - statuses[400]


async def test_parallel_codes_check_at_most_five_against_a_login(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Twenty codes at once against one pending login: five are checked, and the right
    code sent afterwards finds the login over."""
    secret = pyotp.random_base32(32)
    user, _ = await user_with_tokens(app, client, otp_secret=secret)
    async with app.state.session_factory() as session:
        row = await session.get(User, user.uuid)
        row.otp_method = "authenticator"
        await session.commit()
    pending = (
        await client.post("/api/auth/login", data={"username": user.username, "password": PASSWORD})
    ).json()
    right = pyotp.TOTP(secret).now()
    wrong = [f"{(int(right) + k) % 1_000_000:06d}" for k in range(500_000, 500_020)]
    answers = await asyncio.gather(
        *(
            client.post(
                "/api/auth/otp/verify", json={"otp_token": pending["otp_token"], "code": code}
            )
            for code in wrong
        )
    )
    codes = Counter(response.json()["code"] for response in answers)
    assert codes["INVALID_OTP_CODE"] <= 5, codes
    async with app.state.session_factory() as session:
        challenge = await session.scalar(
            select(OtpChallenge).where(OtpChallenge.user_uuid == user.uuid)
        )
    assert challenge.failed_attempts == codes["INVALID_OTP_CODE"] == 5
    late = await client.post(
        "/api/auth/otp/verify", json={"otp_token": pending["otp_token"], "code": right}
    )
    assert late.status_code == 401
    assert late.json()["code"] == "INVALID_OTP_TOKEN"


# Item: Redis down ----------------------------------------------------------------------


class TestGuardWithoutRedis:
    """REDIS_URL points at nothing: the guard counts in this process, and says so."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"REDIS_URL": "redis://127.0.0.1:1/0"}

    async def test_still_limits(
        self, app: FastAPI, client: httpx.AsyncClient, captured_logs: list[str]
    ) -> None:
        assert isinstance(app.state.guard.log, FallbackAttemptLog)
        victim = await signup(client)
        async with client_from(app, "192.0.2.10") as attacker:
            statuses = [
                (
                    await attacker.post(
                        "/api/auth/login",
                        data={"username": victim["username"], "password": f"wrong{i:04}"},
                    )
                ).status_code
                for i in range(12)
            ]
        assert statuses == [401] * 10 + [429] * 2
        ready = await client.get("/health/ready")
        assert ready.json()["checks"]["brute_force_guard"] == "this process"
        warnings = [line for line in captured_logs if "counting in this process only" in line]
        assert len(warnings) == 1


class TestGuardThroughRedis:
    """With Redis the counts are shared: a second app (a replica) sees the first's."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"REDIS_URL": empty_redis()}

    async def test_replicas_share_the_count(self, client: httpx.AsyncClient, settings) -> None:
        from app.main import create_app

        victim = await signup(client)
        for i in range(10):
            await client.post(
                "/api/auth/login", data={"username": victim["username"], "password": f"bad{i:05}"}
            )
        replica = create_app(settings)
        async with (
            replica.router.lifespan_context(replica),
            client_from(replica, "192.0.2.20") as other,
        ):
            refused = await other.post(
                "/api/auth/login", data={"username": victim["username"], "password": PASSWORD}
            )
            ready = await other.get("/health/ready")
        assert refused.status_code == 429
        assert ready.json()["checks"]["brute_force_guard"] == "shared"


# Item: device tokens -------------------------------------------------------------------


async def test_strangers_cannot_lock_the_owner_out(app: FastAPI, client: httpx.AsyncClient) -> None:
    """1,000 wrong passwords from 100 addresses; the owner's device logs in at once."""
    owner = await signup(client)
    first = await client.post(
        "/api/auth/login", data={"username": owner["username"], "password": PASSWORD}
    )
    device_token = first.json()["device_token"]
    assert first.cookies.get("user_manager_device") == device_token

    parallel = asyncio.Semaphore(10)  # ten addresses at a time: a flood, not a pool test

    async def flood(number: int) -> list[int]:
        async with parallel, client_from(app, _address(number)) as attacker:
            return [
                (
                    await attacker.post(
                        "/api/auth/login",
                        data={"username": owner["username"], "password": f"guess{number}{i}"},
                    )
                ).status_code
                for i in range(10)
            ]

    statuses = Counter(
        status for batch in await asyncio.gather(*map(flood, range(100))) for status in batch
    )
    assert statuses == {401: 10, 429: 990}

    again = await client.post(  # the client keeps its device cookie
        "/api/auth/login", data={"username": owner["username"], "password": PASSWORD}
    )
    assert again.status_code == 200
    async with client_from(app, "192.0.2.30") as stranger:
        refused = await stranger.post(
            "/api/auth/login", data={"username": owner["username"], "password": PASSWORD}
        )
    assert refused.status_code == 429
    async with client_from(app, "192.0.2.31") as elsewhere:  # the token, sent as a header
        by_header = await elsewhere.post(
            "/api/auth/login",
            data={"username": owner["username"], "password": PASSWORD},
            headers={"X-Device-Token": device_token},
        )
    assert by_header.status_code == 200


async def test_a_device_token_is_good_for_its_own_account_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signup(client)
    other = await signup(client)
    async with client_from(app, "192.0.2.40") as device:
        token = (await login(device, other["username"]))["device_token"]
        for i in range(10):
            await device.post(
                "/api/auth/login", data={"username": owner["username"], "password": f"x{i:07}"}
            )
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for candidate in (token, forged):
            refused = await device.post(
                "/api/auth/login",
                data={"username": owner["username"], "password": PASSWORD},
                headers={"X-Device-Token": candidate},
            )
            assert refused.status_code == 429


async def test_a_device_that_guesses_is_stopped_on_its_own(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """A known device gets its own ten failures, then it is refused; strangers' allowance
    is untouched by them."""
    owner = await signup(client)
    async with client_from(app, "192.0.2.50") as device:
        await login(device, owner["username"])
        statuses = [
            (
                await device.post(
                    "/api/auth/login", data={"username": owner["username"], "password": f"y{i:07}"}
                )
            ).status_code
            for i in range(11)
        ]
    assert statuses == [401] * 10 + [429]
    async with client_from(app, "192.0.2.51") as stranger:
        await login(stranger, owner["username"])


async def test_a_password_check_refused_as_busy_does_not_count(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers of 503 checked no password: they use up nobody's allowance."""
    from app.core import middleware, security

    monkeypatch.setattr(middleware, "BUSY_ANSWER_DELAY_SECONDS", 0)
    owner, tokens = await user_with_tokens(app, client)
    async with client_from(app, "192.0.2.60") as someone:
        monkeypatch.setattr(security, "_bcrypt_outstanding", 10_000)  # every core busy
        for _ in range(12):
            login_busy = await someone.post(
                "/api/auth/login", data={"username": owner.username, "password": "no" * 5}
            )
            reauth_busy = await someone.post(
                "/api/auth/reauthenticate", json={"password": "no" * 5}, headers=bearer(tokens)
            )
            assert (login_busy.status_code, reauth_busy.status_code) == (503, 503)
            assert reauth_busy.json()["code"] == "SERVER_BUSY"
        monkeypatch.setattr(security, "_bcrypt_outstanding", 0)
        await login(someone, owner.username)
        again = await someone.post(
            "/api/auth/reauthenticate", json={"password": PASSWORD}, headers=bearer(tokens)
        )
        assert again.status_code == 200
