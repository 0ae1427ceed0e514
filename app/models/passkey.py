"""The ``passkey`` and ``webauthn_challenge`` tables: WebAuthn credentials and the
challenges of their ceremonies."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, new_uuid, now_epoch


class Passkey(Base):
    """A WebAuthn credential (a passkey) registered on an account.

    ``credential_id`` is the authenticator's id of the credential (base64url), unique
    across accounts: a sign-in finds the account by it. ``sign_count`` is the last
    counter the authenticator reported; one that does not go up (when it is not 0)
    means a cloned authenticator. ``backup_eligible`` / ``backed_up`` are the
    authenticator's BE/BS flags (a synced passkey can be backed up; a security key
    cannot). ``user_handle`` is the opaque, random account id the authenticator keeps
    with a discoverable credential (never the UUID, a name or an email).
    """

    __tablename__ = "passkey"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"), index=True)
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[list[str]] = mapped_column(JSON, default=list)
    backup_eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    user_handle: Mapped[str] = mapped_column(String(128))
    aaguid: Mapped[str | None] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)


class WebAuthnChallenge(Base):
    """The challenge of one WebAuthn ceremony, used at most once (``used_at``).

    ``purpose`` is ``register`` (for ``user_uuid``, with the ``user_handle`` the new
    credential gets), ``sign_in`` (no user: the passkey names it) or
    ``second_factor`` (``bound_to`` is the pending login's ``otp_challenge`` id).
    """

    __tablename__ = "webauthn_challenge"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    purpose: Mapped[str] = mapped_column(String(16))
    user_uuid: Mapped[str | None] = mapped_column(
        ForeignKey("user.uuid", ondelete="CASCADE"), index=True
    )
    bound_to: Mapped[str | None] = mapped_column(String(36))
    challenge: Mapped[str] = mapped_column(String(128))
    user_handle: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch, index=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger)
