"""Other users as the caller may see them: one user (404 when hidden), the list of
users, a user's history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.core.permissions import check_permission, require_permission
from app.models import User
from app.services.accounts import get_user, has_role
from app.services.history import read_events


class UserNotFound(NotFound):
    """No such user, or one the caller may not see."""

    code = "USER_NOT_FOUND"
    detail = "User not found"


async def get_visible_user(db: AsyncSession, actor: User, user_uuid: str) -> tuple[User, bool]:
    """The user ``actor`` asks for, and whether the private view applies (see
    :func:`visible_user`)."""
    return visible_user(actor, await get_user(db, user_uuid))


def visible_user(actor: User, user: User | None) -> tuple[User, bool]:
    """``user`` as ``actor`` may see it, and whether the private view applies.

    Someone who blocked the actor, an inactive account (for non-staff) and a UUID
    that does not exist (None) all look the same: 404.
    """
    if user is None:
        raise UserNotFound()
    require_permission(actor, "user", "read", user, hide_as=UserNotFound)
    return user, bool(check_permission(actor, "user", "read_private", user))


async def target_user(db: AsyncSession, actor: User, user_uuid: str, action: str) -> User:
    """The user an action is about; 404 when invisible, 403 when visible but not allowed."""
    user, _ = await get_visible_user(db, actor, user_uuid)
    require_permission(actor, "user", action, user)
    return user


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_users(
    db: AsyncSession,
    actor: User,
    *,
    offset: int,
    limit: int,
    search: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
) -> tuple[list[User], int]:
    """A page of users in a stable order (creation time, then UUID), and the total."""
    require_permission(actor, "user", "list")
    conditions = []
    if search:
        pattern = f"%{_escape_like(search.lower())}%"
        conditions.append(
            or_(
                func.lower(User.username).like(pattern, escape="\\"),
                func.lower(User.email).like(pattern, escape="\\"),
                func.lower(User.display_name).like(pattern, escape="\\"),
            )
        )
    if role:
        conditions.append(has_role(role))
    if is_active is not None:
        conditions.append(User.is_active.is_(is_active))
    total = await db.scalar(select(func.count()).select_from(User).where(*conditions)) or 0
    users = await db.scalars(
        select(User)
        .where(*conditions)
        .order_by(User.created_at, User.uuid)
        .offset(offset)
        .limit(limit)
    )
    return list(users), total


async def read_history(
    db: AsyncSession, actor: User, user_uuid: str, *, offset: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of the user's history, newest first (owner and staff).

    Owners do not see the address of what someone else (an admin) did to their
    account: that is the other person's address.
    """
    user = await target_user(db, actor, user_uuid, "read_history")
    events, total = await read_events(db, user.uuid, offset=offset, limit=limit)
    own = actor.uuid == user.uuid
    entries = [
        {
            "action": event.action,
            "at": event.at,
            "by": event.by,
            "ip": None if own and event.by not in (None, actor.uuid) else event.ip,
            "details": event.details,
        }
        for event in events
    ]
    return entries, total
