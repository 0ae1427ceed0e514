"""Pages outside the API prefix: health checks (sign-in and docs pages come later)."""

from __future__ import annotations

from fastapi import APIRouter

from app.routers.deps import EngineDep, RedisDep
from app.schemas.health import HealthResponse, NotReadyResponse, ReadinessResponse
from app.services.health import check_readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """Tell that the process is up and serving.

    Cheap on purpose: it touches no database, so a load balancer may call it often.

    Returns
    -------
    HealthResponse
        Always ``{"status": "ok"}``.
    """
    return HealthResponse()


@router.get(
    "/health/ready",
    response_model=ReadinessResponse,
    summary="Readiness",
    responses={503: {"model": NotReadyResponse, "description": "A dependency is unreachable"}},
)
async def health_ready(engine: EngineDep, redis: RedisDep) -> ReadinessResponse:
    """Tell whether the service can handle requests: database and Redis reachable.

    Returns
    -------
    ReadinessResponse
        The state of each dependency.

    Raises
    ------
    ServiceUnavailable
        503 with code ``NOT_READY`` and the failing dependency named.
    """
    return ReadinessResponse(checks=await check_readiness(engine, redis))
