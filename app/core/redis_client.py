"""The shared Redis client (rate limiter, feature-flag fan-out, caches), when REDIS_URL is set."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis


def create_redis(url: str) -> Redis:
    """A client for ``url``; connections are opened lazily, on first use."""
    return Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=30)


async def check_redis(client: Redis, timeout_seconds: float = 2.0) -> None:
    """Raise if Redis does not answer PING within the timeout."""
    async with asyncio.timeout(timeout_seconds):
        await client.ping()
