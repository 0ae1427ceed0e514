"""Login with a JSON body beside the OAuth2 form: one path, one guard, one document."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.services.devices import DEVICE_COOKIE
from app.test.factories import PASSWORD, bearer, create_user, signup

LOGIN = "/api/auth/login"


async def test_a_json_login_gives_the_token_pair_and_the_device_token(
    client: httpx.AsyncClient,
) -> None:
    user = await signup(client)
    for identifier in (user["username"], user["email"].upper()):
        response = await client.post(LOGIN, json={"username": identifier, "password": PASSWORD})
        assert response.status_code == 200, response.text
        tokens = response.json()
        assert tokens["token_type"] == "bearer"
        assert tokens["device_token"]
        assert response.cookies.get(DEVICE_COOKIE) == tokens["device_token"]
        me = await client.get("/api/users/me", headers=bearer(tokens))
        assert me.json()["uuid"] == user["uuid"]
    charset = await client.post(
        LOGIN,
        content=f'{{"username": "{user["username"]}", "password": "{PASSWORD}"}}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert charset.status_code == 200
    vendor = await client.post(
        LOGIN,
        json={"username": user["username"], "password": PASSWORD},
        headers={"Content-Type": "application/vnd.api+json"},
    )
    assert vendor.status_code == 200


async def test_the_form_still_works(client: httpx.AsyncClient) -> None:
    user = await signup(client)
    form = {"grant_type": "password", "username": user["username"], "password": PASSWORD}
    response = await client.post(LOGIN, data=form)
    assert response.status_code == 200
    assert response.json()["access_token"]
    wrong_grant = await client.post(LOGIN, data={**form, "grant_type": "client_credentials"})
    assert wrong_grant.status_code == 422
    assert wrong_grant.json()["errors"][0]["loc"] == ["body", "grant_type"]


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        ({}, ["username", "password"]),
        ({"username": "someone"}, ["password"]),
        ({"password": PASSWORD}, ["username"]),
    ],
)
async def test_missing_fields_are_named_in_the_common_shape(
    client: httpx.AsyncClient, body: dict[str, str], missing: list[str]
) -> None:
    as_json = await client.post(LOGIN, json=body)
    as_form = await client.post(LOGIN, data=body)
    for response in (as_json, as_form):
        assert response.status_code == 422
        answer = response.json()
        assert answer["code"] == "VALIDATION_ERROR"
        assert answer["detail"].startswith(f"body.{missing[0]}")
        assert [error["loc"] for error in answer["errors"]] == [["body", name] for name in missing]
        assert {error["type"] for error in answer["errors"]} == {"missing"}
        assert PASSWORD not in response.text  # the submitted values are never echoed


@pytest.mark.parametrize(
    ("content", "loc", "kind"),
    [
        ("{not json", ["body"], "json_invalid"),
        ('["a", "b"]', ["body"], "model_type"),
        ('{"username": "", "password": "x"}', ["body", "username"], "string_too_short"),
        ('{"username": 1, "password": "x"}', ["body", "username"], "string_type"),
        ('{"username": "a", "password": "x", "extra": 1}', ["body", "extra"], "extra_forbidden"),
    ],
)
async def test_a_bad_json_body_is_a_422(
    client: httpx.AsyncClient, content: str, loc: list[str], kind: str
) -> None:
    response = await client.post(
        LOGIN, content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert response.json()["errors"][0]["loc"] == loc
    assert response.json()["errors"][0]["type"] == kind


async def test_a_json_login_of_a_2fa_account_asks_for_the_code(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await create_user(
        app.state.session_factory, password=PASSWORD, otp_method="authenticator"
    )
    response = await client.post(LOGIN, json={"username": user.username, "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["otp_required"] is True
    assert response.json()["otp_method"] == "authenticator"
    assert "access_token" not in response.json()


class TestGuard:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"AUTH_RATE_LIMIT_ACCOUNT": "3 per 15 minutes"}

    async def test_json_failures_count_against_the_account(self, client: httpx.AsyncClient) -> None:
        user = await signup(client)
        for _ in range(3):
            wrong = await client.post(
                LOGIN, json={"username": user["username"], "password": "wrong" * 3}
            )
            assert wrong.status_code == 401
            assert wrong.json()["code"] == "INVALID_CREDENTIALS"
        # The same count, whichever body asks next.
        for locked in (
            await client.post(LOGIN, json={"username": user["email"], "password": PASSWORD}),
            await client.post(LOGIN, data={"username": user["username"], "password": PASSWORD}),
        ):
            assert locked.status_code == 429
            assert locked.json()["code"] == "RATE_LIMITED"


def test_the_document_shows_both_bodies(app_document: dict) -> None:
    body = app_document["paths"][LOGIN]["post"]["requestBody"]
    assert body["required"] is True
    form = body["content"]["application/x-www-form-urlencoded"]["schema"]
    as_json = body["content"]["application/json"]["schema"]
    assert set(form["required"]) == {"username", "password"}
    assert "grant_type" in form["properties"]
    assert set(as_json["required"]) == {"username", "password"}
    assert set(as_json["properties"]) == {"username", "password"}
    assert as_json["properties"]["password"]["format"] == "password"
    responses = app_document["paths"][LOGIN]["post"]["responses"]
    assert {"200", "400", "401", "422", "429"} <= set(responses)
    # Swagger's Authorize still posts the form to the same URL.
    flow = app_document["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]
    assert flow["password"]["tokenUrl"] == LOGIN


@pytest.fixture
def app_document(tmp_path) -> dict:
    from app.main import create_app
    from app.test.conftest import make_settings

    return create_app(make_settings(tmp_path / "data")).openapi()
