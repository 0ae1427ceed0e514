"""Maintenance jobs: purge what expired, finish deletions, trim histories and the audit
log, remove orphans, drop old webhook deliveries.

Each returns what it did, for the log. The scheduler (``app.core.scheduler``) runs
them periodically; ``python -m app.cli purge`` runs them at once.
"""

from __future__ import annotations

import time
from functools import partial

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.auth_cache import bulk_write
from app.core.config import Settings
from app.core.database import rows_matched
from app.core.scheduler import Job
from app.core.storage import storage_for
from app.models import (
    File,
    OidcCode,
    OidcGrant,
    OtpChallenge,
    Session,
    SigningKey,
    UsedToken,
    User,
    WebAuthnChallenge,
    now_epoch,
)
from app.services.audit import trim_audit_log
from app.services.deletion import finish_pending_deletions
from app.services.history import trim_history
from app.services.webhook_delivery import purge_old_deliveries

#: Revoked sessions are kept a day (for the user's own session list), then purged.
REVOKED_SESSION_KEEP_SECONDS = 86400
#: Finished or dead 2FA challenges are kept a day (the throttle reads 15 minutes back).
OTP_CHALLENGE_KEEP_SECONDS = 86400
#: Stored bytes without a row are removed only once this old: an upload in progress
#: writes its bytes just before its row.
ORPHAN_MIN_AGE_SECONDS = 3600


async def purge_expired(session_factory: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Delete expired or long-revoked sessions, expired used-link records, old challenges,
    signing keys no longer published."""
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
        # A key retired long enough ago that every token it signed has expired.
        keys = await db.execute(delete(SigningKey).where(SigningKey.publish_until <= now))
        # OpenID Connect: codes past their minute, grants ended or run out.
        codes = await db.execute(delete(OidcCode).where(OidcCode.expires_at <= now))
        grants = await db.execute(
            delete(OidcGrant).where(
                or_(
                    OidcGrant.expires_at <= now,
                    OidcGrant.revoked_at <= now - REVOKED_SESSION_KEEP_SECONDS,
                )
            )
        )
        await db.commit()
    return {
        "sessions": rows_matched(sessions),
        "used_tokens": rows_matched(tokens),
        "otp_challenges": rows_matched(challenges),
        "webauthn_challenges": rows_matched(ceremonies),
        "signing_keys": rows_matched(keys),
        "oidc_codes": rows_matched(codes),
        "oidc_grants": rows_matched(grants),
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


async def trim_audit(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> dict[str, int]:
    """Delete the audit log's rows older than AUDIT_RETENTION_DAYS."""
    async with session_factory() as db:
        trimmed = await trim_audit_log(db, settings.AUDIT_RETENTION_DAYS)
        await db.commit()
    return {"audit_events": trimmed}


async def remove_orphan_files(
    session_factory: async_sessionmaker[AsyncSession],
    settings: Settings,
    min_age_seconds: int = ORPHAN_MIN_AGE_SECONDS,
) -> dict[str, int]:
    """Delete stored files under ``users/`` with no row (on either storage backend), and
    the empty folders of users who are gone (local storage; a bucket has no folders)."""
    storage = storage_for(settings)
    cutoff = time.time() - min_age_seconds
    # Listed before the rows are read: an upload whose row is committed meanwhile is
    # too young to be taken anyway.
    candidates = [
        found.key async for found in storage.list_keys("users/") if found.modified_at < cutoff
    ]
    async with session_factory() as db:
        known = set(await db.scalars(select(File.file_path)))
        users = set(await db.scalars(select(User.uuid)))
    orphans = [key for key in candidates if key not in known]
    await storage.delete(orphans)
    folders = await storage.remove_empty_folders("users/", keep=users)
    return {"files": len(orphans), "folders": folders}


def maintenance_jobs(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> list[Job]:
    """The jobs the scheduler runs, with their periods (MAINTENANCE_PERIOD_SECONDS, when
    set, for all)."""

    def every(seconds: int) -> int:
        return settings.MAINTENANCE_PERIOD_SECONDS or seconds

    return [
        Job("purge_expired", every(3600), partial(purge_expired, session_factory)),
        Job("finish_deletions", every(600), partial(finish_deletions, session_factory, settings)),
        Job(
            "remove_orphan_files",
            every(86400),
            partial(remove_orphan_files, session_factory, settings),
        ),
        Job("trim_history", every(3600), partial(trim_histories, session_factory)),
        Job(
            "purge_webhook_deliveries",
            every(3600),
            partial(purge_old_deliveries, session_factory, settings),
        ),
        Job("trim_audit_log", every(86400), partial(trim_audit, session_factory, settings)),
    ]
