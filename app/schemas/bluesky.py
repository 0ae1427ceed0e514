"""The JSON shapes of the Bluesky sign-in: the client's published documents, an account."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BlueskyClientMetadata(BaseModel):
    """The client metadata document that AT Protocol authorization servers fetch at the
    client id (which is this document's URL)."""

    client_id: str
    client_name: str
    client_uri: str
    application_type: str
    grant_types: list[str]
    response_types: list[str]
    redirect_uris: list[str]
    scope: str
    token_endpoint_auth_method: str
    token_endpoint_auth_signing_alg: str
    dpop_bound_access_tokens: bool
    jwks_uri: str


class PublicJwk(BaseModel):
    """A public EC key (P-256) that signs this service's client assertions."""

    kty: str
    crv: str
    x: str
    y: str
    kid: str
    alg: str
    use: str


class JsonWebKeySet(BaseModel):
    """The client's public keys."""

    keys: list[PublicJwk]


class BlueskyAccountRead(BaseModel):
    """The linked Bluesky account, as its PDS shows it after a refresh."""

    did: str = Field(description="The account's DID (did:plc:... or did:web:...).")
    handle: str | None = Field(description="The handle, when it resolves back to the DID.")
    display_name: str | None
    expires_at: int | None = Field(description="When the new access token expires (epoch s).")
