"""Shapes of the OpenID Connect provider: discovery, tokens, and client applications."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.models import OidcClient, OidcConsent
from app.schemas.common import RequestModel

#: Scopes a client may be allowed.
CLIENT_SCOPES = ("openid", "profile", "email", "roles")
#: What the consent page says each scope lets the application read.
SCOPE_TEXT = {
    "openid": "know who you are (your account's id)",
    "profile": "read your username, display name and picture",
    "email": "read your email address and whether it is verified",
    "roles": "read your roles in this service",
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_redirect_uri(value: str) -> str:
    """An exact redirect URI: https, http on loopback only, or an app's own scheme
    (``com.example.app:/callback``, RFC 8252); no fragment, no wildcard."""
    if len(value) > 2000 or any(ch in value for ch in "*\x00 \t\r\n"):
        raise ValueError("must be one exact URI without wildcards or spaces")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise ValueError("must be an absolute URI") from None
    if parts.fragment or "#" in value:
        raise ValueError("must not have a fragment")
    scheme = parts.scheme.lower()
    if scheme == "https" and parts.hostname:
        return value
    if scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return value
    if "." in scheme and scheme not in ("http", "https") and parts.path:
        return value  # a native app's private-use scheme (reverse domain name)
    raise ValueError(
        "must be https, http on localhost/loopback, or an app scheme such as "
        "com.example.app:/callback"
    )


RedirectUri = Annotated[str, AfterValidator(check_redirect_uri)]
Scope = Annotated[str, Field(pattern="^(openid|profile|email|roles)$")]


class ClientCreate(RequestModel):
    """A client application to register."""

    name: str = Field(min_length=1, max_length=100, description="Shown on the consent page.")
    redirect_uris: list[RedirectUri] = Field(
        min_length=1, max_length=10, description="Exact URIs the codes may be sent to."
    )
    post_logout_redirect_uris: list[RedirectUri] = Field(
        default_factory=list, max_length=10, description="Exact URIs logout may return to."
    )
    scopes: list[Scope] = Field(
        default_factory=lambda: ["openid", "profile", "email"],
        min_length=1,
        max_length=4,
        description="What the client may ask for (openid, profile, email, roles).",
    )
    public: bool = Field(
        default=False,
        description="A client that cannot keep a secret (a single-page or native app): "
        "it gets no secret and must use PKCE.",
    )


class ClientUpdate(RequestModel):
    """Fields to change; absent ones stay."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    redirect_uris: list[RedirectUri] | None = Field(default=None, min_length=1, max_length=10)
    post_logout_redirect_uris: list[RedirectUri] | None = Field(default=None, max_length=10)
    scopes: list[Scope] | None = Field(default=None, min_length=1, max_length=4)


class ClientInfo(BaseModel):
    """A registered client application (never its secret)."""

    client_id: str
    name: str
    public: bool
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    scopes: list[str]
    created_at: int

    @classmethod
    def of(cls, row: OidcClient) -> ClientInfo:
        return cls(
            client_id=row.client_id,
            name=row.name,
            public=row.is_public,
            redirect_uris=list(row.redirect_uris),
            post_logout_redirect_uris=list(row.post_logout_redirect_uris),
            scopes=list(row.scopes),
            created_at=row.created_at,
        )


class ClientWithSecret(ClientInfo):
    """A client with its secret: shown in this one answer only (null for a public one)."""

    client_secret: str | None = Field(
        description="Keep it now: only its hash is stored, it cannot be shown again."
    )


class ClientList(BaseModel):
    """Every registered client application."""

    items: list[ClientInfo]


class ConnectedApp(BaseModel):
    """An application the user allowed to sign them in."""

    client_id: str
    name: str
    scopes: list[str]
    granted_at: int

    @classmethod
    def of(cls, consent: OidcConsent, client: OidcClient) -> ConnectedApp:
        return cls(
            client_id=client.client_id,
            name=client.name,
            scopes=list(consent.scopes),
            granted_at=consent.granted_at,
        )


class ConnectedAppList(BaseModel):
    """The applications the user allowed."""

    items: list[ConnectedApp]


# Protocol answers (documented shapes; the protocol's own field names) ---------------------


class OAuthErrorResponse(BaseModel):
    """An OAuth error: the protocol's ``error`` fields and the service's ``detail``/``code``."""

    error: str = Field(examples=["invalid_grant"])
    error_description: str | None = None
    detail: str
    code: str = Field(examples=["INVALID_GRANT"])


class TokenResponse(BaseModel):
    """Tokens for a client (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3)."""

    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    scope: str
    refresh_token: str | None = None
    id_token: str | None = None


class IntrospectionResponse(BaseModel):
    """RFC 7662: ``active`` false for anything not live, or not the caller's."""

    model_config = ConfigDict(extra="allow")

    active: bool
    client_id: str | None = None
    scope: str | None = None
    sub: str | None = None
    username: str | None = None
    token_type: str | None = None
    exp: int | None = None
    iat: int | None = None


class UserInfoResponse(BaseModel):
    """The user's claims the token's scopes allow."""

    model_config = ConfigDict(extra="allow")

    sub: str
    name: str | None = None
    preferred_username: str | None = None
    picture: str | None = None
    email: str | None = None
    email_verified: bool | None = None
    roles: list[str] | None = None


class JsonWebKeySet(BaseModel):
    """The public keys that verify this service's tokens (RFC 7517)."""

    keys: list[dict[str, Any]]


class ProviderMetadata(BaseModel):
    """OpenID Connect Discovery 1.0 metadata."""

    model_config = ConfigDict(extra="allow")

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    scopes_supported: list[str]
    response_types_supported: list[str]
    subject_types_supported: list[str]
    id_token_signing_alg_values_supported: list[str]
