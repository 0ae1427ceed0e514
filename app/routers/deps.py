"""Typed dependencies shared by the routers: a route reads as its signature.

Every dependency is ``async def``, even the trivial ones: FastAPI runs a plain
``def`` dependency in a worker thread, a hop that costs more than the work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

from authlib.integrations.starlette_client import OAuth
from fastapi import Depends, Path, Query, Request
from fastapi.security import OAuth2PasswordBearer
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.atproto_oauth import ClientKeys
from app.core.authentication import Auth, Authenticator, UserCopies, caller_of
from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.email import Mailer
from app.core.feature_flags import FlagStore
from app.core.flag_sources import FlagBroadcaster, FlagSource
from app.core.signing_keys import Keyring
from app.models import User
from app.services.context import ClientInfo
from app.services.devices import DEVICE_COOKIE, DEVICE_HEADER

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


async def get_flag_source(request: Request) -> FlagSource:
    """Where the flags are kept (file or database), for changing them."""
    return request.app.state.flag_source


async def get_flag_broadcaster(request: Request) -> FlagBroadcaster | None:
    """Announces flag changes to other replicas (None without Redis)."""
    return request.app.state.flag_broadcaster


async def get_guard(request: Request) -> BruteForceGuard:
    """The brute-force guard (login, 2FA, password reset)."""
    return request.app.state.guard


async def get_oauth(request: Request) -> OAuth:
    """The app's OAuth clients (one per enabled provider)."""
    return request.app.state.oauth


async def get_bluesky_keys(request: Request) -> ClientKeys:
    """The Bluesky client key of the running app."""
    return request.app.state.bluesky_keys


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
FlagSourceDep = Annotated[FlagSource, Depends(get_flag_source)]
FlagBroadcasterDep = Annotated[FlagBroadcaster | None, Depends(get_flag_broadcaster)]
GuardDep = Annotated[BruteForceGuard, Depends(get_guard)]
ClientDep = Annotated[ClientInfo, Depends(get_client)]
OAuthDep = Annotated[OAuth, Depends(get_oauth)]
BlueskyKeysDep = Annotated[ClientKeys, Depends(get_bluesky_keys)]


async def get_authenticator(request: Request) -> Authenticator:
    """The app's authenticator (tokens other than the request's own: the docs cookie)."""
    return request.app.state.authenticator


AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


async def get_keyring(request: Request) -> Keyring:
    """The app's signing keys (they sign access and ID tokens)."""
    return request.app.state.authenticator.keyring


KeyringDep = Annotated[Keyring, Depends(get_keyring)]

# The dependencies below take the bearer token from ``oauth2_scheme`` only so that the
# OpenAPI document marks their routes as needing it; the caller is the request's one
# Caller (``app.core.authentication``), resolved once, whoever asks first (a
# rule-based flag may have already).


async def get_auth(
    request: Request, db: SessionDep, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Auth:
    """The caller's session and user, live in the request's database session (routes
    that change something); 401 without a valid bearer token."""
    return await caller_of(request.scope).live(db)


async def get_current_user(auth: Annotated[Auth, Depends(get_auth)]) -> User:
    """The authenticated user, live (routes that change something)."""
    return auth.user


AuthDep = Annotated[Auth, Depends(get_auth)]
CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_reader_auth(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Auth:
    """The caller's authentication, for routes that only read: the user and session
    are read-only copies, usually from the auth cache (no database trip); 401 as
    ``get_auth``."""
    return await caller_of(request.scope).reader()


async def get_reader(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> User:
    """The authenticated user as a read-only copy (routes that only read)."""
    return (await caller_of(request.scope).reader()).user


async def get_optional_reader_auth(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Auth | None:
    """As ``get_reader_auth`` for routes that anonymous callers may use too: None
    without a token or with a refused one (as the feature flags see such a caller)."""
    return await caller_of(request.scope).optional_reader()


async def get_user_copies(request: Request) -> UserCopies:
    """Read-only copies of any user, by UUID, usually from the auth cache (the profile
    read's hot path: no sub-dependency; override this one in tests)."""
    return request.app.state.authenticator.read_user


#: ``AuthDep`` / ``CurrentUser`` for routes that only read; writing to them raises.
ReaderAuth = Annotated[Auth, Depends(get_reader_auth)]
Reader = Annotated[User, Depends(get_reader)]
#: ``ReaderAuth``, or None for an anonymous caller.
OptionalReaderAuth = Annotated[Auth | None, Depends(get_optional_reader_auth)]
#: Looks up other users for routes that only read (None: no such user).
UserCopiesDep = Annotated[UserCopies, Depends(get_user_copies)]


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
