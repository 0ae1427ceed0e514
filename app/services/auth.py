"""Logins, password changes and resets, email verification and change, re-authentication.

Sessions and tokens live in ``app.services.sessions``; the second login step in
``app.services.two_factor``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.auth_cache import bulk_write
from app.core.authentication import Auth
from app.core.breached_passwords import ensure_not_breached
from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.database import release_connection, rows_matched
from app.core.email import Mailer
from app.core.errors import AppError, Unauthorized
from app.core.metrics import LOGINS
from app.core.oauth_client import provider_label
from app.core.security import (
    PasswordCheckBusy,
    create_one_time_token,
    ensure_password_capacity,
    hash_password,
    password_fingerprint,
    verify_password,
)
from app.core.signing_keys import Keyring
from app.models import User, now_epoch
from app.schemas.auth import TokenPair
from app.schemas.otp import OtpChallengeResponse
from app.services import external_accounts, two_factor
from app.services.accounts import (
    EMAIL_VERIFY_MAX_AGE_SECONDS,
    EMAIL_VERIFY_PURPOSE,
    EmailTaken,
    commit_or_conflict,
    ensure_email_available,
    find_user_by_login,
    send_verification_email,
)
from app.services.context import ClientInfo
from app.services.devices import claim_login, new_device_token
from app.services.history import record_event
from app.services.links import InvalidLink, consume_link, read_link
from app.services.mail_links import LinkPage, mail_link
from app.services.notices import send_security_notice
from app.services.profile import (
    EMAIL_CHANGE_PURPOSE,
    EMAIL_CHANGE_UNDO_MAX_AGE_SECONDS,
    EMAIL_CHANGE_UNDO_PURPOSE,
)
from app.services.reauth import confirm_password, require_recent_auth
from app.services.sessions import revoke_sessions, start_session

PASSWORD_RESET_PURPOSE = "password-reset"
PASSWORD_RESET_MAX_AGE_SECONDS = 3600


class InvalidCredentials(Unauthorized):
    """Unknown account, wrong password or inactive account: one answer for all three."""

    code = "INVALID_CREDENTIALS"
    detail = "Incorrect username/email or password"


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
    (or one without a password) gets a dummy bcrypt check. Each attempt takes a slot
    of the account's allowance (by UUID, whether named by username or email) before
    the password is checked, and gives it back when it succeeds; a client with a
    device token of the account uses the device's own allowance (``devices``). No
    database connection is held while bcrypt runs.
    """
    ensure_password_capacity()
    await guard.attempt("login", address=client.ip)
    user = await find_user_by_login(db, identifier)
    account = user.uuid if user is not None else identifier.strip().lower()
    slot = await claim_login(guard, settings, account, client.device_token)
    await release_connection(db)
    hashed = user.hashed_password if user is not None else None
    try:
        valid = await verify_password(password, hashed, settings.PASSWORD_BCRYPT_ROUNDS)
    except PasswordCheckBusy:
        await guard.forgive(slot)  # nothing was checked: the attempt does not count
        raise
    if user is None:
        raise InvalidCredentials()
    if valid and user.is_active:
        await guard.forgive(slot)
        return user
    record_event(
        db,
        user.uuid,
        "login_failed",
        client=client,
        details={"reason": "inactive" if valid else "wrong_password"},
    )
    await db.commit()
    raise InvalidCredentials()


async def login(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    mailer: Mailer,
    guard: BruteForceGuard,
    identifier: str,
    password: str,
    client: ClientInfo,
) -> TokenPair | OtpChallengeResponse:
    """Check the credentials, then open a session, or ask for the second factor.

    With 2FA on, the answer is a challenge whose ``otp_token`` and a valid code give
    the token pair at ``/auth/otp/verify`` (see ``app.services.two_factor``). Attempts are
    limited per address, failures per account or known device (429 ``RATE_LIMITED``).
    A successful login hands out a new device token.
    """
    try:
        user = await check_credentials(db, settings, guard, identifier, password, client)
    except InvalidCredentials:
        LOGINS.labels("failure").inc()
        raise
    if user.otp_method != "none":
        LOGINS.labels("otp_required").inc()
        return await two_factor.begin_login(db, settings, mailer, user, client)
    LOGINS.labels("success").inc()
    pair = await start_session(db, settings, keyring, user, client)
    return pair.model_copy(update={"device_token": new_device_token(settings, user.uuid)})


