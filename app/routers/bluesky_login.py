"""Sign in with Bluesky (AT Protocol OAuth): the client's documents, sign-in, link,
callback and refresh. Unlinking is the other providers' ``DELETE /oauth/{provider}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import RedirectResponse

from app.core.atproto_oauth import client_metadata
from app.routers.deps import (
    AuthDep,
    BlueskyKeysDep,
    ClientDep,
    CurrentUser,
    KeyringDep,
    MailerDep,
    SessionDep,
    SettingsDep,
)
from app.routers.provider_login import (
    PROVIDER_FAILED,
    RedirectUri,
    finish_sign_in,
    keep_flow,
    take_flow,
)
from app.schemas.auth import Message, TokenPair
from app.schemas.bluesky import BlueskyAccountRead, BlueskyClientMetadata, JsonWebKeySet
from app.schemas.common import Text, error_responses
from app.schemas.otp import OtpChallengeResponse
from app.services import bluesky, external_accounts
from app.services.reauth import require_fresh_session

router = APIRouter(prefix="/oauth/bluesky", tags=["oauth"])

Handle = Annotated[
    Text,
    Query(
        min_length=1,
        max_length=2048,
        description="The Bluesky handle (`alice.bsky.social`) or DID (`did:plc:...`).",
    ),
]
_REDIRECT: dict[int | str, dict[str, Any]] = {
    302: {"description": "To the user's Bluesky authorization server"}
}


async def _start(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    keys: BlueskyKeysDep,
    handle: str,
    flow: dict[str, Any],
) -> Response:
    bluesky.require_enabled(settings)
    if flow.get("redirect_uri"):
        external_accounts.check_redirect_uri(settings, flow["redirect_uri"])
    started = await bluesky.start(db, settings, keys, handle)
    keep_flow(request, bluesky.PROVIDER, started.state, {**flow, "bluesky": started.sealed})
    return RedirectResponse(started.authorize_url, status_code=status.HTTP_302_FOUND)


@router.get(
    "/client-metadata.json", response_model=BlueskyClientMetadata, responses=error_responses(404)
)
async def bluesky_client_metadata(settings: SettingsDep) -> dict[str, Any]:
    """The client metadata document: its URL is this service's Bluesky client id.

    Authorization servers fetch it to learn the redirect URL, the scope, how the
    client authenticates (``private_key_jwt``, ES256) and where its keys are.

    Raises
    ------
    404
        ``PROVIDER_NOT_ENABLED``: BLUESKY_ENABLED is off.
    """
    bluesky.require_enabled(settings)
    return client_metadata(settings)


@router.get("/jwks.json", response_model=JsonWebKeySet, responses=error_responses(404))
async def bluesky_jwks(db: SessionDep, settings: SettingsDep, keys: BlueskyKeysDep) -> Any:
    """The public key that signs this service's client assertions (the ``jwks_uri``).

    Raises
    ------
    404
        ``PROVIDER_NOT_ENABLED``: BLUESKY_ENABLED is off.
    """
    bluesky.require_enabled(settings)
    key = await keys.get(db)
    return {"keys": [key.public_jwk()]}


@router.get(
    "/login",
    response_class=RedirectResponse,
    status_code=status.HTTP_302_FOUND,
    responses={**_REDIRECT, **error_responses(400, 404, 422), **PROVIDER_FAILED},
)
async def bluesky_login(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    keys: BlueskyKeysDep,
    handle: Handle,
    redirect_uri: RedirectUri = None,
) -> Response:
    """Start signing in with Bluesky: redirects to the user's authorization server.

    The handle is resolved (DNS ``_atproto`` record, else its HTTPS well-known) to a
    DID, the DID to its document, PDS and authorization server; the authorization
    request is pushed there (PAR, PKCE, DPoP, this client's signed assertion).

    Raises
    ------
    400
        ``INVALID_BLUESKY_HANDLE``, ``BLUESKY_IDENTITY_NOT_FOUND`` (nothing publishes
        this handle's DID, or its DID document does not name it back),
        ``INVALID_REDIRECT_URI``.
    404
        ``PROVIDER_NOT_ENABLED``.
    502
        ``OAUTH_PROVIDER_ERROR``: a server on the way could not be reached, is not
        allowed (not https, or on a non-public address), or refused the request.
    """
    flow = {"mode": "login", "redirect_uri": redirect_uri}
    return await _start(request, db, settings, keys, handle, flow)


@router.get(
    "/link",
    response_class=RedirectResponse,
    status_code=status.HTTP_302_FOUND,
    responses={**_REDIRECT, **error_responses(400, 401, 403, 404, 422), **PROVIDER_FAILED},
)
async def bluesky_link(
    request: Request,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    keys: BlueskyKeysDep,
    handle: Handle,
    redirect_uri: RedirectUri = None,
) -> Response:
    """Start linking a Bluesky account to the signed-in user.

    As for the other providers, the session must have been re-authenticated in the
    last minutes (POST /auth/reauthenticate first), and the account's verified email
    is told.

    Raises
    ------
    400
        ``INVALID_BLUESKY_HANDLE``, ``BLUESKY_IDENTITY_NOT_FOUND``, ``INVALID_REDIRECT_URI``.
    401
        Not authenticated.
    403
        ``REAUTHENTICATION_REQUIRED``.
    404
        ``PROVIDER_NOT_ENABLED``.
    502
        ``OAUTH_PROVIDER_ERROR``.
    """
    bluesky.require_enabled(settings)
    require_fresh_session(settings, auth.session)
    flow = {"mode": "link", "session": auth.session.id, "redirect_uri": redirect_uri}
    return await _start(request, db, settings, keys, handle, flow)


@router.get(
    "/callback",
    response_model=TokenPair | OtpChallengeResponse | Message,
    responses={
        303: {"description": "To redirect_uri, with a one-time `code`"},
        **error_responses(400, 403, 404, 409, 422),
        **PROVIDER_FAILED,
    },
)
async def bluesky_callback(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client_info: ClientDep,
    keys: BlueskyKeysDep,
    keyring: KeyringDep,
) -> Any:
    """Where the Bluesky authorization server sends the browser back.

    The ``state`` must be this browser's sign-in's, unused, and ``iss`` the server it
    went to; the code is traded for DPoP-bound tokens, whose ``sub`` must be the DID
    that was resolved. Then, as for the other providers: a linked account logs in,
    else a new account is created (Bluesky gives no email); or the link completes.

    Returns
    -------
    TokenPair or OtpChallengeResponse or Message
        The login answer, or a confirmation for a link.

    Raises
    ------
    400
        ``INVALID_STATE`` (missing, forged, expired or used state), ``OAUTH_FAILED``
        (the user or the server refused; the answer came from another server).
    403
        ``ACCOUNT_INACTIVE``, ``REAUTHENTICATION_REQUIRED`` (a link whose session ended).
    404
        ``PROVIDER_NOT_ENABLED``.
    409
        ``OAUTH_ACCOUNT_LINKED_TO_ANOTHER_USER``, ``OAUTH_ACCOUNT_ALREADY_LINKED``.
    502
        ``OAUTH_PROVIDER_ERROR``: the server failed, refused this client, or answered
        for another account than the one resolved. Nothing is stored then.
    """
    bluesky.require_enabled(settings)
    flow = await take_flow(request, db, bluesky.PROVIDER)
    profile, tokens = await bluesky.complete(
        db, settings, keys, flow.get("bluesky"), request.query_params
    )
    return await finish_sign_in(db, settings, keyring, mailer, client_info, flow, profile, tokens)


@router.post(
    "/refresh",
    response_model=BlueskyAccountRead,
    responses={**error_responses(401, 404, 409), **PROVIDER_FAILED},
)
async def bluesky_refresh(
    user: CurrentUser, db: SessionDep, settings: SettingsDep, keys: BlueskyKeysDep
) -> Any:
    """Refresh the signed-in user's Bluesky session, and read their profile again.

    New tokens come from the authorization server (refresh token, DPoP proof, client
    assertion); the display name and picture URL of the link follow the PDS.

    Returns
    -------
    BlueskyAccountRead
        The account as the PDS shows it now, and when the new token expires.

    Raises
    ------
    404
        ``PROVIDER_NOT_ENABLED``, ``OAUTH_ACCOUNT_NOT_LINKED``.
    409
        ``BLUESKY_SIGN_IN_AGAIN``: Bluesky ended the session; sign in with it again.
    502
        ``OAUTH_PROVIDER_ERROR``.
    """
    return await bluesky.refresh(db, settings, keys, user)
