"""Typed dependencies shared by the routers: a route reads as its signature."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.config import Settings


def get_settings(request: Request) -> Settings:
    """The settings of the running app."""
    return request.app.state.settings


def get_engine(request: Request) -> AsyncEngine:
    """The app's database engine."""
    return request.app.state.engine


def get_redis(request: Request) -> Redis | None:
    """The app's Redis client, or None when REDIS_URL is not set."""
    return request.app.state.redis


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """A database session for the request, closed when the response is sent."""
    async with request.app.state.session_factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
RedisDep = Annotated[Redis | None, Depends(get_redis)]
SessionDep = Annotated[AsyncSession, Depends(get_db)]
