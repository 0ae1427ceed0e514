"""Authentication: sign-up, login, sessions, tokens, passwords, email verification.

The second login step and the two-factor settings are :mod:`app.routers.two_factor`'s.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.routers import two_factor
from app.routers.deps import (
    AuthDep,
    ClientDep,
    GuardDep,
    KeyringDep,
    MailerDep,
    ReaderAuth,
    SessionDep,
    SettingsDep,
)
from app.routers.device_cookie import remember_device
from app.schemas.auth import (
    EmailRequest,
    ExchangeRequest,
    LinkTokenRequest,
    LoginForm,
    LoginRequest,
    Message,
    PasswordChangeRequest,
    PasswordResetRequest,
    ReauthRequest,
    ReauthResponse,
    RefreshRequest,
    ResetLinkInfo,
    SessionInfo,
    SessionList,
    SignupRequest,
    TokenPair,
    TokenValidation,
)
from app.schemas.common import Text, error_responses
from app.schemas.otp import OtpChallengeResponse
from app.schemas.users import UserPrivate, private_view
from app.services import accounts, external_accounts
from app.services import auth as auth_service
from app.services import sessions as session_service

router = APIRouter(prefix="/auth", tags=["auth"])


_Model = TypeVar("_Model", bound=BaseModel)


def _validated(model: type[_Model], raw: object) -> _Model:
    """``raw`` as ``model``; a 422 naming each field at fault (under ``body``) else."""
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**problem, "loc": ("body", *problem["loc"])}
                for problem in error.errors(include_url=False, include_input=False)
            ]
        ) from None


async def login_credentials(request: Request) -> LoginRequest | LoginForm:
    """The login's credentials: a JSON body, or else the OAuth2 password form.

    The form is read as FastAPI reads a form parameter (an empty field is a missing
    one), so Swagger's "Authorize" and existing clients see no difference.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):  # as FastAPI reads JSON bodies elsewhere
        try:
            raw = await request.json()
        except ValueError:  # not JSON, or not UTF-8
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "JSON decode error", "type": "json_invalid"}]
            ) from None
        return _validated(LoginRequest, raw)
    async with request.form() as form:
        fields = {name: value for name, value in form.items() if value != ""}
        return _validated(LoginForm, fields)


#: Both bodies the login takes, for the API document (the route reads the body itself).
LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": LoginForm.model_json_schema()},
            "application/json": {"schema": LoginRequest.model_json_schema()},
        },
    }
}


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPrivate,
    responses=error_responses(409, 422),
)
async def signup(
    body: SignupRequest,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> UserPrivate:
    """Create a local account.

    The username is 1-31 characters of ``a-z``, ``0-9`` and ``_``; the display name,
    when given, is the username with capitals and spaces for underscores. The email
    must be free (case-insensitive) and, when email is enabled, is sent a
    verification link. The password must be 8-128 characters, not a common one, and
    (when PASSWORD_BREACH_CHECK_URL is set) not one known from a data breach.

    Returns
    -------
    UserPrivate
        The new account, as its owner sees it.

    Raises
    ------
    409
        ``USERNAME_TAKEN`` or ``EMAIL_TAKEN``.
    422
        A rule is broken; ``errors[].type`` names it (``username_invalid``,
        ``display_name_mismatch``, ``email_invalid``, ``password_too_short``,
        ``password_too_common``, ``password_breached``, ...).
    """
    user = await accounts.signup(
        db,
        settings,
        mailer,
        username=body.username,
        email=body.email,
        password=body.password,
        display_name=body.display_name,
        description=body.description,
        client=client,
    )
    return private_view(user, settings)


@router.post(
    "/login",
    response_model=TokenPair | OtpChallengeResponse,
    responses=error_responses(401, 422, 429),
    openapi_extra=LOGIN_BODY,
)
async def login(
    credentials: Annotated[LoginRequest | LoginForm, Depends(login_credentials)],
    response: Response,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
    keyring: KeyringDep,
) -> TokenPair | OtpChallengeResponse:
    """Log in with a username or email and a password.

    The body is JSON, ``{"username": ..., "password": ...}`` (web apps), or the
    OAuth2 password form (``application/x-www-form-urlencoded``), which Swagger's
    "Authorize" button sends (for accounts without 2FA). Both take the same path: the
    same attempt limits, device token and second step.

    Returns
    -------
    TokenPair
        ``access_token`` (a JWT for the ``Authorization: Bearer`` header),
        ``refresh_token``, ``token_type`` and ``expires_in`` (seconds).
    OtpChallengeResponse
        When the account has two-factor authentication: ``otp_required``,
        ``otp_method`` and ``otp_token``; send the token and a code to
        ``/auth/otp/verify``. With ``email``, the code is mailed now.

    Raises
    ------
    401
        ``INVALID_CREDENTIALS``: the same answer for an unknown account, a wrong
        password and an inactive account.
    422
        ``VALIDATION_ERROR``: a field is missing or empty; ``errors[].loc`` names it.
    429
        ``RATE_LIMITED`` (too many attempts from this address, or failures for this
        account), or ``OTP_THROTTLED`` (too many wrong codes lately).
    """
    answer = await auth_service.login(
        db, settings, keyring, mailer, guard, credentials.username, credentials.password, client
    )
    remember_device(response, settings, answer)
    return answer


# The two-factor routes finish the login above: included here, they keep that place
# in routing and in the API document.
router.include_router(two_factor.router)


@router.post("/refresh", response_model=TokenPair, responses=error_responses(401, 422))
async def refresh(
    body: RefreshRequest,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
    keyring: KeyringDep,
) -> TokenPair:
    """Trade a refresh token for a new token pair.

    Each refresh token works once. Presenting any token that its session already
    traded, however long ago, ends that session: whoever holds any of its tokens
    must log in again.

    Returns
    -------
    TokenPair
        A new access token and a new refresh token.

    Raises
    ------
    401
        ``INVALID_REFRESH_TOKEN``, or ``REFRESH_TOKEN_REUSED`` (the session is ended).
    """
    return await session_service.refresh(db, settings, keyring, body.refresh_token, client)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401),
)
async def logout(auth: AuthDep, db: SessionDep, client: ClientDep) -> None:
    """End the current session: its access and refresh tokens stop working at once.

    Raises
    ------
    401
        Not authenticated.
    """
    await session_service.logout(db, auth, client)


