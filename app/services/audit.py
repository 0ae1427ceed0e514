"""The admin audit log: the one place that writes and reads ``audit_event``.

Every action staff take with their powers (a role change, a ban, an account tool, a
flag change, an admin's change to someone else's account or files) and every admin
command of the command line is one row: who acted (UUID, username and role as they
were), what (a dotted action, ``user.banned``), on what (a target type, id and name as
they were), when, from where (address and user agent), and details without secrets.

:func:`record_audit` adds the row to the caller's session, so it is committed with the
change it records and rolled back with it: a refused or failed action leaves no row.
A feature that adds staff actions (webhook endpoints, OpenID Connect clients) calls it
the same way, with an :class:`AuditTarget` of its own type.

Admins read the log (``GET /admin/audit``, ``python -m app.cli audit``), newest first,
a cursor page at a time; the ``trim_audit_log`` job deletes rows older than
AUDIT_RETENTION_DAYS.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.database import rows_matched
from app.core.permissions import require_permission
from app.models import AuditEvent, User, now_epoch
from app.services.context import ClientInfo
from app.services.listing import InvalidCursor, pack_cursor, starts_with, unpack_cursor

#: ``user.banned``, ``flag.changed``, ``webhook.endpoint_created``: lower-case words
#: joined by dots, the first naming what the action is about.
ACTION = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
#: Words that name a secret: a details key containing one is refused (the log is read
#: by every admin and kept for AUDIT_RETENTION_DAYS; a secret has no place in it).
SECRET_WORDS = ("password", "token", "secret", "hash", "otp_code", "recovery_code", "key")
#: Details keys that contain a word above but hold no secret.
SAFE_KEYS = frozenset({"passkey"})
#: The roles that make an action a staff action, most powerful first.
STAFF_ROLES = ("admin", "moderator")
SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class Operator:
    """Who acts outside the API: the command line (as an OS user), or the service itself."""

    name: str
    role: str


def command_line() -> Operator:
    """The operator running a command: ``cli:<OS user>``."""
    try:
        who = getpass.getuser()
    except (OSError, KeyError):  # a container's uid without a passwd entry
        who = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return Operator(f"cli:{who}", "cli")


#: The service acting on its own settings (the FIRST_ADMIN_* account at start).
SERVICE = Operator("service", "system")


@dataclass(frozen=True)
class AuditTarget:
    """What an action is about: a type (``user``, ``flag``, ...), its id, and a name to
    show that outlives renames and deletions."""

    type: str
    id: str | None = None
    display: str | None = None

    @classmethod
    def of_user(cls, user: User) -> AuditTarget:
        """A user account, shown by its username."""
        return cls("user", user.uuid, user.username)

    @classmethod
    def of_flag(cls, name: str) -> AuditTarget:
        """A feature flag."""
        return cls("flag", name, name)


def _role_of(user: User) -> str:
    """The most powerful role the actor held when acting."""
    roles = list(user.roles or [])
    return next((role for role in STAFF_ROLES if role in roles), roles[0] if roles else "user")


def _refuse_secrets(details: Any, path: str = "details") -> None:
    if isinstance(details, dict):
        for key, value in details.items():
            name = str(key).lower()
            if name not in SAFE_KEYS and any(word in name for word in SECRET_WORDS):
                raise ValueError(f"{path}.{key}: the audit log never holds secrets")
            _refuse_secrets(value, f"{path}.{key}")
    elif isinstance(details, list):
        for item in details:
            _refuse_secrets(item, path)


def _cut(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


def record_audit(
    db: AsyncSession,
    actor: User | Operator | None,
    action: str,
    target: AuditTarget,
    client: ClientInfo | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add one staff action to the audit log, in the caller's transaction (it commits).

    Parameters
    ----------
    db
        The session whose commit makes the change: the row is written with it, and a
        rollback (a refusal raised after this call) drops it.
    actor
        The staff member acting (their UUID, username and most powerful role are
        kept as they are now); an :class:`Operator`; or None for the command line.
    action
        What was done, dotted lower-case (``user.banned``, ``flag.changed``).
    target
        What it was done to.
    client
        Where the request came from (address and user agent); None or ``SYSTEM`` off
        the API.
    details
        Facts an admin reading the log needs (``{"from": [...], "to": [...]}``), as
        JSON. Never secrets: a key naming one (password, token, secret, ...) raises.
    """
    if not ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} is not dotted lower-case words")
    _refuse_secrets(details or {})
    if isinstance(actor, User):
        actor_uuid, name, role = actor.uuid, actor.username, _role_of(actor)
    else:
        operator = actor or command_line()
        actor_uuid, name, role = None, operator.name, operator.role
    db.add(
        AuditEvent(
            at=now_epoch(),
            actor_uuid=actor_uuid,
            actor_name=_cut(name, 100),
            actor_role=role,
            action=action,
            target_type=target.type,
            target_id=_cut(target.id, 255),
            target_display=_cut(target.display, 255),
            ip=_cut(client.ip, 64) if client else None,
            user_agent=_cut(client.user_agent, 512) if client else None,
            details=details or {},
        )
    )


