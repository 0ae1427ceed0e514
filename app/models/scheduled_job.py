"""The ``scheduled_job`` table: when each maintenance job last ran (shared by replicas)."""

from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class ScheduledJob(Base):
    """A job claims its run with a conditional UPDATE of ``last_run_at``: one replica wins."""

    __tablename__ = "scheduled_job"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[int] = mapped_column(BigInteger, default=0)
