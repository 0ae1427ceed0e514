"""The ``used_token`` table: ids of one-time links already used (they work once)."""

from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_epoch


class UsedToken(Base):
    """A consumed one-time token. Inserting its id twice fails: that is the single use.

    Rows are kept until ``expires_at`` (after which the link is refused for its age
    anyway); the scheduled clean-up deletes them then.
    """

    __tablename__ = "used_token"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    user_uuid: Mapped[str | None] = mapped_column(String(36))
    used_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
