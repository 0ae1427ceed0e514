"""Two-factor authentication: enrolment, the second login step, replay and guessing limits.

Every code is checked against an ``otp_challenge`` row: a pending login (named by
the 2FA-pending token), an enrolment or a disabling. A challenge is used at most
once (a conditional UPDATE, so parallel submissions of one code succeed once), an
authenticator code's time step must be later than the last one used, and a
challenge dies after ``MAX_FAILED_ATTEMPTS`` wrong codes. Across challenges an
account gets ``ACCOUNT_FAILURE_LIMIT`` wrong codes per ``ACCOUNT_FAILURE_WINDOW_SECONDS``
before every code is refused with 429.

Turning 2FA on hands out recovery codes (:mod:`app.services.recovery_codes`): one can
finish a pending login instead of the code, once, under the same limits (a wrong
recovery code is a wrong code). :func:`reset` turns 2FA off and deletes them.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Literal, NoReturn, TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.auth_cache import bulk_write
from app.core.authentication import Auth
from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.database import rows_matched
from app.core.email import Mailer
from app.core.errors import AppError, Conflict, Unauthorized
from app.core.one_time_codes import (
    email_code_hash,
    matching_timestep,
    new_email_code,
    new_otp_secret,
    provisioning_uri,
    qr_png,
)
from app.core.security import TokenError, create_token, decode_token, secrets_match
from app.core.signing_keys import Keyring
from app.models import OtpChallenge, User, new_uuid, now_epoch
from app.schemas.auth import TokenPair
from app.schemas.otp import OtpChallengeResponse, OtpSetupResponse
from app.services import recovery_codes
from app.services.context import ClientInfo
from app.services.devices import new_device_token
from app.services.history import record_event
from app.services.notices import send_security_notice
from app.services.reauth import require_recent_auth
from app.services.sessions import revoke_sessions, start_session

OtpMethod = Literal["authenticator", "email"]
T = TypeVar("T")

#: Wrong codes after which a challenge (a pending login, say) is dead.
MAX_FAILED_ATTEMPTS = 5
#: Wrong codes an account may get in a window before every code is refused.
ACCOUNT_FAILURE_LIMIT = 10
ACCOUNT_FAILURE_WINDOW_SECONDS = 900
#: How long an authenticator login may wait for its code.
AUTHENTICATOR_CHALLENGE_SECONDS = 300
OTP_PENDING_TOKEN = "otp_pending"
#: The ``method`` of a challenge answered with a recovery code, and of its failures.
RECOVERY_CODE_METHOD = "recovery_code"


class InvalidOtpToken(Unauthorized):
    """The 2FA-pending token is forged, expired, or its login is over."""

    code = "INVALID_OTP_TOKEN"
    detail = "This sign-in has expired or is invalid; log in again"


class InvalidOtpCode(AppError):
    """A wrong, reused or malformed code."""

    status_code = 401
    code = "INVALID_OTP_CODE"
    detail = "Incorrect or already used code"


class OtpThrottled(AppError):
    """Too many wrong codes for this account lately."""

    status_code = 429
    code = "OTP_THROTTLED"
    detail = "Too many wrong codes; try again later"


class OtpAlreadyEnabled(Conflict):
    """Two-factor authentication is already on."""

    code = "OTP_ALREADY_ENABLED"
    detail = "Two-factor authentication is already enabled; disable it first"


class OtpNotEnabled(Conflict):
    """Two-factor authentication is off."""

    code = "OTP_NOT_ENABLED"
    detail = "Two-factor authentication is not enabled"


class OtpMethodMismatch(Conflict):
    """The request is for another method than the account's."""

    code = "OTP_METHOD_MISMATCH"
    detail = "This account uses another two-factor method"


class EmailDisabled(AppError):
    """Email codes need EMAIL_METHOD to be set."""

    status_code = 400
    code = "EMAIL_DISABLED"
    detail = "Email is not enabled on this server; use an authenticator app"


class NoPendingCode(AppError):
    """An email code was expected but none was requested."""

    status_code = 400
    code = "NO_PENDING_CODE"
    detail = "Request a code first"


# Challenges ----------------------------------------------------------------------------


