"""Two-factor authentication: the second login step, turning it on and off.

The router has no prefix of its own: :mod:`app.routers.auth` includes it right after
the login route, under ``/auth``, with the ``auth`` tag. The rules are
:mod:`app.services.two_factor`'s.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.routers.deps import (
    AuthDep,
    ClientDep,
    GuardDep,
    KeyringDep,
    MailerDep,
    Reader,
    SessionDep,
    SettingsDep,
)
from app.routers.device_cookie import remember_device
from app.schemas.auth import Message, TokenPair
from app.schemas.common import error_responses
from app.schemas.otp import (
    OtpDisableRequest,
    OtpEnableRequest,
    OtpSetupRequest,
    OtpSetupResponse,
    OtpVerifyRequest,
    RecoveryCodes,
    RecoveryCodesLeft,
    RecoveryCodesRequest,
    RecoveryCodeVerifyRequest,
)
from app.services import two_factor

router = APIRouter()


@router.post("/otp/verify", response_model=TokenPair, responses=error_responses(401, 422, 429))
async def verify_otp(
    body: OtpVerifyRequest,
    response: Response,
    db: SessionDep,
    settings: SettingsDep,
    guard: GuardDep,
    client: ClientDep,
    keyring: KeyringDep,
) -> TokenPair:
    """Finish a two-factor login with the ``otp_token`` from /auth/login and a code.

    A code works once; an authenticator code may be one step early or late. After
    five wrong codes the pending login is dead (log in again), and after ten wrong
    codes in 15 minutes the account's codes are refused for a while.

    Returns
    -------
    TokenPair
        The same answer as a login without 2FA.

    Raises
    ------
    401
        ``INVALID_OTP_CODE`` (wrong or reused code) or ``INVALID_OTP_TOKEN`` (the
        pending login expired, failed too often, or the token is not one).
    429
        ``OTP_THROTTLED`` or ``RATE_LIMITED``, with ``Retry-After``.
    """
    answer = await two_factor.verify_login(
        db, settings, keyring, guard, body.otp_token, body.code, client
    )
    remember_device(response, settings, answer)
    return answer


@router.post(
    "/otp/recovery-codes/verify",
    response_model=TokenPair,
    responses=error_responses(401, 422, 429),
)
async def verify_recovery_code(
    body: RecoveryCodeVerifyRequest,
    response: Response,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
    keyring: KeyringDep,
) -> TokenPair:
    """Finish a two-factor login with a recovery code instead of a code.

    For when the authenticator or the mailbox is out of reach: send the ``otp_token``
    from /auth/login and one of the recovery codes handed out when two-factor
    authentication was turned on (case, dashes and spaces do not matter). Each code
    works once; the account's verified email is told, with how many are left. A wrong
    recovery code counts as a wrong code, under the same limits as /auth/otp/verify.

    Returns
    -------
    TokenPair
        The same answer as a login without 2FA.

    Raises
    ------
    401
        ``INVALID_OTP_CODE`` (wrong or used recovery code) or ``INVALID_OTP_TOKEN``
        (the pending login expired, failed too often, or the token is not one).
    422
        ``VALIDATION_ERROR``: the code is empty, too long, or has characters no code has.
    429
        ``OTP_THROTTLED`` or ``RATE_LIMITED``, with ``Retry-After``.
    """
    answer = await two_factor.verify_login_with_recovery_code(
        db, settings, keyring, mailer, guard, body.otp_token, body.recovery_code, client
    )
    remember_device(response, settings, answer)
    return answer


@router.post(
    "/otp/setup",
    response_model=OtpSetupResponse,
    responses=error_responses(400, 401, 403, 409, 422, 429),
)
async def setup_otp(
    body: OtpSetupRequest,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> OtpSetupResponse:
    """Start turning on two-factor authentication (a re-authentication confirms it is you).

    Send ``password``, or leave it out when this session was re-authenticated in
    the last minutes (see /auth/reauthenticate).

    ``authenticator``: a new secret, as an ``otpauth://`` URI and a QR code (PNG,
    base64) to scan. ``email``: a code is mailed. Either way, confirm with a code at
    /auth/otp/enable; nothing changes before that.

    Returns
    -------
    OtpSetupResponse
        The method, and for an authenticator the URI and QR code.

    Raises
    ------
    400
        ``WRONG_PASSWORD``, or ``EMAIL_DISABLED`` (email codes need email).
    403
        ``REAUTHENTICATION_REQUIRED``: no password and no recent re-authentication.
    409
        ``OTP_ALREADY_ENABLED``.
    429
        ``RATE_LIMITED``: too many wrong passwords for this account lately.
    """
    return await two_factor.setup(
        db, settings, mailer, guard, auth, body.method, body.password, client
    )


@router.post(
    "/otp/enable",
    response_model=RecoveryCodes,
    responses=error_responses(400, 401, 409, 422, 429),
)
async def enable_otp(
    body: OtpEnableRequest,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> RecoveryCodes:
    """Turn on two-factor authentication with a valid code. Other sessions end, and the
    account's verified email is told.

    Returns
    -------
    RecoveryCodes
        Ten single-use recovery codes, shown this once: each can finish one sign-in
        instead of a code (/auth/otp/recovery-codes/verify).

    Raises
    ------
    400
        ``NO_PENDING_CODE``: /auth/otp/setup was not called first.
    401
        ``INVALID_OTP_CODE``, or no valid access token.
    409
        ``OTP_ALREADY_ENABLED``.
    422
        ``VALIDATION_ERROR``: an unknown method or a malformed code.
    429
        ``OTP_THROTTLED``.
    """
    codes = await two_factor.enable(db, settings, mailer, auth, body.method, body.code, client)
    return RecoveryCodes(recovery_codes=codes)


@router.get(
    "/otp/recovery-codes",
    response_model=RecoveryCodesLeft,
    responses=error_responses(401),
)
async def count_recovery_codes(user: Reader, db: SessionDep) -> RecoveryCodesLeft:
    """How many recovery codes the caller has left (the codes themselves are never
    shown again).

    Returns
    -------
    RecoveryCodesLeft
        ``remaining``: unused codes; 0 when two-factor authentication is off.

    Raises
    ------
    401
        No valid access token.
    """
    return RecoveryCodesLeft(remaining=await two_factor.recovery_codes_left(db, user))


@router.post(
    "/otp/recovery-codes",
    response_model=RecoveryCodes,
    responses=error_responses(400, 401, 403, 409, 422, 429),
)
async def regenerate_recovery_codes(
    body: RecoveryCodesRequest,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> RecoveryCodes:
    """Make ten new recovery codes; the old ones stop working at once.

    Send ``password``, or leave it out when this session was re-authenticated in the
    last minutes (see /auth/reauthenticate). The account's verified email is told.

    Returns
    -------
    RecoveryCodes
        The new codes, shown this once.

    Raises
    ------
    400
        ``WRONG_PASSWORD``.
    401
        No valid access token.
    403
        ``REAUTHENTICATION_REQUIRED``: no password and no recent re-authentication.
    409
        ``OTP_NOT_ENABLED``: recovery codes come with two-factor authentication.
    422
        ``VALIDATION_ERROR``: a malformed body.
    429
        ``RATE_LIMITED``: too many wrong passwords for this account lately.
    """
    codes = await two_factor.regenerate_recovery_codes(
        db, settings, mailer, guard, auth, body.password, client
    )
    return RecoveryCodes(recovery_codes=codes)


@router.post(
    "/otp/disable/code",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(401, 409, 429),
)
async def send_otp_disable_code(
    auth: AuthDep, db: SessionDep, settings: SettingsDep, mailer: MailerDep, guard: GuardDep
) -> Message:
    """Mail a code that confirms turning email two-factor authentication off.

    Returns
    -------
    Message
        An acknowledgement.

    Raises
    ------
    409
        ``OTP_NOT_ENABLED``, or ``OTP_METHOD_MISMATCH`` for authenticator users (use
        a code from the app).
    429
        ``RATE_LIMITED``: too many codes mailed to this account lately.
    """
    await two_factor.send_code(db, settings, mailer, guard, auth, "disable")
    return Message(detail="A code was sent by email")


@router.post(
    "/otp/disable",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 401, 403, 409, 422, 429),
)
async def disable_otp(
    body: OtpDisableRequest,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> None:
    """Turn off two-factor authentication with a re-authentication and a current code.

    Send ``password`` (or leave it out after a recent re-authentication) and a code,
    or, when the authenticator or the mailbox is lost, a ``recovery_code`` instead of
    the code. The recovery codes are deleted. Other sessions end, and the account's
    verified email is told.

    Raises
    ------
    400
        ``WRONG_PASSWORD``, or ``NO_PENDING_CODE`` (email: ask /auth/otp/disable/code).
    401
        ``INVALID_OTP_CODE`` (a wrong code or recovery code).
    403
        ``REAUTHENTICATION_REQUIRED``.
    409
        ``OTP_NOT_ENABLED``.
    422
        ``VALIDATION_ERROR``: neither or both of ``code`` and ``recovery_code``.
    429
        ``OTP_THROTTLED`` or ``RATE_LIMITED``.
    """
    await two_factor.disable(
        db,
        settings,
        mailer,
        guard,
        auth,
        body.password,
        body.code,
        client,
        recovery_code=body.recovery_code,
    )
