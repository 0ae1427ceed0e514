"""Request and response models of the users and admin routers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.config import Settings
from app.core.picture_links import signed_picture_url
from app.models import User
from app.schemas.common import RequestModel
from app.schemas.fields import CurrentPassword, Description, Email

Role = Literal["admin", "moderator", "tester", "user"]


class UserPublic(BaseModel):
    """A user as anyone signed in sees them."""

    uuid: str
    username: str
    display_name: str
    description: str | None
    picture_url: str = Field(
        description="The profile picture (uploaded or generated): a signed URL that needs "
        "no Authorization header (for an ``<img>``). It changes with the picture and "
        "expires within hours (PICTURE_URL_SECONDS): read the profile again for a new one."
    )
    created_at: int


class UserPrivate(UserPublic):
    """A user as the owner and staff see them."""

    email: str
    email_verified: bool
    pending_email: str | None = Field(
        description="A new email waiting for the link mailed to it to be followed; "
        "``email`` stays in force until then."
    )
    roles: list[str]
    otp_method: str
    is_active: bool
    is_external_only: bool
    updated_at: int


def public_view(user: User, settings: Settings) -> UserPublic:
    """What others see of ``user``."""
    return UserPublic(
        uuid=user.uuid,
        username=user.username,
        display_name=user.display_name,
        description=user.description,
        picture_url=signed_picture_url(settings, user),
        created_at=user.created_at,
    )


def private_view(user: User, settings: Settings) -> UserPrivate:
    """What the owner and staff see of ``user``."""
    return UserPrivate(
        **public_view(user, settings).model_dump(),
        email=user.email,
        email_verified=user.email_verified,
        pending_email=user.pending_email,
        roles=list(user.roles),
        otp_method=user.otp_method,
        is_active=user.is_active,
        is_external_only=user.is_external_only,
        updated_at=user.updated_at,
    )


class UserSelfUpdate(RequestModel):
    """Fields a user may change on their own account; anything else is refused (422)."""

    display_name: str | None = Field(default=None, max_length=31)
    email: Email | None = Field(
        default=None,
        description="A new email: it applies once the link mailed to it is followed, "
        "and needs ``current_password`` (or a re-authenticated session).",
    )
    description: Description = None
    current_password: CurrentPassword = None


class DeleteAccountRequest(RequestModel):
    """Confirms a deletion (or leave it out after a re-authentication)."""

    current_password: CurrentPassword = None


class AdminUserUpdate(RequestModel):
    """What staff may change: roles (admins) and the active flag (ban / unban)."""

    roles: list[Role] | None = Field(default=None, min_length=1, max_length=4)
    is_active: bool | None = None


class UserPage(BaseModel):
    """A page of users, the total matching the filters, and where the next page starts."""

    items: list[UserPrivate]
    total: int | None = Field(
        description="Users matching the filters; null when a cursor was given or "
        "`with_total=false` (counting costs a pass over every match)."
    )
    offset: int
    limit: int
    next_cursor: str | None = Field(
        description="Send as `cursor` to get the next page; null on the last page."
    )


class HistoryEntry(BaseModel):
    """One event of a user's history."""

    model_config = ConfigDict(from_attributes=True)

    action: str
    at: int = Field(description="Epoch seconds.")
    by: str | None = Field(description="UUID of who did it; null for the system.")
    ip: str | None
    details: dict[str, Any]


class HistoryPage(BaseModel):
    """A page of a user's history, newest first."""

    items: list[HistoryEntry]
    total: int
    offset: int
    limit: int
