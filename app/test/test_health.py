"""Health: liveness, readiness with the failing part named."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from app.core.database import create_engine
from app.core.redis_client import create_redis
from app.test.conftest import require_redis
from app.test.server import LiveServer


async def test_liveness(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_without_redis(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {
            "database": "ok",
            "redis": "not configured",
            "brute_force_guard": "this process",
        },
    }


async def test_readiness_with_redis(app: FastAPI, client: httpx.AsyncClient) -> None:
    app.state.redis = create_redis(require_redis())
    try:
        response = await client.get("/health/ready")
    finally:
        await app.state.redis.aclose()
        app.state.redis = None
    assert response.status_code == 200
    assert response.json()["checks"] == {
        "database": "ok",
        "redis": "ok",
        "brute_force_guard": "this process",  # this app's guard was made without Redis
    }


async def test_readiness_names_an_unreachable_redis(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    app.state.redis = create_redis("redis://127.0.0.1:1/0")
    try:
        response = await client.get("/health/ready")
    finally:
        await app.state.redis.aclose()
        app.state.redis = None
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "NOT_READY"
    assert "redis" in body["detail"]
    assert body["checks"] == {
        "database": "ok",
        "redis": "unreachable",
        "brute_force_guard": "this process",
    }


async def test_readiness_names_an_unreachable_database(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    working = app.state.engine
    app.state.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    try:
        response = await client.get("/health/ready")
    finally:
        await app.state.engine.dispose()
        app.state.engine = working
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "NOT_READY"
    assert body["detail"] == "not ready: database unreachable"
    assert body["checks"]["database"] == "unreachable"


def test_live_server_serves_health(live_server: LiveServer) -> None:
    assert httpx.get(f"{live_server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{live_server.url}/health/ready").status_code == 200
