"""Creating and changing users: the single owner of those rules."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from loguru import logger
from sqlalchemy import String, and_, cast, delete, exists, func, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.database import release_connection, rows_matched
from app.core.email import Mailer
from app.core.errors import AppError, Conflict, NotFound, PermissionDenied
from app.core.otp import new_otp_secret
from app.core.permissions import ALL_ROLES, check_permission, require_permission, ungivable_roles
from app.core.security import (
    create_one_time_token,
    hash_password,
    password_fingerprint,
    password_problem,
)
from app.models import File, User, new_uuid, now_epoch
from app.schemas.common import check_text
from app.schemas.fields import check_email, check_username, display_name_matches
from app.services.auth_cache import USER_OMITTED, AuthCache, snapshot
from app.services.context import SYSTEM, ClientInfo
from app.services.history import read_events, record_event
from app.services.notices import send_security_notice
from app.services.reauth import require_recent_auth
from app.services.sessions import Auth, revoke_sessions

EMAIL_VERIFY_PURPOSE = "email-verify"
EMAIL_VERIFY_MAX_AGE_SECONDS = 48 * 3600
EMAIL_CHANGE_PURPOSE = "email-change"
EMAIL_CHANGE_UNDO_PURPOSE = "email-change-undo"
#: The old address may undo a change for a week (it may be read late).
EMAIL_CHANGE_UNDO_MAX_AGE_SECONDS = 7 * 86400


class UsernameTaken(Conflict):
    """Another account has this username."""

    code = "USERNAME_TAKEN"
    detail = "This username is already taken"


class EmailTaken(Conflict):
    """Another account has this email."""

    code = "EMAIL_TAKEN"
    detail = "This email is already used by another account"


class EmailUndeliverable(AppError):
    """The email's domain cannot receive mail."""

    status_code = 422
    code = "EMAIL_UNDELIVERABLE"
    detail = "This email address cannot receive mail"


class InvalidDisplayName(AppError):
    """The display name is not the username."""

    status_code = 422
    code = "DISPLAY_NAME_MISMATCH"
    detail = (
        "display_name must be the username, with capitals allowed and spaces "
        "in place of underscores"
    )


async def find_user_by_login(db: AsyncSession, identifier: str) -> User | None:
    """The user whose username or email is ``identifier`` (case-insensitive)."""
    value = identifier.strip().lower()
    try:
        check_text(value)
    except ValueError:
        return None  # no account is named with a NUL or a lone surrogate
    column = User.email if "@" in value else User.username
    return await db.scalar(select(User).where(column == value))


async def get_user(db: AsyncSession, user_uuid: str) -> User | None:
    """The user with this UUID, or None."""
    return await db.get(User, user_uuid)


async def check_deliverability(settings: Settings, email: str) -> None:
    """Refuse an email whose domain cannot receive mail (DNS), when email is on."""
    if settings.EMAIL_METHOD == "none" or not settings.EMAIL_CHECK_DELIVERABILITY:
        return
    try:
        await asyncio.to_thread(validate_email, email, check_deliverability=True)
    except EmailNotValidError as error:
        raise EmailUndeliverable(f"This email address cannot receive mail: {error}") from None


async def _ensure_available(db: AsyncSession, username: str | None, email: str | None) -> None:
    if username is not None and await db.scalar(select(User.uuid).where(User.username == username)):
        raise UsernameTaken()
    if email is not None:
        await ensure_email_available(db, email)


async def ensure_email_available(db: AsyncSession, email: str, *, owner: str | None = None) -> None:
    """EmailTaken when another account (not ``owner``) has ``email``, or keeps it as the
    address it may return to (a recent email change can be undone from the old
    address, so nobody may take that address meanwhile)."""
    holder = await db.scalar(
        select(User.uuid).where(
            or_(
                User.email == email,
                and_(User.previous_email == email, User.previous_email_until > now_epoch()),
            ),
            User.uuid != owner if owner is not None else true(),
        )
    )
    if holder is not None:
        raise EmailTaken()


def _conflict_from(error: IntegrityError) -> Conflict:
    message = str(error.orig).lower()
    if "username" in message:
        return UsernameTaken()
    if "email" in message:
        return EmailTaken()
    return Conflict("This account conflicts with an existing one")


async def commit_or_conflict(db: AsyncSession) -> None:
    """Commit; a unique-constraint race becomes the 409 it stands for."""
    try:
        await db.commit()
    except IntegrityError as error:
        await db.rollback()
        raise _conflict_from(error) from None


