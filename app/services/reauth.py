"""Re-authentication: proof, at the moment of a sensitive change, that the caller is
the account's owner and not someone holding a stolen access token.

Sensitive changes (email, password, two-factor settings, linking a provider, deleting
an account) need one of:

- the current password, sent with the request (checked under the same brute-force
  guard as logins: failures count against the account and are recorded in its
  history);
- a session re-authenticated within REAUTH_WINDOW_SECONDS: by ``POST
  /auth/reauthenticate`` (the password, or for accounts without one a two-factor
  code), or, for accounts without a password, by the provider login that opened it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.database import release_connection
from app.core.errors import AppError
from app.core.security import PasswordCheckBusy, verify_password
from app.models import Session, User, now_epoch
from app.services.context import ClientInfo
from app.services.history import record_event

#: The brute-force guard's bucket: a password checked anywhere counts as a login attempt.
GUARD_ACTION = "login"


class WrongPassword(AppError):
    """A password given to confirm a sensitive change is wrong."""

    status_code = 400
    code = "WRONG_PASSWORD"
    detail = "The current password is incorrect"


class ReauthenticationRequired(AppError):
    """A sensitive change without a recent proof of identity."""

    status_code = 403
    code = "REAUTHENTICATION_REQUIRED"
    detail = (
        "Confirm it is you: send the current password, or re-authenticate at "
        "/auth/reauthenticate (accounts without a password: a two-factor code, or sign "
        "in again with your provider) and retry within a few minutes"
    )


async def confirm_password(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    user: User,
    password: str,
    client: ClientInfo,
    *,
    purpose: str,
) -> None:
    """Check a signed-in user's current password, or raise WrongPassword.

    Attempts count like logins (per address, failures per account: the account-wide
    allowance, a session is no device token). Call it before changing anything: it
    ends the transaction so that no database connection waits on bcrypt.
    """
    await guard.attempt(GUARD_ACTION, address=client.ip)
    slot = await guard.claim(GUARD_ACTION, account=user.uuid)
    await release_connection(db)
    try:
        valid = await verify_password(
            password, user.hashed_password, settings.PASSWORD_BCRYPT_ROUNDS
        )
    except PasswordCheckBusy:
        await guard.forgive(slot)  # nothing was checked: the attempt does not count
        raise
    if valid:
        await guard.forgive(slot)
        return
    record_event(
        db,
        user.uuid,
        "password_check_failed",
        by=user.uuid,
        client=client,
        details={"purpose": purpose},
    )
    await db.commit()
    raise WrongPassword()


def recently_authenticated(settings: Settings, session: Session) -> bool:
    """Was ``session`` re-authenticated within REAUTH_WINDOW_SECONDS?"""
    at = session.reauthenticated_at
    return at is not None and at >= now_epoch() - settings.REAUTH_WINDOW_SECONDS


async def require_recent_auth(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    user: User,
    session: Session,
    password: str | None,
    client: ClientInfo,
    *,
    purpose: str,
) -> None:
    """The caller (``user`` on ``session``) proves it is them, or the change is refused.

    A password, when given, is checked (a wrong one is WrongPassword even if the
    session is fresh); else the session must be recently re-authenticated
    (ReauthenticationRequired). Call it before changing anything.
    """
    if password is not None:
        await confirm_password(db, settings, guard, user, password, client, purpose=purpose)
    else:
        require_fresh_session(settings, session)


def require_fresh_session(settings: Settings, session: Session) -> None:
    """ReauthenticationRequired unless ``session`` was recently re-authenticated (for
    changes that cannot carry a password, such as a redirect to a provider)."""
    if not recently_authenticated(settings, session):
        raise ReauthenticationRequired()
