"""Account tools: what staff (and the command line) do to help a user back in, or to
shut someone else out.

Reset a user's two-factor authentication, clear the lock that failed sign-ins put on
the account, list and end its sessions, mail it a password-reset link, list and
unlink its provider accounts. Who may do what is in ``ROLES``
(``app.core.permissions``): admins everything, though not to themselves where a
tool would skip the re-authentication their own endpoints ask for; moderators the
harmless tools, for users who are neither admin nor moderator. Every tool that changes
something is recorded in the user's history with who did it and in the audit log, and
the user's verified address is told.

``actor`` is the signed-in staff member, or None for the command line, whose operator
runs the service and passes no permission check.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.auth_cache import bulk_write
from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.database import rows_matched
from app.core.email import Mailer
from app.core.errors import AppError, Conflict, NotFound
from app.core.oauth_client import provider_label
from app.models import ExternalAccount, OtpChallenge, Session, User, now_epoch
from app.services import two_factor
from app.services.audit import AuditTarget, record_audit
from app.services.auth import mail_reset_link
from app.services.context import ClientInfo
from app.services.directory import tool_target
from app.services.external_accounts import remove_link
from app.services.history import record_event
from app.services.notices import send_security_notice
from app.services.sessions import revoke_sessions
from app.services.ways_in import LastLoginMethod

#: The guard's per-account buckets a lock lives in: passwords (logins and
#: re-authentications) and two-factor codes.
LOCK_ACTIONS = ("login", "otp")


class EmailDisabled(AppError):
    """No mail can be sent (EMAIL_METHOD=none)."""

    status_code = 409
    code = "EMAIL_DISABLED"
    detail = "Email is not enabled on this server: no reset link can be sent"


class EmailNotVerified(Conflict):
    """A reset link goes only to an address proven to be the owner's."""

    code = "EMAIL_NOT_VERIFIED"
    detail = "This user's email is not verified: a reset link goes only to a verified address"


class UserInactive(Conflict):
    """The account is banned or being deleted: a reset must not bring it back."""

    code = "USER_INACTIVE"
    detail = "This account is inactive"


class SessionNotFound(NotFound):
    """No open session of this user has that id."""

    code = "SESSION_NOT_FOUND"
    detail = "No open session of this user has this id"


def _by(actor: User | None) -> str | None:
    return actor.uuid if actor is not None else None


async def reset_two_factor(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    actor: User | None,
    user_uuid: str,
    client: ClientInfo,
) -> User:
    """Turn the user's 2FA off (they lost their second factor): they sign in with the
    password alone and may enrol again. Every session of theirs ends."""
    user = await tool_target(db, actor, user_uuid, "reset_two_factor")
    method = user.otp_method
    if method == "none":
        raise two_factor.OtpNotEnabled("This user has no two-factor authentication to reset")
    await two_factor.reset(db, user)
    await revoke_sessions(db, user.uuid)
    details = {"method": method}
    record_event(db, user.uuid, "otp_reset", by=_by(actor), client=client, details=details)
    record_audit(db, actor, "user.2fa_reset", AuditTarget.of_user(user), client, details)
    await db.commit()
    send_security_notice(
        settings,
        mailer,
        user,
        what="Two-factor authentication was turned off by an administrator",
        more="You now sign in with your password alone; turn two-factor authentication "
        "on again in your account settings.",
    )
    return user


async def clear_login_lock(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    actor: User | None,
    user_uuid: str,
    client: ClientInfo,
) -> None:
    """Forget the failed passwords and codes counted against the account, so that it
    may sign in again at once (the per-address limits and a device's own allowance
    are not the account's lock and stay)."""
    user = await tool_target(db, actor, user_uuid, "clear_login_lock")
    for action in LOCK_ACTIONS:
        await guard.clear(action, account=user.uuid)
    # Wrong two-factor codes also count in the database (per account, over a window):
    # their challenges end, and their failures no longer count.
    await db.execute(
        update(OtpChallenge)
        .where(OtpChallenge.user_uuid == user.uuid, OtpChallenge.failed_attempts > 0)
        .values(failed_attempts=0, used_at=func.coalesce(OtpChallenge.used_at, now_epoch()))
        .execution_options(synchronize_session=False)
    )
    record_event(db, user.uuid, "login_lock_cleared", by=_by(actor), client=client)
    record_audit(db, actor, "user.login_lock_cleared", AuditTarget.of_user(user), client)
    await db.commit()
    send_security_notice(
        settings,
        mailer,
        user,
        what="An administrator cleared the lock on your sign-ins",
        more="Too many failed sign-ins had locked your account for a while; it may sign "
        "in again now.",
    )


