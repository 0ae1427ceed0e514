"""Health and metrics, outside the API prefix: for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.core.errors import error_body
from app.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.core.metrics import exposition
from app.core.rate_limiter import TrustedProxies
from app.routers.deps import EngineDep, GuardDep, RedisDep, SettingsDep
from app.schemas.common import ErrorResponse
from app.schemas.health import HealthResponse, NotReadyResponse, ReadinessResponse
from app.services.health import check_readiness

router = APIRouter(tags=["health"])

_NOT_READY_EXAMPLE = {
    "detail": "not ready: redis unreachable",
    "code": "NOT_READY",
    "checks": {"database": "ok", "redis": "unreachable", "brute_force_guard": "shared"},
}


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
    responses={
        503: {
            "model": NotReadyResponse,
            "description": "A dependency is unreachable",
            "content": {"application/json": {"example": _NOT_READY_EXAMPLE}},
        }
    },
)
async def health_ready(engine: EngineDep, redis: RedisDep, guard: GuardDep) -> ReadinessResponse:
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
    return ReadinessResponse(checks=await check_readiness(engine, redis, guard))


@router.get(
    "/metrics",
    response_class=Response,
    # For Prometheus, not for API clients: the README documents it.
    include_in_schema=False,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        403: {"model": ErrorResponse, "description": "Not from METRICS_ALLOW_IPS"},
        404: {"model": ErrorResponse, "description": "METRICS_ENABLED is off"},
    },
)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics: requests per route, latencies, login outcomes.

    Only with METRICS_ENABLED, and only for clients in METRICS_ALLOW_IPS.

    Returns
    -------
    Response
        The metrics in Prometheus' text format.
    """
    if not settings.METRICS_ENABLED:
        return JSONResponse(error_body("Not Found", "NOT_FOUND"), status_code=404)
    address = request.client.host if request.client else None
    if address not in TrustedProxies(settings.METRICS_ALLOW_IPS):
        return JSONResponse(error_body("Not allowed", "FORBIDDEN"), status_code=403)
    return Response(exposition(), media_type=METRICS_CONTENT_TYPE)
