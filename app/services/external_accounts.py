"""Third-party accounts: who logs in, what gets linked, what gets created.

The router drives the OAuth protocol (Authlib needs the request); these functions
apply the account rules once the provider has said who its user is:

1. an external account already linked logs its local user in;
2. else a local account with the same email is linked, when the provider says the
   email is verified and the local one is verified too (or, with EMAIL_METHOD=none,
   the local password is removed and its sessions ended first);
3. else a new local account is created (external only).

Users are found by (provider, external id), never by email alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.database import rows_matched
from app.core.email import Mailer
from app.core.errors import AppError, Conflict, InsufficientStorage, NotFound
from app.core.images import InvalidImage, process_picture
from app.core.oauth_client import ExternalProfile, fetch_picture, provider_label
from app.core.origins import url_origin
from app.core.security import create_one_time_token
from app.core.signing_keys import Keyring
from app.core.storage import StorageUnavailable
from app.models import (
    BlueskySession,
    ExternalAccount,
    OAuthToken,
    Session,
    UsedToken,
    User,
    now_epoch,
)
from app.schemas.auth import TokenPair
from app.schemas.otp import OtpChallengeResponse
from app.services import two_factor
from app.services.accounts import commit_or_conflict, create_user
from app.services.context import ClientInfo
from app.services.files import store_picture
from app.services.history import record_event
from app.services.links import InvalidLink, consume_link
from app.services.notices import send_security_notice
from app.services.reauth import ReauthenticationRequired, require_fresh_session
from app.services.sessions import revoke_sessions, start_session
from app.services.ways_in import LastLoginMethod, another_way_in, lock_account

EXCHANGE_PURPOSE = "oauth-exchange"
EXCHANGE_MAX_AGE_SECONDS = 120
STATE_PURPOSE = "oauth-state"
#: A sign-in must come back from the provider within this time (the signed cookie that
#: carries it is refused after as long, but is signed again on every OAuth request).
STATE_MAX_AGE_SECONDS = 600
#: A used state is remembered this much longer than it could be accepted, so that a
#: replica whose clock is a little behind cannot accept it after the record is purged.
STATE_KEEP_MARGIN_SECONDS = 60
_USERNAME_CHARACTERS = re.compile(r"[^a-z0-9_]+")
_NOREPLY_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")

#: Stores a provider's tokens for a user, in the caller's transaction: Bluesky keeps
#: its own, sealed, with the DPoP key they are bound to (the others: a token dict,
#: written to ``oauth_token``).
TokenWriter = Callable[[AsyncSession, str], Awaitable[None]]
ProviderTokens = dict[str, Any] | TokenWriter


class ProviderNotEnabled(NotFound):
    """The provider is unknown or not configured."""

    code = "PROVIDER_NOT_ENABLED"
    detail = "This login provider is not enabled"


class InvalidRedirectUri(AppError):
    """``redirect_uri`` is not on an allowed origin."""

    status_code = 400
    code = "INVALID_REDIRECT_URI"
    detail = "redirect_uri must be an http(s) URL on an allowed origin"


class InvalidOAuthState(AppError):
    """The callback's ``state`` is missing, forged or already used."""

    status_code = 400
    code = "INVALID_STATE"
    detail = "This sign-in cannot be completed (missing or invalid state); start again"


class OAuthFailed(AppError):
    """The provider refused or failed."""

    status_code = 400
    code = "OAUTH_FAILED"
    detail = "The provider did not complete the sign-in"


class ProviderUnavailable(AppError):
    """The provider could not be reached, was too slow, or answered something unusable."""

    status_code = 502
    code = "OAUTH_PROVIDER_ERROR"
    detail = "The login provider did not answer as expected; try again later"


class LinkedToAnotherUser(Conflict):
    """The external account belongs to another local account."""

    code = "OAUTH_ACCOUNT_LINKED_TO_ANOTHER_USER"
    detail = "This account is already linked to another user"


class AlreadyLinked(Conflict):
    """The external account, or one of this provider, is already linked to this user."""

    code = "OAUTH_ACCOUNT_ALREADY_LINKED"
    detail = "An account of this provider is already linked to you"


class EmailNotVerified(Conflict):
    """Linking by email needs verified emails."""

    code = "EMAIL_NOT_VERIFIED"
    detail = (
        "A local account has this email, but the emails are not both verified: "
        "log in and link the account instead"
    )


class InvalidExchangeCode(AppError):
    """The code from a login redirect is forged, expired or already used."""

    status_code = 400
    code = "INVALID_CODE"
    detail = "This code is invalid, expired or already used; sign in again"


