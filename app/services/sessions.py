"""Sessions and tokens: opening, refreshing and ending logins.

A login opens a ``session`` row; its access JWT names the session (``sid``), and every
request checks that session (``app.core.authentication``), so logout, password
changes, bans and deletions refuse the token at once. Refresh tokens rotate on each
use, and a session remembers (hashed) every token it replaced: presenting any of them
ends the session (one leaked, or the client is confused, and either way it must log
in).
"""

from __future__ import annotations

from loguru import logger
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.auth_cache import bulk_write
from app.core.authentication import Auth
from app.core.config import Settings
from app.core.database import rows_matched
from app.core.errors import NotFound, Unauthorized
from app.core.security import hash_secret, new_refresh_token
from app.core.signing_keys import Keyring
from app.models import RotatedRefreshToken, Session, User, new_uuid, now_epoch
from app.schemas.auth import TokenPair
from app.services.context import ClientInfo
from app.services.history import record_event

_USER_AGENT_MAX = 512


class InvalidRefreshToken(Unauthorized):
    """The refresh token is unknown, expired, or its session has ended."""

    code = "INVALID_REFRESH_TOKEN"
    detail = "Invalid or expired refresh token"


class RefreshTokenReused(Unauthorized):
    """A refresh token that was already exchanged came back: the session is ended."""

    code = "REFRESH_TOKEN_REUSED"
    detail = "This refresh token was already used; the session has been ended"


# Sessions ------------------------------------------------------------------------------


def _refresh_lifetime_seconds(settings: Settings) -> int:
    return settings.REFRESH_TOKEN_EXP_DAYS * 86400


def _token_pair(
    settings: Settings, keyring: Keyring, session: Session, refresh_token: str
) -> TokenPair:
    lifetime = settings.JWT_EXP * 60
    access = keyring.sign_access_token(
        subject=session.user_uuid, session_id=session.id, expires_in_seconds=lifetime
    )
    return TokenPair(access_token=access, refresh_token=refresh_token, expires_in=lifetime)


async def start_session(
    db: AsyncSession, settings: Settings, keyring: Keyring, user: User, client: ClientInfo
) -> TokenPair:
    """Open a session for ``user`` (credentials checked by the caller) and commit.

    An account without a password logs in only through a provider (or a provider and
    a second factor): that login is as fresh a proof of identity as it can give, so
    the session starts re-authenticated (``app.services.reauth``).
    """
    refresh_token = new_refresh_token()
    now = now_epoch()
    session = Session(
        id=new_uuid(),
        user_uuid=user.uuid,
        refresh_token_hash=hash_secret(refresh_token),
        created_at=now,
        last_used_at=now,
        expires_at=now + _refresh_lifetime_seconds(settings),
        user_agent=(client.user_agent or "")[:_USER_AGENT_MAX] or None,
        ip=client.ip,
        reauthenticated_at=now if user.hashed_password is None else None,
    )
    db.add(session)
    record_event(
        db, user.uuid, "login", by=user.uuid, client=client, details={"session": session.id}
    )
    await db.commit()
    return _token_pair(settings, keyring, session, refresh_token)


async def revoke_sessions(
    db: AsyncSession, user_uuid: str, *, keep_session_id: str | None = None
) -> int:
    """End every open session of a user (but ``keep_session_id``); the caller commits."""
    statement = (
        update(Session)
        .where(Session.user_uuid == user_uuid, Session.revoked_at.is_(None))
        .values(revoked_at=now_epoch())
    )
    if keep_session_id is not None:
        statement = statement.where(Session.id != keep_session_id)
    result = await bulk_write(db, statement, users=[user_uuid])
    return rows_matched(result)


# Refresh -------------------------------------------------------------------------------


