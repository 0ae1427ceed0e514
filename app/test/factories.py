"""Builders for test data: users (and, later, tokens). One place, not copied per module."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.models import User

_counter = itertools.count(1)


def make_user(**overrides: Any) -> User:
    """An unsaved user with unique username and email; any column can be overridden."""
    number = next(_counter)
    username = overrides.pop("username", f"user_{number}")
    values: dict[str, Any] = {
        "username": username,
        "display_name": username,
        "email": f"{username}@example.com",
        "roles": ["user"],
    }
    values.update(overrides)
    return User(**values)


async def create_user(session_factory: async_sessionmaker[AsyncSession], **overrides: Any) -> User:
    """Insert a user built by :func:`make_user` and return it."""
    user = make_user(**overrides)
    async with session_factory() as session:
        session.add(user)
        await session.commit()
    return user
