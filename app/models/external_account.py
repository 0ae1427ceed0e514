"""The ``external_account`` table: a third-party identity linked to a local user."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, now_epoch

if TYPE_CHECKING:
    from app.models.user import User


class ExternalAccount(Base):
    """Found by (provider, external_id), never by email alone; one per provider per user."""

    __tablename__ = "external_account"
    __table_args__ = (
        UniqueConstraint("provider", "external_id"),
        UniqueConstraint("user_uuid", "provider"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    username: Mapped[str | None] = mapped_column(String(255))
    display_name: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    picture_url: Mapped[str | None] = mapped_column(String(2048))
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)

    user: Mapped[User] = relationship(back_populates="external_accounts", lazy="raise")