async def create_user(
    db: AsyncSession,
    settings: Settings,
    *,
    username: str,
    email: str,
    password: str | None,
    display_name: str | None = None,
    description: str | None = None,
    roles: Sequence[str] = ("user",),
    email_verified: bool = False,
    is_external_only: bool = False,
    client: ClientInfo = SYSTEM,
    created_by: str | None = None,
    check_email_deliverability: bool = True,
    commit: bool = True,
) -> User:
    """Create a user after checking that username and email are free.

    Two concurrent calls with the same username or email: the database's unique
    constraints let one through, the other gets :class:`UsernameTaken` or
    :class:`EmailTaken`. With ``commit=False`` the user is only added to the session:
    the caller adds what belongs with it and commits (with :func:`commit_or_conflict`),
    so that a failure leaves nothing half-made.
    """
    if check_email_deliverability:
        await check_deliverability(settings, email)
    hashed = None
    if password:
        await release_connection(db)
        hashed = await hash_password(password, settings.PASSWORD_BCRYPT_ROUNDS)
    # Checked after the slow hash, just before the insert that the unique constraints
    # guard: a reserved address (see ensure_email_available) has no constraint.
    await _ensure_available(db, username, email)
    user = User(
        uuid=new_uuid(),
        username=username,
        display_name=display_name or username,
        email=email,
        email_verified=email_verified,
        hashed_password=hashed,
        roles=list(roles),
        description=description,
        is_external_only=is_external_only,
        otp_secret=new_otp_secret(),
        blocked_uuids=[],
    )
    db.add(user)
    record_event(db, user.uuid, "signup", by=created_by or user.uuid, client=client)
    if commit:
        await commit_or_conflict(db)
        logger.info("user {} created ({})", user.uuid, ",".join(user.roles))
    return user


def send_verification_email(settings: Settings, mailer: Mailer, user: User) -> None:
    """Mail a single-use link that verifies the user's current email."""
    if not mailer.enabled or user.email_verified:
        return
    token = create_one_time_token(
        settings.JWT_SECRET_KEY, EMAIL_VERIFY_PURPOSE, {"uuid": user.uuid, "email": user.email}
    )
    link = f"{settings.BASE_URL}{settings.API_STR}/auth/email/verify?token={token}"
    mailer.send_later(
        mailer.render(
            "verify_email",
            to=user.email,
            subject=f"Verify your email for {settings.PROJECT_NAME}",
            display_name=user.display_name,
            link=link,
            valid_hours=EMAIL_VERIFY_MAX_AGE_SECONDS // 3600,
        )
    )


async def signup(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    *,
    username: str,
    email: str,
    password: str,
    display_name: str | None,
    description: str | None,
    client: ClientInfo,
) -> User:
    """Register a local account and mail its verification link."""
    user = await create_user(
        db,
        settings,
        username=username,
        email=email,
        password=password,
        display_name=display_name,
        description=description,
        client=client,
    )
    send_verification_email(settings, mailer, user)
    return user


def email_change_tokens(settings: Settings, user: User, new_email: str) -> tuple[str, str]:
    """The confirmation token (for the new address) and the undo token (for the old).

    The confirmation dies with a password change or reset (``pwd``): the owner's
    answer to an unexpected notice must stop the change. The undo token does not.
    """
    payload = {"uuid": user.uuid, "email": user.email, "new_email": new_email}
    confirm = {**payload, "pwd": password_fingerprint(user.hashed_password)}
    return (
        create_one_time_token(settings.JWT_SECRET_KEY, EMAIL_CHANGE_PURPOSE, confirm),
        create_one_time_token(settings.JWT_SECRET_KEY, EMAIL_CHANGE_UNDO_PURPOSE, payload),
    )


def _mail_email_change(settings: Settings, mailer: Mailer, user: User, new_email: str) -> None:
    confirm, undo = email_change_tokens(settings, user, new_email)
    mailer.send_later(
        mailer.render(
            "confirm_email_change",
            to=new_email,
            subject=f"Confirm your new email for {settings.PROJECT_NAME}",
            display_name=user.display_name,
            link=f"{settings.FRONTEND_URL}/confirm-email-change?token={confirm}",
            valid_hours=EMAIL_VERIFY_MAX_AGE_SECONDS // 3600,
        )
    )
    send_security_notice(
        settings,
        mailer,
        user,
        what=f"A change of your account's email to {new_email} was asked for",
        more=(
            "It takes effect when the link mailed to the new address is followed; until "
            "then this address stays the account's."
        ),
        action_link=f"{settings.FRONTEND_URL}/undo-email-change?token={undo}",
        action_label="It was not me: keep this address, sign out everywhere and choose a "
        "new password",
        valid_days=EMAIL_CHANGE_UNDO_MAX_AGE_SECONDS // 86400,
    )


