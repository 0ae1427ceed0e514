"""Builders for test data: users, sign-ups, logins, tokens. One place, not copied per module."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.one_time_codes import new_otp_secret
from app.core.security import hash_password
from app.models import User, UserEvent

_counter = itertools.count(1)

#: A password that passes the policy.
PASSWORD = "correct horse battery staple"


def unique_name(prefix: str = "user") -> str:
    """A username no other test uses."""
    return f"{prefix}_{next(_counter)}"


def make_user(**overrides: Any) -> User:
    """An unsaved user with unique username and email; any column can be overridden."""
    username = overrides.pop("username", unique_name())
    values: dict[str, Any] = {
        "username": username,
        "display_name": username,
        "email": f"{username}@example.com",
        "roles": ["user"],
        "otp_secret": new_otp_secret(),
        "blocked_uuids": [],
    }
    values.update(overrides)
    return User(**values)


async def create_user(
    session_factory: async_sessionmaker[AsyncSession], password: str | None = None, **overrides: Any
) -> User:
    """Insert a user built by :func:`make_user` (with ``password`` hashed) and return it."""
    if password is not None:
        overrides["hashed_password"] = await hash_password(password, 4)
    user = make_user(**overrides)
    async with session_factory() as session:
        session.add(user)
        await session.commit()
    return user


def signup_body(**overrides: Any) -> dict[str, Any]:
    """A valid sign-up request body."""
    username = overrides.pop("username", unique_name())
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    body.update(overrides)
    return body


async def signup(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """Sign up through the API; return the created user (asserts 201)."""
    response = await client.post("/api/auth/signup", json=signup_body(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


async def login(
    client: httpx.AsyncClient, username: str, password: str = PASSWORD
) -> dict[str, Any]:
    """Log in through the API; return the token pair (asserts 200)."""
    response = await client.post(
        "/api/auth/login", data={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def signup_and_login(client: httpx.AsyncClient, **overrides: Any) -> tuple[dict, dict]:
    """A new user and a token pair for them."""
    user = await signup(client, **overrides)
    tokens = await login(client, user["username"], overrides.get("password", PASSWORD))
    return user, tokens


def live_signup_and_login(url: str) -> tuple[dict, dict]:
    """A new user and a token pair for them, from a live server at ``url``."""
    body = signup_body()
    signed_up = httpx.post(f"{url}/api/auth/signup", json=body)
    assert signed_up.status_code == 201, signed_up.text
    logged_in = httpx.post(
        f"{url}/api/auth/login", data={"username": body["username"], "password": PASSWORD}
    )
    assert logged_in.status_code == 200, logged_in.text
    return signed_up.json(), logged_in.json()


async def refreshed(client: httpx.AsyncClient, refresh_token: str) -> dict[str, Any]:
    """Trade ``refresh_token`` for a new pair through the API (asserts 200)."""
    response = await client.post("/api/auth/refresh", json={"refresh_token": refresh_token})
    assert response.status_code == 200, response.text
    return response.json()


def bearer(tokens: dict[str, Any] | str) -> dict[str, str]:
    """The Authorization header for an access token (or a token pair)."""
    token = tokens if isinstance(tokens, str) else tokens["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def user_with_tokens(
    app: Any, client: httpx.AsyncClient, roles: tuple[str, ...] = ("user",), **overrides: Any
) -> tuple[User, dict[str, Any]]:
    """A user with ``roles`` inserted directly, and a token pair from a real login."""
    user = await create_user(
        app.state.session_factory, password=PASSWORD, roles=list(roles), **overrides
    )
    return user, await login(client, user.username)


async def history(
    session_factory: async_sessionmaker[AsyncSession], user_uuid: str
) -> list[UserEvent]:
    """A user's history events, oldest first, read from the database."""
    async with session_factory() as session:
        events = await session.scalars(
            select(UserEvent).where(UserEvent.user_uuid == user_uuid).order_by(UserEvent.id)
        )
        return list(events)


async def delete_user(
    client: httpx.AsyncClient,
    user_uuid: str,
    tokens: dict[str, Any] | str,
    password: str = PASSWORD,
) -> httpx.Response:
    """``DELETE /user/{uuid}`` as the holder of ``tokens``, confirmed with their password."""
    return await client.request(
        "DELETE",
        f"/api/user/{user_uuid}",
        json={"current_password": password},
        headers=bearer(tokens),
    )


async def reauthenticate(
    client: httpx.AsyncClient, tokens: dict[str, Any] | str, password: str = PASSWORD
) -> None:
    """Re-authenticate the session of ``tokens`` with its password (asserts 200)."""
    response = await client.post(
        "/api/auth/reauthenticate", json={"password": password}, headers=bearer(tokens)
    )
    assert response.status_code == 200, response.text