class AccountInactive(AppError):
    """The local account is banned or being deleted."""

    status_code = 403
    code = "ACCOUNT_INACTIVE"
    detail = "This account is inactive"


# redirect_uri --------------------------------------------------------------------------


def check_redirect_uri(settings: Settings, redirect_uri: str) -> str:
    """Accept only an absolute http(s) URL whose origin is BASE_URL's, FRONTEND_URL's
    (when set) or one of ALLOWED_REDIRECT_ORIGINS; no credentials, backslashes or controls."""
    if any(ch in redirect_uri for ch in "\\\r\n\t ") or len(redirect_uri) > 2048:
        raise InvalidRedirectUri()
    origin = url_origin(redirect_uri)
    if origin is None or "@" in urlsplit(redirect_uri).netloc:
        raise InvalidRedirectUri()
    allowed = {
        url_origin(url)
        for url in (settings.BASE_URL, settings.FRONTEND_URL, *settings.ALLOWED_REDIRECT_ORIGINS)
        if url  # FRONTEND_URL is empty without a front end
    }
    if origin not in allowed:
        raise InvalidRedirectUri()
    return redirect_uri


# States --------------------------------------------------------------------------------


async def consume_state(db: AsyncSession, state: str, started_at: object) -> None:
    """Use up a sign-in's ``state`` (commits), or InvalidOAuthState when it is too old
    or was used already.

    The state travels in the browser's signed cookie; a copy of that cookie replayed
    with the same callback would otherwise sign in again (some providers accept a
    code twice). The used state is remembered, hashed, in ``used_token`` until it
    could no longer be accepted anyway; the ``purge_expired`` job deletes it then.
    Two parallel replays race on its primary key: one wins.
    """
    if isinstance(started_at, bool) or not isinstance(started_at, int):
        raise InvalidOAuthState()
    expires_at = started_at + STATE_MAX_AGE_SECONDS
    if expires_at <= now_epoch():
        raise InvalidOAuthState("This sign-in took too long; start again")
    db.add(
        UsedToken(
            token_id=hashlib.sha256(state.encode()).hexdigest(),
            purpose=STATE_PURPOSE,
            expires_at=expires_at + STATE_KEEP_MARGIN_SECONDS,
        )
    )
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise InvalidOAuthState("This sign-in was completed already; start again") from None


# Accounts ------------------------------------------------------------------------------


async def _free_username(db: AsyncSession, profile: ExternalProfile) -> str:
    base = (profile.username or profile.display_name or profile.provider).lower()
    base = _USERNAME_CHARACTERS.sub("_", base).strip("_")[:31] or profile.provider
    taken = set(await db.scalars(select(User.username).where(User.username.like(f"{base[:24]}%"))))
    if base not in taken:
        return base
    number = 2
    while (candidate := f"{base[: 31 - len(str(number)) - 1]}_{number}") in taken:
        number += 1
    return candidate


async def _save_token(
    db: AsyncSession, user_uuid: str, provider: str, token: ProviderTokens
) -> None:
    if callable(token):
        await token(db, user_uuid)
        return
    row = await db.scalar(
        select(OAuthToken).where(OAuthToken.user_uuid == user_uuid, OAuthToken.provider == provider)
    )
    if row is None:
        row = OAuthToken(user_uuid=user_uuid, provider=provider, oauth_version=2)
        db.add(row)
    row.token_type = token.get("token_type")
    row.access_token = token.get("access_token")
    row.refresh_token = token.get("refresh_token") or row.refresh_token
    expires_at = token.get("expires_at")
    row.expires_at = int(expires_at) if expires_at else None


def _link(user: User, profile: ExternalProfile) -> ExternalAccount:
    return ExternalAccount(
        provider=profile.provider,
        external_id=profile.external_id,
        username=profile.username,
        display_name=profile.display_name,
        email=profile.email.lower() if profile.email else None,
        picture_url=profile.picture_url,
        user_uuid=user.uuid,
        created_at=now_epoch(),
    )


async def _add_link(
    db: AsyncSession,
    user: User,
    profile: ExternalProfile,
    token: ProviderTokens,
    client: ClientInfo,
    *,
    by: str | None = None,
) -> None:
    """Add the link, the provider's token and the history event to the session.

    Nothing is flushed here: the caller's :func:`commit_or_conflict` writes it all with
    the rest of its transaction, and a unique constraint that a parallel sign-in got
    to first becomes a 409 there, not a 500 here.
    """
    with db.no_autoflush:
        db.add(_link(user, profile))
        await _save_token(db, user.uuid, profile.provider, token)
    record_event(
        db, user.uuid, "oauth_linked", by=by, client=client, details={"provider": profile.provider}
    )


