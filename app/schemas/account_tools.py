"""Shapes of the admins' account tools (``/admin/user/{uuid}/...``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ExternalAccountInfo(BaseModel):
    """A provider account linked to a user, as the provider described it."""

    model_config = ConfigDict(from_attributes=True)

    provider: str = Field(examples=["github"])
    username: str | None
    display_name: str | None
    email: str | None
    created_at: int = Field(description="Epoch seconds at which it was linked.")


class ExternalAccountList(BaseModel):
    """The provider accounts linked to a user, by provider."""

    items: list[ExternalAccountInfo]


class SessionsRevoked(BaseModel):
    """How many sessions ended."""

    revoked: int
