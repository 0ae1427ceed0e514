"""Webhook endpoints (admins): register receivers, read their delivery log, retry.

Every change is an entry of the admin audit log (``webhook.*``)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response, status

from app.routers.deps import ClientDep, CurrentUser, PageDep, Reader, SessionDep, SettingsDep
from app.schemas.common import error_responses
from app.schemas.webhooks import (
    DeliveryStatus,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryInfo,
    WebhookDeliveryList,
    WebhookInfo,
    WebhookList,
    WebhookUpdate,
)
from app.services import webhooks

router = APIRouter(prefix="/admin/webhooks", tags=["webhooks"])


DeliveryId = Annotated[int, Path(ge=1, le=2**62)]


def _secret_view(info: WebhookInfo, secret: str) -> WebhookCreated:
    return WebhookCreated(**info.model_dump(), secret=secret)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses=error_responses(401, 403, 422),
)
async def create_webhook(
    body: WebhookCreate,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> WebhookCreated:
    """Register an endpoint that receives the events of ``event_types`` (admins).

    Every event is a POST of ``{"type", "timestamp", "data"}`` signed as the Standard
    Webhooks specification says (``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature``), sent at least once, in order per user. The endpoint gets
    the events that happen from now on.

    Returns
    -------
    WebhookCreated
        The endpoint and its signing secret, which is shown only this once.

    Raises
    ------
    403
        Not an admin.
    422
        ``INVALID_WEBHOOK_URL`` (not http(s), credentials in it, or a loopback or
        private address), or an unknown event type.
    """
    endpoint, secret = await webhooks.create_endpoint(
        db,
        settings,
        actor,
        url=body.url,
        event_types=body.event_types,
        description=body.description,
        client=client,
    )
    return _secret_view(WebhookInfo.model_validate(endpoint), secret)


@router.get("", response_model=WebhookList, responses=error_responses(401, 403))
async def list_webhooks(actor: Reader, db: SessionDep) -> WebhookList:
    """Every webhook endpoint, oldest first (admins).

    Returns
    -------
    WebhookList
        Each endpoint's URL, event types and health (never its secret).

    Raises
    ------
    403
        Not an admin.
    """
    endpoints = await webhooks.list_endpoints(db, actor)
    return WebhookList(items=[WebhookInfo.model_validate(endpoint) for endpoint in endpoints])


@router.get(
    "/{webhook_id}", response_model=WebhookInfo, responses=error_responses(401, 403, 404, 422)
)
async def read_webhook(webhook_id: UUID, actor: Reader, db: SessionDep) -> WebhookInfo:
    """One webhook endpoint (admins).

    Returns
    -------
    WebhookInfo
        Its URL, event types and health (never its secret).

    Raises
    ------
    403
        Not an admin.
    404
        ``WEBHOOK_NOT_FOUND``.
    """
    endpoint = await webhooks.get_endpoint(db, actor, str(webhook_id))
    return WebhookInfo.model_validate(endpoint)


@router.patch(
    "/{webhook_id}", response_model=WebhookInfo, responses=error_responses(401, 403, 404, 422)
)
async def update_webhook(
    webhook_id: UUID,
    body: WebhookUpdate,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> WebhookInfo:
    """Change an endpoint's URL, event types or description, or turn it off or on
    (admins).

    An endpoint turned back on counts as healthy again, and the deliveries that were
    waiting are sent, oldest first. Events that happened while it was off are not.

    Returns
    -------
    WebhookInfo
        The endpoint after the change.

    Raises
    ------
    403
        Not an admin.
    404
        ``WEBHOOK_NOT_FOUND``.
    422
        ``INVALID_WEBHOOK_URL``, or an unknown event type.
    """
    endpoint = await webhooks.update_endpoint(
        db,
        settings,
        actor,
        str(webhook_id),
        url=body.url,
        event_types=body.event_types,
        enabled=body.enabled,
        description=body.description,
        client=client,
    )
    return WebhookInfo.model_validate(endpoint)


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
)
async def delete_webhook(
    webhook_id: UUID, actor: CurrentUser, db: SessionDep, client: ClientDep
) -> None:
    """Remove an endpoint and its delivery log (admins); nothing more is sent to it.

    Raises
    ------
    403
        Not an admin.
    404
        ``WEBHOOK_NOT_FOUND``.
    """
    await webhooks.delete_endpoint(db, actor, str(webhook_id), client)


@router.post(
    "/{webhook_id}/secret",
    response_model=WebhookCreated,
    responses=error_responses(401, 403, 404, 422),
)
async def rotate_webhook_secret(
    webhook_id: UUID,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> WebhookCreated:
    """Give an endpoint a new signing secret (admins), for a secret that leaked.

    Every attempt from now on, retries of older events too, is signed with the new
    secret only: give it to the receiver first.

    Returns
    -------
    WebhookCreated
        The endpoint and its new secret, which is shown only this once.

    Raises
    ------
    403
        Not an admin.
    404
        ``WEBHOOK_NOT_FOUND``.
    """
    endpoint, secret = await webhooks.rotate_secret(db, settings, actor, str(webhook_id), client)
    return _secret_view(WebhookInfo.model_validate(endpoint), secret)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=WebhookDeliveryList,
    responses=error_responses(401, 403, 404, 422),
)
async def list_webhook_deliveries(
    webhook_id: UUID,
    actor: Reader,
    db: SessionDep,
    page: PageDep,
    state: Annotated[
        DeliveryStatus | None, Query(alias="status", description="Only deliveries in this state.")
    ] = None,
) -> WebhookDeliveryList:
    """An endpoint's delivery log, newest first (admins).

    Returns
    -------
    WebhookDeliveryList
        Each delivery's event, state, attempts, next attempt and the receiver's last
        answer (its start), and how many deliveries are in the ``status`` asked.

    Raises
    ------
    403
        Not an admin.
    404
        ``WEBHOOK_NOT_FOUND``.
    """
    rows, total = await webhooks.list_deliveries(
        db, actor, str(webhook_id), status=state, offset=page.offset, limit=page.limit
    )
    return WebhookDeliveryList(
        items=[WebhookDeliveryInfo.of(delivery, event) for delivery, event in rows], total=total
    )


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookDeliveryInfo,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def retry_webhook_delivery(
    webhook_id: UUID,
    delivery_id: DeliveryId,
    actor: CurrentUser,
    db: SessionDep,
    client: ClientDep,
) -> WebhookDeliveryInfo:
    """Send a failed delivery again, at once and with a fresh count of attempts
    (admins). A pending one is moved to the front of its wait.

    Returns
    -------
    WebhookDeliveryInfo
        The delivery, pending again.

    Raises
    ------
    403
        Not an admin.
    404
        ``WEBHOOK_NOT_FOUND`` or ``DELIVERY_NOT_FOUND``.
    409
        ``DELIVERY_ALREADY_DELIVERED``.
    """
    delivery, event = await webhooks.retry_delivery(db, actor, str(webhook_id), delivery_id, client)
    return WebhookDeliveryInfo.of(delivery, event)
