"""Readiness: is every dependency the service needs reachable?"""

from __future__ import annotations

from loguru import logger
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.brute_force import BruteForceGuard
from app.core.database import check_database
from app.core.errors import ServiceUnavailable
from app.core.redis_client import check_redis


async def check_readiness(
    engine: AsyncEngine, redis: Redis | None, guard: BruteForceGuard
) -> dict[str, str]:
    """Check the database and, when configured, Redis; tell where the brute-force guard
    counts (it keeps counting in this process while Redis is unreachable).

    Returns
    -------
    dict
        ``{"database": "ok", "redis": "ok" | "not configured", "brute_force_guard":
        "shared" | "this process"}``.

    Raises
    ------
    ServiceUnavailable
        Naming each failing part, with the same ``checks`` mapping.
    """
    checks: dict[str, str] = {}
    try:
        await check_database(engine)
        checks["database"] = "ok"
    except Exception as error:  # any failure means "not ready", whatever its kind
        logger.warning("readiness: database unreachable ({})", type(error).__name__)
        checks["database"] = "unreachable"
    if redis is None:
        checks["redis"] = "not configured"
    else:
        try:
            await check_redis(redis)
            checks["redis"] = "ok"
        except Exception as error:
            logger.warning("readiness: redis unreachable ({})", type(error).__name__)
            checks["redis"] = "unreachable"
    checks["brute_force_guard"] = "shared" if guard.shared else "this process"
    failing = [name for name, state in checks.items() if state == "unreachable"]
    if failing:
        raise ServiceUnavailable(
            f"not ready: {', '.join(failing)} unreachable",
            code="NOT_READY",
            extra={"checks": checks},
        )
    return checks
