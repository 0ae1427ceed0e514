"""Deleting a user: deactivate at once, then remove the files and the row, and finish
later what failed half-way."""

from __future__ import annotations

from loguru import logger
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.auth_cache import bulk_write
from app.core.authentication import Auth
from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.storage import storage_for
from app.models import File, User
from app.services.audit import record_if_staff_action
from app.services.context import ClientInfo
from app.services.directory import target_user
from app.services.history import record_event
from app.services.moderation import set_user_fields
from app.services.reauth import require_recent_auth
from app.services.sessions import revoke_sessions


def user_prefix(user_uuid: str) -> str:
    """The storage prefix (folder) of a user's uploads."""
    return f"users/{user_uuid}/"


async def delete_user(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    auth: Auth,
    user_uuid: str,
    password: str | None,
    client: ClientInfo,
) -> None:
    """Delete a user (self, or admin): deactivate first, then remove data, then the row.

    Deletion cannot be undone, so the caller re-authenticates (``password``, or a
    recently re-authenticated session). The first step is committed on its own: if a
    later one fails, the account stays inactive (its tokens refused) and
    :func:`finish_pending_deletions` completes it.
    """
    actor = auth.user
    user = await target_user(db, actor, user_uuid, "delete")
    await require_recent_auth(
        db, settings, guard, actor, auth.session, password, client, purpose="account_deletion"
    )
    await set_user_fields(db, user, {"is_active": False, "deactivated_reason": "deleting"})
    await revoke_sessions(db, user.uuid)
    record_event(db, user.uuid, "deletion_requested", by=actor.uuid, client=client)
    record_if_staff_action(db, actor, "user.deleted", user, client)
    await db.commit()
    try:
        await purge_user(db, settings, user_uuid)
    except Exception as error:  # the account is already inactive; the scheduler retries
        await db.rollback()
        logger.error(
            "deletion of user {} failed half-way ({}: {}); it will be retried",
            user_uuid,
            type(error).__name__,
            error,
        )


async def purge_user(db: AsyncSession, settings: Settings, user_uuid: str) -> None:
    """Remove a deactivated user's files, links and row. Raises when a step fails."""
    # Everything stored for a user lives in their folder (an admin's upload for them too).
    owned_files = (
        await db.scalars(select(File).where(File.file_path.like(f"users/{user_uuid}/%")))
    ).all()
    for file in owned_files:
        await db.delete(file)
    await bulk_write(db, delete(User).where(User.uuid == user_uuid), users=[user_uuid])
    await db.commit()
    try:
        await storage_for(settings).delete_prefix(user_prefix(user_uuid))
    except Exception as error:  # the row is gone: the orphan cleanup takes the rest
        logger.error("files of deleted user {} not removed: {}", user_uuid, type(error).__name__)
    logger.info("user {} deleted", user_uuid)


async def finish_pending_deletions(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> int:
    """Complete deletions that failed half-way (for the scheduler). Returns how many."""
    async with session_factory() as db:
        pending = (
            await db.scalars(select(User.uuid).where(User.deactivated_reason == "deleting"))
        ).all()
    done = 0
    for user_uuid in pending:
        async with session_factory() as db:
            try:
                await purge_user(db, settings, user_uuid)
                done += 1
            except Exception as error:  # keep going; the next run retries
                logger.error(
                    "deletion of user {} failed again: {}", user_uuid, type(error).__name__
                )
    return done