# Passwords -----------------------------------------------------------------------------


async def change_password(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    auth: Auth,
    current_password: str | None,
    new_password: str,
    client: ClientInfo,
) -> None:
    """Set a new password; every session ends and the verified address is told.

    The current password confirms it is the owner (or, for an account without one,
    a recently re-authenticated session: a provider login or a two-factor code).
    """
    user = auth.user
    await require_recent_auth(
        db, settings, guard, user, auth.session, current_password, client, purpose="password_change"
    )
    await release_connection(db)
    await ensure_not_breached(settings, new_password, field="new_password")
    user.hashed_password = await hash_password(new_password, settings.PASSWORD_BCRYPT_ROUNDS)
    user.is_external_only = False
    user.pending_email = None  # an email change nobody confirmed yet dies with it
    await revoke_sessions(db, user.uuid)
    record_event(db, user.uuid, "password_changed", by=user.uuid, client=client)
    await db.commit()
    send_security_notice(settings, mailer, user, what="Your password was changed")


async def request_password_reset(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    email: str,
    client: ClientInfo,
) -> None:
    """Mail a reset link when the account exists and its email is verified; say
    nothing either way.

    With DEACTIVATE_ON_PASSWORD_FORGOT the account is also made inactive (and its
    sessions ended) until the reset, as the original service did. Requests are
    limited per address and per email, so nobody can flood an inbox.
    """
    await guard.attempt("forgot", address=client.ip)
    await guard.spend("forgot", account=email)
    user = await find_user_by_login(db, email)
    if user is None or not mailer.enabled:
        return
    if not user.is_active and user.deactivated_reason != "password_forgot":
        return  # banned or being deleted: a reset must not bring it back
    if not user.email_verified:
        # Nobody proved owning this address: it may be an address someone set on the
        # account to take it over. Verify it first (the verification link says so).
        return
    if settings.DEACTIVATE_ON_PASSWORD_FORGOT and user.is_active:
        user.is_active = False
        user.deactivated_reason = "password_forgot"
        await revoke_sessions(db, user.uuid)
    record_event(db, user.uuid, "password_forgot", client=client)
    await db.commit()
    await mail_reset_link(db, settings, mailer, user)


async def mail_reset_link(db: AsyncSession, settings: Settings, mailer: Mailer, user: User) -> None:
    """Mail a reset link for the user's current password to their email, naming the
    providers that can also open the account."""
    providers = [
        provider_label(name) for name in await external_accounts.linked_providers(db, user.uuid)
    ]
    token = create_one_time_token(
        settings.JWT_SECRET_KEY,
        PASSWORD_RESET_PURPOSE,
        {
            "uuid": user.uuid,
            "email": user.email,
            "pwd": password_fingerprint(user.hashed_password),
        },
    )
    mailer.send_later(
        mailer.render(
            "reset_password",
            to=user.email,
            subject=f"Reset your {settings.PROJECT_NAME} password",
            display_name=user.display_name,
            link=mail_link(settings, LinkPage.RESET_PASSWORD, token),
            valid_minutes=PASSWORD_RESET_MAX_AGE_SECONDS // 60,
            providers=providers,
        )
    )


def _reset_applies(user: User, payload: dict) -> bool:
    """A reset link is for the current email and password, and not for an account that
    was banned or is being deleted (a reset must not bring it back)."""
    return (
        payload.get("email") == user.email
        and payload.get("pwd") == password_fingerprint(user.hashed_password)
        and (user.is_active or user.deactivated_reason == "password_forgot")
    )


async def read_reset_link(db: AsyncSession, settings: Settings, token: str) -> list[str]:
    """The providers linked to the account of a valid reset link (the link stays unused).

    A reset page shows them so that the owner can unlink one they do not know: a
    provider linked by someone else would still open the account after the reset.
    """
    user, _, _ = await read_link(
        db, settings, PASSWORD_RESET_PURPOSE, token, PASSWORD_RESET_MAX_AGE_SECONDS, _reset_applies
    )
    return await external_accounts.linked_providers(db, user.uuid)


