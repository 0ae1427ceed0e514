"""The ``otp_challenge`` table: a pending second-factor check (a login or an enrolment)."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, new_uuid, now_epoch


class OtpChallenge(Base):
    """One attempt at proving the second factor.

    ``purpose`` is ``login`` (the 2FA-pending token names it), ``enable`` or
    ``disable``. Email challenges hold the keyed hash of their code. A challenge
    is used at most once (``used_at``) and dies after a handful of wrong codes.
    """

    __tablename__ = "otp_challenge"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    code_hash: Mapped[str | None] = mapped_column(String(64))
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch, index=True)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger)
