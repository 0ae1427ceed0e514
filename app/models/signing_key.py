"""The ``signing_key`` table: the asymmetric keys that sign tokens others verify."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_epoch


class SigningKey(Base):
    """One key pair. The newest generation whose ``active_from`` has come signs; every
    key stays published (``/.well-known/jwks.json``) until ``publish_until``.

    ``generation`` is unique: two replicas creating the first key, or two rotations at
    once, cannot both win.
    """

    __tablename__ = "signing_key"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, unique=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The private key (PKCS#8 PEM), sealed with the settings' secret box.
    private_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    active_from: Mapped[int] = mapped_column(BigInteger)
    #: None while the key may still sign; set when a newer key took over.
    publish_until: Mapped[int | None] = mapped_column(BigInteger)
