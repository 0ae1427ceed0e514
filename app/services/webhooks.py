"""Webhook endpoints: admins register receivers, read their delivery log, retry.

Who may: admins (``ROLES``' ``webhook`` resource); ``actor`` None is the command
line, whose operator runs the service and passes no permission check. Every change
is an entry of the audit log, committed with it.

A receiver's secret (``whsec_`` and 32 random bytes, base64) is shown once, when the
endpoint is created or its secret rotated; the service keeps it sealed with the
settings' secret box, since it signs every delivery with it.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.database import rows_matched
from app.core.errors import AppError, Conflict, NotFound
from app.core.oauth_client import UnsafeUrl, public_addresses
from app.core.permissions import require_permission
from app.models import User, WebhookDelivery, WebhookEndpoint, WebhookEvent, now_epoch
from app.services.audit import AuditTarget, record_audit
from app.services.context import ClientInfo

#: Random bytes of a signing secret (Standard Webhooks asks for 24 to 64).
SECRET_BYTES = 32
#: Longest endpoint URL.
URL_MAX_LENGTH = 2048


class WebhookNotFound(NotFound):
    """No endpoint has this id."""

    code = "WEBHOOK_NOT_FOUND"
    detail = "No webhook endpoint has this id"


class DeliveryNotFound(NotFound):
    """No delivery of this endpoint has this id."""

    code = "DELIVERY_NOT_FOUND"
    detail = "No delivery of this webhook endpoint has this id"


class DeliveryAlreadyDelivered(Conflict):
    """A delivered event is not sent again."""

    code = "DELIVERY_ALREADY_DELIVERED"
    detail = "This delivery succeeded already"


class InvalidWebhookUrl(AppError):
    """Not a URL the service sends events to."""

    status_code = 422
    code = "INVALID_WEBHOOK_URL"
    detail = "The webhook URL is not valid"


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: ``whsec_`` and base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _check_syntax(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL without credentials; InvalidWebhookUrl else."""
    if len(url) > URL_MAX_LENGTH:
        raise InvalidWebhookUrl(f"The URL is longer than {URL_MAX_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidWebhookUrl("The URL cannot be read") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhookUrl("The URL must be http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        # The URL is shown in listings and logs: a password in it would be too.
        raise InvalidWebhookUrl("The URL must not carry a user name or password")
    if parts.fragment:
        raise InvalidWebhookUrl("The URL must not have a fragment (#...)")
    if any(char.isspace() for char in url):
        raise InvalidWebhookUrl("The URL must not contain spaces")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_url(settings: Settings, url: str) -> str:
    """``url`` if the service may send events there, else InvalidWebhookUrl.

    Unless WEBHOOK_ALLOW_PRIVATE_TARGETS allows it, the host must resolve to public
    addresses only (the same guard as the download of provider pictures); every
    attempt checks again, and connects only to an address it checked.
    """
    host, port = _check_syntax(url)
    if settings.webhook_private_targets_allowed:
        return url
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None and not literal.is_global:
        raise InvalidWebhookUrl(
            "The URL points at a loopback, private or link-local address "
            "(WEBHOOK_ALLOW_PRIVATE_TARGETS allows it)"
        )
    try:
        await asyncio.to_thread(public_addresses, host, port)
    except UnsafeUrl:
        raise InvalidWebhookUrl(
            f"{host} resolves to a loopback, private or link-local address "
            "(WEBHOOK_ALLOW_PRIVATE_TARGETS allows it)"
        ) from None
    except (OSError, UnicodeError, ValueError):
        raise InvalidWebhookUrl(f"{host} cannot be resolved") from None
    return url


async def _newest_event_id(db: AsyncSession) -> int:
    """The newest event of the outbox: an endpoint gets the ones after it."""
    return await db.scalar(select(func.max(WebhookEvent.id))) or 0


def _allowed(actor: User | None, action: str) -> None:
    if actor is not None:
        require_permission(actor, "webhook", action)


def _shown(url: str) -> str:
    """A receiver's URL as the audit log keeps it: its origin only (many receivers
    carry a token in the path or the query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _target(endpoint: WebhookEndpoint) -> AuditTarget:
    return AuditTarget("webhook", endpoint.id, _shown(endpoint.url))


async def _endpoint(db: AsyncSession, endpoint_id: str) -> WebhookEndpoint:
    endpoint = await db.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise WebhookNotFound()
    return endpoint


async def create_endpoint(
    db: AsyncSession,
    settings: Settings,
    actor: User | None,
    *,
    url: str,
    event_types: Sequence[str],
    description: str = "",
    client: ClientInfo | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Register a receiver of ``event_types``; the endpoint and its secret (shown once).

    It receives the events that happen from now on."""
    _allowed(actor, "create")
    await check_url(settings, url)
    secret = new_secret()
    now = now_epoch()
    endpoint = WebhookEndpoint(
        url=url,
        since_event_id=await _newest_event_id(db),
        description=description,
        event_types=list(dict.fromkeys(event_types)),
        secret_sealed=settings.secret_box.seal(secret),
        enabled=True,
        created_at=now,
        updated_at=now,
        created_by=actor.uuid if actor is not None else None,
    )
    db.add(endpoint)
    await db.flush()  # its id, for the audit entry
    record_audit(
        db,
        actor,
        "webhook.endpoint_created",
        _target(endpoint),
        client,
        {"url": _shown(endpoint.url), "event_types": endpoint.event_types},
    )
    await db.commit()
    return endpoint, secret


async def list_endpoints(db: AsyncSession, actor: User | None) -> list[WebhookEndpoint]:
    """Every endpoint, oldest first."""
    _allowed(actor, "list")
    endpoints = await db.scalars(
        select(WebhookEndpoint).order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return list(endpoints)


async def get_endpoint(db: AsyncSession, actor: User | None, endpoint_id: str) -> WebhookEndpoint:
    """One endpoint (WebhookNotFound)."""
    _allowed(actor, "read")
    return await _endpoint(db, endpoint_id)


async def update_endpoint(
    db: AsyncSession,
    settings: Settings,
    actor: User | None,
    endpoint_id: str,
    *,
    url: str | None = None,
    event_types: Sequence[str] | None = None,
    enabled: bool | None = None,
    description: str | None = None,
    client: ClientInfo | None = None,
) -> WebhookEndpoint:
    """Change an endpoint's URL, event types, description, or turn it off or on.

    Turned back on, it is healthy again, its pending deliveries are sent, and it gets
    the events recorded from then on (not those of the time it was off)."""
    _allowed(actor, "update")
    endpoint = await _endpoint(db, endpoint_id)
    changed: dict[str, object] = {}
    if url is not None and url != endpoint.url:
        changed["url"] = {"from": _shown(endpoint.url), "to": _shown(url)}
        endpoint.url = await check_url(settings, url)
    if event_types is not None and list(dict.fromkeys(event_types)) != endpoint.event_types:
        changed["event_types"] = {"from": endpoint.event_types, "to": list(event_types)}
        endpoint.event_types = list(dict.fromkeys(event_types))
    if description is not None and description != endpoint.description:
        changed["description"] = {"from": endpoint.description, "to": description}
        endpoint.description = description
    if enabled is not None and enabled != endpoint.enabled:
        changed["enabled"] = enabled
        endpoint.enabled = enabled
        endpoint.disabled_reason = None if enabled else "admin"
        endpoint.failing_since = None
        if enabled:
            endpoint.since_event_id = await _newest_event_id(db)
            # What waited for it goes out now, not at the end of its last backoff.
            await db.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.endpoint_id == endpoint.id,
                    WebhookDelivery.status == "pending",
                )
                .values(next_attempt_at=now_epoch())
            )
    endpoint.updated_at = now_epoch()
    if changed:
        record_audit(db, actor, "webhook.endpoint_updated", _target(endpoint), client, changed)
    await db.commit()
    return endpoint