@router.post(
    "/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401),
)
async def logout_all(auth: AuthDep, db: SessionDep, client: ClientDep) -> None:
    """End every session of the current user, on every device, this one included.

    Raises
    ------
    401
        Not authenticated.
    """
    await session_service.logout_all(db, auth, client)


@router.get("/sessions", response_model=SessionList, responses=error_responses(401))
async def list_sessions(auth: ReaderAuth, db: SessionDep) -> SessionList:
    """List the current user's open sessions, newest first.

    Returns
    -------
    SessionList
        Each session's id, times, user agent and address; ``current`` marks this one.

    Raises
    ------
    401
        Not authenticated.
    """
    sessions = await session_service.list_sessions(db, auth)
    return SessionList(
        items=[
            SessionInfo.model_validate(session).model_copy(update={"current": current})
            for session, current in sessions
        ]
    )


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 422),
)
async def revoke_session(
    session_id: UUID, auth: AuthDep, db: SessionDep, client: ClientDep
) -> None:
    """End one of the current user's sessions (log out another device).

    Raises
    ------
    401
        Not authenticated.
    404
        ``SESSION_NOT_FOUND``: no open session of yours has this id.
    """
    await session_service.revoke_own_session(db, auth, str(session_id), client)


@router.get("/token/validate", response_model=TokenValidation, responses=error_responses(401))
async def validate_token(auth: ReaderAuth) -> TokenValidation:
    """Check an access token.

    Returns
    -------
    TokenValidation
        The token's user and session, and when it expires.

    Raises
    ------
    401
        ``INVALID_TOKEN``: forged, expired, or its session has ended.
    """
    return TokenValidation(
        uuid=auth.user.uuid,
        username=auth.user.username,
        session_id=auth.session.id,
        expires_at=auth.claims.expires_at,
    )


