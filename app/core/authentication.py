"""Who is calling: the one place that turns an access token into a user and a session.

Every request passes :class:`AuthenticationMiddleware`, which puts a :class:`Caller`
in the request's state (``scope["state"]["caller"]``). The caller is resolved lazily
and at most once per request, by the app's one :class:`Authenticator`, and everything
that asks reads that one answer:

- the global rate limit asks only whose token it is (:meth:`Caller.subject`): a valid
  signature, no database and no cache, so a flood of stolen or ended tokens is
  counted per user before anything else runs;
- rule-based feature flags and routes that only read ask for the read-only principal
  (:meth:`Caller.reader`): copies of the session and user, from the auth cache when it
  holds them, else from one query whose result the cache keeps;
- routes that change something ask for the live principal (:meth:`Caller.live`): the
  session and user as ORM objects of the request's database session.

A token is refused (:class:`InvalidToken`, 401) when its signature, kind or expiry is
wrong, its session is revoked or expired, or its user is inactive; the same checks
apply whichever way the answer came. The routers reach all this through
``app.routers.deps`` (``Reader``, ``ReaderAuth``, ``CurrentUser``, ``AuthDep``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.auth_cache import SESSION_OMITTED, USER_OMITTED, AuthCache, snapshot
from app.core.config import Settings
from app.core.errors import Unauthorized
from app.core.security import AccessClaims, TokenError, bearer_token
from app.core.signing_keys import Keyring
from app.models import Session, User, now_epoch

#: Where the middleware leaves the request's :class:`Caller` (``scope["state"]``).
CALLER_KEY = "caller"
#: Verified access tokens remembered per authenticator.
VERIFIED_TOKENS_MAX = 10_000


class InvalidToken(Unauthorized):
    """The access token is missing, malformed, expired, or its session has ended."""

    code = "INVALID_TOKEN"
    detail = "Invalid or expired token"


@dataclass(frozen=True)
class Auth:
    """An authenticated request: the user, their session, and the token's claims."""

    user: User
    session: Session
    claims: AccessClaims


#: Looks up a read-only copy of any user by UUID (:meth:`Authenticator.read_user`).
UserCopies = Callable[[str], Awaitable[User | None]]


class Authenticator:
    """Resolves access tokens for the whole app (one instance, on the app's state).

    Parameters
    ----------
    settings
        The app's settings (the JWT secret).

    The database and the auth cache come at start (:meth:`attach`): the middleware
    that hands out callers is built before them.
    """

    session_factory: async_sessionmaker[AsyncSession]
    cache: AuthCache

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The keys that sign and verify access tokens (loaded at start).
        self.keyring = Keyring(settings)
        # A client sends the same token with every request for its lifetime, and
        # verifying it again costs more than the rest of a cached read. The key is the
        # whole signed token, so only that exact token matches; its expiry is checked
        # on every use. (A key that stops being published only stops verifying tokens
        # that have expired.)
        self._verified: dict[str, AccessClaims] = {}

    def attach(self, session_factory: async_sessionmaker[AsyncSession], cache: AuthCache) -> None:
        """Use this database (for principals the cache does not hold) and this cache."""
        self.session_factory = session_factory
        self.cache = cache

    def caller(self, token: str | None) -> Caller:
        """A caller presenting ``token`` (None: anonymous)."""
        return Caller(self, token)

    def claims(self, token: str) -> AccessClaims:
        """The claims of a validly signed, unexpired access token naming its session."""
        key = token
        known = self._verified.get(key)
        if known is not None:
            if time.time() < known.expires_at:
                return known
            del self._verified[key]
            raise InvalidToken()
        try:
            claims = self.keyring.verify_access_token(token)
        except TokenError:
            raise InvalidToken() from None
        session_id, subject = claims.get("sid"), claims["sub"]
        if not isinstance(session_id, str) or not isinstance(subject, str):
            raise InvalidToken()
        verified = AccessClaims(
            user_uuid=subject,
            session_id=session_id,
            expires_at=int(claims["exp"]),
            token_type=claims["typ"],
        )
        if len(self._verified) >= VERIFIED_TOKENS_MAX:
            del self._verified[next(iter(self._verified))]
        self._verified[key] = verified
        return verified

    async def live(self, db: AsyncSession, claims: AccessClaims) -> Auth:
        """The session and user named by ``claims``, live in ``db``; or InvalidToken."""
        row = (
            await db.execute(
                select(Session, User)
                .join(User, User.uuid == Session.user_uuid)
                .where(Session.id == claims.session_id)
            )
        ).first()
        if row is None:
            raise InvalidToken()
        session, user = row
        _check(claims, session, user)
        return Auth(user=user, session=session, claims=claims)

    async def reader(self, claims: AccessClaims) -> Auth:
        """As :meth:`live`, as read-only copies: from the cache, or from one query
        (in a database session of its own) whose result the cache keeps."""
        hit = self.cache.session(claims.session_id)
        if hit is not None:
            session, user = hit
            _check(claims, session, user)  # the user's copy may be newer than the session's
            return Auth(user=user, session=session, claims=claims)
        ticket = self.cache.ticket()
        async with self.session_factory() as db:
            auth = await self.live(db, claims)
        copies = self.cache.store_session(ticket, auth.session, auth.user) or (
            snapshot(auth.session, SESSION_OMITTED),
            snapshot(auth.user, USER_OMITTED),
        )
        return Auth(user=copies[1], session=copies[0], claims=claims)

    async def read_user(self, user_uuid: str) -> User | None:
        """A read-only copy of any user (None when there is no such user): from the
        cache, or from one query whose result the cache keeps."""
        user = self.cache.user(user_uuid)
        if user is not None:
            return user
        ticket = self.cache.ticket()
        async with self.session_factory() as db:
            loaded = await db.get(User, user_uuid)
        if loaded is None:
            return None
        return self.cache.store_user(ticket, loaded) or snapshot(loaded, USER_OMITTED)