async def delete_endpoint(
    db: AsyncSession, actor: User | None, endpoint_id: str, client: ClientInfo | None = None
) -> None:
    """Remove an endpoint and its delivery log; nothing more is sent to it."""
    _allowed(actor, "delete")
    endpoint = await _endpoint(db, endpoint_id)
    record_audit(db, actor, "webhook.endpoint_deleted", _target(endpoint), client)
    await db.delete(endpoint)
    await db.commit()


async def rotate_secret(
    db: AsyncSession,
    settings: Settings,
    actor: User | None,
    endpoint_id: str,
    client: ClientInfo | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Give an endpoint a new secret (shown once); every attempt from now on is signed
    with it, the old one is forgotten."""
    _allowed(actor, "rotate_secret")
    endpoint = await _endpoint(db, endpoint_id)
    secret = new_secret()
    endpoint.secret_sealed = settings.secret_box.seal(secret)
    endpoint.updated_at = now_epoch()
    record_audit(db, actor, "webhook.secret_rotated", _target(endpoint), client)
    await db.commit()
    return endpoint, secret


async def list_deliveries(
    db: AsyncSession,
    actor: User | None,
    endpoint_id: str,
    *,
    status: str | None,
    offset: int,
    limit: int,
) -> tuple[list[tuple[WebhookDelivery, WebhookEvent]], int]:
    """A page of an endpoint's deliveries, newest first, with their events, and how
    many match ``status``."""
    _allowed(actor, "read_deliveries")
    await _endpoint(db, endpoint_id)
    conditions = [WebhookDelivery.endpoint_id == endpoint_id]
    if status is not None:
        conditions.append(WebhookDelivery.status == status)
    total = await db.scalar(select(func.count()).select_from(WebhookDelivery).where(*conditions))
    rows = await db.execute(
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(*conditions)
        .order_by(WebhookDelivery.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [(delivery, event) for delivery, event in rows], total or 0


async def retry_delivery(
    db: AsyncSession,
    actor: User | None,
    endpoint_id: str,
    delivery_id: int,
    client: ClientInfo | None = None,
) -> tuple[WebhookDelivery, WebhookEvent]:
    """Send a failed (or waiting) delivery again as soon as the worker can, the count
    of attempts starting afresh. A delivered one is refused."""
    _allowed(actor, "retry_delivery")
    row = (
        await db.execute(
            select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id)
        )
    ).first()
    if row is None:
        await _endpoint(db, endpoint_id)
        raise DeliveryNotFound()
    delivery, event = row
    now = now_epoch()
    # Conditional: a worker may be writing its answer at this moment.
    retried = await db.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status != "delivered")
        .values(status="pending", attempts=0, next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )
    if rows_matched(retried) != 1:
        await db.rollback()
        raise DeliveryAlreadyDelivered()
    endpoint = await _endpoint(db, endpoint_id)
    record_audit(
        db,
        actor,
        "webhook.delivery_retried",
        _target(endpoint),
        client,
        {"delivery": delivery_id, "event_type": event.type, "message_id": event.message_id},
    )
    await db.commit()
    await db.refresh(delivery)
    return delivery, event
