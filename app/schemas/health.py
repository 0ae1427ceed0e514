"""Schemas of the health endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import ErrorResponse


class HealthResponse(BaseModel):
    """The process is up."""

    status: Literal["ok"] = "ok"


class ReadinessResponse(BaseModel):
    """Every dependency answered."""

    status: Literal["ready"] = "ready"
    checks: dict[str, str] = Field(
        description="State of each dependency: ok, or not configured; and where the "
        "brute-force guard counts: shared (Redis) or this process.",
        examples=[{"database": "ok", "redis": "ok", "brute_force_guard": "shared"}],
    )


class NotReadyResponse(ErrorResponse):
    """A 503 from readiness: which dependency failed."""

    checks: dict[str, str] = Field(
        description="State of each dependency: ok, unreachable or not configured.",
        examples=[{"database": "ok", "redis": "unreachable", "brute_force_guard": "this process"}],
    )
