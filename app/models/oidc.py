"""OpenID Connect provider tables: client applications, codes, consents and grants."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_epoch


class OidcClient(Base):
    """An application that signs its users in with this service.

    A confidential client has a secret (only its SHA-256 is kept); a public one (a
    single-page or native app) has none and must use PKCE.
    """

    __tablename__ = "oidc_client"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch, onupdate=now_epoch)
    created_by: Mapped[str | None] = mapped_column(String(36))

    @property
    def is_public(self) -> bool:
        """True for a client without a secret."""
        return self.secret_hash is None


class OidcCode(Base):
    """An authorization code (its SHA-256), single use, valid for a minute."""

    __tablename__ = "oidc_code"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oidc_client.client_id", ondelete="CASCADE"), index=True
    )
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"), index=True)
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str | None] = mapped_column(String(255))
    code_challenge: Mapped[str | None] = mapped_column(String(128))
    code_challenge_method: Mapped[str | None] = mapped_column(String(10))
    auth_time: Mapped[int] = mapped_column(BigInteger)
    #: The sign-in session at this service the code was issued in (for logout).
    sso_session_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    used_at: Mapped[int | None] = mapped_column(BigInteger)


class OidcConsent(Base):
    """The scopes a user allowed a client; asked again only for more."""

    __tablename__ = "oidc_consent"

    user_uuid: Mapped[str] = mapped_column(
        ForeignKey("user.uuid", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oidc_client.client_id", ondelete="CASCADE"), primary_key=True
    )
    scopes: Mapped[list[str]] = mapped_column(JSON)
    granted_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)


class OidcGrant(Base):
    """What one code exchange gave a client: its access and refresh tokens live and die
    with this row."""

    __tablename__ = "oidc_grant"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oidc_client.client_id", ondelete="CASCADE"), index=True
    )
    user_uuid: Mapped[str] = mapped_column(ForeignKey("user.uuid", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    sso_session_id: Mapped[str | None] = mapped_column(String(36), index=True)
    auth_time: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class OidcRefreshToken(Base):
    """A client's refresh token (its SHA-256). Each works once; a second use ends the
    grant."""

    __tablename__ = "oidc_refresh_token"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    grant_id: Mapped[str] = mapped_column(
        ForeignKey("oidc_grant.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_epoch)
    used_at: Mapped[int | None] = mapped_column(BigInteger)