async def _new_challenge(
    db: AsyncSession, settings: Settings, user: User, purpose: str, method: str
) -> tuple[OtpChallenge, str | None]:
    """Open a challenge (the caller commits); for email, also its code, to mail after."""
    now = now_epoch()
    if method == "email":
        # A new code replaces the previous one; the old challenge's failures still count.
        await db.execute(
            update(OtpChallenge)
            .where(
                OtpChallenge.user_uuid == user.uuid,
                OtpChallenge.purpose == purpose,
                OtpChallenge.used_at.is_(None),
            )
            .values(used_at=now)
        )
    lifetime = settings.OTP_EMAIL_INTERVAL if method == "email" else AUTHENTICATOR_CHALLENGE_SECONDS
    challenge = OtpChallenge(
        id=new_uuid(),
        user_uuid=user.uuid,
        purpose=purpose,
        method=method,
        failed_attempts=0,
        created_at=now,
        expires_at=now + lifetime,
    )
    code = None
    if method == "email":
        code = new_email_code(settings)
        challenge.code_hash = email_code_hash(settings.JWT_SECRET_KEY, challenge.id, code)
    db.add(challenge)
    return challenge, code


def _mail_code(
    settings: Settings, mailer: Mailer, user: User, purpose: str, code: str | None
) -> None:
    if code is None:
        return
    mailer.send_later(
        mailer.render(
            "otp_code",
            to=user.email,
            subject=f"Your {settings.PROJECT_NAME} code",
            display_name=user.display_name,
            code=code,
            valid_minutes=max(1, settings.OTP_EMAIL_INTERVAL // 60),
            purpose=purpose,
        )
    )


async def _check_throttle(
    db: AsyncSession, user_uuid: str, *, counting_this_one: bool = False
) -> None:
    """OtpThrottled when the account had ACCOUNT_FAILURE_LIMIT wrong codes lately
    (``counting_this_one``: the attempt being made is among the counts already)."""
    since = now_epoch() - ACCOUNT_FAILURE_WINDOW_SECONDS
    failures, oldest = (
        await db.execute(
            select(
                func.coalesce(func.sum(OtpChallenge.failed_attempts), 0),
                func.min(OtpChallenge.created_at),
            ).where(
                OtpChallenge.user_uuid == user_uuid,
                OtpChallenge.created_at >= since,
                OtpChallenge.failed_attempts > 0,
            )
        )
    ).one()
    if failures > ACCOUNT_FAILURE_LIMIT or (
        failures == ACCOUNT_FAILURE_LIMIT and not counting_this_one
    ):
        retry_after = max(1, (oldest or since) + ACCOUNT_FAILURE_WINDOW_SECONDS - now_epoch())
        raise OtpThrottled(headers={"Retry-After": str(retry_after)})


async def _count_attempt(db: AsyncSession, challenge_id: str, user_uuid: str) -> None:
    """Count an attempt on the challenge (committed) before any code is checked, so
    that parallel guesses never check more than MAX_FAILED_ATTEMPTS codes against a
    challenge, nor more than ACCOUNT_FAILURE_LIMIT against an account."""
    counted = await db.execute(
        update(OtpChallenge)
        .where(
            OtpChallenge.id == challenge_id,
            OtpChallenge.used_at.is_(None),
            OtpChallenge.expires_at > now_epoch(),
            OtpChallenge.failed_attempts < MAX_FAILED_ATTEMPTS,
        )
        .values(failed_attempts=OtpChallenge.failed_attempts + 1)
        .execution_options(synchronize_session=False)
    )
    await db.commit()
    if rows_matched(counted) != 1:
        raise InvalidOtpToken("This code request is over; start again")
    await _check_throttle(db, user_uuid, counting_this_one=True)


async def _claim_challenge(db: AsyncSession, challenge_id: str, now: int) -> bool:
    """Mark the challenge used, giving back the attempt counted for the right code
    (the caller commits); False when a parallel request used it first."""
    claimed = await db.execute(
        update(OtpChallenge)
        .where(OtpChallenge.id == challenge_id, OtpChallenge.used_at.is_(None))
        # A right code is no failure: its count is given back.
        .values(used_at=now, failed_attempts=OtpChallenge.failed_attempts - 1)
        .execution_options(synchronize_session=False)
    )
    return rows_matched(claimed) == 1


async def _refuse(
    db: AsyncSession, user_uuid: str, purpose: str, method: str, client: ClientInfo
) -> NoReturn:
    """Undo the uncommitted success steps, record the failure, raise InvalidOtpCode (the
    attempt stays counted)."""
    await db.rollback()
    if await db.get(User, user_uuid) is not None:
        record_event(
            db,
            user_uuid,
            "otp_failed",
            client=client,
            details={"purpose": purpose, "method": method},
        )
        await db.commit()
    raise InvalidOtpCode()


async def _redeem(
    db: AsyncSession,
    settings: Settings,
    user: User,
    challenge: OtpChallenge,
    code: str,
    client: ClientInfo,
) -> None:
    """Accept ``code`` for ``challenge`` once, or count a failure and raise.

    The attempt is counted (and committed) before the code is checked and given back
    when it is right (:func:`_count_attempt`). On success the challenge is marked used
    (and the authenticator step recorded) in the caller's transaction; the caller
    commits with its own changes.
    """
    # Read now: after a rollback the loaded objects are expired.
    challenge_id, user_uuid = challenge.id, user.uuid
    purpose, method = challenge.purpose, challenge.method
    now = now_epoch()
    await _count_attempt(db, challenge_id, user_uuid)
    step = None
    if method == "email":
        expected = challenge.code_hash or ""
        ok = secrets_match(email_code_hash(settings.JWT_SECRET_KEY, challenge_id, code), expected)
    else:
        step = matching_timestep(user.otp_secret or "", code, settings)
        ok = step is not None
    if ok:
        ok = await _claim_challenge(db, challenge_id, now)
    if ok and step is not None:
        # The step must be newer than the last one used: a code works once.
        advanced = await bulk_write(
            db,
            update(User)
            .where(
                User.uuid == user_uuid,
                or_(User.otp_last_timestep.is_(None), User.otp_last_timestep < step),
            )
            .values(otp_last_timestep=step)
            .execution_options(synchronize_session=False),
            # The cached copy has no OTP column, but its updated_at changes. (Every
            # caller's commit changes this user's session or user row anyway.)
            users=[user_uuid],
        )
        ok = rows_matched(advanced) == 1
    if ok:
        return
    await _refuse(db, user_uuid, purpose, method, client)


async def _redeem_recovery_code(
    db: AsyncSession, user: User, challenge: OtpChallenge, code: str, client: ClientInfo
) -> int:
    """Accept a recovery code for ``challenge`` instead of its code, once, or count a
    failure and raise; returns how many codes are left.

    The attempt counts against the challenge and the account like any code. On
    success the challenge and the code are marked used in the caller's transaction
    (the challenge first, then the code: parallel requests take the row locks in the
    same order); the caller commits.
    """
    challenge_id, user_uuid, purpose = challenge.id, user.uuid, challenge.purpose
    now = now_epoch()
    await _count_attempt(db, challenge_id, user_uuid)
    if await _claim_challenge(db, challenge_id, now) and await recovery_codes.use(
        db, user_uuid, code
    ):
        return await recovery_codes.count_left(db, user_uuid)
    await _refuse(db, user_uuid, purpose, RECOVERY_CODE_METHOD, client)


# Login ---------------------------------------------------------------------------------


def _enabled_method(user: User) -> OtpMethod:
    """The user's second factor, or OtpNotEnabled when 2FA is off."""
    if user.otp_method == "authenticator":
        return "authenticator"
    if user.otp_method == "email":
        return "email"
    raise OtpNotEnabled()


async def begin_login(
    db: AsyncSession, settings: Settings, mailer: Mailer, user: User, client: ClientInfo
) -> OtpChallengeResponse:
    """The password was right and 2FA is on: open a login challenge, answer with its token."""
    await _check_throttle(db, user.uuid)
    method = _enabled_method(user)
    challenge, code = await _new_challenge(db, settings, user, "login", method)
    record_event(db, user.uuid, "login_otp_required", client=client, details={"method": method})
    await db.commit()
    _mail_code(settings, mailer, user, "login", code)
    lifetime = challenge.expires_at - challenge.created_at
    token = create_token(
        subject=user.uuid,
        token_type=OTP_PENDING_TOKEN,
        secret=settings.JWT_SECRET_KEY,
        expires_in_seconds=lifetime,
        extra={"cid": challenge.id},
    )
    return OtpChallengeResponse(otp_method=method, otp_token=token, expires_in=lifetime)


async def verify_login(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    guard: BruteForceGuard,
    otp_token: str,
    code: str,
    client: ClientInfo,
) -> TokenPair:
    """Finish a 2FA login: the pending token and a valid code give the token pair (and
    a new device token)."""
    await guard.attempt("otp", address=client.ip)
    user, challenge = await pending_login(db, settings, otp_token)
    await _guarded_redeem(db, settings, guard, user, challenge, code, client)
    pair = await start_session(db, settings, keyring, user, client)
    return pair.model_copy(update={"device_token": new_device_token(settings, user.uuid)})


async def verify_login_with_recovery_code(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    mailer: Mailer,
    guard: BruteForceGuard,
    otp_token: str,
    recovery_code: str,
    client: ClientInfo,
) -> TokenPair:
    """Finish a 2FA login with a recovery code instead of the code: like
    :func:`verify_login`, and the code is used up, recorded and told by mail."""
    await guard.attempt("otp", address=client.ip)
    user, challenge = await pending_login(db, settings, otp_token)
    left = await _guarded(
        guard, user.uuid, lambda: _redeem_recovery_code(db, user, challenge, recovery_code, client)
    )
    record_event(db, user.uuid, "recovery_code_used", client=client, details={"left": left})
    pair = await start_session(db, settings, keyring, user, client)  # commits the code's use
    send_security_notice(
        settings,
        mailer,
        user,
        what="A recovery code was used to sign in",
        more=_codes_left_text(left),
    )
    return pair.model_copy(update={"device_token": new_device_token(settings, user.uuid)})


def _codes_left_text(left: int) -> str:
    """What the notice of a used recovery code says of the rest."""
    if left == 0:
        return "No recovery codes are left: make new ones now."
    text = f"{left} recovery code{'' if left == 1 else 's'} left (each works once)."
    if left <= 2:
        text += " Make new ones soon."
    return text


async def pending_login(
    db: AsyncSession, settings: Settings, otp_token: str
) -> tuple[User, OtpChallenge]:
    """The active user and the login challenge a 2FA-pending token names, or
    InvalidOtpToken (a passkey can also finish this login: ``app.services.passkeys``)."""
    try:
        claims = decode_token(
            otp_token, secret=settings.JWT_SECRET_KEY, token_type=OTP_PENDING_TOKEN
        )
    except TokenError:
        raise InvalidOtpToken() from None
    challenge = await db.get(OtpChallenge, str(claims.get("cid")))
    user = await db.get(User, claims["sub"])
    if (
        challenge is None
        or user is None
        or challenge.user_uuid != user.uuid
        or challenge.purpose != "login"
        or challenge.method != user.otp_method
        or not user.is_active
    ):
        raise InvalidOtpToken()
    return user, challenge


async def _guarded(guard: BruteForceGuard, user_uuid: str, redeem: Callable[[], Awaitable[T]]) -> T:
    """``redeem`` under the account's guard: only a wrong code stays counted."""
    slot = await guard.claim("otp", account=user_uuid)
    try:
        result = await redeem()
    except InvalidOtpCode:
        raise  # a wrong code: counted
    except BaseException:
        await guard.forgive(slot)  # no code was judged (the request is over, throttled...)
        raise
    await guard.forgive(slot)
    return result


async def claim_login_challenge(db: AsyncSession, challenge_id: str) -> None:
    """Mark a pending login's challenge used by another second factor (a passkey), in
    the caller's transaction; InvalidOtpToken when it is used, expired or dead already
    (a conditional UPDATE: of two parallel second factors, one wins)."""
    claimed = await db.execute(
        update(OtpChallenge)
        .where(
            OtpChallenge.id == challenge_id,
            OtpChallenge.used_at.is_(None),
            OtpChallenge.expires_at > now_epoch(),
            OtpChallenge.failed_attempts < MAX_FAILED_ATTEMPTS,
        )
        .values(used_at=now_epoch())
        .execution_options(synchronize_session=False)
    )
    if rows_matched(claimed) != 1:
        raise InvalidOtpToken()


async def _guarded_redeem(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    user: User,
    challenge: OtpChallenge,
    code: str,
    client: ClientInfo,
) -> None:
    """:func:`_redeem` under the account's guard."""
    await _guarded(guard, user.uuid, lambda: _redeem(db, settings, user, challenge, code, client))


# Enrolment -----------------------------------------------------------------------------


async def setup(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    auth: Auth,
    method: OtpMethod,
    password: str | None,
    client: ClientInfo,
) -> OtpSetupResponse:
    """Start enrolling: a new authenticator secret (URI + QR code), or an email code.

    A re-authentication (the password, or a recently re-authenticated session) is
    asked for so that a stolen access token alone cannot put a second factor of the
    thief's choosing on the account.
    """
    user = auth.user
    if user.otp_method != "none":
        raise OtpAlreadyEnabled()
    await require_recent_auth(
        db, settings, guard, user, auth.session, password, client, purpose="otp_setup"
    )
    if method == "email":
        if not mailer.enabled:
            raise EmailDisabled()
        _, code = await _new_challenge(db, settings, user, "enable", "email")
        await db.commit()
        _mail_code(settings, mailer, user, "enable", code)
        return OtpSetupResponse(
            method="email", detail="A code was sent by email; confirm it at /auth/otp/enable"
        )
    user.otp_secret = new_otp_secret()
    user.otp_last_timestep = None
    record_event(
        db, user.uuid, "otp_setup", by=user.uuid, client=client, details={"method": method}
    )
    await db.commit()
    uri = provisioning_uri(user.otp_secret, user.username, settings)
    png = await qr_png(uri)
    return OtpSetupResponse(
        method="authenticator",
        detail="Scan the QR code, then confirm a code at /auth/otp/enable",
        provisioning_uri=uri,
        qr_png=base64.b64encode(png).decode("ascii"),
    )


async def _latest_challenge(db: AsyncSession, user_uuid: str, purpose: str) -> OtpChallenge:
    challenge = await db.scalar(
        select(OtpChallenge)
        .where(
            OtpChallenge.user_uuid == user_uuid,
            OtpChallenge.purpose == purpose,
            OtpChallenge.method == "email",
            OtpChallenge.used_at.is_(None),
        )
        .order_by(OtpChallenge.created_at.desc())
        .limit(1)
    )
    if challenge is None:
        raise NoPendingCode()
    return challenge


async def _challenge_for(
    db: AsyncSession, settings: Settings, user: User, purpose: str, method: str
) -> OtpChallenge:
    if method == "email":
        return await _latest_challenge(db, user.uuid, purpose)
    # An authenticator code needs no request first: check it against a fresh challenge,
    # so that its failures count like any other.
    challenge, _ = await _new_challenge(db, settings, user, purpose, method)
    await db.commit()
    return challenge


async def enable(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    auth: Auth,
    method: OtpMethod,
    code: str,
    client: ClientInfo,
) -> list[str]:
    """Turn 2FA on once a valid code proves the method works; other sessions end.

    Returns the new recovery codes: this is the only time they are shown.
    """
    user = auth.user
    if user.otp_method != "none":
        raise OtpAlreadyEnabled()
    if method == "authenticator" and not user.otp_secret:
        raise NoPendingCode("Set up the authenticator first (/auth/otp/setup)")
    challenge = await _challenge_for(db, settings, user, "enable", method)
    await _redeem(db, settings, user, challenge, code, client)
    user.otp_method = method
    codes = await recovery_codes.issue(db, user.uuid)
    await revoke_sessions(db, user.uuid, keep_session_id=auth.session.id)
    record_event(
        db, user.uuid, "otp_enabled", by=user.uuid, client=client, details={"method": method}
    )
    await db.commit()
    send_security_notice(settings, mailer, user, what="Two-factor authentication was turned on")
    return codes


async def send_code(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    auth: Auth,
    purpose: str,
) -> None:
    """Mail a code that confirms turning email 2FA off (``disable``) or a
    re-authentication (``reauth``); limited per account like other mails."""
    user = auth.user
    if user.otp_method == "none":
        raise OtpNotEnabled()
    if user.otp_method != "email":
        raise OtpMethodMismatch("Use a code from your authenticator app")
    await guard.spend("otp_code", account=user.uuid)
    _, code = await _new_challenge(db, settings, user, purpose, "email")
    await db.commit()
    _mail_code(settings, mailer, user, purpose, code)


async def confirm_code(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    user: User,
    code: str,
    client: ClientInfo,
    *,
    purpose: str,
) -> None:
    """Accept a current code of the user's second factor once, or raise (the caller
    commits its change with it)."""
    if user.otp_method == "none":
        raise OtpNotEnabled()
    await guard.attempt("otp", address=client.ip)
    challenge = await _challenge_for(db, settings, user, purpose, user.otp_method)
    await _guarded_redeem(db, settings, guard, user, challenge, code, client)


async def confirm_recovery_code(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    user: User,
    recovery_code: str,
    client: ClientInfo,
) -> None:
    """Accept one of the user's recovery codes once, or raise, under the limits of
    :func:`confirm_code` (the caller commits its change with it, which uses the code up)."""
    if user.otp_method == "none":
        raise OtpNotEnabled()
    await guard.attempt("otp", address=client.ip)
    challenge, _ = await _new_challenge(db, settings, user, "disable", RECOVERY_CODE_METHOD)
    await db.commit()
    await _guarded(
        guard, user.uuid, lambda: _redeem_recovery_code(db, user, challenge, recovery_code, client)
    )


async def disable(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    auth: Auth,
    password: str | None,
    code: str | None,
    client: ClientInfo,
    *,
    recovery_code: str | None = None,
) -> None:
    """Turn 2FA off with a re-authentication and a current code (or, when the second
    factor is lost, a recovery code); other sessions end."""
    user = auth.user
    if user.otp_method == "none":
        raise OtpNotEnabled()
    await require_recent_auth(
        db, settings, guard, user, auth.session, password, client, purpose="otp_disable"
    )
    method = user.otp_method
    if recovery_code is not None:
        await confirm_recovery_code(db, settings, guard, user, recovery_code, client)
    else:
        await confirm_code(db, settings, guard, user, code or "", client, purpose="disable")
    await reset(db, user)
    await revoke_sessions(db, user.uuid, keep_session_id=auth.session.id)
    details: dict[str, object] = {"method": method}
    if recovery_code is not None:
        details["with"] = RECOVERY_CODE_METHOD
    record_event(db, user.uuid, "otp_disabled", by=user.uuid, client=client, details=details)
    await db.commit()
    send_security_notice(settings, mailer, user, what="Two-factor authentication was turned off")


async def reset(db: AsyncSession, user: User) -> None:
    """Turn the user's 2FA off: the method, the authenticator secret and the recovery
    codes all go (a pending login is refused from then on).

    The one way 2FA is turned off, by the user (:func:`disable`) or for them (an
    admin's reset). It changes ``user`` through the ORM, so the commit drops the
    cached copy; the caller records the event, ends sessions, commits and mails.
    """
    user.otp_method = "none"
    user.otp_secret = None
    user.otp_last_timestep = None
    await recovery_codes.clear(db, user.uuid)


# Recovery codes ------------------------------------------------------------------------


async def recovery_codes_left(db: AsyncSession, user: User) -> int:
    """How many unused recovery codes the user has (0 with 2FA off)."""
    if user.otp_method == "none":
        return 0
    return await recovery_codes.count_left(db, user.uuid)


async def regenerate_recovery_codes(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    auth: Auth,
    password: str | None,
    client: ClientInfo,
) -> list[str]:
    """New recovery codes for the caller after a re-authentication; the old ones stop
    working at once and the verified email is told. Returns the codes (shown once)."""
    user = auth.user
    if user.otp_method == "none":
        raise OtpNotEnabled()
    await require_recent_auth(
        db, settings, guard, user, auth.session, password, client, purpose="recovery_codes"
    )
    codes = await recovery_codes.issue(db, user.uuid)
    record_event(db, user.uuid, "recovery_codes_regenerated", by=user.uuid, client=client)
    await db.commit()
    send_security_notice(
        settings,
        mailer,
        user,
        what="New recovery codes were made",
        more="The previous recovery codes no longer work.",
    )
    return codes
