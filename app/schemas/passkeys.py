"""Request and response models of passkeys (WebAuthn)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import RequestModel
from app.schemas.fields import CurrentPassword

#: A passkey's name, as its owner calls it ("Work laptop").
PasskeyName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]
ChallengeId = Annotated[str, Field(min_length=1, max_length=64)]
#: What the browser's ``navigator.credentials`` call gave, as JSON.
Credential = Annotated[
    dict[str, Any],
    Field(
        description="The PublicKeyCredential the browser returned, as JSON (its "
        "``toJSON()``): ``id``, ``rawId``, ``type``, and ``response`` with binary "
        "fields in base64url.",
    ),
]
OtpToken = Annotated[
    str,
    Field(min_length=1, max_length=2048, description="The ``otp_token`` that /auth/login gave."),
]


class PasskeyOptions(BaseModel):
    """A WebAuthn ceremony: send ``options`` to the browser, then the answer and
    ``challenge_id`` back (within 5 minutes, once)."""

    challenge_id: str = Field(description="Names this ceremony's single-use challenge.")
    options: dict[str, Any] = Field(
        description="``publicKey`` options for ``navigator.credentials.create()`` "
        "(registration) or ``.get()`` (sign-in), binary fields in base64url (as "
        "``PublicKeyCredential.parseCreationOptionsFromJSON`` / "
        "``parseRequestOptionsFromJSON`` read them)."
    )


class PasskeyRegistrationStart(RequestModel):
    """Start registering a passkey (a re-authentication confirms it is the owner)."""

    password: CurrentPassword = None


class PasskeyRegistrationFinish(RequestModel):
    """The authenticator's answer to the registration options."""

    challenge_id: ChallengeId
    credential: Credential
    name: PasskeyName | None = Field(default=None, description="Defaults to a dated name.")


class PasskeySignInFinish(RequestModel):
    """The authenticator's answer to the sign-in options."""

    challenge_id: ChallengeId
    credential: Credential


class PasskeySecondFactorStart(RequestModel):
    """The second step of a password login, with a passkey instead of a code."""

    otp_token: OtpToken


class PasskeySecondFactorFinish(RequestModel):
    """The authenticator's answer, for the pending login of ``otp_token``."""

    otp_token: OtpToken
    challenge_id: ChallengeId
    credential: Credential


class PasskeyRename(RequestModel):
    """A passkey's new name."""

    name: PasskeyName


class PasskeyDelete(RequestModel):
    """Confirms a deletion (or leave it out after a re-authentication)."""

    password: CurrentPassword = None


class PasskeyInfo(BaseModel):
    """One of the account's passkeys (never its key)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    created_at: int
    last_used_at: int | None = Field(description="Epoch seconds of its last sign-in.")
    transports: list[str] = Field(description="How the authenticator connects (usb, internal...).")
    backup_eligible: bool = Field(description="The passkey can be synced (backed up).")
    backed_up: bool = Field(description="It was backed up when last used.")
    aaguid: str | None = Field(description="The authenticator model's id, if it told.")


class PasskeyList(BaseModel):
    """The account's passkeys, oldest first."""

    items: list[PasskeyInfo]