async def reset_password(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    token: str,
    new_password: str,
    unlink_providers: list[str],
    client: ClientInfo,
) -> None:
    """Set a new password from a reset link, unlink the providers asked for, end every
    session, reactivate if forgot-password deactivated; the address is told.

    The link proves the email is the user's, so it also marks the email verified.
    """
    # The link is checked first (cheap, read-only), the new password hashed with no
    # connection held, then the link is used and the password set in one transaction.
    await read_link(
        db, settings, PASSWORD_RESET_PURPOSE, token, PASSWORD_RESET_MAX_AGE_SECONDS, _reset_applies
    )
    await release_connection(db)
    await ensure_not_breached(settings, new_password, field="new_password")
    hashed = await hash_password(new_password, settings.PASSWORD_BCRYPT_ROUNDS)
    user, _ = await consume_link(
        db, settings, PASSWORD_RESET_PURPOSE, token, PASSWORD_RESET_MAX_AGE_SECONDS, _reset_applies
    )
    user.hashed_password = hashed
    user.is_external_only = False
    user.email_verified = True
    user.pending_email = None  # an email change nobody confirmed yet dies with the reset
    if user.deactivated_reason == "password_forgot":
        user.is_active = True
        user.deactivated_reason = None
    unlinked = await external_accounts.remove_links(db, user.uuid, unlink_providers)
    await revoke_sessions(db, user.uuid)
    record_event(
        db,
        user.uuid,
        "password_reset",
        client=client,
        details={"unlinked": unlinked} if unlinked else None,
    )
    await db.commit()
    send_security_notice(settings, mailer, user, what="Your password was reset")


# Email verification and change ---------------------------------------------------------


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
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    email: str,
    client: ClientInfo,
) -> None:
    """Mail a new verification link when such an unverified account exists; say nothing.

    Limited like forgotten-password requests, per address and per email, so that
    nobody can flood an inbox.
    """
    await guard.attempt("verify", address=client.ip)
    await guard.spend("verify", account=email)
    user = await find_user_by_login(db, email)
    if user is not None and user.is_active:
        send_verification_email(settings, mailer, user)


def _pending_change(user: User, payload: dict) -> bool:
    return (
        user.is_active
        and payload.get("email") == user.email
        and payload.get("new_email") == user.pending_email
        and payload.get("pwd") == password_fingerprint(user.hashed_password)
    )


async def _apply(db: AsyncSession, user: User, where: Any, values: dict[str, Any]) -> None:
    """One conditional UPDATE of ``user``'s row: InvalidLink when ``where`` no longer
    holds (a confirmation and an undo at once: the second finds the row changed),
    EmailTaken when the new email went to another account meanwhile."""
    try:
        result = await bulk_write(
            db,
            update(User)
            .where(User.uuid == user.uuid, where)
            .values(**values)
            .execution_options(synchronize_session="fetch"),
            users=[user.uuid],
        )
    except IntegrityError:
        await db.rollback()
        raise EmailTaken() from None
    if rows_matched(result) != 1:
        await db.rollback()
        raise InvalidLink("This change was cancelled or replaced meanwhile")


async def confirm_email_change(
    db: AsyncSession, settings: Settings, token: str, client: ClientInfo
) -> User:
    """Make the pending email the account's (verified) email, from the link mailed to it.

    The link applies only to the change it was sent for: not after the change was
    cancelled or replaced, the email changed otherwise, or the password changed. The
    old email stays reserved to the account while the old address may undo it.
    """
    user, payload = await consume_link(
        db, settings, EMAIL_CHANGE_PURPOSE, token, EMAIL_VERIFY_MAX_AGE_SECONDS, _pending_change
    )
    old_email, new_email = user.email, payload["new_email"]
    await ensure_email_available(db, new_email, owner=user.uuid)
    await _apply(
        db,
        user,
        and_(User.email == old_email, User.pending_email == new_email),
        {
            "email": new_email,
            "email_verified": True,
            "pending_email": None,
            "previous_email": old_email,
            "previous_email_until": now_epoch() + EMAIL_CHANGE_UNDO_MAX_AGE_SECONDS,
        },
    )
    record_event(
        db,
        user.uuid,
        "email_changed",
        by=user.uuid,
        client=client,
        details={"from": old_email, "to": new_email},
    )
    await commit_or_conflict(db)
    return user


def _change_to_undo(user: User, payload: dict) -> bool:
    new_email = payload.get("new_email")
    return user.is_active and (
        user.pending_email == new_email
        or (user.email == new_email and payload.get("email") != new_email)
    )


