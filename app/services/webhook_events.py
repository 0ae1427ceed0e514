"""Which history actions leave the service as webhook events, and what they carry.

The history writer (:func:`app.services.history.record_event`) calls
:func:`queue_event` for every action, in the transaction of the change: an action
listed in ``EVENTS`` adds a row to the ``webhook_event`` outbox, which the delivery
worker sends once the transaction has committed (and never if it rolls back).

A payload follows the Standard Webhooks shape, ``{"type", "timestamp", "data"}``.
``data`` names the user (id, username, email, roles), who acted, and what changed;
it never carries a password, hash, token, code or secret: each event copies only the
detail keys it lists, whatever the history entry holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import uuid4

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.util import identity_key

from app.models import User, WebhookEvent

Details = Mapping[str, Any]

#: The event types an endpoint may subscribe to (EVENT_TYPES says what each means).
WebhookEventType = Literal[
    "user.created",
    "user.verified",
    "user.updated",
    "user.deleted",
    "user.banned",
    "user.unbanned",
    "session.created",
    "password.changed",
    "2fa.changed",
    "oauth.linked",
    "oauth.unlinked",
    "role.changed",
]


@dataclass(frozen=True)
class EventSpec:
    """A webhook event type made from a history action: the type and its facts."""

    type: str
    facts: Callable[[Details], dict[str, Any]]


def _none(_details: Details) -> dict[str, Any]:
    return {}


def _picked(*keys: str, **fixed: Any) -> Callable[[Details], dict[str, Any]]:
    """Copy only ``keys`` from the history details, and add the constants ``fixed``."""

    def facts(details: Details) -> dict[str, Any]:
        return {**{key: details[key] for key in keys if key in details}, **fixed}

    return facts


def _fields(*fields: str) -> Callable[[Details], dict[str, Any]]:
    def facts(_details: Details) -> dict[str, Any]:
        return {"fields": list(fields)}

    return facts


def _profile_fields(details: Details) -> dict[str, Any]:
    return {"fields": [str(field) for field in details.get("fields", [])]}


def _email_changed(details: Details) -> dict[str, Any]:
    return {"fields": ["email"], "previous_email": details.get("from")}


def _session(details: Details) -> dict[str, Any]:
    return {"session_id": details.get("session")}


def _roles(details: Details) -> dict[str, Any]:
    return {"from": list(details.get("from", [])), "to": list(details.get("to", []))}


#: History action -> webhook event. The event types are the keys of EVENT_TYPES.
EVENTS: dict[str, EventSpec] = {
    "signup": EventSpec("user.created", _none),
    "email_verified": EventSpec("user.verified", _picked("email")),
    "profile_updated": EventSpec("user.updated", _profile_fields),
    "email_changed": EventSpec("user.updated", _email_changed),
    "email_change_undone": EventSpec("user.updated", _fields("email")),
    "picture_changed": EventSpec("user.updated", _fields("picture")),
    "picture_removed": EventSpec("user.updated", _fields("picture")),
    "deletion_requested": EventSpec("user.deleted", _none),
    "banned": EventSpec("user.banned", _none),
    "unbanned": EventSpec("user.unbanned", _none),
    "login": EventSpec("session.created", _session),
    "password_changed": EventSpec("password.changed", _picked(reset=False)),
    "password_reset": EventSpec("password.changed", _picked(reset=True)),
    "otp_enabled": EventSpec("2fa.changed", _picked("method", enabled=True)),
    "otp_disabled": EventSpec("2fa.changed", _picked("method", enabled=False)),
    "otp_reset": EventSpec("2fa.changed", _picked("method", enabled=False)),
    "oauth_linked": EventSpec("oauth.linked", _picked("provider")),
    "oauth_unlinked": EventSpec("oauth.unlinked", _picked("provider")),
    "roles_changed": EventSpec("role.changed", _roles),
}

#: Every event type an endpoint may subscribe to, with what it means.
EVENT_TYPES: dict[str, str] = {
    "user.created": "An account was created (sign-up, provider sign-up, admin, first admin).",
    "user.verified": "The account's email was verified.",
    "user.updated": "Profile fields, the email or the picture changed (`fields` names them).",
    "user.deleted": "The account was deleted (its data is removed right after).",
    "user.banned": "An admin or moderator banned the account; its sessions ended.",
    "user.unbanned": "The account was unbanned.",
    "session.created": "The user signed in (any way: password, provider, passkey).",
    "password.changed": "The password was changed, or reset (`reset`).",
    "2fa.changed": "Two-factor authentication was turned on or off (`enabled`, `method`).",
    "oauth.linked": "A provider account was linked (`provider`).",
    "oauth.unlinked": "A provider account was unlinked (`provider`).",
    "role.changed": "The account's roles changed (`from`, `to`).",
}

#: History actions that stay inside the service (failed attempts, ceremonies, reads,
#: and changes no other system needs). A new action must join EVENTS or this set.
NOT_SENT = frozenset(
    {
        "email_released",
        "file_deleted",
        "file_updated",
        "file_uploaded",
        "login_failed",
        "login_lock_cleared",
        "login_otp_required",
        "logout",
        "logout_all",
        "otp_failed",
        "otp_setup",
        "passkey_added",
        "passkey_removed",
        "passkey_renamed",
        "password_check_failed",
        "password_forgot",
        "password_reset_sent",
        "reauthenticated",
        "recovery_code_used",
        "recovery_codes_regenerated",
        "refresh_token_reused",
        "session_revoked",
        "sessions_revoked",
        "user_blocked",
        "user_unblocked",
    }
)


def _loaded_user(db: AsyncSession, user_uuid: str) -> dict[str, Any] | None:
    """The values of the user's row as the transaction has them, when the session
    holds that user (it does for nearly every change), without a query."""
    user = db.identity_map.get(identity_key(User, user_uuid))
    if user is None:
        user = next(
            (obj for obj in db.new if isinstance(obj, User) and obj.uuid == user_uuid), None
        )
    # Loaded attributes only: reading an expired one would query (not allowed here).
    return dict(inspect(user).dict) if user is not None else None


def user_summary(db: AsyncSession, user_uuid: str) -> dict[str, Any]:
    """Who the event is about: id, username, email, whether verified, roles."""
    values = _loaded_user(db, user_uuid) or {}
    summary: dict[str, Any] = {"id": user_uuid}
    for key in ("username", "email", "email_verified", "roles"):
        if key in values:
            summary[key] = list(values[key]) if key == "roles" else values[key]
    return summary


def timestamp_now() -> str:
    """Now, ISO 8601 in UTC with a ``Z`` (the Standard Webhooks payload's timestamp)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_message_id() -> str:
    """A ``webhook-id``: unique per event, the same for every attempt."""
    return f"msg_{uuid4().hex}"


def queue_event(
    db: AsyncSession, user_uuid: str, action: str, by: str | None, details: Details
) -> None:
    """Add the webhook event of history ``action`` to the outbox, in the caller's
    transaction; nothing when the action is not one that leaves the service."""
    spec = EVENTS.get(action)
    if spec is None:
        return
    user = user_summary(db, user_uuid)
    facts = spec.facts(details)
    if spec.type == "role.changed":
        user["roles"] = facts["to"]  # recorded just before the roles are written
    payload = {
        "type": spec.type,
        "timestamp": timestamp_now(),
        "data": {"user": user, "actor_id": by, **facts},
    }
    db.add(
        WebhookEvent(
            message_id=new_message_id(), type=spec.type, user_uuid=user_uuid, payload=payload
        )
    )
