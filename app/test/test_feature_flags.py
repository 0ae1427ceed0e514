"""Feature flags: the seed's semantics, sticky buckets, registration, middleware, admin API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from app.core.config import Settings
from app.core.feature_flags import FlagStore, bucket, evaluate, parse_flags, protected_flags
from app.core.flag_sources import DatabaseFlagSource
from app.core.permissions import feature_flag
from app.models import FeatureFlag
from app.test.conftest import TEST_JWT_SECRET, settings_env
from app.test.factories import PASSWORD, bearer, login, refreshed, user_with_tokens
from app.test.server import ROOT, LiveServer, start_server

SEED_FLAGS = {
    "FEATURE_FLAG_1": True,
    "FEATURE_FLAG_2": False,
    "DANGEROUS_AB_TEST_FEATURE": [{"percentageOfUsers": 0.25}],
    "AB_TEST_FEATURE": [{"percentageOfUsers": 0.25}, {"userRoles": ["admin"]}],
    "ROLE_BASED_FEATURE": [{"userRoles": ["tester", "admin"]}],
    "MULTIPLE_ACCESS_FEATURE": [
        {"percentageOfUsers": 0.30, "userRoles": ["user"]},
        {"userRoles": ["admin", "tester"]},
    ],
}

# flag -> roles held -> expected share of users with the feature (percent)
EXPECTED_SHARES: dict[str, dict[tuple[str, ...], int]] = {
    "FEATURE_FLAG_1": {("user",): 100, ("admin",): 100},
    "FEATURE_FLAG_2": {("user",): 0, ("admin",): 0},
    "DANGEROUS_AB_TEST_FEATURE": {("user",): 25, ("admin",): 25, ("moderator",): 25},
    "AB_TEST_FEATURE": {("user",): 25, ("moderator",): 25, ("admin",): 100},
    "ROLE_BASED_FEATURE": {("tester",): 100, ("admin",): 100, ("user",): 0, ("moderator",): 0},
    "MULTIPLE_ACCESS_FEATURE": {
        ("user",): 30,
        ("admin",): 100,
        ("tester",): 100,
        ("moderator",): 0,
        ("moderator", "user"): 30,
    },
}
USERS = [str(uuid.uuid4()) for _ in range(20_000)]


@pytest.mark.parametrize("flag", sorted(EXPECTED_SHARES))
def test_seed_flags_match_their_description(flag: str) -> None:
    flags = parse_flags(SEED_FLAGS)
    for roles, expected in EXPECTED_SHARES[flag].items():
        enabled = sum(evaluate(flags, flag, (user, list(roles))) for user in USERS)
        share = 100 * enabled / len(USERS)
        assert abs(share - expected) <= 1.5, (flag, roles, share)


def test_rule_based_flags_are_off_for_anonymous_requests() -> None:
    flags = parse_flags(SEED_FLAGS)
    assert evaluate(flags, "FEATURE_FLAG_1", None) is True
    assert evaluate(flags, "NOT_IN_THE_FILE", None) is True
    for flag in ("DANGEROUS_AB_TEST_FEATURE", "AB_TEST_FEATURE", "ROLE_BASED_FEATURE"):
        assert evaluate(flags, flag, None) is False


def test_raising_a_percentage_keeps_everyone_who_had_it() -> None:
    quarter = parse_flags({"ROLLOUT": [{"percentageOfUsers": 0.25}]})
    half = parse_flags({"ROLLOUT": [{"percentageOfUsers": 0.50}]})
    before = {u for u in USERS if evaluate(quarter, "ROLLOUT", (u, ["user"]))}
    after = {u for u in USERS if evaluate(half, "ROLLOUT", (u, ["user"]))}
    assert before < after
    assert abs(100 * len(after) / len(USERS) - 50) <= 1.5


def test_two_flags_at_the_same_percentage_pick_different_users() -> None:
    flags = parse_flags({"A": [{"percentageOfUsers": 0.25}], "B": [{"percentageOfUsers": 0.25}]})
    a = {u for u in USERS if evaluate(flags, "A", (u, ["user"]))}
    b = {u for u in USERS if evaluate(flags, "B", (u, ["user"]))}
    overlap = 100 * len(a & b) / len(USERS)
    assert 4.5 <= overlap <= 8.0  # independent: about 25% of 25%


def test_buckets_do_not_depend_on_the_hash_seed() -> None:
    sample = USERS[:200]
    script = (
        "import json, sys\n"
        "from app.core.feature_flags import bucket\n"
        "print(json.dumps([bucket('AB_TEST_FEATURE', u) for u in json.load(sys.stdin)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(sample),
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == [bucket("AB_TEST_FEATURE", u) for u in sample]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"X": "yes"}, "flag 'X'"),
        ({"X": [{"percentageOfUsers": 1.5}]}, "flag 'X'"),
        ({"X": [{"userRoles": []}]}, "flag 'X'"),
        ({"X": [{"someOtherRule": 1}]}, "flag 'X'"),
        ({"X": [{"percentOfUsers": 0.5}]}, "flag 'X'.*unknown rule key 'percentOfUsers'"),
        ({"X": [{"userRoles": ["admin"], "roles": ["x"]}]}, "unknown rule key 'roles'"),
        ({"X": [{"percentageOfUsers": 1.5}]}, "percentageOfUsers"),
        ({"X": ["admin"]}, "flag 'X'.*rule 1.*object"),
        ({"X": "yes"}, "true, false or a list of rules"),
        (["X"], "JSON object"),
    ],
)
def test_invalid_flags_name_the_flag(flags: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_flags(flags)


def test_a_malformed_file_keeps_the_last_good_flags(
    tmp_path: Path, captured_logs: list[str]
) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"A": False}))
    store = FlagStore(path)
    assert store.load()
    path.write_text("{not json")
    os.utime(path, (1, 1))
    assert not store.reload_if_changed()
    assert store.flags == {"A": False}
    assert any("malformed" in line and "ERROR" in line for line in captured_logs)


def test_saving_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = FlagStore(tmp_path / "flags.json")
    store.register(["A", "B"])
    store.replace({"A": False})
    assert json.loads((tmp_path / "flags.json").read_text()) == {"A": False}
    assert [p.name for p in tmp_path.iterdir()] == ["flags.json"]


def test_a_protected_endpoint_that_no_longer_exists_is_an_error() -> None:
    application = FastAPI()

    @application.post("/api/auth/login")
    async def login() -> None: ...

    with pytest.raises(LookupError, match="POST /api/auth/otp/verify"):
        protected_flags(application.routes, "/api")


# With the app --------------------------------------------------------------------------


async def stored_flags(app: FastAPI) -> dict[str, object]:
    """The flags as their source keeps them: the file, or the database's rows (the
    database on PostgreSQL, see app/core/flag_sources.py)."""
    source = app.state.flag_source
    if isinstance(source, DatabaseFlagSource):
        async with app.state.session_factory() as session:
            rows = await session.execute(select(FeatureFlag.name, FeatureFlag.value))
            return {name: value for name, value in rows.all()}
    return json.loads(source.store.path.read_text())


#: The flags the API must refuse to change, written independently of the app's table:
#: with any of them off, admins could not sign in, keep a session, change the flags back,
#: or the orchestrator would take the service for dead.
PROTECTED = {
    "LOGIN": "/api/auth/login",
    "VERIFY_OTP": "/api/auth/otp/verify",
    "VERIFY_RECOVERY_CODE": "/api/auth/otp/recovery-codes/verify",
    "REFRESH": "/api/auth/refresh",
    "HEALTH": "/health",
    "HEALTH_READY": "/health/ready",
    "READ_FEATURE_FLAGS": "/api/admin/feature-flags",
    "UPDATE_FEATURE_FLAGS": "/api/admin/feature-flags",
}


class TestEnabled:
    """FEATURE_FLAGS_ENABLED=True."""

    @pytest.fixture
    def settings_overrides(self, tmp_path: Path) -> dict[str, object]:
        data_dir = tmp_path / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "feature_flags.json").write_text(json.dumps({"SIGNUP": False}))
        return {"FEATURE_FLAGS_ENABLED": True}

    @pytest.fixture
    def app_with_custom_flag(self, settings) -> FastAPI:
        from app.main import create_app

        application = create_app(settings)

        @feature_flag("DISABLE_FEATURE")
        @application.get("/ping", tags=["debug"])
        async def _ping() -> str:
            return "pong"

        return application

    async def test_every_endpoint_gets_a_flag(self, app: FastAPI) -> None:
        flags = await stored_flags(app)
        assert flags["SIGNUP"] is False  # kept from the file
        for name in ("LOGIN", "READ_ME", "HEALTH", "UPDATE_FEATURE_FLAGS", "READ_FILE"):
            assert flags[name] is True

    async def test_a_disabled_endpoint_answers_403(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/auth/signup", json={})
        assert response.status_code == 403
        assert response.json() == {"detail": "This feature is disabled", "code": "FEATURE_DISABLED"}

    async def test_custom_flags_from_the_decorator(self, app_with_custom_flag: FastAPI) -> None:
        application = app_with_custom_flag
        async with application.router.lifespan_context(application):
            flags = await stored_flags(application)
            assert flags["_PING"] is True
            assert flags["DISABLE_FEATURE"] is True
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                assert (await client.get("/ping")).json() == "pong"
                await application.state.flag_source.change({"DISABLE_FEATURE": False}, [])
                assert (await client.get("/ping")).status_code == 403

    async def test_admin_api_and_rules_apply_at_once(
        self, app: FastAPI, client: httpx.AsyncClient, captured_logs: list[str]
    ) -> None:
        admin, admin_tokens = await user_with_tokens(app, client, ("admin", "user"))
        _, user_tokens = await user_with_tokens(app, client)
        assert (
            await client.get("/api/admin/feature-flags", headers=bearer(user_tokens))
        ).status_code == 403
        listed = await client.get("/api/admin/feature-flags", headers=bearer(admin_tokens))
        assert listed.json()["enabled"] is True
        assert listed.json()["notice"] is None
        assert listed.json()["flags"]["SIGNUP"] is False

        changed = await client.patch(
            "/api/admin/feature-flags",
            json={"add": {"READ_ME": [{"userRoles": ["admin"]}]}, "remove": ["SIGNUP"]},
            headers=bearer(admin_tokens),
        )
        assert changed.status_code == 200
        assert changed.json()["flags"]["READ_ME"] == [{"userRoles": ["admin"]}]
        assert "SIGNUP" not in changed.json()["flags"]
        assert (await client.get("/api/users/me", headers=bearer(admin_tokens))).status_code == 200
        refused = await client.get("/api/users/me", headers=bearer(user_tokens))
        assert refused.status_code == 403
        assert refused.json()["code"] == "FEATURE_DISABLED"
        assert (await client.get("/api/users/me")).status_code == 403  # anonymous
        assert (await client.post("/api/auth/signup", json={})).status_code == 422  # on again
        assert any(f"feature flags changed by {admin.uuid}" in line for line in captured_logs)

        as_list = await client.patch(
            "/api/admin/feature-flags", json={"add": ["READ_ME"]}, headers=bearer(admin_tokens)
        )
        assert as_list.json()["flags"]["READ_ME"] is True
        saved = await stored_flags(app)
        assert saved["READ_ME"] is True

        invalid = await client.patch(
            "/api/admin/feature-flags",
            json={"add": {"BROKEN": [{"percentageOfUsers": 2}]}},
            headers=bearer(admin_tokens),
        )
        assert invalid.status_code == 422
        assert invalid.json()["code"] == "INVALID_FLAG"
        assert "BROKEN" in invalid.json()["detail"]

    async def test_admins_cannot_lock_themselves_out(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        admin, tokens = await user_with_tokens(app, client, ("admin", "user"))
        before = await stored_flags(app)
        attempts = [
            {"add": {name: False for name in PROTECTED}},
            {"add": {name: [{"userRoles": ["admin"]}] for name in PROTECTED}},
            {"add": list(PROTECTED)},
            {"remove": list(PROTECTED)},
        ]
        attempts += [{"add": {name: False}} for name in PROTECTED]
        attempts += [
            {"add": {"SIGNUP": True, name: [{"percentageOfUsers": 0}]}} for name in PROTECTED
        ]
        for body in attempts:
            response = await client.patch(
                "/api/admin/feature-flags", json=body, headers=bearer(tokens)
            )
            assert response.status_code == 422, (body, response.text)
            assert response.json()["code"] == "PROTECTED_FLAG"
            named = [name for name in PROTECTED if name in json.dumps(body)]
            for name in named:
                assert name in response.json()["detail"]
                assert PROTECTED[name] in response.json()["detail"]  # the reason: what it guards
        assert await stored_flags(app) == before  # nothing stored, SIGNUP included

        # Every protected endpoint still answers (none of them is FEATURE_DISABLED).
        fresh = await login(client, admin.username)
        assert (await refreshed(client, fresh["refresh_token"]))["access_token"]
        otp = await client.post(
            "/api/auth/otp/verify", json={"otp_token": "not-a-token", "code": "123456"}
        )
        assert otp.status_code == 401
        recovery = await client.post(
            "/api/auth/otp/recovery-codes/verify",
            json={"otp_token": "not-a-token", "recovery_code": "ABCD-EFGH-JKLM-NPQR"},
        )
        assert recovery.status_code == 401
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200
        listed = await client.get("/api/admin/feature-flags", headers=bearer(fresh))
        assert listed.status_code == 200
        assert set(listed.json()["protected"]) == set(PROTECTED)
        for name, guarded in PROTECTED.items():
            assert guarded in listed.json()["protected"][name]
        undo = await client.patch(
            "/api/admin/feature-flags", json={"remove": ["SIGNUP"]}, headers=bearer(fresh)
        )
        assert undo.status_code == 200
        assert "SIGNUP" not in undo.json()["flags"]

    async def test_a_misspelled_rule_key_is_named(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        _, tokens = await user_with_tokens(app, client, ("admin", "user"))
        response = await client.patch(
            "/api/admin/feature-flags",
            json={"add": {"ROLLOUT": [{"percentOfUsers": 0.5}]}},
            headers=bearer(tokens),
        )
        assert response.status_code == 422
        assert response.json()["code"] == "INVALID_FLAG"
        detail = response.json()["detail"]
        assert "ROLLOUT" in detail
        assert "percentOfUsers" in detail
        assert "boolean" not in detail

    async def test_a_change_written_by_hand_is_read_again(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """An edit of the file, or of the database's row, applies within seconds."""
        if isinstance(app.state.flag_source, DatabaseFlagSource):
            async with app.state.session_factory() as session:
                await session.execute(
                    update(FeatureFlag).where(FeatureFlag.name == "HEALTH").values(value=False)
                )
                await session.commit()
        else:
            path = app.state.settings.DATA_DIR / "feature_flags.json"
            flags = json.loads(path.read_text())
            flags["HEALTH"] = False
            path.write_text(json.dumps(flags))
        for _ in range(50):
            if (await client.get("/health")).status_code == 403:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/health")).status_code == 403

    async def test_parallel_changes_of_different_flags_all_stay(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        """Twenty admins' changes at once: none is lost to another's read-modify-write."""
        _, tokens = await user_with_tokens(app, client, ("admin", "user"))
        answers = await asyncio.gather(
            *(
                client.patch(
                    "/api/admin/feature-flags",
                    json={"add": {f"PARALLEL_{number}": False}},
                    headers=bearer(tokens),
                )
                for number in range(20)
            )
        )
        assert [answer.status_code for answer in answers] == [200] * 20
        stored = await stored_flags(app)
        assert {f"PARALLEL_{number}" for number in range(20)} <= set(stored)
        listed = await client.get("/api/admin/feature-flags", headers=bearer(tokens))
        assert all(listed.json()["flags"][f"PARALLEL_{number}"] is False for number in range(20))


class TestSharedByReplicas:
    """FEATURE_FLAGS_SOURCE=database (what PostgreSQL gets by default): replicas with
    DATA_DIRs of their own share the flags through the database."""

    @pytest.fixture
    def settings_overrides(self, tmp_path: Path, db_backend: str) -> dict[str, object]:
        # The first replica's DATA_DIR holds the flag file imported on the first start.
        first = tmp_path / "replica0"
        first.mkdir(parents=True, exist_ok=True)
        (first / "feature_flags.json").write_text(json.dumps({"SIGNUP": False}))
        overrides: dict[str, object] = {"FEATURE_FLAGS_ENABLED": True}
        if db_backend.startswith("sqlite"):  # PostgreSQL chooses the database by itself
            overrides["FEATURE_FLAGS_SOURCE"] = "database"
        return overrides

    def test_a_replica_started_later_sees_the_current_flags_at_once(
        self, settings: Settings, tmp_path: Path
    ) -> None:
        def start(index: int) -> LiveServer:
            env = {
                **settings_env(settings),
                "DATA_DIR": str(tmp_path / f"replica{index}"),
                "JWT_SECRET_KEY": TEST_JWT_SECRET,
                "FIRST_ADMIN_USERNAME": "flag_admin",
                "FIRST_ADMIN_EMAIL": "flag_admin@example.com",
                "FIRST_ADMIN_PASSWORD": PASSWORD,
            }
            return start_server(env, tmp_path / f"replica{index}.log")

        first = start(0)
        second = None
        try:
            # The file of the first start was imported: SIGNUP is off.
            assert httpx.post(f"{first.url}/api/auth/signup", json={}).status_code == 403
            token = httpx.post(
                f"{first.url}/api/auth/login",
                json={"username": "flag_admin", "password": PASSWORD},
            ).json()["access_token"]
            changed = httpx.patch(
                f"{first.url}/api/admin/feature-flags",
                json={"add": {"LIST_PROVIDERS": False}, "remove": ["SIGNUP"]},
                headers=bearer(token),
            )
            assert changed.status_code == 200, changed.text
            # No Redis, an empty DATA_DIR: the second replica still starts with them.
            second = start(1)
            assert not (tmp_path / "replica1" / "feature_flags.json").exists()
            assert httpx.get(f"{second.url}/api/oauth/providers").status_code == 403
            assert httpx.post(f"{second.url}/api/auth/signup", json={}).status_code == 422
            # And a change on the second reaches the first by polling, without Redis.
            token = httpx.post(
                f"{second.url}/api/auth/login",
                json={"username": "flag_admin", "password": PASSWORD},
            ).json()["access_token"]
            httpx.patch(
                f"{second.url}/api/admin/feature-flags",
                json={"remove": ["LIST_PROVIDERS"]},
                headers=bearer(token),
            ).raise_for_status()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if httpx.get(f"{first.url}/api/oauth/providers").status_code == 200:
                    break
                time.sleep(0.1)
            assert httpx.get(f"{first.url}/api/oauth/providers").status_code == 200
        finally:
            first.stop()
            if second is not None:
                second.stop()


class TestDisabled:
    """FEATURE_FLAGS_ENABLED=False (the default): the file is neither written nor obeyed."""

    @pytest.fixture
    def settings_overrides(self, tmp_path: Path) -> dict[str, object]:
        data_dir = tmp_path / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "feature_flags.json").write_text(json.dumps({"SIGNUP": False}))
        return {}

    async def test_flags_are_ignored(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/auth/signup", json={})
        assert response.status_code == 422
        assert await stored_flags(app) == {"SIGNUP": False}

    async def test_a_change_is_stored_and_the_answer_says_flags_are_off(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        _, tokens = await user_with_tokens(app, client, ("admin", "user"))
        changed = await client.patch(
            "/api/admin/feature-flags", json={"add": {"READ_ME": False}}, headers=bearer(tokens)
        )
        assert changed.status_code == 200
        assert changed.json()["enabled"] is False
        assert "FEATURE_FLAGS_ENABLED" in changed.json()["notice"]
        assert "not enforced" in changed.json()["notice"]
        saved = await stored_flags(app)
        assert saved == {"SIGNUP": False, "READ_ME": False}
        listed = await client.get("/api/admin/feature-flags", headers=bearer(tokens))
        assert listed.json()["flags"] == saved
        assert listed.json()["notice"] == changed.json()["notice"]
        assert (await client.get("/api/users/me", headers=bearer(tokens))).status_code == 200
        # The same guard as when flags are on: the change is kept for when they are.
        refused = await client.patch(
            "/api/admin/feature-flags", json={"add": {"LOGIN": False}}, headers=bearer(tokens)
        )
        assert refused.status_code == 422
        assert refused.json()["code"] == "PROTECTED_FLAG"
