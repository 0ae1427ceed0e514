"""Logins, password changes and resets, email verification.

Sessions and tokens live in ``app.services.sessions``; the second login step in
``app.services.otp``.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.email import Mailer
from app.core.errors import AppError, Unauthorized
from app.core.metrics import LOGINS
from app.core.rate_limiter import BruteForceGuard
from app.core.security import (
    TokenError,
    create_one_time_token,
    hash_password,
    password_fingerprint,
    read_one_time_token,
    verify_password,
)
from app.models import UsedToken, User, now_epoch
from app.schemas.auth import TokenPair
from app.schemas.otp import OtpChallengeResponse
from app.services import otp
from app.services.context import ClientInfo
from app.services.history import record_event
from app.services.sessions import Auth, revoke_sessions, start_session
from app.services.users import (
    EMAIL_VERIFY_MAX_AGE_SECONDS,
    EMAIL_VERIFY_PURPOSE,
    WrongPassword,
    find_user_by_login,
    send_verification_email,
)

PASSWORD_RESET_PURPOSE = "password-reset"
PASSWORD_RESET_MAX_AGE_SECONDS = 3600


class InvalidCredentials(Unauthorized):
    """Unknown account, wrong password or inactive account: one answer for all three."""

    code = "INVALID_CREDENTIALS"
    detail = "Incorrect username/email or password"


class InvalidLink(AppError):
    """A one-time link that is forged, expired, already used, or no longer applies."""

    status_code = 400
    code = "INVALID_LINK"
    detail = "This link is invalid or has expired"


# Login ---------------------------------------------------------------------------------


async def check_credentials(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    identifier: str,
    password: str,
    client: ClientInfo,
) -> User:
    """The active user that ``identifier`` and ``password`` name, or InvalidCredentials.

    The time taken does not depend on whether the account exists: an unknown account
    (or one without a password) gets a dummy bcrypt check. Failures are counted per
    account (by UUID, whether it was named by username or email) and an account over
    its limit is refused before its password is even checked.
    """
    await guard.attempt("login", account=None, address=client.ip)
    user = await find_user_by_login(db, identifier)
    account = user.uuid if user is not None else identifier.strip().lower()
    await guard.attempt("login", account=account, address=None)
    hashed = user.hashed_password if user is not None else None
    valid = await verify_password(password, hashed, settings.PASSWORD_BCRYPT_ROUNDS)
    if not valid or user is None or not user.is_active:
        await guard.failed("login", account=account)
    if user is None:
        raise InvalidCredentials()
    if not valid or not user.is_active:
        record_event(
            db,
            user.uuid,
            "login_failed",
            client=client,
            details={"reason": "inactive" if valid else "wrong_password"},
        )
        await db.commit()
        raise InvalidCredentials()
    return user


async def login(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    identifier: str,
    password: str,
    client: ClientInfo,
) -> TokenPair | OtpChallengeResponse:
    """Check the credentials, then open a session, or ask for the second factor.

    With 2FA on, the answer is a challenge whose ``otp_token`` and a valid code give
    the token pair at ``/auth/otp/verify`` (see ``app.services.otp``). Attempts are
    limited per address, failures per account (429 ``RATE_LIMITED``).
    """
    try:
        user = await check_credentials(db, settings, guard, identifier, password, client)
    except InvalidCredentials:
        LOGINS.labels("failure").inc()
        raise
    if user.otp_method != "none":
        LOGINS.labels("otp_required").inc()
        return await otp.begin_login(db, settings, mailer, user, client)
    LOGINS.labels("success").inc()
    return await start_session(db, settings, user, client)


# Passwords -----------------------------------------------------------------------------


async def change_password(
    db: AsyncSession,
    settings: Settings,
    auth: Auth,
    current_password: str,
    new_password: str,
    client: ClientInfo,
) -> None:
    """Set a new password after checking the current one; every session ends."""
    user = auth.user
    if not await verify_password(
        current_password, user.hashed_password, settings.PASSWORD_BCRYPT_ROUNDS
    ):
        record_event(db, user.uuid, "password_change_failed", by=user.uuid, client=client)
        await db.commit()
        raise WrongPassword()
    user.hashed_password = await hash_password(new_password, settings.PASSWORD_BCRYPT_ROUNDS)
    user.is_external_only = False
    await revoke_sessions(db, user.uuid)
    record_event(db, user.uuid, "password_changed", by=user.uuid, client=client)
    await db.commit()


async def request_password_reset(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    email: str,
    client: ClientInfo,
) -> None:
    """Mail a reset link when the account exists; say nothing either way.

    With DEACTIVATE_ON_PASSWORD_FORGOT the account is also made inactive (and its
    sessions ended) until the reset, as the original service did. Requests are
    limited per address and per email, so nobody can flood an inbox.
    """
    await guard.attempt("forgot", account=email, address=client.ip)
    await guard.failed("forgot", account=email)
    user = await find_user_by_login(db, email)
    if user is None or not mailer.enabled:
        return
    if not user.is_active and user.deactivated_reason != "password_forgot":
        return  # banned or being deleted: a reset must not bring it back
    token = create_one_time_token(
        settings.JWT_SECRET_KEY,
        PASSWORD_RESET_PURPOSE,
        {
            "uuid": user.uuid,
            "email": user.email,
            "pwd": password_fingerprint(user.hashed_password),
        },
    )
    if settings.DEACTIVATE_ON_PASSWORD_FORGOT and user.is_active:
        user.is_active = False
        user.deactivated_reason = "password_forgot"
        await revoke_sessions(db, user.uuid)
    record_event(db, user.uuid, "password_forgot", client=client)
    await db.commit()
    mailer.send_later(
        mailer.render(
            "reset_password",
            to=user.email,
            subject=f"Reset your {settings.PROJECT_NAME} password",
            display_name=user.display_name,
            link=f"{settings.FRONTEND_URL}/reset-password?token={token}",
            valid_minutes=PASSWORD_RESET_MAX_AGE_SECONDS // 60,
        )
    )


async def consume_link(
    db: AsyncSession, settings: Settings, purpose: str, token: str, max_age_seconds: int
) -> tuple[User, dict]:
    """Verify a one-time link and mark it used (in the caller's transaction)."""
    try:
        verified = read_one_time_token(settings.JWT_SECRET_KEY, purpose, token, max_age_seconds)
    except TokenError as error:
        raise InvalidLink(f"This link is invalid or has expired ({error})") from None
    user_uuid = verified.payload.get("uuid")
    user = await db.get(User, user_uuid) if isinstance(user_uuid, str) else None
    if user is None or verified.payload.get("email") != user.email:
        raise InvalidLink()
    db.add(
        UsedToken(
            token_id=verified.token_id,
            purpose=purpose,
            user_uuid=user.uuid,
            expires_at=now_epoch() + max_age_seconds,
        )
    )
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        raise InvalidLink("This link was already used") from None
    return user, verified.payload


async def reset_password(
    db: AsyncSession, settings: Settings, token: str, new_password: str, client: ClientInfo
) -> None:
    """Set a new password from a reset link; end every session; reactivate if forgot did.

    The link proves the email is the user's, so it also marks the email verified.
    """
    user, payload = await consume_link(
        db, settings, PASSWORD_RESET_PURPOSE, token, PASSWORD_RESET_MAX_AGE_SECONDS
    )
    if payload.get("pwd") != password_fingerprint(user.hashed_password):
        await db.rollback()
        raise InvalidLink("This link is no longer valid: the password changed since")
    if not user.is_active and user.deactivated_reason != "password_forgot":
        await db.rollback()
        raise InvalidLink()
    user.hashed_password = await hash_password(new_password, settings.PASSWORD_BCRYPT_ROUNDS)
    user.is_external_only = False
    user.email_verified = True
    if user.deactivated_reason == "password_forgot":
        user.is_active = True
        user.deactivated_reason = None
    await revoke_sessions(db, user.uuid)
    record_event(db, user.uuid, "password_reset", client=client)
    await db.commit()


# Email verification --------------------------------------------------------------------


async def verify_email(
    db: AsyncSession, settings: Settings, token: str, client: ClientInfo
) -> User:
    """Mark the user's email verified from a link mailed to that same address."""
    user, _ = await consume_link(
        db, settings, EMAIL_VERIFY_PURPOSE, token, EMAIL_VERIFY_MAX_AGE_SECONDS
    )
    user.email_verified = True
    record_event(
        db, user.uuid, "email_verified", by=user.uuid, client=client, details={"email": user.email}
    )
    await db.commit()
    return user


async def request_verification_email(
    db: AsyncSession, settings: Settings, mailer: Mailer, email: str
) -> None:
    """Mail a new verification link when such an unverified account exists; say nothing."""
    user = await find_user_by_login(db, email)
    if user is not None and user.is_active:
        send_verification_email(settings, mailer, user)
