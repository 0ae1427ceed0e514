"""The ``file`` table and the ``user_file`` association (many users <-> many files).

Every file has one owner: the user whose folder (``DATA_DIR/users/{uuid}/``) holds
its bytes. Names are unique per owner and kind, never across users, so nobody can
learn another user's file names by trying them, nor take a name away from anyone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, now_epoch

if TYPE_CHECKING:
    from app.models.user import User

user_file = Table(
    "user_file",
    Base.metadata,
    Column("user_uuid", ForeignKey("user.uuid", ondelete="CASCADE"), primary_key=True),
    Column("file_id", ForeignKey("file.id", ondelete="CASCADE"), primary_key=True, index=True),
)


class File(Base):
    """An uploaded file. ``file_path`` is internal and never shown to users."""

    __tablename__ = "file"
    __table_args__ = (
        UniqueConstraint("owner_uuid", "kind", "file_name"),
        CheckConstraint("kind IN ('file', 'picture')", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # The owner goes with their files; an admin who uploaded one for them is only linked.
    owner_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"))
    # Pictures (``pfp_{uuid}.{ext}``) are named in a namespace of their own: a plain
    # file that carries that name, uploaded by the user or an admin, must never stop
    # the picture from being stored (nor OAuth from adopting the provider's picture).
    kind: Mapped[str] = mapped_column(String(16), default="file")
    file_name: Mapped[str] = mapped_column(String(255))
    file_type: Mapped[str] = mapped_column(String(127))
    file_path: Mapped[str] = mapped_column(String(1024))
    description: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    created_by_uuid: Mapped[str | None] = mapped_column(
        ForeignKey("user.uuid", ondelete="SET NULL"), index=True
    )

    created_by: Mapped[User | None] = relationship(foreign_keys=[created_by_uuid], lazy="raise")
    users: Mapped[list[User]] = relationship(
        secondary=user_file, back_populates="files", lazy="raise"
    )

    def __repr__(self) -> str:
        return f"<File {self.id} {self.file_name!r}>"
