"""Every error a client sees has the shape {"detail": str, "code": "UPPER_SNAKE"}."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from app.core.errors import Conflict


class _Body(BaseModel):
    name: str = Field(min_length=3)
    password: str = Field(min_length=8)


@pytest.fixture
def probe_routes(app: FastAPI) -> None:
    """Routes that fail in each way an endpoint can fail."""

    @app.post("/_probe/body")
    async def probe_body(body: _Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/_probe/conflict")
    async def probe_conflict() -> None:
        raise Conflict("username already taken", code="USERNAME_TAKEN")

    @app.get("/_probe/crash")
    async def probe_crash() -> None:
        secret = "hunter" + "2"
        raise RuntimeError(f"password={secret} leaked in a message")


async def test_unknown_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/no/such/page")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found", "code": "NOT_FOUND"}


async def test_wrong_method(client: httpx.AsyncClient) -> None:
    response = await client.post("/health")
    assert response.status_code == 405
    assert response.json() == {"detail": "Method Not Allowed", "code": "METHOD_NOT_ALLOWED"}


@pytest.mark.usefixtures("probe_routes")
async def test_validation_error_lists_fields_without_echoing_input(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/_probe/body", json={"name": "x", "password": "hunter2"})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "VALIDATION_ERROR"
    assert body["detail"].startswith("body.name: ")
    assert [error["loc"] for error in body["errors"]] == [["body", "name"], ["body", "password"]]
    assert "hunter2" not in response.text


@pytest.mark.usefixtures("probe_routes")
async def test_malformed_json_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_probe/body", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "VALIDATION_ERROR"


@pytest.mark.usefixtures("probe_routes")
async def test_domain_error_keeps_its_code(client: httpx.AsyncClient) -> None:
    response = await client.get("/_probe/conflict")
    assert response.status_code == 409
    assert response.json() == {"detail": "username already taken", "code": "USERNAME_TAKEN"}


@pytest.mark.usefixtures("probe_routes")
async def test_unhandled_error_is_a_plain_500(
    client: httpx.AsyncClient, captured_logs: list[str]
) -> None:
    response = await client.get("/_probe/crash")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error", "code": "INTERNAL_ERROR"}
    assert response.headers["X-Request-ID"]
    assert any("unhandled error: RuntimeError" in line for line in captured_logs)
    assert not any("hunter2" in line for line in captured_logs)