@router.post(
    "/password/change",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 401, 403, 422, 429),
)
async def change_password(
    body: PasswordChangeRequest,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> None:
    """Change the current user's password. Every session ends; log in again.

    ``current_password`` confirms it is you (an account without a password sets its
    first one after a recent re-authentication: a provider login or a 2FA code).
    Wrong passwords count like failed logins. The account's verified email is told.

    Raises
    ------
    400
        ``WRONG_PASSWORD``: the current password is incorrect.
    401
        Not authenticated.
    403
        ``REAUTHENTICATION_REQUIRED``: no password and no recent re-authentication.
    422
        The new password breaks the policy; ``errors[].type`` names the rule
        (``password_too_common``, ``password_breached``, ...).
    429
        ``RATE_LIMITED``: too many wrong passwords for this account lately.
    """
    await auth_service.change_password(
        db, settings, mailer, guard, auth, body.current_password, body.new_password, client
    )


@router.post(
    "/password/forgot",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(422, 429),
)
async def forgot_password(
    body: EmailRequest,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> Message:
    """Ask for a password-reset link by email.

    The answer is the same whether or not an account has this email. A link is sent
    only to a verified email; it opens the front end's FRONTEND_RESET_PATH page (or
    the service's own ``/account/reset``), works once, for one hour, and the mail
    names the providers linked to the account.

    Returns
    -------
    Message
        An acknowledgement.

    Raises
    ------
    429
        ``RATE_LIMITED``: too many requests for this email or from this address.
    """
    await auth_service.request_password_reset(db, settings, mailer, guard, body.email, client)
    return Message(detail="If an account has this email, a reset link is on its way")


@router.post(
    "/password/reset/info", response_model=ResetLinkInfo, responses=error_responses(400, 422)
)
async def read_reset_link(
    body: LinkTokenRequest, db: SessionDep, settings: SettingsDep
) -> ResetLinkInfo:
    """What a reset page shows before the new password: the linked providers.

    The token stays unused. A provider account linked by someone else would still
    open the account after a reset: the page lets the owner unlink it
    (``unlink_providers`` of /auth/password/reset).

    Returns
    -------
    ResetLinkInfo
        The providers whose accounts are linked.

    Raises
    ------
    400
        ``INVALID_LINK``.
    """
    providers = await auth_service.read_reset_link(db, settings, body.token)
    return ResetLinkInfo(linked_providers=providers)


@router.post(
    "/password/reset",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 422),
)
async def reset_password(
    body: PasswordResetRequest,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> None:
    """Set a new password with the token from a reset email. Every session ends.

    ``unlink_providers`` unlinks those providers' accounts at the same time. The
    account's email is told of the reset.

    Raises
    ------
    400
        ``INVALID_LINK``: the token is forged, expired, already used, or the password
        changed since it was sent.
    422
        The new password breaks the policy; ``errors[].type`` names the rule
        (``password_too_common``, ``password_breached``, ...).
    """
    await auth_service.reset_password(
        db, settings, mailer, body.token, body.new_password, body.unlink_providers, client
    )


@router.get("/email/verify", response_model=Message, responses=error_responses(400, 422))
async def verify_email(
    token: Annotated[Text, Query(min_length=1, max_length=1024)],
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> Message:
    """Verify an email address with a token in the query (links mailed by earlier
    versions; mails now link to a page that uses the POST form).

    Returns
    -------
    Message
        Confirmation.

    Raises
    ------
    400
        ``INVALID_LINK``: forged, expired, already used, or for an older address.
    """
    await auth_service.verify_email(db, settings, token, client)
    return Message(detail="Email verified")


@router.post("/email/verify", response_model=Message, responses=error_responses(400, 422))
async def verify_email_by_post(
    body: LinkTokenRequest, db: SessionDep, settings: SettingsDep, client: ClientDep
) -> Message:
    """Verify an email address with the token of the link mailed to it, in the body.

    What the page opened by the mailed link sends (the front end's
    FRONTEND_VERIFY_PATH, or the service's own ``/account/verify``): the token stays
    out of URLs, so out of browser histories and proxies' logs. The GET form (token
    in the query) keeps working.

    Returns
    -------
    Message
        Confirmation.

    Raises
    ------
    400
        ``INVALID_LINK``: forged, expired, already used, or for an older address.
    """
    await auth_service.verify_email(db, settings, body.token, client)
    return Message(detail="Email verified")


@router.post(
    "/email/verify/request",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(422, 429),
)
async def request_verification_email(
    body: EmailRequest,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> Message:
    """Ask for a new verification link. The answer never tells whether the account exists.

    Limited per email and per address like /auth/password/forgot.

    Returns
    -------
    Message
        An acknowledgement.

    Raises
    ------
    429
        ``RATE_LIMITED``: too many requests for this email or from this address.
    """
    await auth_service.request_verification_email(db, settings, mailer, guard, body.email, client)
    return Message(detail="If an unverified account has this email, a link is on its way")


@router.post(
    "/email/change/confirm", response_model=Message, responses=error_responses(400, 409, 422)
)
async def confirm_email_change(
    body: LinkTokenRequest, db: SessionDep, settings: SettingsDep, client: ClientDep
) -> Message:
    """Confirm a new email with the token mailed to it: it becomes the account's email.

    The mail links to a page (the front end's FRONTEND_CONFIRM_EMAIL_CHANGE_PATH, or
    the service's own ``/account/confirm-email-change``) that sends this request
    when the user clicks (a POST, so that a mail scanner opening the link confirms
    nothing). A password change or reset since the request, a
    cancelled or replaced change, and a banned account all make the token invalid.

    Returns
    -------
    Message
        Confirmation.

    Raises
    ------
    400
        ``INVALID_LINK``: forged, expired, already used, or no longer applies.
    409
        ``EMAIL_TAKEN``: another account took this email meanwhile.
    """
    await auth_service.confirm_email_change(db, settings, body.token, client)
    return Message(detail="Email changed")


@router.post(
    "/email/change/undo",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 409, 422),
)
async def undo_email_change(
    body: LinkTokenRequest,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> None:
    """Refuse an email change with the token mailed to the old address.

    A pending change is cancelled; a change already confirmed is reverted (the old
    address stays reserved to the account for as long as this works). Either way
    every session ends and the password is cleared: whoever asked for the change
    knew it or held a fresh session. A reset link is mailed to the old address at
    once. The mail links to a page (the front end's FRONTEND_UNDO_EMAIL_CHANGE_PATH,
    or the service's own ``/account/undo-email-change``) that sends this request when
    the user clicks.

    Raises
    ------
    400
        ``INVALID_LINK``: forged, expired, already used, or the email changed again.
    409
        ``EMAIL_TAKEN``: another account holds the old address and has verified it.
    """
    await auth_service.undo_email_change(db, settings, mailer, body.token, client)


@router.post(
    "/reauthenticate",
    response_model=ReauthResponse,
    responses=error_responses(400, 401, 422, 429),
)
async def reauthenticate(
    body: ReauthRequest,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    guard: GuardDep,
    client: ClientDep,
) -> ReauthResponse:
    """Confirm it is you, so that this session may make sensitive changes for a while.

    Changing the email or password, two-factor settings, linking a provider and
    deleting an account need a proof of identity: the current password in the
    request, or a session re-authenticated within REAUTH_WINDOW_SECONDS. Accounts
    with a password send ``password``; accounts without one send a two-factor
    ``code`` (email: ask /auth/reauthenticate/code first), or sign in again with
    their provider (that login counts). Wrong passwords count like failed logins.

    Returns
    -------
    ReauthResponse
        Until when the session counts as re-authenticated.

    Raises
    ------
    400
        ``WRONG_PASSWORD``, ``SIGN_IN_AGAIN`` (no password nor 2FA: sign in with the
        provider), ``NO_PENDING_CODE``.
    401
        ``INVALID_OTP_CODE``, or not authenticated.
    422
        ``PROOF_REQUIRED``: the password (or code) this account needs is missing.
    429
        ``RATE_LIMITED`` or ``OTP_THROTTLED``.
    """
    until = await auth_service.reauthenticate(
        db, settings, guard, auth, body.password, body.code, client
    )
    return ReauthResponse(reauthenticated_until=until)


@router.post(
    "/reauthenticate/code",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(401, 409, 429),
)
async def send_reauthentication_code(
    auth: AuthDep, db: SessionDep, settings: SettingsDep, mailer: MailerDep, guard: GuardDep
) -> Message:
    """Mail a code for /auth/reauthenticate (accounts without a password, with email
    two-factor codes).

    Returns
    -------
    Message
        An acknowledgement.

    Raises
    ------
    409
        ``USE_PASSWORD`` (an account with a password re-authenticates with it),
        ``OTP_NOT_ENABLED``, or ``OTP_METHOD_MISMATCH`` for authenticator users.
    429
        ``RATE_LIMITED``: too many codes mailed to this account lately.
    """
    await auth_service.send_reauthentication_code(db, settings, mailer, guard, auth)
    return Message(detail="A code was sent by email")


@router.post(
    "/token/exchange",
    response_model=TokenPair | OtpChallengeResponse,
    responses=error_responses(400, 403, 422),
)
async def exchange_token(
    body: ExchangeRequest,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
    keyring: KeyringDep,
) -> TokenPair | OtpChallengeResponse:
    """Trade the one-time ``code`` of a third-party login redirect for the login answer.

    The code works once, for two minutes.

    Returns
    -------
    TokenPair or OtpChallengeResponse
        As from /auth/login.

    Raises
    ------
    400
        ``INVALID_CODE``.
    403
        ``ACCOUNT_INACTIVE``.
    """
    return await external_accounts.exchange(db, settings, keyring, mailer, body.code, client)
