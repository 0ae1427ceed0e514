"""Login with third-party accounts (GitHub, Discord, Twitch, Google, Reddit, X; Bluesky's
own routes are in :mod:`app.routers.bluesky_login`)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from authlib.integrations.starlette_client import OAuth
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import RedirectResponse
from joserfc.errors import JoseError
from loguru import logger
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.email import Mailer
from app.core.errors import error_body
from app.core.oauth_client import (
    PROVIDERS,
    ExternalProfile,
    ProviderAnswerInvalid,
    check_token,
    enabled_providers,
    fetch_profile,
)
from app.core.signing_keys import Keyring
from app.models import now_epoch
from app.routers.deps import (
    AuthDep,
    ClientDep,
    CurrentUser,
    KeyringDep,
    MailerDep,
    OAuthDep,
    SessionDep,
    SettingsDep,
)
from app.schemas.auth import Message, TokenPair
from app.schemas.common import ErrorResponse, Text, error_responses
from app.schemas.otp import OtpChallengeResponse
from app.services import external_accounts
from app.services.context import ClientInfo
from app.services.reauth import require_fresh_session

router = APIRouter(prefix="/oauth", tags=["oauth"])

RedirectUri = Annotated[
    Text | None,
    Query(
        max_length=2048,
        description="Where to send the browser afterwards (an allowed origin); the "
        "redirect carries a one-time `code` for /auth/token/exchange.",
    ),
]
_REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {"description": "To the provider's consent page"}
}
_SESSION_KEY = "oauth_flow"
#: The 502 a callback answers when the provider fails.
PROVIDER_FAILED: dict[int | str, dict[str, Any]] = {
    502: {
        "model": ErrorResponse,
        "description": "The provider failed",
        "content": {
            "application/json": {
                "example": error_body(
                    external_accounts.ProviderUnavailable.detail,
                    external_accounts.ProviderUnavailable.code,
                )
            }
        },
    }
}


class ProviderList(BaseModel):
    """The login providers this server offers."""

    providers: list[str]


def _callback_url(settings: Settings, provider: str) -> str:
    # From BASE_URL, never from the request's Host header.
    return f"{settings.BASE_URL}{settings.API_STR}/oauth/{provider}/callback"


def _client(oauth: OAuth, provider: str) -> Any:
    if provider not in PROVIDERS:
        raise external_accounts.ProviderNotEnabled()
    client = oauth.create_client(provider)
    if client is None:
        raise external_accounts.ProviderNotEnabled()
    return client


@router.get("/providers", response_model=ProviderList)
async def list_providers(settings: SettingsDep) -> ProviderList:
    """The login providers enabled on this server (client id and secret configured).

    Returns
    -------
    ProviderList
        Provider names, for instance ``["github", "google"]``.
    """
    return ProviderList(providers=enabled_providers(settings))


async def _start(
    request: Request, settings: Settings, oauth: OAuth, provider: str, flow: dict[str, Any]
) -> Response:
    client = _client(oauth, provider)
    if flow.get("redirect_uri"):
        external_accounts.check_redirect_uri(settings, flow["redirect_uri"])
    state = secrets.token_urlsafe(32)
    keep_flow(request, provider, state, flow)
    return await client.authorize_redirect(request, _callback_url(settings, provider), state=state)


# Whatever the provider sends at the callback, these are what reading it can raise.
_UNUSABLE_ANSWER = (
    TimeoutError,  # OAUTH_PROVIDER_DEADLINE_SECONDS passed
    httpx.HTTPError,  # unreachable, an error status, a body too large
    ProviderAnswerInvalid,  # an answer that does not fit its typed shape
    AuthlibBaseError,  # Authlib refusing the token answer or the ID token
    JoseError,  # an ID token that cannot be decoded or verified
    ValueError,  # Authlib reading a token answer that is not JSON, or its expiry
    TypeError,  # ... or an expiry that is not a number
    KeyError,
)


async def _provider_answer(
    request: Request, settings: Settings, client: Any, provider: str
) -> tuple[dict[str, Any], ExternalProfile]:
    """Trade the code for a token and ask who signed in, all within the deadline."""
    try:
        async with asyncio.timeout(settings.OAUTH_PROVIDER_DEADLINE_SECONDS):
            try:
                token = check_token(await client.authorize_access_token(request))
            except MismatchingStateError:
                raise external_accounts.InvalidOAuthState() from None
            except OAuthError as error:
                # The provider's own refusal (``{"error": ...}``): the user or the code.
                raise external_accounts.OAuthFailed(
                    f"The provider refused: {error.error}"
                ) from None
            return token, await fetch_profile(client, provider, token)
    except _UNUSABLE_ANSWER as error:
        reason = str(error) if isinstance(error, ProviderAnswerInvalid) else type(error).__name__
        logger.warning("{} sign-in failed at the provider: {}", provider, reason)
        raise external_accounts.ProviderUnavailable() from None


@router.get(
    "/{provider}",
    response_class=RedirectResponse,
    status_code=status.HTTP_302_FOUND,
    responses={**_REDIRECT, **error_responses(400, 404, 422)},
)
async def oauth_login(
    provider: str,
    request: Request,
    settings: SettingsDep,
    oauth: OAuthDep,
    redirect_uri: RedirectUri = None,
) -> Response:
    """Start logging in with a provider: redirects to its consent page.

    Raises
    ------
    400
        ``INVALID_REDIRECT_URI``: not on BASE_URL's, FRONTEND_URL's or an allowed origin.
    404
        ``PROVIDER_NOT_ENABLED``.
    """
    return await _start(
        request, settings, oauth, provider, {"mode": "login", "redirect_uri": redirect_uri}
    )


@router.get(
    "/{provider}/link",
    response_class=RedirectResponse,
    status_code=status.HTTP_302_FOUND,
    responses={**_REDIRECT, **error_responses(400, 401, 403, 404, 422)},
)
async def oauth_link(
    provider: str,
    request: Request,
    auth: AuthDep,
    settings: SettingsDep,
    oauth: OAuthDep,
    redirect_uri: RedirectUri = None,
) -> Response:
    """Start linking a provider account to the signed-in user (any email).

    A linked account opens this one, so linking needs a session re-authenticated in
    the last minutes (POST /auth/reauthenticate first). The account's verified email
    is told which provider was linked.

    Raises
    ------
    401
        Not authenticated.
    403
        ``REAUTHENTICATION_REQUIRED``.
    404
        ``PROVIDER_NOT_ENABLED``.
    """
    require_fresh_session(settings, auth.session)
    flow = {"mode": "link", "session": auth.session.id, "redirect_uri": redirect_uri}
    return await _start(request, settings, oauth, provider, flow)


@router.get(
    "/{provider}/callback",
    response_model=TokenPair | OtpChallengeResponse | Message,
    responses={
        303: {"description": "To redirect_uri, with a one-time `code`"},
        **error_responses(400, 403, 404, 409, 422),
        **PROVIDER_FAILED,
    },
)
async def oauth_callback(
    provider: str,
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client_info: ClientDep,
    oauth: OAuthDep,
    keyring: KeyringDep,
) -> Any:
    """Where the provider sends the browser back; completes the login or the link.

    A linked account logs in; else a local account with the same verified email is
    linked; else a new account is created. With ``redirect_uri`` the answer is a
    redirect carrying a one-time ``code`` (tokens never travel in a URL); without,
    the login answer itself, as from /auth/login.

    Returns
    -------
    TokenPair or OtpChallengeResponse or Message
        The login answer, or a confirmation for a link.

    Raises
    ------
    400
        ``INVALID_STATE`` (missing, forged, expired or already used state) or
        ``OAUTH_FAILED``.
    403
        ``ACCOUNT_INACTIVE``, or ``REAUTHENTICATION_REQUIRED`` for a link whose
        session has ended or is no longer recently re-authenticated.
    409
        ``EMAIL_NOT_VERIFIED``, ``OAUTH_ACCOUNT_LINKED_TO_ANOTHER_USER``,
        ``OAUTH_ACCOUNT_ALREADY_LINKED``.
    502
        ``OAUTH_PROVIDER_ERROR``: the provider could not be reached, did not answer in
        full within OAUTH_PROVIDER_DEADLINE_SECONDS, sent a body over 1 MiB, or said
        something unusable (an id, an email or its verified flag of the wrong type or
        form). Nothing is stored then.
    """
    client = _client(oauth, provider)
    flow = await take_flow(request, db, provider)
    token, profile = await _provider_answer(request, settings, client, provider)
    return await finish_sign_in(db, settings, keyring, mailer, client_info, flow, profile, token)


async def take_flow(request: Request, db: AsyncSession, provider: str) -> dict[str, Any]:
    """The sign-in the callback completes, its ``state`` checked and used up (else
    InvalidOAuthState): before anything goes to the provider, so a replay stops here."""
    flow = request.session.pop(_SESSION_KEY, None)
    state = request.query_params.get("state", "")
    if (
        not flow
        or flow.get("provider") != provider
        or not isinstance(flow.get("state"), str)
        or not secrets.compare_digest(flow["state"].encode(), state.encode())
    ):
        raise external_accounts.InvalidOAuthState()
    await external_accounts.consume_state(db, flow["state"], flow.get("started_at"))
    return flow


def keep_flow(request: Request, provider: str, state: str, flow: dict[str, Any]) -> None:
    """Remember a started sign-in in the signed OAuth cookie, for its callback."""
    request.session[_SESSION_KEY] = {
        "provider": provider,
        "state": state,
        "started_at": now_epoch(),
        **flow,
    }


async def finish_sign_in(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    mailer: Mailer,
    client_info: ClientInfo,
    flow: dict[str, Any],
    profile: ExternalProfile,
    token: external_accounts.ProviderTokens,
) -> Any:
    """Log in, link or create (the account rules), then answer the browser."""
    if flow.get("mode") == "link":
        user = await external_accounts.link_account(
            db, settings, mailer, flow.get("session"), profile, token, client_info
        )
    else:
        user = await external_accounts.resolve_login(
            db, settings, mailer, profile, token, client_info
        )
    await external_accounts.adopt_picture(db, settings, user, profile, client_info)

    if flow.get("redirect_uri"):
        code = external_accounts.exchange_code(settings, user)
        separator = "&" if "?" in flow["redirect_uri"] else "?"
        target = f"{flow['redirect_uri']}{separator}{urlencode({'code': code})}"
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    if flow.get("mode") == "link":
        return Message(detail=f"{profile.provider} account linked")
    return await external_accounts.finish_login(db, settings, keyring, mailer, user, client_info)


@router.delete(
    "/{provider}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 409),
)
async def oauth_unlink(
    provider: str,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client_info: ClientDep,
) -> None:
    """Unlink the signed-in user's account of a provider; the verified email is told.

    Raises
    ------
    404
        ``OAUTH_ACCOUNT_NOT_LINKED``.
    409
        ``LAST_LOGIN_METHOD``: the account has no password, no other provider and no passkey.
    """
    await external_accounts.unlink(db, settings, mailer, user, provider, client_info)
