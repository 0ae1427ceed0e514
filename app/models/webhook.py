"""Webhooks: the endpoints admins register, the outbox of events, one delivery per
event and endpoint.

An event row is written in the transaction of the change it describes (the outbox);
the delivery worker (``app.services.webhook_delivery``) fans each event out to the
endpoints that want it and sends the deliveries. Events and deliveries name their
user by UUID without a foreign key: a user's deletion must not take its
``user.deleted`` event with it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, new_uuid, now_epoch

#: SQLite gives an auto-increment id only to an INTEGER PRIMARY KEY.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class WebhookEndpoint(Base):
    """A receiver: its URL, the event types it wants, and its signing secret (sealed)."""

    __tablename__ = "webhook_endpoint"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(200), default="")
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    # ``whsec_...`` sealed with the settings' secret box: the service signs with it.
    secret_sealed: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Why it is off: "admin" (turned off by an admin) or "failing" (by the worker).
    disabled_reason: Mapped[str | None] = mapped_column(String(16))
    # Since when every attempt failed (None after a success): after
    # WEBHOOK_DISABLE_AFTER_SECONDS of that, the endpoint is turned off. A streak ends
    # with a success, or with a silence longer than retries leave (no events to send).
    failing_since: Mapped[int | None] = mapped_column(BigInteger)
    last_failure_at: Mapped[int | None] = mapped_column(BigInteger)
    # The newest event when the endpoint was created or last enabled: it gets the
    # later ones only.
    since_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    created_by: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)


class WebhookEvent(Base):
    """One event of the outbox, in the Standard Webhooks shape, fanned out once."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        Index("ix_webhook_event_fanned_out_id", "fanned_out", "id"),
        Index("ix_webhook_event_created_at", "created_at"),  # retention
        # Ids only ever grow, also after retention emptied the table (SQLite would
        # otherwise hand out 1 again): endpoints and per-user order rely on it.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    # The ``webhook-id`` header: the same for every attempt and every endpoint.
    message_id: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    user_uuid: Mapped[str | None] = mapped_column(String(36))
    # {"type", "timestamp", "data"}: exactly the body receivers get.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False)


class WebhookDelivery(Base):
    """An event on its way to one endpoint: its attempts and the last answer."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        # The worker's question: what is due (status, next attempt).
        Index("ix_webhook_delivery_status_next_attempt_at", "status", "next_attempt_at"),
        # Order per user: an earlier pending delivery to the same endpoint comes first.
        Index(
            "ix_webhook_delivery_endpoint_id_user_key_event_id",
            "endpoint_id",
            "user_key",
            "event_id",
        ),
        # Retention asks whether an event still has deliveries; a deleted event takes
        # its deliveries with it.
        Index("ix_webhook_delivery_event_id", "event_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoint.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_event.id", ondelete="CASCADE"))
    # The user the event is about ("" for none): deliveries of one key go in order.
    user_key: Mapped[str] = mapped_column(String(36), default="")
    # pending (waiting for an attempt), delivered, failed (gave up; an admin may retry).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    # A worker owns the delivery until then (its attempt cannot outlast the lease).
    lease_until: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(36))
    last_attempt_at: Mapped[int | None] = mapped_column(BigInteger)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    # The receiver's answer (truncated) or why there was none.
    last_response: Mapped[str | None] = mapped_column(String(1024))
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
