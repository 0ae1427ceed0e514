"""The ``session`` table: one row per login, holding the hash of its refresh token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, new_uuid, now_epoch

if TYPE_CHECKING:
    from app.models.user import User


class Session(Base):
    """A login. Revoked (``revoked_at``) or expired sessions refuse their access tokens.

    ``refresh_token_hash`` is the current refresh token; the ones it replaced are in
    ``rotated_refresh_token``.
    """

    __tablename__ = "session"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"), index=True)
    refresh_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    last_used_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    # When the user last proved who they are in this session (app.services.reauth).
    reauthenticated_at: Mapped[int | None] = mapped_column(BigInteger)
    user_agent: Mapped[str | None] = mapped_column(String(512))
    ip: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship(back_populates="sessions", lazy="raise")
