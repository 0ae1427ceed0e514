"""Request and response models of two-factor authentication."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError

from app.schemas.common import RequestModel
from app.schemas.fields import CurrentPassword

OtpMethod = Literal["authenticator", "email"]
#: A code as typed: checked against the challenge (a malformed one is a wrong one).
OtpCode = Field(min_length=1, max_length=16, examples=["123456"])
#: The characters a recovery code may be typed with: any case, with or without its
#: dashes (a code of the wrong length or letters is a wrong code, counted like one).
RECOVERY_CODE_PATTERN = r"^[A-Za-z0-9 -]+$"
RECOVERY_CODE_EXAMPLE = "ABCD-EFGH-JKLM-NPQR"


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
    """Turn 2FA off: a re-authentication and a current code, or a recovery code (the
    authenticator is lost)."""

    password: CurrentPassword = None
    code: str | None = Field(default=None, min_length=1, max_length=16, examples=["123456"])
    recovery_code: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=RECOVERY_CODE_PATTERN,
        description="Instead of `code`: one of the recovery codes (used up).",
        examples=[RECOVERY_CODE_EXAMPLE],
    )

    @model_validator(mode="after")
    def _one_proof(self) -> OtpDisableRequest:
        if (self.code is None) == (self.recovery_code is None):
            raise PydanticCustomError(
                "one_code", "give either code or recovery_code (exactly one of them)"
            )
        return self


RecoveryCodeField = Field(
    min_length=1, max_length=64, pattern=RECOVERY_CODE_PATTERN, examples=[RECOVERY_CODE_EXAMPLE]
)


class RecoveryCodes(BaseModel):
    """New recovery codes, shown this once: only their hashes are kept."""

    recovery_codes: list[str] = Field(
        description=(
            "Single-use codes, each able to finish one sign-in instead of a two-factor "
            "code. Store them somewhere safe: they are never shown again."
        ),
        examples=[["ABCD-EFGH-JKLM-NPQR", "STUV-WXYZ-2345-67AB"]],
    )


class RecoveryCodesLeft(BaseModel):
    """How many recovery codes the caller can still use."""

    remaining: int = Field(ge=0, description="Unused recovery codes (0 with 2FA off).")


class RecoveryCodeVerifyRequest(RequestModel):
    """The second login step with a recovery code instead of a code."""

    otp_token: str = Field(min_length=1, max_length=2048)
    recovery_code: str = RecoveryCodeField


class RecoveryCodesRequest(RequestModel):
    """Make new recovery codes (a re-authentication confirms it is the owner)."""

    password: CurrentPassword = None
