"""The ``rotated_refresh_token`` table: every refresh token a session has replaced."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_epoch


class RotatedRefreshToken(Base):
    """The hash of a refresh token that was traded for a new one.

    A session's rows are its whole rotation family: presenting any of them again
    means a token leaked, and the session is ended. The rows go with their session
    (``ON DELETE CASCADE``), and a session lives at most ``REFRESH_TOKEN_EXP_DAYS``.
    """

    __tablename__ = "rotated_refresh_token"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("session.id", ondelete="CASCADE"), index=True
    )
    rotated_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
