"""Request and response models of two-factor authentication."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import RequestModel
from app.schemas.fields import CurrentPassword

OtpMethod = Literal["authenticator", "email"]
#: A code as typed: checked against the challenge (a malformed one is a wrong one).
OtpCode = Field(min_length=1, max_length=16, examples=["123456"])


class OtpChallengeResponse(BaseModel):
    """The password was right; now the second factor is needed."""

    otp_required: Literal[True] = True
    otp_method: OtpMethod
    otp_token: str = Field(
        description="Short-lived token for /auth/otp/verify; it opens nothing else."
    )
    expires_in: int = Field(description="Seconds left to give the code.")


class OtpVerifyRequest(RequestModel):
    """The second login step."""

    otp_token: str = Field(min_length=1, max_length=2048)
    code: str = OtpCode


class OtpSetupRequest(RequestModel):
    """Start enrolling a second factor (a re-authentication confirms it is the owner)."""

    method: OtpMethod
    password: CurrentPassword = None


class OtpSetupResponse(BaseModel):
    """What the user needs to confirm enrolment."""

    method: OtpMethod
    detail: str
    provisioning_uri: str | None = Field(
        default=None, description="otpauth:// URI for an authenticator app (authenticator only)."
    )
    qr_png: str | None = Field(
        default=None, description="The same URI as a base64 PNG QR code (authenticator only)."
    )


class OtpEnableRequest(RequestModel):
    """Confirm enrolment with a code from the app or the email."""

    method: OtpMethod
    code: str = OtpCode


class OtpDisableRequest(RequestModel):
    """Turn 2FA off: a re-authentication and a current code."""

    password: CurrentPassword = None
    code: str = OtpCode
