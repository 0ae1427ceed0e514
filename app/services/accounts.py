"""Accounts: creating them (sign-up, the command line, the first admin) and finding them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from email_validator import EmailNotValidError, validate_email
from loguru import logger
from sqlalchemy import String, and_, cast, func, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.breached_passwords import ensure_not_breached
from app.core.config import Settings
from app.core.database import release_connection
from app.core.email import Mailer
from app.core.errors import AppError, Conflict
from app.core.one_time_codes import new_otp_secret
from app.core.permissions import ALL_ROLES
from app.core.security import create_one_time_token, hash_password, password_problem
from app.models import User, new_uuid, now_epoch
from app.schemas.common import check_text
from app.schemas.fields import check_email, check_username
from app.services.audit import SERVICE, AuditTarget, Operator, record_audit
from app.services.context import SYSTEM, ClientInfo
from app.services.history import record_event
from app.services.mail_links import LinkPage, mail_link

EMAIL_VERIFY_PURPOSE = "email-verify"
EMAIL_VERIFY_MAX_AGE_SECONDS = 48 * 3600


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
    """Refuse an email whose domain cannot receive mail (DNS), when mail really leaves."""
    # Console mail is printed, never delivered: a developer's made-up addresses are fine.
    if settings.EMAIL_METHOD in ("none", "console") or not settings.EMAIL_CHECK_DELIVERABILITY:
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
    link = mail_link(settings, LinkPage.VERIFY_EMAIL, token)
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
    """Register a local account and mail its verification link.

    A password known from a breach is refused (when PASSWORD_BREACH_CHECK_URL is set).
    """
    await ensure_not_breached(settings, password, field="password")
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


def has_role(role: str, entity: Any = User):
    """The SQL condition that ``entity`` (the user table, or an alias of it) holds ``role``."""
    # Roles are a JSON list; its text form holds each role in double quotes on both backends.
    return cast(entity.roles, String).like(f'%"{role}"%')


async def count_admins(db: AsyncSession) -> int:
    """How many accounts hold the admin role."""
    return await db.scalar(select(func.count()).select_from(User).where(has_role("admin"))) or 0


class InvalidAdmin(AppError):
    """The first admin's details break a rule."""

    status_code = 422
    code = "INVALID_ADMIN"


async def create_admin(
    db: AsyncSession,
    settings: Settings,
    *,
    username: str,
    email: str,
    password: str,
    operator: Operator | None = None,
) -> User:
    """Create an admin account, checking the sign-up rules: by the command line
    (``operator`` None), or by the service at start (FIRST_ADMIN_*, ``SERVICE``).
    The audit log records who made it."""
    try:
        username = check_username(username)
        email = check_email(email)
    except ValueError as error:
        raise InvalidAdmin(str(error)) from None
    problem = password_problem(password)
    if problem is not None:
        raise InvalidAdmin("password " + problem[1])
    user = await create_user(
        db,
        settings,
        username=username,
        email=email,
        password=password,
        roles=ALL_ROLES,
        email_verified=True,
        commit=False,
    )
    details = {"roles": list(user.roles)}
    record_audit(db, operator, "user.created", AuditTarget.of_user(user), details=details)
    await commit_or_conflict(db)
    logger.info("admin {} created", user.uuid)
    return user


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
                db, settings, username=username, email=email, password=password, operator=SERVICE
            )
        except AppError as error:
            logger.error("first admin not created: {}", error.detail)
            return
    logger.info("first admin {!r} created ({})", user.username, user.uuid)
