"""The one place that writes and reads a user's history (the ``user_event`` table)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.database import rows_matched
from app.models import UserEvent, now_epoch
from app.services.context import ClientInfo
from app.services.webhook_events import queue_event

#: Entries kept per user; the retention job drops older ones (failed logins must not
#: grow a user's history forever).
HISTORY_MAX_ENTRIES = 500


def record_event(
    db: AsyncSession,
    user_uuid: str,
    action: str,
    *,
    by: str | None = None,
    client: ClientInfo | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append an event to the user's history, in the caller's transaction (it commits).

    An action other systems hear of (``app.services.webhook_events.EVENTS``) also goes
    to the webhook outbox, in the same transaction: committed together or not at all.

    Parameters
    ----------
    db
        The session whose commit records the event with the change it describes.
    user_uuid
        Whose history it is.
    action
        What happened, snake_case (``login``, ``password_changed``, ...).
    by
        UUID of who did it: the user, an admin, or None for the system.
    client
        Where the request came from.
    details
        Extra facts; never secrets.
    """
    db.add(
        UserEvent(
            user_uuid=user_uuid,
            action=action,
            at=now_epoch(),
            by=by,
            ip=client.ip if client else None,
            details=details or {},
        )
    )
    queue_event(db, user_uuid, action, by, details or {})


async def read_events(
    db: AsyncSession, user_uuid: str, *, offset: int, limit: int
) -> tuple[list[UserEvent], int]:
    """A page of the user's history, newest first, and how many events it holds."""
    total = await db.scalar(
        select(func.count()).select_from(UserEvent).where(UserEvent.user_uuid == user_uuid)
    )
    events = await db.scalars(
        select(UserEvent)
        .where(UserEvent.user_uuid == user_uuid)
        .order_by(UserEvent.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(events), total or 0


async def trim_history(db: AsyncSession, keep: int = HISTORY_MAX_ENTRIES) -> int:
    """Delete all but the newest ``keep`` events of every user (the caller commits)."""
    ranked = select(
        UserEvent.id,
        func.row_number()
        .over(partition_by=UserEvent.user_uuid, order_by=UserEvent.id.desc())
        .label("rank"),
    ).subquery()
    result = await db.execute(
        delete(UserEvent).where(UserEvent.id.in_(select(ranked.c.id).where(ranked.c.rank > keep)))
    )
    return rows_matched(result)
