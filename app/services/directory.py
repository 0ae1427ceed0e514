"""Other users as the caller may see them: one user (404 when hidden), the list of
users, a user's history."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Select,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import AppError, NotFound
from app.core.permissions import check_permission, require_permission
from app.models import User
from app.services.accounts import get_user, has_role
from app.services.history import read_events
from app.services.listing import InvalidCursor, pack_cursor, starts_with, unpack_cursor


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


async def tool_target(db: AsyncSession, actor: User | None, user_uuid: str, action: str) -> User:
    """The user a staff tool is about, for ``actor`` (as :func:`target_user`), or for
    the command line (``actor`` None: an operator with the database, no check)."""
    if actor is not None:
        return await target_user(db, actor, user_uuid, action)
    user = await get_user(db, user_uuid)
    if user is None:
        raise UserNotFound()
    return user


class CursorWithOffset(AppError):
    """Both ways of saying where a page starts."""

    status_code = 422
    code = "CURSOR_WITH_OFFSET"
    detail = "Give either a cursor or an offset, not both"


def encode_cursor(user: User) -> str:
    """An opaque cursor for the page after ``user`` (its place in the list's order)."""
    return pack_cursor(user.created_at, user.uuid)


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(created_at, uuid) of a cursor from :func:`encode_cursor`; 422 otherwise."""
    created_at, uuid = unpack_cursor(cursor, 2)
    try:
        decoded = int(created_at), str(UUID(uuid))
    except ValueError:
        raise InvalidCursor() from None
    if not 0 <= decoded[0] < 2**63:  # the column's range
        raise InvalidCursor()
    return decoded


def listing_query(
    db: AsyncSession,
    *,
    search: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
) -> tuple[Select[User], list[ColumnElement[bool]]]:
    """The users matching the filters in the listing's order, and the filters alone
    (for the count). ``search`` is a prefix of the username, the display name (any
    case) or the email."""
    conditions: list[ColumnElement[bool]] = []
    if search:
        prefix = search.lower()
        conditions.append(
            or_(
                starts_with(db, User.username, prefix),
                starts_with(db, func.lower(User.display_name), prefix),
                starts_with(db, User.email, prefix),
            )
        )
    if role:
        conditions.append(has_role(role))
    if is_active is not None:
        conditions.append(User.is_active.is_(is_active))
    return select(User).where(*conditions).order_by(User.created_at, User.uuid), conditions


def after(query: Select[User], cursor: str) -> Select[User]:
    """``query`` from the user after the one ``cursor`` names: the database seeks
    there through the (created_at, uuid) index."""
    return query.where(tuple_(User.created_at, User.uuid) > tuple_(*decode_cursor(cursor)))


async def list_users(
    db: AsyncSession,
    actor: User,
    *,
    limit: int,
    offset: int = 0,
    cursor: str | None = None,
    with_total: bool = True,
    search: str | None = None,
    role: str | None = None,
    is_active: bool | None = None,
) -> tuple[list[User], int | None, str | None]:
    """A page of users in a stable order (creation time, then UUID), the total (when
    asked for and no cursor is given) and the cursor of the next page (None at the end).

    With ``cursor``, the page starts after the user it names, so a deep page costs
    what the first does, where ``offset`` walks past every skipped row.
    """
    require_permission(actor, "user", "list")
    if cursor is not None and offset:
        raise CursorWithOffset()
    query, conditions = listing_query(db, search=search, role=role, is_active=is_active)
    total = None
    if with_total and cursor is None:
        total = await db.scalar(select(func.count()).select_from(User).where(*conditions)) or 0
    if cursor is not None:
        query = after(query, cursor)
    # One row more than asked tells whether a next page exists.
    rows = list(await db.scalars(query.offset(offset).limit(limit + 1)))
    users = rows[:limit]
    next_cursor = encode_cursor(users[-1]) if len(rows) > limit else None
    return users, total, next_cursor


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