def record_if_staff_action(
    db: AsyncSession,
    actor: User,
    action: str,
    owner: User,
    client: ClientInfo | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """:func:`record_audit` for a change anyone may make to their own account, which is
    a staff action when ``actor`` makes it to someone else's (``owner``)."""
    if actor.uuid != owner.uuid:
        record_audit(db, actor, action, AuditTarget.of_user(owner), client, details)


def encode_cursor(event: AuditEvent) -> str:
    """An opaque cursor for the page after ``event`` (its place in the log's order)."""
    return pack_cursor(event.at, event.id)


def decode_cursor(cursor: str) -> tuple[int, int]:
    """(at, id) of a cursor from :func:`encode_cursor`; InvalidCursor otherwise."""
    at, event_id = unpack_cursor(cursor, 2)
    try:
        values = int(at), int(event_id)
    except ValueError:
        raise InvalidCursor() from None
    if not all(0 <= value < 2**63 for value in values):  # the columns' range
        raise InvalidCursor()
    return values


def _canonical_uuid(text: str) -> str | None:
    try:
        return str(UUID(text))
    except ValueError:
        return None


async def read_audit_log(
    db: AsyncSession,
    actor: User | None,
    *,
    limit: int,
    cursor: str | None = None,
    by: str | None = None,
    action: str | None = None,
    target: str | None = None,
    target_type: str | None = None,
    since: int | None = None,
    until: int | None = None,
) -> tuple[list[AuditEvent], str | None]:
    """A page of the audit log, newest first, and the cursor of the next (None at the
    end); ``actor`` None is the command line.

    Filters: ``by`` a UUID (the actor's) or a name (``alice``, ``cli:root``);
    ``action`` exact, or a prefix when it ends with ``*`` (``user.*``); ``target`` a
    target's id (a user's UUID, a flag's name); ``target_type``; ``since`` and
    ``until``, epoch seconds, both included. The order is (at, id), newest first: a
    cursor names the last row of its page, so rows recorded while a client walks the
    pages come before its cursor and neither repeat nor push others out of the walk.
    """
    if actor is not None:
        require_permission(actor, "audit", "read")
    conditions: list[ColumnElement[bool]] = []
    if by:
        uuid = _canonical_uuid(by)
        conditions.append(
            AuditEvent.actor_uuid == uuid if uuid is not None else AuditEvent.actor_name == by
        )
    if action:
        prefix = action.removesuffix("*")
        if action.endswith("*"):
            if prefix:
                conditions.append(starts_with(db, AuditEvent.action, prefix))
        else:
            conditions.append(AuditEvent.action == action)
    if target:
        conditions.append(AuditEvent.target_id == (_canonical_uuid(target) or target))
    if target_type:
        conditions.append(AuditEvent.target_type == target_type)
    if since is not None:
        conditions.append(AuditEvent.at >= since)
    if until is not None:
        conditions.append(AuditEvent.at <= until)
    query = select(AuditEvent).where(*conditions)
    if cursor is not None:
        query = query.where(tuple_(AuditEvent.at, AuditEvent.id) < tuple_(*decode_cursor(cursor)))
    # One row more than asked tells whether a next page exists.
    rows = list(
        await db.scalars(
            query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit + 1)
        )
    )
    events = rows[:limit]
    return events, encode_cursor(events[-1]) if len(rows) > limit else None


async def trim_audit_log(db: AsyncSession, retention_days: int) -> int:
    """Delete the rows older than ``retention_days`` (0 keeps every row); the caller
    commits. Returns how many went."""
    if retention_days <= 0:
        return 0
    cutoff = now_epoch() - retention_days * SECONDS_PER_DAY
    return rows_matched(await db.execute(delete(AuditEvent).where(AuditEvent.at < cutoff)))
