"""Shapes of the admin audit log (``GET /admin/audit``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditEntry(BaseModel):
    """One staff action: who, what, on what, when, from where."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: int = Field(description="Epoch seconds.")
    actor_uuid: str | None = Field(description="Who acted; null for the command line.")
    actor_name: str = Field(
        description="Their username when they acted, `cli:<OS user>` for the command "
        "line, `service` for the service itself.",
        examples=["alice"],
    )
    actor_role: str = Field(
        description="Their most powerful role when they acted (`admin`, `moderator`), or "
        "`cli`, `system`.",
        examples=["admin"],
    )
    action: str = Field(examples=["user.banned"])
    target_type: str = Field(examples=["user"])
    target_id: str | None = Field(description="A user's UUID, a flag's name, ...")
    target_display: str | None = Field(
        description="The target's name when the action happened (a username, a flag)."
    )
    ip: str | None = Field(description="The actor's address; null off the API.")
    user_agent: str | None
    details: dict[str, Any] = Field(
        description='What changed (`{"from": [...], "to": [...]}` for roles, say); never a secret.',
    )


class AuditPage(BaseModel):
    """A page of the audit log, newest first, and where the next page starts."""

    items: list[AuditEntry]
    limit: int
    next_cursor: str | None = Field(
        description="Send as `cursor` to get the next page; null on the last page."
    )