async def update_profile(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    auth: Auth,
    user_uuid: str,
    changes: dict[str, Any],
    client: ClientInfo,
) -> User:
    """Apply the self-service fields (display name, email, description) to a user the
    caller may update (themself, or anyone for an admin).

    A new email needs the caller's re-authentication (``current_password``, or a
    recently re-authenticated session). It is only pending until the link mailed to
    it is followed: the current email stays in force meanwhile, and, when verified,
    is told of the change with a link that undoes it. Without email (EMAIL_METHOD=none)
    the new email applies at once, unverified. Setting the email back to the current
    one cancels a pending change.
    """
    actor = auth.user
    user = await _target(db, actor, user_uuid, "update")
    password = changes.pop("current_password", None)
    new_email: str | None = changes.get("email")
    asked_email = new_email if new_email is not None and new_email != user.email else None
    if asked_email is not None:
        await require_recent_auth(
            db, settings, guard, actor, auth.session, password, client, purpose="email_change"
        )
        await check_deliverability(settings, asked_email)
        await ensure_email_available(db, asked_email, owner=user.uuid)
    changed: list[str] = []
    if "display_name" in changes:
        display_name = changes["display_name"] or user.username
        if not display_name_matches(str(display_name), user.username):
            raise InvalidDisplayName()
        if display_name != user.display_name:
            user.display_name = str(display_name)
            changed.append("display_name")
    if "description" in changes and changes["description"] != user.description:
        user.description = changes["description"]
        changed.append("description")
    # With email the new address is pending until verified; without, it applies at once.
    pending_email = asked_email if mailer.enabled else None
    if pending_email is not None:
        # Each request mails the new address: limited per account and per address.
        await guard.spend("email_change", account=user.uuid)
        await guard.spend("email_change", account=pending_email)
    if asked_email is not None and pending_email is None:
        user.email = asked_email
        user.email_verified = False
        user.pending_email = None
        changed.append("email")
    elif pending_email is not None:
        user.pending_email = pending_email
        changed.append("pending_email")
    elif new_email is not None and user.pending_email is not None:
        user.pending_email = None  # back to the current email: the change is cancelled
        changed.append("pending_email")
    if changed:
        details: dict[str, Any] = {"fields": changed}
        if asked_email is not None:
            details["email"] = asked_email
        record_event(
            db, user.uuid, "profile_updated", by=actor.uuid, client=client, details=details
        )
        await commit_or_conflict(db)
    if pending_email is not None:
        _mail_email_change(settings, mailer, user, pending_email)
    return user


async def count_admins(db: AsyncSession) -> int:
    """How many accounts hold the admin role."""
    return await db.scalar(select(func.count()).select_from(User).where(_has_role("admin"))) or 0


class InvalidAdmin(AppError):
    """The first admin's details break a rule."""

    status_code = 422
    code = "INVALID_ADMIN"


async def create_admin(
    db: AsyncSession, settings: Settings, *, username: str, email: str, password: str
) -> User:
    """Create an admin account (CLI and FIRST_ADMIN_*), checking the sign-up rules."""
    try:
        username = check_username(username)
        email = check_email(email)
    except ValueError as error:
        raise InvalidAdmin(str(error)) from None
    problem = password_problem(password)
    if problem is not None:
        raise InvalidAdmin("password " + problem[1])
    return await create_user(
        db,
        settings,
        username=username,
        email=email,
        password=password,
        roles=ALL_ROLES,
        email_verified=True,
    )


