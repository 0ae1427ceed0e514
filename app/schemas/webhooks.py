"""Shapes of the webhook endpoints (``/admin/webhooks``) and their delivery log."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models import WebhookDelivery, WebhookEvent
from app.schemas.common import RequestModel
from app.services.webhook_events import WebhookEventType
from app.services.webhooks import URL_MAX_LENGTH

DeliveryStatus = Literal["pending", "delivered", "failed"]

_EVENT_TYPES_FIELD = Field(
    min_length=1,
    max_length=32,
    description="The event types sent to this endpoint (repeats are ignored).",
    examples=[["user.created", "user.deleted"]],
)


class WebhookCreate(RequestModel):
    """A receiver to register."""

    url: str = Field(
        min_length=1,
        max_length=URL_MAX_LENGTH,
        description="http(s) URL that receives a POST per event. Loopback and private "
        "addresses are refused unless WEBHOOK_ALLOW_PRIVATE_TARGETS allows them.",
        examples=["https://hooks.example.com/user-manager"],
    )
    event_types: list[WebhookEventType] = _EVENT_TYPES_FIELD
    description: str = Field(default="", max_length=200, examples=["CRM sync"])


class WebhookUpdate(RequestModel):
    """What to change on an endpoint; fields left out keep their value."""

    url: str | None = Field(default=None, min_length=1, max_length=URL_MAX_LENGTH)
    event_types: list[WebhookEventType] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Replaces the endpoint's event types.",
    )
    enabled: bool | None = Field(
        default=None,
        description="false stops sending; true sends again, pending deliveries first.",
    )
    description: str | None = Field(default=None, max_length=200)


class WebhookInfo(BaseModel):
    """A registered receiver (never its secret)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(
        description='Why it is off: "admin", or "failing" (every attempt failed for '
        "WEBHOOK_DISABLE_AFTER_SECONDS). Null while enabled."
    )
    failing_since: int | None = Field(
        description="Epoch seconds since which every attempt failed; null while healthy."
    )
    created_at: int
    updated_at: int


class WebhookCreated(WebhookInfo):
    """A new endpoint and its signing secret, shown this once."""

    secret: str = Field(
        description="Verifies the `webhook-signature` header (Standard Webhooks). Shown "
        "only now: store it with the receiver.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    )


class WebhookList(BaseModel):
    """Every endpoint, oldest first."""

    items: list[WebhookInfo]


class WebhookDeliveryInfo(BaseModel):
    """One event on its way to one endpoint."""

    id: int
    message_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    event_type: str
    user_id: str | None = Field(description="The user the event is about.")
    status: DeliveryStatus = Field(
        description="pending (waiting for an attempt), delivered, or failed (gave up after "
        "WEBHOOK_MAX_ATTEMPTS; can be retried)."
    )
    attempts: int
    next_attempt_at: int | None = Field(description="Epoch seconds; null unless pending.")
    last_attempt_at: int | None
    last_status_code: int | None = Field(description="The receiver's HTTP status, if any.")
    last_response: str | None = Field(
        description="The start of the receiver's answer, or why there was none."
    )
    delivered_at: int | None
    created_at: int

    @classmethod
    def of(cls, delivery: WebhookDelivery, event: WebhookEvent) -> WebhookDeliveryInfo:
        """The log entry of ``delivery`` of ``event``."""
        return cls(
            id=delivery.id,
            message_id=event.message_id,
            event_type=event.type,
            user_id=event.user_uuid,
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
            last_attempt_at=delivery.last_attempt_at,
            last_status_code=delivery.last_status_code,
            last_response=delivery.last_response,
            delivered_at=delivery.delivered_at,
            created_at=delivery.created_at,
        )


class WebhookDeliveryList(BaseModel):
    """A page of an endpoint's deliveries, newest first."""

    items: list[WebhookDeliveryInfo]
    total: int = Field(description="Deliveries matching the filter.")
