"""Request and response models of the users router."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.fields import Description, Email


class UserPrivate(BaseModel):
    """A user as the owner (and staff) see it."""

    model_config = ConfigDict(from_attributes=True)

    uuid: str
    username: str
    display_name: str
    email: str
    email_verified: bool
    roles: list[str]
    otp_method: str
    description: str | None
    is_active: bool
    is_external_only: bool
    created_at: int
    updated_at: int


class UserSelfUpdate(BaseModel):
    """Fields a user may change on their own account; anything else is refused (422)."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = Field(default=None, max_length=31)
    email: Email | None = None
    description: Description = None
