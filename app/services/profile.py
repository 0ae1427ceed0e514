"""Self-service changes to one's profile: display name, description, and the email,
whose change waits for the new address's confirmation and can be undone from the old."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.authentication import Auth
from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.email import Mailer
from app.core.errors import AppError
from app.core.security import create_one_time_token, password_fingerprint
from app.models import User
from app.schemas.fields import display_name_matches
from app.services.accounts import (
    EMAIL_VERIFY_MAX_AGE_SECONDS,
    check_deliverability,
    commit_or_conflict,
    ensure_email_available,
)
from app.services.audit import record_if_staff_action
from app.services.context import ClientInfo
from app.services.directory import target_user
from app.services.history import record_event
from app.services.mail_links import LinkPage, mail_link
from app.services.notices import send_security_notice
from app.services.reauth import require_recent_auth

EMAIL_CHANGE_PURPOSE = "email-change"
EMAIL_CHANGE_UNDO_PURPOSE = "email-change-undo"
#: The old address may undo a change for a week (it may be read late).
EMAIL_CHANGE_UNDO_MAX_AGE_SECONDS = 7 * 86400


class InvalidDisplayName(AppError):
    """The display name is not the username."""

    status_code = 422
    code = "DISPLAY_NAME_MISMATCH"
    detail = (
        "display_name must be the username, with capitals allowed and spaces "
        "in place of underscores"
    )


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
            link=mail_link(settings, LinkPage.CONFIRM_EMAIL_CHANGE, confirm),
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
        action_link=mail_link(settings, LinkPage.UNDO_EMAIL_CHANGE, undo),
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
    user = await target_user(db, actor, user_uuid, "update")
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
        if "email" in changed:  # applied at once (no mail): no longer verified
            details = {**details, "email_verified": user.email_verified}
        record_if_staff_action(db, actor, "user.updated", user, client, details)
        await commit_or_conflict(db)
    if pending_email is not None:
        _mail_email_change(settings, mailer, user, pending_email)
    return user