async def ensure_first_admin(
    session_factory: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """Create the FIRST_ADMIN_* account at start, once, when no admin exists yet."""
    username = settings.FIRST_ADMIN_USERNAME
    email = settings.FIRST_ADMIN_EMAIL
    password = settings.FIRST_ADMIN_PASSWORD
    if not (username or email or password):
        return
    if not (username and email and password):
        logger.warning(
            "FIRST_ADMIN_USERNAME, FIRST_ADMIN_EMAIL and FIRST_ADMIN_PASSWORD must all be set: "
            "no admin created"
        )
        return
    async with session_factory() as db:
        if await count_admins(db):
            return
        try:
            user = await create_admin(
                db, settings, username=username, email=email, password=password
            )
        except AppError as error:
            logger.error("first admin not created: {}", error.detail)
            return
    logger.info("first admin {!r} created ({})", user.username, user.uuid)


# Reading, listing, changing and deleting other users ------------------------------------


class UserNotFound(NotFound):
    """No such user, or one the caller may not see."""

    code = "USER_NOT_FOUND"
    detail = "User not found"


class LastAdmin(Conflict):
    """The change would leave no active admin."""

    code = "LAST_ADMIN"
    detail = "This would leave the service without an active admin"


class InvalidBlock(AppError):
    """Blocking oneself."""

    status_code = 422
    code = "INVALID_BLOCK"
    detail = "You cannot block yourself"


async def get_visible_user(db: AsyncSession, actor: User, user_uuid: str) -> tuple[User, bool]:
    """The user ``actor`` asks for, and whether the private view applies.

    Someone who blocked the actor, an inactive account (for non-staff) and a UUID
    that does not exist all look the same: 404.
    """
    user = await get_user(db, user_uuid)
    if user is None:
        raise UserNotFound()
    return _visible(actor, user)


async def read_visible_user(
    session_factory: async_sessionmaker[AsyncSession], cache: AuthCache, actor: User, user_uuid: str
) -> tuple[User, bool]:
    """:func:`get_visible_user` for routes that only read: a read-only copy, from the
    cache or, on a miss, from a session opened only then."""
    user = cache.user(user_uuid)
    if user is None:
        generation = cache.generation
        async with session_factory() as db:
            loaded = await get_user(db, user_uuid)
        if loaded is None:
            raise UserNotFound()
        user = cache.store_user(generation, loaded) or snapshot(loaded, USER_OMITTED)
    return _visible(actor, user)


def _visible(actor: User, user: User) -> tuple[User, bool]:
    require_permission(actor, "user", "read", user, hide_as=UserNotFound)
    return user, bool(check_permission(actor, "user", "read_private", user))


async def _target(db: AsyncSession, actor: User, user_uuid: str, action: str) -> User:
    """The user an action is about; 404 when invisible, 403 when visible but not allowed."""
    user, _ = await get_visible_user(db, actor, user_uuid)
    require_permission(actor, "user", action, user)
    return user


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _has_role(role: str, entity: Any = User):
    # Roles are a JSON list; its text form holds each role in double quotes on both backends.
    return cast(entity.roles, String).like(f'%"{role}"%')


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
        conditions.append(_has_role(role))
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
    user = await _target(db, actor, user_uuid, "read_history")
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


async def _set_user_fields(db: AsyncSession, user: User, values: dict[str, Any]) -> None:
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
        _has_role("admin", other), other.is_active.is_(True), other.uuid != user.uuid
    )
    result = await db.execute(
        update(User)
        .where(User.uuid == user.uuid, another_admin)
        .values(**values)
        .execution_options(synchronize_session="fetch", auth_cache_users=[user.uuid])
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
            record_event(
                db,
                user.uuid,
                "roles_changed",
                by=actor.uuid,
                client=client,
                details={"from": list(user.roles), "to": new_roles},
            )
            values["roles"] = new_roles
    if is_active is not None and is_active != user.is_active:
        if user.deactivated_reason == "deleting":
            raise Conflict("This account is being deleted", code="USER_BEING_DELETED")
        values["is_active"] = is_active
        values["deactivated_reason"] = None if is_active else "banned"
        record_event(
            db, user.uuid, "unbanned" if is_active else "banned", by=actor.uuid, client=client
        )
    await _set_user_fields(db, user, values)
    if values.get("is_active") is False:
        await revoke_sessions(db, user.uuid)
    await db.commit()
    return user


# Deletion ------------------------------------------------------------------------------


def user_data_dir(settings: Settings, user_uuid: str) -> Path:
    """Where a user's uploads live."""
    return settings.DATA_DIR / "users" / user_uuid


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
    user = await _target(db, actor, user_uuid, "delete")
    await require_recent_auth(
        db, settings, guard, actor, auth.session, password, client, purpose="account_deletion"
    )
    await _set_user_fields(db, user, {"is_active": False, "deactivated_reason": "deleting"})
    await revoke_sessions(db, user.uuid)
    record_event(db, user.uuid, "deletion_requested", by=actor.uuid, client=client)
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
    paths = [settings.DATA_DIR / file.file_path for file in owned_files]
    for file in owned_files:
        await db.delete(file)
    await db.execute(
        delete(User).where(User.uuid == user_uuid).execution_options(auth_cache_users=[user_uuid])
    )
    await db.commit()
    await asyncio.to_thread(_remove_paths, paths, user_data_dir(settings, user_uuid))
    logger.info("user {} deleted", user_uuid)


def _remove_paths(paths: list[Path], directory: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)


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
