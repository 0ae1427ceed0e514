"""Recovery codes: where they are kept, made, counted and used up.

Turning two-factor authentication on hands out :data:`RECOVERY_CODE_COUNT` codes, shown
once; each can stand in for the second factor once (the flows that use them are in
:mod:`app.services.two_factor`). Only a hash of each is stored
(:func:`app.core.one_time_codes.recovery_code_hash` says why a fast one is right). None
of these functions commits: the caller commits with the change they belong to.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.database import rows_matched
from app.core.one_time_codes import (
    new_recovery_code,
    normalized_recovery_code,
    recovery_code_hash,
)
from app.models import RecoveryCode, User, now_epoch

#: Codes handed out at a time.
RECOVERY_CODE_COUNT = 10


async def issue(db: AsyncSession, user_uuid: str) -> list[str]:
    """Replace the user's codes with :data:`RECOVERY_CODE_COUNT` new ones; returns them,
    the only time they exist in clear (the old ones stop working when the caller
    commits)."""
    # Lock the user's row: two parallel calls then run one after the other, and the
    # second deletes what the first made (else both sets could survive on PostgreSQL).
    await _lock_user(db, user_uuid)
    await clear(db, user_uuid)
    codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    now = now_epoch()
    for code in codes:
        db.add(
            RecoveryCode(
                user_uuid=user_uuid,
                code_hash=recovery_code_hash(user_uuid, code.replace("-", "")),
                created_at=now,
            )
        )
    await db.flush()
    return codes


async def _lock_user(db: AsyncSession, user_uuid: str) -> None:
    """Lock the user's row until commit (PostgreSQL; SQLite writes one at a time).

    Every change of the codes takes this lock first, so they all lock in one order
    (user, then codes) and never deadlock each other. ``FOR NO KEY UPDATE`` leaves the
    row's key free for the foreign-key checks of other writes (a new session, say).
    """
    await db.execute(
        select(User.uuid).where(User.uuid == user_uuid).with_for_update(key_share=True)
    )


async def clear(db: AsyncSession, user_uuid: str) -> None:
    """Delete every code of the user."""
    await db.execute(
        delete(RecoveryCode)
        .where(RecoveryCode.user_uuid == user_uuid)
        .execution_options(synchronize_session=False)
    )


async def count_left(db: AsyncSession, user_uuid: str) -> int:
    """How many of the user's codes are still unused."""
    left = await db.scalar(
        select(func.count())
        .select_from(RecoveryCode)
        .where(RecoveryCode.user_uuid == user_uuid, RecoveryCode.used_at.is_(None))
    )
    return left or 0


async def use(db: AsyncSession, user_uuid: str, code: str) -> bool:
    """Mark ``code`` used if it is one of the user's unused codes; True if it was.

    One conditional UPDATE: of parallel uses of one code, exactly one matches the row
    (on PostgreSQL the others wait for its lock, then find ``used_at`` set). The
    caller commits it with what the code was for, or rolls it back.
    """
    normalized = normalized_recovery_code(code)
    if normalized is None:
        return False
    await _lock_user(db, user_uuid)
    used = await db.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_uuid == user_uuid,
            RecoveryCode.code_hash == recovery_code_hash(user_uuid, normalized),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=now_epoch())
        .execution_options(synchronize_session=False)
    )
    return rows_matched(used) == 1
