"""The ``feature_flag`` table: the flags, when the database holds them (shared by replicas)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_epoch


class FeatureFlag(Base):
    """One flag: ``true``, ``false`` or a list of rules, as in the flag file."""

    __tablename__ = "feature_flag"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch, onupdate=now_epoch)
