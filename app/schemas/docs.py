"""Schemas of the interactive docs' own endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DocsToken(BaseModel):
    """The docs session's access token, for Swagger UI's "Try it out"."""

    access_token: str = Field(description="Access token of the docs session (a JWT).")
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.", ge=0)