def _check(claims: AccessClaims, session: Session, user: User) -> None:
    if (
        session.user_uuid != claims.user_uuid
        or session.revoked_at is not None
        or session.expires_at <= now_epoch()
        or not user.is_active
    ):
        raise InvalidToken()


class Caller:
    """The caller of one request, resolved at most once, when first asked.

    A token is verified once; a token or session that is refused stays refused for
    the rest of the request; a read-only principal, once read, answers every later
    :meth:`reader` call of the request. The live principal is loaded by each
    :meth:`live` call (one per request: FastAPI shares a dependency's result).
    """

    __slots__ = ("_authenticator", "_claims", "_reader", "_refused", "token")

    def __init__(self, authenticator: Authenticator, token: str | None) -> None:
        self._authenticator = authenticator
        self.token = token
        self._claims: AccessClaims | InvalidToken | None = None
        self._reader: Auth | None = None
        #: The session was refused (ended, expired, user inactive): the signature
        #: still names whose token it is, for :meth:`subject`.
        self._refused: InvalidToken | None = None

    def claims(self) -> AccessClaims:
        """The token's verified claims; InvalidToken without a valid token."""
        if self._claims is None:
            if self.token is None:
                self._claims = InvalidToken("Not authenticated")
            else:
                try:
                    self._claims = self._authenticator.claims(self.token)
                except InvalidToken as error:
                    self._claims = error
        if isinstance(self._claims, InvalidToken):
            raise self._claims
        return self._claims

    def subject(self) -> str | None:
        """The user a validly signed token names (its session is not checked)."""
        try:
            return self.claims().user_uuid
        except InvalidToken:
            return None

    async def reader(self) -> Auth:
        """The caller as read-only copies (routes that only read); InvalidToken else."""
        if self._reader is None:
            claims = self.claims()
            if self._refused is not None:
                raise self._refused
            try:
                self._reader = await self._authenticator.reader(claims)
            except InvalidToken as error:
                self._refused = error
                raise
        return self._reader

    async def optional_reader(self) -> Auth | None:
        """As :meth:`reader`, None for an anonymous caller or a refused token."""
        try:
            return await self.reader()
        except InvalidToken:
            return None

    async def live(self, db: AsyncSession) -> Auth:
        """The caller as live ORM objects of ``db`` (routes that change something)."""
        claims = self.claims()
        if self._refused is not None:
            raise self._refused
        try:
            return await self._authenticator.live(db, claims)
        except InvalidToken as error:
            self._refused = error
            raise


def caller_of(scope: Scope) -> Caller:
    """The request's caller, as :class:`AuthenticationMiddleware` left it."""
    return scope["state"][CALLER_KEY]


class AuthenticationMiddleware:
    """Give each HTTP request its :class:`Caller` (pure ASGI; resolves nothing itself).

    Everything after it (the rate limit, feature flags, routes) reads the one caller.
    """

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            state: dict[str, Any] = scope.setdefault("state", {})
            state[CALLER_KEY] = Caller(self.authenticator, bearer_token(scope["headers"]))
        await self.app(scope, receive, send)