async def _linked_account(db: AsyncSession, profile: ExternalProfile) -> ExternalAccount | None:
    return await db.scalar(
        select(ExternalAccount).where(
            ExternalAccount.provider == profile.provider,
            ExternalAccount.external_id == profile.external_id,
        )
    )


async def resolve_login(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    profile: ExternalProfile,
    token: ProviderTokens,
    client: ClientInfo,
) -> User:
    """The local user a provider login stands for: linked, linked by email, or new."""
    linked = await _linked_account(db, profile)
    if linked is not None:
        user = await db.get(User, linked.user_uuid)
        if user is None or not user.is_active:
            raise AccountInactive()
        await _save_token(db, user.uuid, profile.provider, token)
        await db.commit()
        return user

    email = profile.email.lower() if profile.email else None
    local = await db.scalar(select(User).where(User.email == email)) if email else None
    if local is not None:
        email_off = settings.EMAIL_METHOD == "none"
        if not profile.email_verified or not (local.email_verified or email_off):
            raise EmailNotVerified()
        if not local.is_active:
            raise AccountInactive()
        if not local.email_verified:
            # Email is off, so nobody proved owning this local account's address: the
            # provider did. Whoever set the local password loses it, and its sessions.
            local.hashed_password = None
            local.is_external_only = True
            local.email_verified = True
            await revoke_sessions(db, local.uuid)
        await _add_link(db, local, profile, token, client)
        await commit_or_conflict(db)
        _notice_link(settings, mailer, local, profile.provider)
        return local

    # An unverified provider email is not taken over: it could be anyone's address.
    own_email = email if email and profile.email_verified else None
    # The user, its link and the token in one transaction: a user without its link
    # could never sign in (it has no password).
    user = await create_user(
        db,
        settings,
        username=await _free_username(db, profile),
        email=own_email or _noreply_email(profile),
        password=None,
        email_verified=own_email is not None,
        is_external_only=True,
        client=client,
        check_email_deliverability=False,
        commit=False,
    )
    await _add_link(db, user, profile, token, client)
    await commit_or_conflict(db)
    logger.info("user {} created from a {} sign-in", user.uuid, profile.provider)
    return user


def _noreply_email(profile: ExternalProfile) -> str:
    """The placeholder address of an account whose provider gives no email (a Bluesky
    DID's colons are not allowed in an address)."""
    local = _NOREPLY_CHARACTERS.sub("-", f"{profile.provider}_{profile.external_id}")
    return f"{local}@users.noreply.invalid"


def _notice_link(settings: Settings, mailer: Mailer, user: User, provider: str) -> None:
    label = provider_label(provider)
    send_security_notice(
        settings,
        mailer,
        user,
        what=f"A {label} account was linked",
        more=f"Signing in with that {label} account now opens yours. A password reset "
        "shows your linked accounts and can unlink them.",
    )


async def link_account(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    session_id: str | None,
    profile: ExternalProfile,
    token: ProviderTokens,
    client: ClientInfo,
) -> User:
    """Link a provider account to the user of the session that started the link,
    whatever its email.

    That session must still be open and recently re-authenticated when the provider
    sends the browser back: a link started just before a password change (which ends
    every session) does not complete.
    """
    session = await db.get(Session, session_id) if session_id else None
    user = await db.get(User, session.user_uuid) if session is not None else None
    if session is None or user is None or not user.is_active:
        raise AccountInactive()
    if session.revoked_at is not None or session.expires_at <= now_epoch():
        raise ReauthenticationRequired("The sign-in that started this link has ended")
    require_fresh_session(settings, session)
    linked = await _linked_account(db, profile)
    if linked is not None:
        raise AlreadyLinked() if linked.user_uuid == user.uuid else LinkedToAnotherUser()
    same_provider = await db.scalar(
        select(ExternalAccount.id).where(
            ExternalAccount.user_uuid == user.uuid, ExternalAccount.provider == profile.provider
        )
    )
    if same_provider is not None:
        raise AlreadyLinked()
    await _add_link(db, user, profile, token, client, by=user.uuid)
    await commit_or_conflict(db)
    _notice_link(settings, mailer, user, profile.provider)
    return user


async def linked_providers(db: AsyncSession, user_uuid: str) -> list[str]:
    """The providers whose accounts are linked to the user, by name."""
    return sorted(
        await db.scalars(
            select(ExternalAccount.provider).where(ExternalAccount.user_uuid == user_uuid)
        )
    )


