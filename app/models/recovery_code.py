"""The ``recovery_code`` table: single-use codes that stand in for the second factor."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, new_uuid, now_epoch


class RecoveryCode(Base):
    """One of the codes handed out when two-factor authentication was turned on (or
    the codes were made again).

    Only a hash of the code is kept (``app.core.one_time_codes.recovery_code_hash``).
    A code is used at most once: ``used_at`` is set by a conditional UPDATE. Making
    new codes, or turning two-factor authentication off, deletes the user's rows.
    """

    __tablename__ = "recovery_code"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    used_at: Mapped[int | None] = mapped_column(BigInteger)