async def _release_from_unverified_holder(
    db: AsyncSession, email: str, owner_uuid: str, client: ClientInfo
) -> None:
    """Take ``email`` back from another account that claims it without having verified
    it: the owner just proved holding it. A verified holder keeps it (EmailTaken)."""
    holder = await db.scalar(select(User).where(User.email == email, User.uuid != owner_uuid))
    if holder is None:
        return
    if holder.email_verified:
        raise EmailTaken()
    holder.email = f"released_{holder.uuid}@users.noreply.invalid"
    await revoke_sessions(db, holder.uuid)
    record_event(
        db, holder.uuid, "email_released", client=client, details={"to_verified_owner": owner_uuid}
    )
    await db.flush()


async def undo_email_change(
    db: AsyncSession, settings: Settings, mailer: Mailer, token: str, client: ClientInfo
) -> None:
    """Refuse an email change from the link mailed to the old address: the change is
    cancelled, or the old email put back; every session ends and the password is
    cleared (whoever asked knew it, or held a fresh session), and a reset link goes to
    the old address at once.

    The old address is the one the notice was sent to, so it is verified again. If
    another account took it without verifying it, that account loses it.
    """
    user, payload = await consume_link(
        db,
        settings,
        EMAIL_CHANGE_UNDO_PURPOSE,
        token,
        EMAIL_CHANGE_UNDO_MAX_AGE_SECONDS,
        _change_to_undo,
    )
    old_email, refused = payload["email"], payload["new_email"]
    await _release_from_unverified_holder(db, old_email, user.uuid, client)
    await _apply(
        db,
        user,
        or_(User.pending_email == refused, User.email == refused),
        {
            "email": old_email,
            "email_verified": True,
            "pending_email": None,
            "previous_email": None,
            "previous_email_until": None,
            "hashed_password": None,
        },
    )
    await revoke_sessions(db, user.uuid)
    record_event(
        db,
        user.uuid,
        "email_change_undone",
        client=client,
        details={"email": old_email, "refused": refused},
    )
    await commit_or_conflict(db)
    await mail_reset_link(db, settings, mailer, user)


# Re-authentication ---------------------------------------------------------------------


class PasswordIsTheProof(AppError):
    """An account with a password re-authenticates with it, not with a mailed code."""

    status_code = 409
    code = "USE_PASSWORD"
    detail = "This account re-authenticates with its password"


async def send_reauthentication_code(
    db: AsyncSession, settings: Settings, mailer: Mailer, guard: BruteForceGuard, auth: Auth
) -> None:
    """Mail a code for /auth/reauthenticate to an account without a password."""
    if auth.user.hashed_password is not None:
        raise PasswordIsTheProof()
    await two_factor.send_code(db, settings, mailer, guard, auth, "reauth")


class NoWayToReauthenticate(AppError):
    """An account with neither password nor second factor re-authenticates by logging in."""

    status_code = 400
    code = "SIGN_IN_AGAIN"
    detail = (
        "This account has no password nor two-factor authentication: sign in again with "
        "your provider, then retry within a few minutes"
    )


async def reauthenticate(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    auth: Auth,
    password: str | None,
    code: str | None,
    client: ClientInfo,
) -> int:
    """Mark the caller's session re-authenticated; returns until when (epoch seconds).

    An account with a password proves it with the password (a code alone is not
    enough: it is the second factor, not the first). An account without one gives a
    two-factor code.
    """
    user = auth.user
    if user.hashed_password is not None:
        if password is None:
            raise MissingProof("Give your password")
        await confirm_password(db, settings, guard, user, password, client, purpose="reauth")
    elif user.otp_method != "none":
        if code is None:
            raise MissingProof("Give a code from your second factor")
        await two_factor.confirm_code(db, settings, guard, user, code, client, purpose="reauth")
    else:
        raise NoWayToReauthenticate()
    now = now_epoch()
    auth.session.reauthenticated_at = now
    record_event(db, user.uuid, "reauthenticated", by=user.uuid, client=client)
    await db.commit()
    return now + settings.REAUTH_WINDOW_SECONDS


class MissingProof(AppError):
    """Neither the password nor the code the account needs was given."""

    status_code = 422
    code = "PROOF_REQUIRED"
    detail = "Give your password, or a two-factor code"
