"""The ``audit_event`` table: the admin audit log, one row per staff action, only ever
appended (and trimmed after AUDIT_RETENTION_DAYS).

Names are snapshots: the row still says who acted on whom after either account is
renamed or deleted, so no foreign key ties it to ``user``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_epoch
from app.models.user_event import EventId


class AuditEvent(Base):
    """One staff action: who (and in which role), what, on what, when, from where."""

    __tablename__ = "audit_event"
    __table_args__ = (
        # The listing's order (newest first) and its cursor; the retention job's cut.
        Index("ix_audit_event_at_id", "at", "id"),
        # The filters, each followed by the order so a filtered page is an index walk.
        Index("ix_audit_event_actor_uuid_at_id", "actor_uuid", "at", "id"),
        Index(
            "ix_audit_event_action_at_id",
            "action",
            "at",
            "id",
            # A prefix (``user.*``) is LIKE 'user.%' on PostgreSQL: pattern operators
            # let the index answer it under any collation.
            postgresql_ops={"action": "varchar_pattern_ops"},
        ),
        Index("ix_audit_event_target_id_at_id", "target_id", "at", "id"),
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    # Null for the command line (``actor_name`` is then ``cli:<OS user>``).
    actor_uuid: Mapped[str | None] = mapped_column(String(36))
    actor_name: Mapped[str] = mapped_column(String(100))
    actor_role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(255))
    target_display: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
