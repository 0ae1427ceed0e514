"""Client applications of the OpenID Connect provider: registered by admins.

A client id is random and public; a confidential client's secret is 256 random bits,
shown once and kept as its SHA-256 (a secret of that strength needs no slow hash).
Deleting a client removes its codes, consents and grants: every token it holds stops
working at once.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Conflict, NotFound
from app.core.permissions import Subject, require_permission
from app.core.security import hash_secret
from app.models import OidcClient, User, now_epoch
from app.schemas.oidc import ClientCreate, ClientUpdate
from app.services.audit import AuditTarget, record_audit
from app.services.context import ClientInfo

CLIENT_ID_PREFIX = "umc_"
SECRET_PREFIX = "umcs_"


def _require(actor: Subject | None, action: str) -> None:
    """Admins may; ``actor`` None is the command line (an operator with the database)."""
    if actor is not None:
        require_permission(actor, "oidc_clients", action)


class ClientNotFound(NotFound):
    """No client application has this id."""

    code = "CLIENT_NOT_FOUND"
    detail = "No such client application"


def _target(row: OidcClient) -> AuditTarget:
    return AuditTarget("oidc_client", row.client_id, row.name)


def _new_secret() -> tuple[str, str]:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


async def create_client(
    db: AsyncSession, actor: User | None, body: ClientCreate, client: ClientInfo | None = None
) -> tuple[OidcClient, str | None]:
    """Register a client; returns it and its secret (None for a public client)."""
    _require(actor, "create")
    secret, secret_hash = _new_secret() if not body.public else (None, None)
    now = now_epoch()
    row = OidcClient(
        client_id=CLIENT_ID_PREFIX + secrets.token_urlsafe(16),
        name=body.name,
        secret_hash=secret_hash,
        redirect_uris=list(dict.fromkeys(body.redirect_uris)),
        post_logout_redirect_uris=list(dict.fromkeys(body.post_logout_redirect_uris)),
        scopes=sorted(set(body.scopes) | {"openid"}),
        created_at=now,
        updated_at=now,
        created_by=actor.uuid if actor is not None else None,
    )
    db.add(row)
    record_audit(
        db,
        actor,
        "client.created",
        _target(row),
        client,
        {"redirect_uris": row.redirect_uris, "scopes": row.scopes, "public": body.public},
    )
    await db.commit()
    return row, secret


async def list_clients(db: AsyncSession, actor: Subject | None) -> list[OidcClient]:
    """Every client, by name."""
    _require(actor, "read")
    return list((await db.scalars(select(OidcClient).order_by(OidcClient.name))).all())


async def get_client(db: AsyncSession, actor: Subject | None, client_id: str) -> OidcClient:
    """One client (404 when there is none)."""
    _require(actor, "read")
    row = await db.get(OidcClient, client_id) if len(client_id) <= 64 else None
    if row is None:
        raise ClientNotFound()
    return row


async def update_client(
    db: AsyncSession,
    actor: User | None,
    client_id: str,
    body: ClientUpdate,
    client: ClientInfo | None = None,
) -> OidcClient:
    """Change a client's name, URIs or scopes. Tokens already given keep their scopes
    until they expire; new requests get the new rules."""
    _require(actor, "update")
    row = await get_client(db, actor, client_id)
    if body.name is not None:
        row.name = body.name
    if body.redirect_uris is not None:
        row.redirect_uris = list(dict.fromkeys(body.redirect_uris))
    if body.post_logout_redirect_uris is not None:
        row.post_logout_redirect_uris = list(dict.fromkeys(body.post_logout_redirect_uris))
    if body.scopes is not None:
        row.scopes = sorted(set(body.scopes) | {"openid"})
    row.updated_at = now_epoch()
    changed = body.model_dump(exclude_none=True)
    record_audit(db, actor, "client.updated", _target(row), client, {"changed": changed})
    await db.commit()
    return row


async def rotate_secret(
    db: AsyncSession, actor: User | None, client_id: str, client: ClientInfo | None = None
) -> str:
    """A new secret for a confidential client; the old one stops working at once."""
    _require(actor, "update")
    row = await get_client(db, actor, client_id)
    if row.is_public:
        raise PublicClientHasNoSecret()
    secret, row.secret_hash = _new_secret()
    row.updated_at = now_epoch()
    record_audit(db, actor, "client.secret_rotated", _target(row), client)
    await db.commit()
    return secret


async def delete_client(
    db: AsyncSession, actor: User | None, client_id: str, client: ClientInfo | None = None
) -> None:
    """Remove a client with its codes, consents and grants."""
    _require(actor, "delete")
    row = await get_client(db, actor, client_id)
    record_audit(db, actor, "client.deleted", _target(row), client)
    await db.delete(row)
    await db.commit()


class PublicClientHasNoSecret(Conflict):
    """A public client has no secret to rotate."""

    code = "PUBLIC_CLIENT"
    detail = "A public client has no secret"