async def remove_links(db: AsyncSession, user_uuid: str, providers: list[str]) -> list[str]:
    """Delete the user's accounts (and stored tokens) of ``providers``; the caller
    commits. Returns the providers that were linked."""
    accounts = list(
        await db.scalars(
            select(ExternalAccount).where(
                ExternalAccount.user_uuid == user_uuid, ExternalAccount.provider.in_(providers)
            )
        )
    )
    for account in accounts:
        await db.delete(account)
    tokens = await db.scalars(
        select(OAuthToken).where(
            OAuthToken.user_uuid == user_uuid, OAuthToken.provider.in_(providers)
        )
    )
    for token in tokens:
        await db.delete(token)
    if "bluesky" in providers:
        await db.execute(delete(BlueskySession).where(BlueskySession.user_uuid == user_uuid))
    return sorted(account.provider for account in accounts)


async def remove_link(db: AsyncSession, user: User, provider: str) -> None:
    """Delete the user's account of ``provider`` unless it is their only way in
    (whoever asks: the user, or an admin; see :mod:`app.services.ways_in`); the caller
    records it and commits."""
    await lock_account(db, user.uuid)
    result = await db.execute(
        delete(ExternalAccount)
        .where(
            ExternalAccount.user_uuid == user.uuid,
            ExternalAccount.provider == provider,
            another_way_in(user.uuid, provider=provider),
        )
        .execution_options(synchronize_session=False)
    )
    if rows_matched(result) != 1:
        if provider not in await linked_providers(db, user.uuid):
            raise NotFound("No account of this provider is linked", code="OAUTH_ACCOUNT_NOT_LINKED")
        raise LastLoginMethod()
    await db.execute(
        delete(OAuthToken).where(OAuthToken.user_uuid == user.uuid, OAuthToken.provider == provider)
    )
    if provider == "bluesky":
        await db.execute(delete(BlueskySession).where(BlueskySession.user_uuid == user.uuid))


async def unlink(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    user: User,
    provider: str,
    client: ClientInfo,
) -> None:
    """Remove the user's account of ``provider``, unless it is their only way in; the
    account's verified email is told."""
    await remove_link(db, user, provider)
    record_event(
        db, user.uuid, "oauth_unlinked", by=user.uuid, client=client, details={"provider": provider}
    )
    await db.commit()
    send_security_notice(
        settings, mailer, user, what=f"A {provider_label(provider)} account was unlinked"
    )


async def adopt_picture(
    db: AsyncSession, settings: Settings, user: User, profile: ExternalProfile, client: ClientInfo
) -> None:
    """Use the provider's picture when the user has none (fetched safely, validated)."""
    if user.profile_picture_id is not None or not profile.picture_url:
        return
    data = await fetch_picture(profile.picture_url)
    if data is None:
        return
    extension = urlsplit(profile.picture_url).path.rsplit(".", 1)[-1].lower()
    try:
        picture = await asyncio.to_thread(
            process_picture,
            data,
            extension if extension in ("png", "jpg", "jpeg", "gif", "bmp") else "png",
        )
    except InvalidImage as error:
        logger.warning("provider picture refused: {}", error)
        return
    try:
        await store_picture(
            db, settings, user, user.uuid, picture.data, picture.extension, picture.mime, client
        )
    except InsufficientStorage:  # a nicety: a full disk must not stop the sign-in
        logger.warning("provider picture not stored: no room left on disk")
    except StorageUnavailable:  # nor an object store that does not answer
        logger.warning("provider picture not stored: file storage unavailable")


# Finishing the login -------------------------------------------------------------------


async def finish_login(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    mailer: Mailer,
    user: User,
    client: ClientInfo,
) -> TokenPair | OtpChallengeResponse:
    """A session, or the second-factor challenge when the user has 2FA on."""
    if user.otp_method != "none":
        return await two_factor.begin_login(db, settings, mailer, user, client)
    return await start_session(db, settings, keyring, user, client)


def exchange_code(settings: Settings, user: User) -> str:
    """A one-time code, valid two minutes, that the redirect carries instead of tokens."""
    return create_one_time_token(
        settings.JWT_SECRET_KEY, EXCHANGE_PURPOSE, {"uuid": user.uuid, "email": user.email}
    )


async def exchange(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    mailer: Mailer,
    code: str,
    client: ClientInfo,
) -> TokenPair | OtpChallengeResponse:
    """Trade a redirect's one-time code for the login answer (works once)."""
    try:
        user, _ = await consume_link(db, settings, EXCHANGE_PURPOSE, code, EXCHANGE_MAX_AGE_SECONDS)
    except InvalidLink:
        raise InvalidExchangeCode() from None
    await db.commit()
    if not user.is_active:
        raise AccountInactive()
    return await finish_login(db, settings, keyring, mailer, user, client)
