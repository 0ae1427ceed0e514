"""Maintenance jobs: purge what expired, finish deletions, trim histories, remove orphans.

Each returns what it did, for the log. The scheduler (``app.core.scheduler``) runs
them periodically; ``python -m app.cli purge`` runs them at once.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.auth_cache import bulk_write
from app.core.config import Settings
from app.core.database import rows_matched
from app.core.scheduler import Job
from app.models import File, OtpChallenge, Session, UsedToken, User, WebAuthnChallenge, now_epoch
from app.services.deletion import finish_pending_deletions
from app.services.history import trim_history

#: Revoked sessions are kept a day (for the user's own session list), then purged.
REVOKED_SESSION_KEEP_SECONDS = 86400
#: Finished or dead 2FA challenges are kept a day (the throttle reads 15 minutes back).
OTP_CHALLENGE_KEEP_SECONDS = 86400
#: A file on disk without a row is removed only once this old: an upload in progress
#: writes its bytes just before its row.
ORPHAN_MIN_AGE_SECONDS = 3600


async def purge_expired(session_factory: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Delete expired or long-revoked sessions, expired used-link records, old challenges."""
    now = now_epoch()
    async with session_factory() as db:
        sessions = await bulk_write(
            db,
            delete(Session).where(
                or_(
                    Session.expires_at <= now,
                    Session.revoked_at <= now - REVOKED_SESSION_KEEP_SECONDS,
                )
            ),
            # Expired and revoked sessions are never in the auth cache.
            users=[],
        )
        tokens = await db.execute(delete(UsedToken).where(UsedToken.expires_at <= now))
        challenges = await db.execute(
            delete(OtpChallenge).where(OtpChallenge.created_at <= now - OTP_CHALLENGE_KEEP_SECONDS)
        )
        # A passkey ceremony's challenge is of no use once expired.
        ceremonies = await db.execute(
            delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at <= now)
        )
        await db.commit()
    return {
        "sessions": rows_matched(sessions),
        "used_tokens": rows_matched(tokens),
        "otp_challenges": rows_matched(challenges),
        "webauthn_challenges": rows_matched(ceremonies),
    }


async def finish_deletions(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> dict[str, int]:
    """Complete user deletions that failed half-way."""
    return {"users_deleted": await finish_pending_deletions(session_factory, settings)}


async def trim_histories(session_factory: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Keep each user's newest HISTORY_MAX_ENTRIES history events, delete the older ones."""
    async with session_factory() as db:
        trimmed = await trim_history(db)
        await db.commit()
    return {"events": trimmed}


async def remove_orphan_files(
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    min_age_seconds: int = ORPHAN_MIN_AGE_SECONDS,
) -> dict[str, int]:
    """Delete files under DATA_DIR/users with no row, and folders of users who are gone."""
    async with session_factory() as db:
        known = set(await db.scalars(select(File.file_path)))
        users = set(await db.scalars(select(User.uuid)))
    root = settings.DATA_DIR / "users"
    return await asyncio.to_thread(_sweep, root, settings.DATA_DIR, known, users, min_age_seconds)


def _sweep(
    root: Path, data_dir: Path, known: set[str], users: set[str], min_age_seconds: int
) -> dict[str, int]:
    removed_files = removed_folders = 0
    if not root.is_dir():
        return {"files": 0, "folders": 0}
    cutoff = time.time() - min_age_seconds
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            relative = path.relative_to(data_dir).as_posix()
            if path.is_file() and relative not in known and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed_files += 1
        if folder.name not in users and not any(folder.iterdir()):
            folder.rmdir()
            removed_folders += 1
    return {"files": removed_files, "folders": removed_folders}


def maintenance_jobs(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> list[Job]:
    """The jobs the scheduler runs, with their periods."""
    return [
        Job("purge_expired", 3600, partial(purge_expired, session_factory)),
        Job("finish_deletions", 600, partial(finish_deletions, session_factory, settings)),
        Job("remove_orphan_files", 86400, partial(remove_orphan_files, session_factory, settings)),
        Job("trim_history", 3600, partial(trim_histories, session_factory)),
    ]
