"""Sign in with Bluesky (AT Protocol OAuth): start, complete, refresh.

The protocol runs here (:mod:`app.core.atproto_identity`, :mod:`app.core.atproto_oauth`);
once the authorization server has said who signed in, the account rules are the
other providers' (:mod:`app.services.external_accounts`). Bluesky gives no email, so
a sign-in logs into a linked account or creates one; an existing account links it
from a signed-in, recently re-authenticated session.

What a sign-in must remember between the redirect and the callback (the PKCE
verifier, the DPoP key, where the user's authorization server and PDS are) travels
sealed with the secret box inside the signed OAuth cookie: the browser carries it
but can neither read nor change it. The tokens, and the DPoP key they are bound to,
are stored sealed in ``bluesky_session``. No database connection is held while a
server is asked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc.jwk import ECKey
from loguru import logger
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.atproto_identity import (
    IdentityNotFound,
    UnsafeServer,
    authorization_server,
    is_did,
    normal_handle,
    resolve_identity,
)
from app.core.atproto_keys import import_private_key, new_private_key
from app.core.atproto_oauth import (
    ClientKeys,
    ServerRefused,
    callback_url,
    client_assertion,
    client_id,
    get_with_dpop,
    key_to_text,
    pkce_pair,
    post_with_dpop,
)
from app.core.config import Settings
from app.core.database import release_connection, rows_matched
from app.core.errors import AppError, Conflict, NotFound
from app.core.oauth_answers import (
    BlueskyProfile,
    BlueskyToken,
    ProviderAnswerInvalid,
    PushedAuthorizationAnswer,
    read_answer,
)
from app.core.oauth_client import ExternalProfile
from app.core.secret_box import SealError
from app.models import BlueskySession, ExternalAccount, User, now_epoch
from app.services.external_accounts import (
    InvalidOAuthState,
    OAuthFailed,
    ProviderNotEnabled,
    ProviderUnavailable,
    TokenWriter,
)

PROVIDER = "bluesky"
#: What a failed exchange with a Bluesky server can raise (all: 502, nothing stored).
_UNUSABLE = (
    TimeoutError,
    httpx.HTTPError,
    UnsafeServer,
    ProviderAnswerInvalid,
    ServerRefused,
    SealError,
    ValueError,
)
#: The authorization server's refusals that are about this sign-in, not about us.
_USER_REFUSALS = {"invalid_grant", "access_denied"}


class InvalidHandle(AppError):
    """What was typed is neither a handle nor a DID."""

    status_code = 400
    code = "INVALID_BLUESKY_HANDLE"
    detail = "Give a Bluesky handle (alice.bsky.social) or a DID (did:plc:...)"


class IdentityUnknown(AppError):
    """The handle or DID does not lead to an account."""

    status_code = 400
    code = "BLUESKY_IDENTITY_NOT_FOUND"
    detail = "This Bluesky handle or DID does not lead to an account"


class BlueskyNotLinked(NotFound):
    """The user has no Bluesky session stored."""

    code = "OAUTH_ACCOUNT_NOT_LINKED"
    detail = "No Bluesky account is linked"


class BlueskySignInAgain(Conflict):
    """The Bluesky session ended at its server (revoked, or its refresh token expired)."""

    code = "BLUESKY_SIGN_IN_AGAIN"
    detail = "Bluesky no longer accepts this session: sign in with Bluesky again"


@dataclass(frozen=True)
class Started:
    """A started sign-in: where to send the browser, and what the callback needs."""

    authorize_url: str
    state: str
    sealed: str


@dataclass(frozen=True)
class BlueskyAccount:
    """A linked Bluesky account, as refreshed."""

    did: str
    handle: str | None
    display_name: str | None
    expires_at: int | None


def require_enabled(settings: Settings) -> None:
    """ProviderNotEnabled unless BLUESKY_ENABLED."""
    if not settings.BLUESKY_ENABLED:
        raise ProviderNotEnabled()


def _identifier(text: str) -> str:
    text = text.strip()
    if is_did(text):
        return text
    handle = normal_handle(text)
    if handle is None:
        raise InvalidHandle()
    return handle


def _unavailable(what: str, error: Exception) -> ProviderUnavailable:
    reason = str(error) if isinstance(error, ProviderAnswerInvalid | ServerRefused) else ""
    logger.warning("bluesky {} failed: {} {}", what, type(error).__name__, reason)
    return ProviderUnavailable()


# Starting ------------------------------------------------------------------------------


async def start(db: AsyncSession, settings: Settings, keys: ClientKeys, handle: str) -> Started:
    """Resolve ``handle`` (or a DID) to its authorization server and push the
    authorization request there (PAR, PKCE S256, DPoP, client assertion)."""
    require_enabled(settings)
    identifier = _identifier(handle)
    key = await keys.get(db)
    await release_connection(db)
    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    dpop_key = new_private_key()
    try:
        async with asyncio.timeout(settings.OAUTH_PROVIDER_DEADLINE_SECONDS):
            identity = await resolve_identity(settings, identifier)
            server = identity.server

            def form() -> dict[str, str]:
                return {
                    "response_type": "code",
                    "redirect_uri": callback_url(settings),
                    "scope": settings.BLUESKY_SCOPE,
                    "state": state,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                    "login_hint": identity.handle or identity.did,
                    **client_assertion(settings, key, server.issuer),
                }

            answer, nonce = await post_with_dpop(
                settings, server.pushed_authorization_request_endpoint, form, dpop_key, None
            )
            pushed = read_answer(PushedAuthorizationAnswer, answer, "pushed authorization")
    except IdentityNotFound as error:
        logger.info("bluesky identity not resolved: {}", error)
        raise IdentityUnknown() from None
    except _UNUSABLE as error:
        raise _unavailable("sign-in start", error) from None
    remembered = {
        "did": identity.did,
        "handle": identity.handle,
        "pds_url": identity.pds_url,
        "issuer": server.issuer,
        "token_endpoint": server.token_endpoint,
        "verifier": verifier,
        "dpop_key": key_to_text(dpop_key),
        "nonce": nonce,
    }
    query = urlencode({"client_id": client_id(settings), "request_uri": pushed.request_uri})
    return Started(
        authorize_url=f"{server.authorization_endpoint}?{query}",
        state=state,
        sealed=settings.secret_box.seal(json.dumps(remembered)),
    )


# Completing ----------------------------------------------------------------------------


async def _read_profile(
    settings: Settings,
    did: str,
    handle: str | None,
    pds_url: str,
    scope: str,
    access_token: str,
    dpop_key: ECKey,
) -> ExternalProfile:
    """Who signed in, as their PDS shows them (display name, avatar). With the
    ``atproto`` scope alone the PDS is not asked: the handle is all there is."""
    display_name, picture = None, None
    if "transition:generic" in scope.split():
        url = f"{pds_url}/xrpc/app.bsky.actor.getProfile?{urlencode({'actor': did})}"
        data = await get_with_dpop(settings, url, access_token, dpop_key)
        profile = read_answer(BlueskyProfile, data, "app.bsky.actor.getProfile")
        if profile.did != did:
            raise ProviderAnswerInvalid("app.bsky.actor.getProfile: another DID's profile")
        display_name, picture = profile.displayName, profile.avatar
    # The handle is the one resolved both ways, never the profile's own claim.
    return ExternalProfile(PROVIDER, did, handle, display_name or handle, None, False, picture)


def _session_writer(
    settings: Settings,
    remembered: Mapping[str, Any],
    token: BlueskyToken,
    dpop_key_text: str,
) -> TokenWriter:
    box = settings.secret_box

    async def write(db: AsyncSession, user_uuid: str) -> None:
        row = await db.scalar(select(BlueskySession).where(BlueskySession.user_uuid == user_uuid))
        if row is None:
            row = BlueskySession(user_uuid=user_uuid)
            db.add(row)
        row.did = remembered["did"]
        row.issuer = remembered["issuer"]
        row.pds_url = remembered["pds_url"]
        row.scope = token.scope
        row.dpop_key = box.seal(dpop_key_text)
        row.access_token = box.seal(token.access_token)
        row.refresh_token = box.seal(token.refresh_token) if token.refresh_token else None
        row.expires_at = now_epoch() + token.expires_in if token.expires_in else None
        row.updated_at = now_epoch()

    return write


def _checked_token(answer: Any, did: str) -> BlueskyToken:
    token = read_answer(BlueskyToken, answer, "token")
    if token.sub != did:
        # The authorization server answered for another account than the one resolved.
        raise ProviderAnswerInvalid("token: sub is not the DID that was resolved")
    if "atproto" not in token.scope.split():
        raise ProviderAnswerInvalid("token: no atproto scope")
    return token


async def complete(
    db: AsyncSession,
    settings: Settings,
    keys: ClientKeys,
    sealed: object,
    params: Mapping[str, str],
) -> tuple[ExternalProfile, TokenWriter]:
    """The callback, once its state was checked and used up: check ``iss``, trade the
    code for DPoP-bound tokens (checking ``sub``), read the profile.

    Returns the profile and what stores the tokens, for the account rules to use in
    their own transaction.
    """
    require_enabled(settings)
    try:
        remembered = json.loads(settings.secret_box.open(str(sealed)))
        dpop_key = import_private_key(remembered["dpop_key"])
    except (SealError, ValueError, KeyError, TypeError):
        raise InvalidOAuthState() from None
    # The issuer first (RFC 9207): another server's answer, error or not, is refused.
    if params.get("iss") != remembered["issuer"]:
        raise OAuthFailed("The answer does not come from the server this sign-in went to")
    if params.get("error"):
        raise OAuthFailed(f"The provider refused: {params['error'][:100]}")
    code = params.get("code")
    if not code:
        raise OAuthFailed("The provider sent no code")
    key = await keys.get(db)
    await release_connection(db)
    did = remembered["did"]

    def form() -> dict[str, str]:
        return {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": callback_url(settings),
            "code_verifier": remembered["verifier"],
            **client_assertion(settings, key, remembered["issuer"]),
        }

    try:
        async with asyncio.timeout(settings.OAUTH_PROVIDER_DEADLINE_SECONDS):
            answer, _ = await post_with_dpop(
                settings, remembered["token_endpoint"], form, dpop_key, remembered["nonce"]
            )
            token = _checked_token(answer, did)
            profile = await _read_profile(
                settings,
                did,
                remembered["handle"],
                remembered["pds_url"],
                token.scope,
                token.access_token,
                dpop_key,
            )
    except ServerRefused as refused:
        if refused.error in _USER_REFUSALS:
            raise OAuthFailed(f"The provider refused: {refused.error}") from None
        raise _unavailable("token request", refused) from None
    except _UNUSABLE as error:
        raise _unavailable("callback", error) from None
    return profile, _session_writer(settings, remembered, token, remembered["dpop_key"])


# Refreshing ----------------------------------------------------------------------------


async def refresh(
    db: AsyncSession, settings: Settings, keys: ClientKeys, user: User
) -> BlueskyAccount:
    """New tokens for the user's Bluesky session (refresh token, DPoP, client
    assertion) and the profile as the PDS shows it now.

    Refresh tokens are used once: of two refreshes at the same moment, the first to
    store its tokens wins, and the other answers with what the first stored.
    """
    require_enabled(settings)
    box = settings.secret_box
    row = await db.scalar(select(BlueskySession).where(BlueskySession.user_uuid == user.uuid))
    if row is None:
        raise BlueskyNotLinked()
    if row.refresh_token is None:
        raise BlueskySignInAgain()
    key = await keys.get(db)
    session_id, did, issuer, pds_url = row.id, row.did, row.issuer, row.pds_url
    sealed_refresh = row.refresh_token
    try:
        dpop_key = import_private_key(box.open(row.dpop_key))
        refresh_token = box.open(sealed_refresh)
    except (SealError, ValueError):
        # Sealed under a DATA_ENCRYPTION_KEY no longer configured: sign in again.
        raise BlueskySignInAgain() from None
    handle = await db.scalar(
        select(ExternalAccount.username).where(
            ExternalAccount.user_uuid == user.uuid, ExternalAccount.provider == PROVIDER
        )
    )
    await release_connection(db)
    try:
        async with asyncio.timeout(settings.OAUTH_PROVIDER_DEADLINE_SECONDS):
            server = await authorization_server(settings, issuer)

            def form() -> dict[str, str]:
                return {
                    "grant_type": "refresh_token",
                    "refresh_token": refresh_token,
                    **client_assertion(settings, key, server.issuer),
                }

            answer, _ = await post_with_dpop(settings, server.token_endpoint, form, dpop_key, None)
            token = _checked_token(answer, did)
            profile = await _read_profile(
                settings, did, handle, pds_url, token.scope, token.access_token, dpop_key
            )
    except ServerRefused as refused:
        if refused.error in _USER_REFUSALS:
            if await _refreshed_since(db, session_id, sealed_refresh):
                return await _account(db, user.uuid)
            raise BlueskySignInAgain() from None
        raise _unavailable("refresh", refused) from None
    except _UNUSABLE as error:
        raise _unavailable("refresh", error) from None
    stored = await db.execute(
        update(BlueskySession)
        .where(BlueskySession.id == session_id, BlueskySession.refresh_token == sealed_refresh)
        .values(
            access_token=box.seal(token.access_token),
            refresh_token=box.seal(token.refresh_token) if token.refresh_token else None,
            scope=token.scope,
            expires_at=now_epoch() + token.expires_in if token.expires_in else None,
            updated_at=now_epoch(),
        )
    )
    if rows_matched(stored) == 1:
        await db.execute(
            update(ExternalAccount)
            .where(ExternalAccount.user_uuid == user.uuid, ExternalAccount.provider == PROVIDER)
            .values(display_name=profile.display_name, picture_url=profile.picture_url)
        )
    await db.commit()
    return await _account(db, user.uuid)


async def _refreshed_since(db: AsyncSession, session_id: int, sealed_refresh: str) -> bool:
    current = await db.scalar(
        select(BlueskySession.refresh_token).where(BlueskySession.id == session_id)
    )
    return current is not None and current != sealed_refresh


async def _account(db: AsyncSession, user_uuid: str) -> BlueskyAccount:
    row = await db.scalar(select(BlueskySession).where(BlueskySession.user_uuid == user_uuid))
    link = await db.scalar(
        select(ExternalAccount).where(
            ExternalAccount.user_uuid == user_uuid, ExternalAccount.provider == PROVIDER
        )
    )
    if row is None or link is None:
        raise BlueskyNotLinked()
    return BlueskyAccount(row.did, link.username, link.display_name, row.expires_at)
