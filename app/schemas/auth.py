"""Request and response models of the authentication router."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from app.core.oauth_client import PROVIDERS
from app.schemas.common import RequestModel
from app.schemas.fields import (
    CurrentPassword,
    Description,
    Email,
    GivenPassword,
    NewPassword,
    Username,
    display_name_matches,
)

PROVIDER_NAMES = (*PROVIDERS, "bluesky")
ProviderName = Literal[PROVIDER_NAMES]  # type: ignore[valid-type]


class SignupRequest(RequestModel):
    """A new local account."""

    username: Username
    display_name: str | None = Field(
        default=None,
        max_length=31,
        description="The username with capitals and spaces for underscores; defaults to it.",
        examples=["John Doe"],
    )
    email: Email
    password: NewPassword
    description: Description = None

    @model_validator(mode="after")
    def _display_name(self) -> SignupRequest:
        if self.display_name is None:
            self.display_name = self.username
        elif not display_name_matches(self.display_name, self.username):
            raise PydanticCustomError(
                "display_name_mismatch",
                "display_name must be the username, with capitals allowed and spaces "
                "in place of underscores",
            )
        return self


class LoginRequest(RequestModel):
    """A login as JSON: the two fields of the OAuth2 password form."""

    username: str = Field(
        min_length=1,
        max_length=320,
        description="The username or the email address (any case).",
        examples=["john_doe"],
    )
    password: GivenPassword = Field(min_length=1, json_schema_extra={"format": "password"})


class LoginForm(BaseModel):
    """The OAuth2 password form (``application/x-www-form-urlencoded``), as Swagger's
    "Authorize" sends it; ``username`` is the username or the email address."""

    grant_type: str | None = Field(default=None, pattern="^password$")
    username: str
    password: str = Field(json_schema_extra={"format": "password"})
    scope: str = ""
    client_id: str | None = None
    client_secret: str | None = Field(default=None, json_schema_extra={"format": "password"})


class TokenPair(BaseModel):
    """A successful login: a short-lived access token and a rotating refresh token."""

    access_token: str = Field(description="JWT to send as `Authorization: Bearer ...`.")
    refresh_token: str = Field(description="Opaque; trade it at /auth/refresh. Single use.")
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    device_token: str | None = Field(
        default=None,
        description="From a login only: marks this client as one the account logged in "
        "from (also set as a cookie). Send it back with later logins (cookie, or the "
        "`X-Device-Token` header): failed logins then count against this device alone, so "
        "strangers' wrong passwords cannot lock it out.",
    )


class RefreshRequest(RequestModel):
    """A refresh token to trade for a new pair."""

    refresh_token: str = Field(min_length=1, max_length=256)


class SessionInfo(BaseModel):
    """One of the caller's sessions (a login on some device)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: int
    last_used_at: int
    expires_at: int
    user_agent: str | None
    ip: str | None
    current: bool = Field(default=False, description="True for the session making this request.")


class SessionList(BaseModel):
    """The caller's active sessions, newest first."""

    items: list[SessionInfo]


class TokenValidation(BaseModel):
    """Whose token this is and until when it is valid."""

    uuid: str
    username: str
    session_id: str
    expires_at: int = Field(description="Epoch seconds at which the access token expires.")


class PasswordChangeRequest(RequestModel):
    """Change one's password (every session ends)."""

    current_password: CurrentPassword = None
    new_password: NewPassword


class EmailRequest(RequestModel):
    """An email address to send a link to."""

    email: Email


class LinkTokenRequest(RequestModel):
    """The token of a link from an email."""

    token: str = Field(min_length=1, max_length=1024)


class PasswordResetRequest(LinkTokenRequest):
    """The token from a reset email, the new password, and providers to unlink."""

    new_password: NewPassword
    unlink_providers: list[ProviderName] = Field(
        default=[],
        max_length=len(PROVIDER_NAMES),
        description="Linked providers to unlink at the same time (see /auth/password/reset/info).",
    )


class ResetLinkInfo(BaseModel):
    """What a reset page shows before the new password is chosen."""

    linked_providers: list[str] = Field(
        description="Providers whose accounts can open this account (GitHub, ...), by name."
    )


class ReauthRequest(RequestModel):
    """Proof that the caller is the owner: the password, or for an account without one
    a two-factor code."""

    password: GivenPassword | None = None
    code: str | None = Field(default=None, min_length=1, max_length=16, examples=["123456"])


class ReauthResponse(BaseModel):
    """Until when this session may make sensitive changes without another proof."""

    reauthenticated_until: int = Field(description="Epoch seconds.")


class Message(BaseModel):
    """A plain acknowledgement."""

    detail: str


class ExchangeRequest(RequestModel):
    """The one-time code from a third-party login redirect."""

    code: str = Field(min_length=1, max_length=1024)
