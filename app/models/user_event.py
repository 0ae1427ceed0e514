"""The ``user_event`` table: a user's history, one row per event, only ever appended.

A row per event (rather than a list kept on the user) means parallel events never
overwrite each other, and recording one does not rewrite the user's row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_epoch

#: SQLite gives an auto-increment id only to an INTEGER PRIMARY KEY.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class UserEvent(Base):
    """Something that happened to an account: who did it, when, from where, and details."""

    __tablename__ = "user_event"
    __table_args__ = (Index("ix_user_event_user_uuid_id", "user_uuid", "id"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(64))
    at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    # The actor may be deleted later; the UUID stays as a record.
    by: Mapped[str | None] = mapped_column(String(36))
    ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
