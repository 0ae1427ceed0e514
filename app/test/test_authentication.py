"""Who is calling: one authenticator resolves each request's caller, once."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from app.core.authentication import Authenticator, InvalidToken
from app.core.security import create_token
from app.test.conftest import TEST_JWT_SECRET, make_settings
from app.test.factories import bearer, user_with_tokens

APP = Path(__file__).resolve().parents[1]


def _product_sources() -> Iterator[Path]:
    return (path for path in APP.rglob("*.py") if "test" not in path.relative_to(APP).parts)


def test_tokens_are_decoded_in_one_function() -> None:
    places = [
        f"{path.relative_to(APP)}:{number}"
        for path in _product_sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "jwt.decode(" in line
    ]
    assert len(places) == 1, places
    assert places[0].startswith("core/security.py")


def test_no_route_reads_the_app_state() -> None:
    """Routes get what they need through dependencies (which tests can override)."""
    readers = [
        path.name
        for path in (APP / "routers").glob("*.py")
        if path.name != "deps.py" and re.search(r"\bapp\.state\b", path.read_text())
    ]
    assert readers == []


class TestOneResolutionPerRequest:
    """A rule-based flag and the route both need the caller: one lookup serves both."""

    @pytest.fixture
    def settings_overrides(self, tmp_path: Path) -> dict[str, object]:
        data_dir = tmp_path / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "feature_flags.json").write_text('{"READ_ME": [{"userRoles": ["user"]}]}')
        # No cache: every lookup of the caller is a query, so the queries count them.
        return {"FEATURE_FLAGS_ENABLED": True, "AUTH_CACHE_SECONDS": 0}

    async def test_the_caller_is_looked_up_once(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        _, tokens = await user_with_tokens(app, client)
        lookups: list[str] = []

        def count(_conn, _cursor, statement: str, *_args) -> None:
            if re.search(r"FROM session JOIN \"?user\"?", statement):
                lookups.append(statement)

        event.listen(app.state.engine.sync_engine, "before_cursor_execute", count)
        try:
            response = await client.get("/api/users/me", headers=bearer(tokens))
        finally:
            event.remove(app.state.engine.sync_engine, "before_cursor_execute", count)
        assert response.status_code == 200
        assert len(lookups) == 1

    async def test_a_refused_token_is_refused_by_the_flag_and_the_route_alike(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/api/users/me", headers=bearer("not-a-token"))
        assert response.status_code == 403  # the flag's rule sees an anonymous caller
        assert response.json()["code"] == "FEATURE_DISABLED"


# Verified access tokens are remembered ------------------------------------------------------


def _access_token(expires_in_seconds: int) -> str:
    return create_token(
        subject="u",
        token_type="access",
        secret=TEST_JWT_SECRET,
        expires_in_seconds=expires_in_seconds,
        session_id="s",
    )


@pytest.fixture
def authenticator(tmp_path: Path) -> Authenticator:
    # Shared-secret tokens: these tests are about remembering a verified token, and
    # HS256 needs no keys loaded from a database.
    return Authenticator(make_settings(tmp_path, JWT_ALGORITHM="HS256"))


def test_a_verified_token_is_still_refused_once_expired(authenticator: Authenticator) -> None:
    token = _access_token(1)
    assert authenticator.claims(token).session_id == "s"
    assert authenticator.claims(token).session_id == "s"  # remembered
    time.sleep(1.05)
    with pytest.raises(InvalidToken):
        authenticator.claims(token)


def test_a_remembered_token_vouches_for_no_other(
    authenticator: Authenticator, tmp_path: Path
) -> None:
    token = _access_token(60)
    authenticator.claims(token)
    header, payload, signature = token.split(".")
    forged_signature = ("A" if signature[0] != "A" else "B") + signature[1:]
    for forged in (f"{header}.{payload}.{forged_signature}", token + "x"):
        with pytest.raises(InvalidToken):
            authenticator.claims(forged)
    other = Authenticator(make_settings(tmp_path / "other", JWT_SECRET_KEY="another-" + "x" * 40))
    with pytest.raises(InvalidToken):  # the same token under another secret
        other.claims(token)


async def test_an_ended_session_still_names_whose_token_it_is(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The rate limit counts a flood of ended sessions' tokens per user, whatever asked
    about the session first."""
    user, tokens = await user_with_tokens(app, client)
    assert (await client.post("/api/auth/logout", headers=bearer(tokens))).status_code == 204
    caller = app.state.authenticator.caller(tokens["access_token"])
    with pytest.raises(InvalidToken):
        await caller.reader()
    with pytest.raises(InvalidToken):
        await caller.reader()  # refused again, without asking again
    assert caller.subject() == user.uuid


_SAMPLE_PATH_VALUES = {
    "uuid": "00000000-0000-4000-8000-000000000000",
    "user_uuid": "00000000-0000-4000-8000-000000000000",
    "file_id": "1",
    "session_id": "1",
    "provider": "github",
    "flag": "some_flag",
}


def _sample_path(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _SAMPLE_PATH_VALUES.get(m.group(1), "1"), path)


async def test_the_documented_security_matches_what_anonymous_callers_get(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """An operation documented as needing the bearer token refuses a call without one
    (401); one documented as optional (``{}`` beside the token) answers it."""
    document = app.openapi()
    bearer_only, optional = [], []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            security = operation.get("security", [])
            if {} in security:
                optional.append((method, path))
            elif security:
                bearer_only.append((method, path))
    assert ("get", "/api/feature-flags/me") in optional
    assert ("get", "/api/user/{uuid}/pfp") in optional
    assert ("get", "/api/users/me") in bearer_only
    for method, path in optional:
        assert document["paths"][path][method]["security"] == [{"OAuth2PasswordBearer": []}, {}]
    for method, path in bearer_only:
        response = await client.request(method, _sample_path(path))
        assert response.status_code == 401, (method, path, response.status_code)
    flags = await client.get("/api/feature-flags/me")
    assert flags.status_code == 200
