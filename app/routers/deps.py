"""Typed dependencies shared by the routers: a route reads as its signature.

Every dependency is ``async def``, even the trivial ones: FastAPI runs a plain
``def`` dependency in a worker thread, a hop that costs more than the work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Path, Query, Request
from fastapi.security import OAuth2PasswordBearer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.types import Scope

from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.email import Mailer
from app.core.feature_flags import FlagBroadcaster, FlagStore
from app.core.security import bearer_token
from app.models import User
from app.services.context import ClientInfo
from app.services.devices import DEVICE_COOKIE, DEVICE_HEADER
from app.services.sessions import Auth, InvalidToken, authenticate, authenticate_reader

# The token URL is rewritten to API_STR's in the OpenAPI document (app.core.openapi).
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/login", auto_error=False)


async def get_settings(request: Request) -> Settings:
    """The settings of the running app."""
    return request.app.state.settings


async def get_engine(request: Request) -> AsyncEngine:
    """The app's database engine."""
    return request.app.state.engine


async def get_redis(request: Request) -> Redis | None:
    """The app's Redis client, or None when REDIS_URL is not set."""
    return request.app.state.redis


async def get_flag_store(request: Request) -> FlagStore:
    """The app's feature flags."""
    return request.app.state.flag_store


async def get_flag_broadcaster(request: Request) -> FlagBroadcaster | None:
    """Announces flag changes to other replicas (None without Redis)."""
    return request.app.state.flag_broadcaster


async def get_guard(request: Request) -> BruteForceGuard:
    """The brute-force guard (login, 2FA, password reset)."""
    return request.app.state.guard


async def get_mailer(request: Request) -> Mailer:
    """The app's outbox."""
    return request.app.state.mailer


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """A database session for the request, closed when the response is sent."""
    async with request.app.state.session_factory() as session:
        yield session


async def get_client(request: Request) -> ClientInfo:
    """The caller's address, user agent and device token (cookie or header)."""
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        device_token=request.headers.get(DEVICE_HEADER) or request.cookies.get(DEVICE_COOKIE),
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
RedisDep = Annotated[Redis | None, Depends(get_redis)]
SessionDep = Annotated[AsyncSession, Depends(get_db)]
MailerDep = Annotated[Mailer, Depends(get_mailer)]
FlagStoreDep = Annotated[FlagStore, Depends(get_flag_store)]
FlagBroadcasterDep = Annotated[FlagBroadcaster | None, Depends(get_flag_broadcaster)]
GuardDep = Annotated[BruteForceGuard, Depends(get_guard)]
ClientDep = Annotated[ClientInfo, Depends(get_client)]


async def get_optional_auth(
    db: SessionDep, settings: SettingsDep, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Auth | None:
    """The caller's authentication when a bearer token is sent; a bad token is a 401."""
    if token is None:
        return None
    return await authenticate(db, settings, token)


async def get_auth(auth: Annotated[Auth | None, Depends(get_optional_auth)]) -> Auth:
    """The caller's authentication; 401 without a valid bearer token."""
    if auth is None:
        raise InvalidToken("Not authenticated")
    return auth


async def get_current_user(auth: Annotated[Auth, Depends(get_auth)]) -> User:
    """The authenticated user."""
    return auth.user


async def get_optional_user(
    auth: Annotated[Auth | None, Depends(get_optional_auth)],
) -> User | None:
    """The authenticated user, or None for an anonymous request."""
    return auth.user if auth else None


AuthDep = Annotated[Auth, Depends(get_auth)]
CurrentUser = Annotated[User, Depends(get_current_user)]
OptionalUser = Annotated[User | None, Depends(get_optional_user)]


async def _reader_auth(request: Request, token: str | None) -> Auth:
    if token is None:
        raise InvalidToken("Not authenticated")
    state = request.app.state
    return await authenticate_reader(state.session_factory, state.settings, token, state.auth_cache)


# The two below read the app's state themselves rather than through SettingsDep: they
# run on every hot read, and each sub-dependency costs FastAPI more than a cache hit.


async def get_reader_auth(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Auth:
    """The caller's authentication, for routes that only read: the user and session
    are read-only copies, usually from the cache (no database trip); 401 as ``get_auth``.
    """
    return await _reader_auth(request, token)


async def get_reader(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]
) -> User:
    """The authenticated user as a read-only copy (routes that only read)."""
    return (await _reader_auth(request, token)).user


#: ``AuthDep`` / ``CurrentUser`` for routes that only read; writing to them raises.
ReaderAuth = Annotated[Auth, Depends(get_reader_auth)]
Reader = Annotated[User, Depends(get_reader)]


@dataclass(frozen=True)
class Page:
    """Which slice of a list to return."""

    offset: int
    limit: int


async def get_page(
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Items to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Items to return (1-100).")] = 50,
) -> Page:
    """The ``offset``/``limit`` query parameters of a list endpoint."""
    return Page(offset=offset, limit=limit)


async def get_user_uuid(user_uuid: Annotated[UUID, Path(alias="uuid")]) -> str:
    """A user UUID from the path, canonical (lower-case, hyphenated)."""
    return str(user_uuid)


PageDep = Annotated[Page, Depends(get_page)]
UserUuid = Annotated[str, Depends(get_user_uuid)]


async def resolve_flag_user(app: Any, scope: Scope) -> tuple[str, list[str]] | None:
    """The (uuid, roles) behind a request's access token, for rule-based flags."""
    token = bearer_token(scope.get("headers", []))
    if token is None:
        return None
    state = app.state
    try:
        auth = await authenticate_reader(
            state.session_factory, state.settings, token, state.auth_cache
        )
    except InvalidToken:
        return None
    return auth.user.uuid, list(auth.user.roles)
