"""GET /api/feature-flags/me: the flags as the caller's own requests see them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.core.feature_flags import BUCKETS, bucket
from app.main import create_app
from app.models import User
from app.test.conftest import make_settings
from app.test.factories import PASSWORD, bearer, create_user, login, user_with_tokens

MINE = "/api/feature-flags/me"
FILE_FLAGS = {
    "EVERYONE": True,
    "NOBODY": False,
    "TESTERS": [{"userRoles": ["tester"]}],
    "HALF": [{"percentageOfUsers": 0.5}],
    # An endpoint's own flag, by role: the answer and the endpoint must agree.
    "READ_ME": [{"userRoles": ["tester"]}],
}


def write_flags(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "feature_flags.json").write_text(json.dumps(FILE_FLAGS))


class TestEnforced:
    @pytest.fixture
    def settings_overrides(self, tmp_path: Path) -> dict[str, object]:
        write_flags(tmp_path)
        return {"FEATURE_FLAGS_ENABLED": True}

    async def test_anonymous(self, client: httpx.AsyncClient) -> None:
        response = await client.get(MINE)
        assert response.status_code == 200
        answer = response.json()
        assert answer["enabled"] is True
        flags = answer["flags"]
        assert flags["EVERYONE"] is True
        assert flags["NOBODY"] is False
        assert flags["TESTERS"] is False  # rules are off for anonymous callers
        assert flags["HALF"] is False
        assert flags["READ_ME"] is False
        assert flags["SIGNUP"] is True  # every endpoint's flag is listed
        assert flags["READ_MY_FEATURE_FLAGS"] is True
        assert all(isinstance(value, bool) for value in flags.values())  # never the rules
        # A refused token is an anonymous caller, as for the flags of every route.
        refused = await client.get(MINE, headers=bearer("not-a-token"))
        assert refused.status_code == 200
        assert refused.json() == answer

    async def test_a_user_and_a_role_rule(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        _, user_tokens = await user_with_tokens(app, client)
        _, tester_tokens = await user_with_tokens(app, client, ("user", "tester"))
        as_user = (await client.get(MINE, headers=bearer(user_tokens))).json()["flags"]
        as_tester = (await client.get(MINE, headers=bearer(tester_tokens))).json()["flags"]
        assert (as_user["EVERYONE"], as_user["NOBODY"]) == (True, False)
        assert (as_tester["EVERYONE"], as_tester["NOBODY"]) == (True, False)
        assert as_user["TESTERS"] is False
        assert as_tester["TESTERS"] is True
        # What the answer says is what the endpoint does.
        assert as_user["READ_ME"] is False
        assert (await client.get("/api/users/me", headers=bearer(user_tokens))).status_code == 403
        assert as_tester["READ_ME"] is True
        assert (await client.get("/api/users/me", headers=bearer(tester_tokens))).status_code == 200

    async def test_a_percentage_rule(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        threshold = BUCKETS // 2
        chosen: dict[bool, User] = {}  # in the rollout or not -> a user
        while len(chosen) < 2:
            user = await create_user(app.state.session_factory, password=PASSWORD)
            chosen.setdefault(bucket("HALF", user.uuid) < threshold, user)
        for inside, user in chosen.items():
            tokens = await login(client, user.username)
            flags = (await client.get(MINE, headers=bearer(tokens))).json()["flags"]
            assert flags["HALF"] is inside
            again = (await client.get(MINE, headers=bearer(tokens))).json()["flags"]
            assert again["HALF"] is inside  # the same user keeps their bucket


class TestNotEnforced:
    """FEATURE_FLAGS_ENABLED=False (the default): everything is on."""

    @pytest.fixture
    def settings_overrides(self, tmp_path: Path) -> dict[str, object]:
        write_flags(tmp_path)
        return {}

    async def test_every_flag_is_on(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        _, tokens = await user_with_tokens(app, client)
        for headers in ({}, bearer(tokens)):
            answer = (await client.get(MINE, headers=headers)).json()
            assert answer["enabled"] is False
            assert set(answer["flags"]) == set(FILE_FLAGS)
            assert all(answer["flags"].values())


def test_the_document(tmp_path: Path) -> None:
    document = create_app(make_settings(tmp_path / "data")).openapi()
    operation = document["paths"][MINE]["get"]
    assert operation["tags"] == ["feature-flags"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CallerFeatureFlags"
    }
    assert {"403", "429"} <= set(operation["responses"])
    assert "anonymous" in operation["description"]
    # Swagger sends the token once authorized; without one the answer is still 200.
    # Anonymous callers are answered too: the token is optional.
    assert operation["security"] == [{"OAuth2PasswordBearer": []}, {}]
