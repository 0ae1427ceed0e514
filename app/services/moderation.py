"""Changing other users: roles and bans (staff), blocks (anyone), and the rule that the
service always keeps an active admin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.core.auth_cache import bulk_write
from app.core.database import rows_matched
from app.core.errors import AppError, Conflict, PermissionDenied
from app.core.permissions import check_permission, require_permission, ungivable_roles
from app.models import User
from app.services.accounts import get_user, has_role
from app.services.audit import AuditTarget, record_audit
from app.services.context import ClientInfo
from app.services.directory import UserNotFound, get_visible_user
from app.services.history import record_event
from app.services.sessions import revoke_sessions


class LastAdmin(Conflict):
    """The change would leave no active admin."""

    code = "LAST_ADMIN"
    detail = "This would leave the service without an active admin"


class InvalidBlock(AppError):
    """Blocking oneself."""

    status_code = 422
    code = "INVALID_BLOCK"
    detail = "You cannot block yourself"


async def set_blocked(
    db: AsyncSession, actor: User, user_uuid: str, blocked: bool, client: ClientInfo
) -> None:
    """Block (or unblock) a user: they no longer see the actor's profile and files."""
    if user_uuid == actor.uuid:
        raise InvalidBlock()
    # Blocking someone who blocked you is allowed: check existence only.
    if blocked and await get_user(db, user_uuid) is None:
        raise UserNotFound()
    current = list(actor.blocked_uuids or [])
    if blocked and user_uuid not in current:
        actor.blocked_uuids = [*current, user_uuid]
    elif not blocked and user_uuid in current:
        actor.blocked_uuids = [uuid for uuid in current if uuid != user_uuid]
    else:
        return
    record_event(
        db,
        actor.uuid,
        "user_blocked" if blocked else "user_unblocked",
        by=actor.uuid,
        client=client,
        details={"user": user_uuid},
    )
    await db.commit()


#: Key of the PostgreSQL advisory lock taken by every change that may remove an admin.
ADMIN_GUARD_LOCK_KEY = 0x55534144  # "USAD"


def _removes_an_active_admin(user: User, values: dict[str, Any]) -> bool:
    if "admin" not in user.roles or not user.is_active:
        return False
    return values.get("is_active") is False or (
        "roles" in values and "admin" not in values["roles"]
    )


async def set_user_fields(db: AsyncSession, user: User, values: dict[str, Any]) -> None:
    """Apply ``values`` to ``user`` unless that would leave no active admin (LastAdmin).

    A change that demotes, bans or deletes an active admin is one conditional UPDATE
    that applies only while another active admin exists, so that two admins removing
    each other at the same moment cannot both succeed. On SQLite the statement runs
    under the database's single write lock; on PostgreSQL each statement sees the data
    committed when it starts, so such changes first take one advisory lock (held until
    commit) and the second one counts after the first has committed.
    """
    if not _removes_an_active_admin(user, values):
        for name, value in values.items():
            setattr(user, name, value)
        return
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(select(func.pg_advisory_xact_lock(ADMIN_GUARD_LOCK_KEY)))
    other = aliased(User)
    another_admin = exists().where(
        has_role("admin", other), other.is_active.is_(True), other.uuid != user.uuid
    )
    result = await bulk_write(
        db,
        update(User)
        .where(User.uuid == user.uuid, another_admin)
        .values(**values)
        .execution_options(synchronize_session="fetch"),
        users=[user.uuid],
    )
    if rows_matched(result) != 1:
        raise LastAdmin()


def _require_staff_action(actor: User, user: User, roles: bool, is_active: bool) -> None:
    """The actor may do what the body asks; for an empty body, something at all here
    (the answer shows the private view, so it must not come free with a no-op)."""
    actions = [
        action for action, asked in (("change_roles", roles), ("deactivate", is_active)) if asked
    ]
    if not actions and not any(
        check_permission(actor, "user", action, user) for action in ("change_roles", "deactivate")
    ):
        raise PermissionDenied("Not allowed to change this user")
    for action in actions:
        require_permission(actor, "user", action, user)


async def admin_update(
    db: AsyncSession,
    actor: User,
    user_uuid: str,
    *,
    roles: Sequence[str] | None,
    is_active: bool | None,
    client: ClientInfo,
) -> User:
    """Change roles (admins) and ban or unban (admins; moderators for non-staff).

    Permission is checked first, whatever the body asks, even when nothing would
    change. Nobody gives a role they do not hold, and the last active admin keeps the
    role and the account, also under concurrent changes. A ban ends every session of
    the user at once.
    """
    user, _ = await get_visible_user(db, actor, user_uuid)
    _require_staff_action(actor, user, roles is not None, is_active is not None)
    values: dict[str, Any] = {}
    if roles is not None:
        new_roles = list(dict.fromkeys(roles))
        added = [role for role in new_roles if role not in user.roles]
        refused = ungivable_roles(actor, added)
        if refused:
            raise PermissionDenied(
                f"You cannot give roles you do not hold: {', '.join(refused)}",
                code="ROLE_NOT_HELD",
            )
        if set(new_roles) != set(user.roles):
            change = {"from": list(user.roles), "to": new_roles}
            record_event(
                db, user.uuid, "roles_changed", by=actor.uuid, client=client, details=change
            )
            record_audit(db, actor, "user.role_changed", AuditTarget.of_user(user), client, change)
            values["roles"] = new_roles
    if is_active is not None and is_active != user.is_active:
        if user.deactivated_reason == "deleting":
            raise Conflict("This account is being deleted", code="USER_BEING_DELETED")
        values["is_active"] = is_active
        values["deactivated_reason"] = None if is_active else "banned"
        action = "unbanned" if is_active else "banned"
        record_event(db, user.uuid, action, by=actor.uuid, client=client)
        record_audit(db, actor, f"user.{action}", AuditTarget.of_user(user), client)
    # Refused (LAST_ADMIN) after the records were added: nothing is committed, they go too.
    await set_user_fields(db, user, values)
    if values.get("is_active") is False:
        await revoke_sessions(db, user.uuid)
    await db.commit()
    return user