async def list_sessions(db: AsyncSession, actor: User | None, user_uuid: str) -> list[Session]:
    """The user's open sessions, newest first."""
    user = await tool_target(db, actor, user_uuid, "list_sessions")
    sessions = await db.scalars(
        select(Session)
        .where(
            Session.user_uuid == user.uuid,
            Session.revoked_at.is_(None),
            Session.expires_at > now_epoch(),
        )
        .order_by(Session.created_at.desc(), Session.id)
    )
    return list(sessions)


async def revoke_user_sessions(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    actor: User | None,
    user_uuid: str,
    client: ClientInfo,
    *,
    session_id: str | None = None,
) -> int:
    """End one session of the user (``session_id``) or all of them; their access
    tokens are refused at once, on every replica. Returns how many ended."""
    user = await tool_target(db, actor, user_uuid, "revoke_sessions")
    if session_id is None:
        ended = await revoke_sessions(db, user.uuid)
        details: dict[str, object] = {"sessions": ended}
    else:
        result = await bulk_write(
            db,
            update(Session)
            .where(
                Session.id == session_id,
                Session.user_uuid == user.uuid,
                Session.revoked_at.is_(None),
            )
            .values(revoked_at=now_epoch()),
            users=[user.uuid],
        )
        ended = rows_matched(result)
        if ended != 1:
            raise SessionNotFound()
        details = {"session": session_id}
    record_event(db, user.uuid, "sessions_revoked", by=_by(actor), client=client, details=details)
    record_audit(db, actor, "user.sessions_revoked", AuditTarget.of_user(user), client, details)
    await db.commit()
    if ended:
        send_security_notice(
            settings,
            mailer,
            user,
            what="An administrator signed you out",
            more="Sign in again on the devices you use.",
        )
    return ended


async def send_password_reset(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    actor: User | None,
    user_uuid: str,
    client: ClientInfo,
) -> None:
    """Mail the user a password-reset link, as ``/auth/password/forgot`` would: only to
    a verified address, of an active account, within the same per-address allowance."""
    user = await tool_target(db, actor, user_uuid, "send_password_reset")
    if not mailer.enabled:
        raise EmailDisabled()
    if not user.is_active and user.deactivated_reason != "password_forgot":
        raise UserInactive()
    if not user.email_verified:
        raise EmailNotVerified()
    await guard.spend("forgot", account=user.email)
    record_event(db, user.uuid, "password_reset_sent", by=_by(actor), client=client)
    # The link is made after the commit and mailed only: it is in neither record.
    record_audit(db, actor, "user.password_reset_sent", AuditTarget.of_user(user), client)
    await db.commit()
    await mail_reset_link(db, settings, mailer, user)


async def list_external_accounts(
    db: AsyncSession, actor: User | None, user_uuid: str
) -> list[ExternalAccount]:
    """The provider accounts linked to the user, by provider."""
    user = await tool_target(db, actor, user_uuid, "list_external_accounts")
    accounts = await db.scalars(
        select(ExternalAccount)
        .where(ExternalAccount.user_uuid == user.uuid)
        .order_by(ExternalAccount.provider)
    )
    return list(accounts)


async def unlink_external_account(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    actor: User | None,
    user_uuid: str,
    provider: str,
    client: ClientInfo,
) -> None:
    """Unlink the user's account of ``provider`` (one they do not know, say), unless it
    is their only way to sign in: the same rule as their own unlink."""
    user = await tool_target(db, actor, user_uuid, "unlink_external_account")
    try:
        await remove_link(db, user, provider)
    except LastLoginMethod:
        raise LastLoginMethod(
            "This is the user's only way to sign in (no password, no other provider, no passkey)"
        ) from None
    details = {"provider": provider}
    record_event(db, user.uuid, "oauth_unlinked", by=_by(actor), client=client, details=details)
    record_audit(db, actor, "user.provider_unlinked", AuditTarget.of_user(user), client, details)
    await db.commit()
    send_security_notice(
        settings,
        mailer,
        user,
        what=f"An administrator unlinked a {provider_label(provider)} account from yours",
        more="Signing in with that account no longer opens yours.",
    )