async def refresh(
    db: AsyncSession, settings: Settings, keyring: Keyring, refresh_token: str, client: ClientInfo
) -> TokenPair:
    """Trade a refresh token for a new pair; the old refresh token stops working.

    The swap is one conditional UPDATE, so two parallel uses of one token cannot both
    succeed: the loser is treated as a reuse and the session ends. The replaced token
    joins the session's rotated tokens in the same transaction, so no moment exists
    in which it is neither current nor known as replaced.
    """
    presented = hash_secret(refresh_token)
    row = (
        await db.execute(
            select(Session, User)
            .join(User, User.uuid == Session.user_uuid)
            .where(Session.refresh_token_hash == presented)
        )
    ).first()
    if row is None:
        await _end_session_of_reused_token(db, presented, client)
        raise InvalidRefreshToken()
    session, user = row
    now = now_epoch()
    if session.revoked_at is not None or session.expires_at <= now or not user.is_active:
        raise InvalidRefreshToken()
    new_token = new_refresh_token()
    swapped = await bulk_write(
        db,
        update(Session)
        .where(
            Session.id == session.id,
            Session.refresh_token_hash == presented,
            Session.revoked_at.is_(None),
        )
        .values(refresh_token_hash=hash_secret(new_token), last_used_at=now)
        .execution_options(synchronize_session=False),
        # A rotation leaves the session open: a cached copy keeps answering, and its
        # last_used_at is read from the database only (the session list).
        users=[],
    )
    if rows_matched(swapped) != 1:
        # Another use of this token won (then this one is a reuse), or the session
        # was ended meanwhile.
        await db.rollback()
        await _end_session_of_reused_token(db, presented, client)
        raise InvalidRefreshToken()
    await db.execute(
        insert(RotatedRefreshToken).values(
            token_hash=presented, session_id=session.id, rotated_at=now
        )
    )
    await db.commit()
    return _token_pair(settings, keyring, session, new_token)


async def _end_session_of_reused_token(
    db: AsyncSession, presented_hash: str, client: ClientInfo
) -> None:
    """End the session that replaced this token and raise; return if none did."""
    session = await db.scalar(
        select(Session)
        .join(RotatedRefreshToken, RotatedRefreshToken.session_id == Session.id)
        .where(RotatedRefreshToken.token_hash == presented_hash)
    )
    if session is None:
        return
    # Conditional, so that of many parallel reuses exactly one ends the session and
    # records it.
    ended = await bulk_write(
        db,
        update(Session)
        .where(Session.id == session.id, Session.revoked_at.is_(None))
        .values(revoked_at=now_epoch())
        .execution_options(synchronize_session=False),
        users=[session.user_uuid],
    )
    if rows_matched(ended) == 1:
        user = await db.get(User, session.user_uuid)
        if user is not None:
            record_event(
                db,
                user.uuid,
                "refresh_token_reused",
                client=client,
                details={"session": session.id},
            )
        await db.commit()
        logger.warning("refresh token reuse: session {} ended", session.id)
    raise RefreshTokenReused()


# Logout and sessions -------------------------------------------------------------------


async def logout(db: AsyncSession, auth: Auth, client: ClientInfo) -> None:
    """End the current session."""
    await bulk_write(
        db,
        update(Session)
        .where(Session.id == auth.session.id, Session.revoked_at.is_(None))
        .values(revoked_at=now_epoch()),
        users=[auth.user.uuid],
    )
    record_event(db, auth.user.uuid, "logout", by=auth.user.uuid, client=client)
    await db.commit()


async def logout_all(db: AsyncSession, auth: Auth, client: ClientInfo) -> None:
    """End every session of the current user, this one included."""
    ended = await revoke_sessions(db, auth.user.uuid)
    record_event(
        db,
        auth.user.uuid,
        "logout_all",
        by=auth.user.uuid,
        client=client,
        details={"sessions": ended},
    )
    await db.commit()


async def list_sessions(db: AsyncSession, auth: Auth) -> list[tuple[Session, bool]]:
    """The user's open sessions, newest first, each with "is this the current one"."""
    sessions = await db.scalars(
        select(Session)
        .where(
            Session.user_uuid == auth.user.uuid,
            Session.revoked_at.is_(None),
            Session.expires_at > now_epoch(),
        )
        .order_by(Session.created_at.desc(), Session.id)
    )
    return [(session, session.id == auth.session.id) for session in sessions]


async def revoke_own_session(
    db: AsyncSession, auth: Auth, session_id: str, client: ClientInfo
) -> None:
    """End one of the caller's sessions; someone else's is "not found"."""
    result = await bulk_write(
        db,
        update(Session)
        .where(
            Session.id == session_id,
            Session.user_uuid == auth.user.uuid,
            Session.revoked_at.is_(None),
        )
        .values(revoked_at=now_epoch()),
        users=[auth.user.uuid],
    )
    if rows_matched(result) != 1:
        raise NotFound("No such session", code="SESSION_NOT_FOUND")
    record_event(
        db,
        auth.user.uuid,
        "session_revoked",
        by=auth.user.uuid,
        client=client,
        details={"session": session_id},
    )
    await db.commit()
