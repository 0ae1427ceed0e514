"""The Bluesky tables: the service's own client key, and each user's AT Protocol session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, now_epoch

if TYPE_CHECKING:
    from app.models.user import User


class BlueskyClientKey(Base):
    """The ES256 key that signs this service's client assertions, when BLUESKY_CLIENT_KEY
    is not set: generated once (``name`` is always ``client``, so parallel first uses
    agree on one key) and kept sealed with the secret box."""

    __tablename__ = "bluesky_client_key"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    kid: Mapped[str] = mapped_column(String(64))
    private_jwk: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)


class BlueskySession(Base):
    """A user's tokens at their Bluesky authorization server, with the DPoP key they are
    bound to. The key and both tokens are sealed with the secret box; the rest says
    where they are used (``issuer`` refreshes them, ``pds_url`` accepts them)."""

    __tablename__ = "bluesky_session"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"), unique=True)
    did: Mapped[str] = mapped_column(String(255))
    issuer: Mapped[str] = mapped_column(String(2048))
    pds_url: Mapped[str] = mapped_column(String(2048))
    scope: Mapped[str] = mapped_column(String(1024))
    dpop_key: Mapped[str] = mapped_column(Text)
    access_token: Mapped[str] = mapped_column(Text)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)

    # One-sided: it orders the insert after a new user's in one flush.
    user: Mapped[User] = relationship(lazy="raise")
