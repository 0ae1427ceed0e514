"""Client applications of the OpenID Connect provider (admins), and the applications a
user has allowed (the user)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.routers.deps import ClientDep, CurrentUser, Reader, SessionDep
from app.schemas.common import Text, error_responses
from app.schemas.oidc import (
    ClientCreate,
    ClientInfo,
    ClientList,
    ClientUpdate,
    ClientWithSecret,
    ConnectedApp,
    ConnectedAppList,
)
from app.services import oidc, oidc_clients

router = APIRouter()
ClientId = Annotated[Text, Path(alias="client_id", min_length=1, max_length=64)]


@router.post(
    "/admin/oidc-clients",
    tags=["admin"],
    status_code=status.HTTP_201_CREATED,
    response_model=ClientWithSecret,
    responses=error_responses(401, 403, 422),
)
async def create_oidc_client(
    body: ClientCreate, actor: CurrentUser, db: SessionDep, client: ClientDep
) -> ClientWithSecret:
    """Register an application that signs its users in with this service.

    Redirect URIs are matched exactly (no wildcards): https, http on loopback only,
    or a native app's own scheme. A confidential client gets a secret, shown in this
    answer only; a public one (``public: true``) gets none and must use PKCE.

    Returns
    -------
    ClientWithSecret
        The client, its ``client_id`` and ``client_secret``.

    Raises
    ------
    403
        ``FORBIDDEN``: admins only.
    422
        ``VALIDATION_ERROR``: a redirect URI that is not exact or not allowed, an
        unknown scope.
    """
    row, secret = await oidc_clients.create_client(db, actor, body, client)
    return ClientWithSecret(**ClientInfo.of(row).model_dump(), client_secret=secret)


@router.get(
    "/admin/oidc-clients",
    tags=["admin"],
    response_model=ClientList,
    responses=error_responses(401, 403),
)
async def list_oidc_clients(actor: Reader, db: SessionDep) -> ClientList:
    """Every registered client application, by name (never their secrets).

    Returns
    -------
    ClientList
        The clients.

    Raises
    ------
    403
        ``FORBIDDEN``: admins only.
    """
    return ClientList(
        items=[ClientInfo.of(row) for row in await oidc_clients.list_clients(db, actor)]
    )


@router.get(
    "/admin/oidc-clients/{client_id}",
    tags=["admin"],
    response_model=ClientInfo,
    responses=error_responses(401, 403, 404, 422),
)
async def read_oidc_client(client_id: ClientId, actor: Reader, db: SessionDep) -> ClientInfo:
    """One client application.

    Returns
    -------
    ClientInfo
        The client.

    Raises
    ------
    403
        ``FORBIDDEN``: admins only.
    404
        ``CLIENT_NOT_FOUND``.
    """
    return ClientInfo.of(await oidc_clients.get_client(db, actor, client_id))


@router.patch(
    "/admin/oidc-clients/{client_id}",
    tags=["admin"],
    response_model=ClientInfo,
    responses=error_responses(401, 403, 404, 422),
)
async def update_oidc_client(
    client_id: ClientId, body: ClientUpdate, actor: CurrentUser, db: SessionDep, client: ClientDep
) -> ClientInfo:
    """Change a client's name, redirect URIs or scopes (absent fields stay).

    Returns
    -------
    ClientInfo
        The client.

    Raises
    ------
    403
        ``FORBIDDEN``: admins only.
    404
        ``CLIENT_NOT_FOUND``.
    422
        ``VALIDATION_ERROR``.
    """
    return ClientInfo.of(await oidc_clients.update_client(db, actor, client_id, body, client))


@router.post(
    "/admin/oidc-clients/{client_id}/secret",
    tags=["admin"],
    response_model=ClientWithSecret,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def rotate_oidc_client_secret(
    client_id: ClientId, actor: CurrentUser, db: SessionDep, client: ClientDep
) -> ClientWithSecret:
    """Give a confidential client a new secret; the old one stops working at once.

    Returns
    -------
    ClientWithSecret
        The client with its new ``client_secret`` (shown this once).

    Raises
    ------
    403
        ``FORBIDDEN``: admins only.
    404
        ``CLIENT_NOT_FOUND``.
    409
        ``PUBLIC_CLIENT``: a public client has no secret.
    """
    secret = await oidc_clients.rotate_secret(db, actor, client_id, client)
    row = await oidc_clients.get_client(db, actor, client_id)
    return ClientWithSecret(**ClientInfo.of(row).model_dump(), client_secret=secret)


@router.delete(
    "/admin/oidc-clients/{client_id}",
    tags=["admin"],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
)
async def delete_oidc_client(
    client_id: ClientId, actor: CurrentUser, db: SessionDep, client: ClientDep
) -> Response:
    """Remove a client application; every token it holds stops working at once.

    Raises
    ------
    403
        ``FORBIDDEN``: admins only.
    404
        ``CLIENT_NOT_FOUND``.
    """
    await oidc_clients.delete_client(db, actor, client_id, client)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/users/me/connected-apps",
    tags=["users"],
    response_model=ConnectedAppList,
    responses=error_responses(401),
)
async def list_connected_apps(user: Reader, db: SessionDep) -> ConnectedAppList:
    """The applications you allowed to sign you in, and what each may read.

    Returns
    -------
    ConnectedAppList
        The applications, by name.
    """
    apps = await oidc.connected_apps(db, user.uuid)
    return ConnectedAppList(items=[ConnectedApp.of(consent, client) for consent, client in apps])


@router.delete(
    "/users/me/connected-apps/{client_id}",
    tags=["users"],
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 422),
)
async def revoke_connected_app(client_id: ClientId, user: CurrentUser, db: SessionDep) -> Response:
    """Withdraw an application's access: its tokens stop working at once, and the next
    sign-in through it asks for your consent again.

    Raises
    ------
    404
        ``CLIENT_NOT_FOUND``: the application has no access to your account.
    """
    await oidc.revoke_consent(db, user.uuid, client_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
