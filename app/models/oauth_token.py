"""The ``oauth_token`` table: a provider's tokens, kept so Authlib can refresh them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base

if TYPE_CHECKING:
    from app.models.user import User


class OAuthToken(Base):
    """OAuth 1 uses ``oauth_token``/``oauth_token_secret``; OAuth 2 the other token fields."""

    __tablename__ = "oauth_token"
    __table_args__ = (UniqueConstraint("user_uuid", "provider"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    oauth_version: Mapped[int] = mapped_column(Integer, default=2)
    provider: Mapped[str] = mapped_column(String(32))
    oauth_token: Mapped[str | None] = mapped_column(Text)
    oauth_token_secret: Mapped[str | None] = mapped_column(Text)
    token_type: Mapped[str | None] = mapped_column(String(40))
    access_token: Mapped[str | None] = mapped_column(Text)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"))

    user: Mapped[User] = relationship(back_populates="oauth_tokens", lazy="raise")
