"""Settings: every environment variable the service reads, in one place.

Values come from the process environment, then from ``app/.env`` and ``./.env``.
Problems are reported with the variable's name, either as a hard error
(:class:`ConfigError`, the service refuses to start) or as a warning collected in
``Settings.warnings`` (for instance an incomplete SMTP set, after which email is off).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from limits import parse as parse_rate
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.atproto_keys import import_private_key
from app.core.origins import serialize, url_origin
from app.core.secret_box import SecretBox, secret_box

APP_DIR = Path(__file__).resolve().parent.parent

#: Minimum length, in bytes, of a JWT secret in production.
JWT_SECRET_MIN_BYTES = 32
#: Name of the file, inside DATA_DIR, that holds a generated (non-production) JWT secret.
JWT_SECRET_FILE = ".jwt_secret"

LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]
EmailMethod = Literal["none", "console", "smtp", "mj"]

#: OAuth providers whose client id / secret can be configured.
OAUTH_PROVIDERS = ("github", "discord", "twitch", "google", "reddit", "twitter")

_SMTP_REQUIRED = ("SMTP_HOST", "SMTP_PORT", "SMTP_SENDER_EMAIL")
_MJ_REQUIRED = ("MJ_APIKEY_PUBLIC", "MJ_APIKEY_PRIVATE", "MJ_SENDER_EMAIL")
_POSTGRES_VARS = ("POSTGRES_SERVER", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message names the variable(s) at fault."""


def _is_rp_domain(host: str) -> bool:
    """A host browsers take as a WebAuthn relying party id: a domain, not an address."""
    return bool(_DOMAIN.fullmatch(host)) and not host.replace(".", "").isdigit()


def _check_http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {value!r}")
    return value.rstrip("/")


def _check_origin(value: str) -> str:
    """An exact browser origin: ``scheme://host[:port]``, nothing after it."""
    if value == "*":
        # Browsers send cookies and Authorization only to an origin named exactly: a
        # wildcard would either break every signed-in call or, echoed back, hand the
        # caller's session to any site.
        raise ValueError(
            "'*' is refused: credentials (the device cookie, the Authorization "
            "header) are allowed, which needs exact origins; list them, comma-separated"
        )
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(
            "each entry must be an origin as a browser sends it, such as "
            f"https://app.example.com:8080 (scheme, host, optional port, no path), got {value!r}"
        )
    origin = url_origin(value)
    if origin is None:  # a malformed port
        raise ValueError(f"not an origin: {value!r}")
    # As browsers send it: host in lower case, no default port (:443 for https).
    return serialize(origin)


#: A domain name (the WebAuthn relying party id).
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")

#: Characters a front-end path may not hold.
_NOT_IN_PATH = "\\ \t\r\n?#"


def _split_list(value: object) -> object:
    """Read a comma-separated list from the environment ("a, b" -> ["a", "b"])."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def dns_server(entry: str) -> tuple[str, int]:
    """A BLUESKY_DNS_SERVERS entry (``ip``, ``ipv4:port``, ``[ipv6]:port``) as (ip, port)."""
    try:
        return str(ipaddress.ip_address(entry)), 53
    except ValueError:
        pass
    host, _, port = entry.rpartition(":")
    address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {entry!r}")
    return str(address), int(port)


class Settings(BaseSettings):
    """The service's configuration. See README.md "Configuration" for each variable."""

    model_config = SettingsConfigDict(
        env_file=(APP_DIR / ".env", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    PROJECT_NAME: str = "UserManager"

    # URL. PORT comes first: BASE_URL's default is built from it.
    PORT: int = Field(default=8000, ge=1, le=65535)
    BASE_URL: str = ""
    API_STR: str = "/api"
    # Empty: no front end; mailed links open the service's own pages (/account/...).
    FRONTEND_URL: str = ""
    # The front end's pages that mailed links open (each gets ?token=...).
    FRONTEND_VERIFY_PATH: str = "/verify-email"
    FRONTEND_RESET_PATH: str = "/reset-password"
    FRONTEND_CONFIRM_EMAIL_CHANGE_PATH: str = "/confirm-email-change"
    FRONTEND_UNDO_EMAIL_CHANGE_PATH: str = "/undo-email-change"
    FRONTEND_FORGOT_PASSWORD_PATH: str = "/forgot-password"

    # Storage
    DATA_DIR: Path = Path("./data")
    # Where uploads and pictures go (app.core.storage): "local" keeps them under
    # DATA_DIR/users/; "s3" in S3_BUCKET of any S3-compatible service. Without
    # S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY the client's default credentials are used
    # (AWS_* variables, an instance role). S3_PREFIX is put before every key.
    STORAGE_BACKEND: Literal["local", "s3"] = "local"
    S3_BUCKET: str | None = None
    S3_ENDPOINT_URL: str | None = None
    S3_REGION: str = "us-east-1"
    S3_ACCESS_KEY_ID: str | None = None
    S3_SECRET_ACCESS_KEY: str | None = Field(default=None, repr=False)
    S3_PREFIX: str = ""
    # With "s3": downloads answer 307 to a presigned URL of the bucket (after the access
    # check), valid S3_PRESIGNED_SECONDS, that works for whoever holds it until then.
    S3_PRESIGNED_DOWNLOADS: bool = False
    S3_PRESIGNED_SECONDS: int = Field(default=300, ge=1, le=604_800)

    # Logging
    LOG_LEVEL: LogLevel = "INFO"
    LOG_FILE_ENABLED: bool = False
    LOG_FILE_LEVEL: LogLevel = "WARNING"
    LOG_FILE_ROTATION: str = "24"
    LOG_FILE_RETENTION: str = "30"

    # JWT. Empty means "not given": validation puts the kept secret there (see
    # _settle_jwt_secret), so every Settings object carries the key that signs tokens.
    JWT_SECRET_KEY: str = Field(default="", repr=False)
    JWT_EXP: int = Field(default=30, gt=0)
    # How access tokens are signed: ES256 or EdDSA with keys kept in the database and
    # published at /.well-known/jwks.json, or HS256 with JWT_SECRET_KEY (shared secret).
    JWT_ALGORITHM: Literal["ES256", "EdDSA", "HS256"] = "ES256"
    # Seals secrets kept in the database (private signing keys, provider tokens). One or
    # more secrets, comma-separated: the first seals, all open. Empty: derived from
    # JWT_SECRET_KEY.
    DATA_ENCRYPTION_KEY: str = Field(default="", repr=False)
    REFRESH_TOKEN_EXP_DAYS: int = Field(default=30, gt=0)

    # OTP
    OTP_LENGTH: int = Field(default=6, ge=6, le=10)
    OTP_AUTHENTICATOR_INTERVAL: int = Field(default=30, gt=0, le=120)
    OTP_EMAIL_INTERVAL: int = Field(default=600, gt=0)

    ENVIRONMENT: str = "local"

    # OpenID Connect provider: lifetimes of what it hands to client applications.
    OIDC_ACCESS_TOKEN_SECONDS: int = Field(default=900, ge=60, le=86_400)
    OIDC_ID_TOKEN_SECONDS: int = Field(default=900, ge=60, le=86_400)
    OIDC_REFRESH_TOKEN_DAYS: int = Field(default=30, ge=1, le=365)

    # Feature flags and docs
    FEATURE_FLAGS_ENABLED: bool = False
    FEATURE_FLAGS_FILE: str = "feature_flags.json"
    # Where the flags live: "file" (FEATURE_FLAGS_FILE), "database" (shared by every
    # replica), or "auto": the database on PostgreSQL, the file on SQLite.
    FEATURE_FLAGS_SOURCE: Literal["auto", "file", "database"] = "auto"
    PROTECTED_INTERACTIVE_DOCS: bool = True

    # Database
    DATABASE_URI: str | None = Field(default=None, repr=False)
    POSTGRES_SERVER: str | None = None
    POSTGRES_PORT: int = 5432
    POSTGRES_USER: str | None = None
    POSTGRES_PASSWORD: str | None = Field(default=None, repr=False)
    POSTGRES_DB: str | None = None

    # Email
    CONTACT_EMAIL: str | None = None
    EMAIL_METHOD: EmailMethod = "none"
    EMAIL_CHECK_DELIVERABILITY: bool = True
    SMTP_TLS: bool = True
    SMTP_PORT: int | None = None
    SMTP_HOST: str | None = None
    SMTP_USER: str | None = None
    SMTP_PASSWORD: str | None = Field(default=None, repr=False)
    SMTP_SENDER_EMAIL: str | None = None
    MJ_APIKEY_PUBLIC: str | None = None
    MJ_APIKEY_PRIVATE: str | None = Field(default=None, repr=False)
    MJ_SENDER_EMAIL: str | None = None

    # Rate limiter
    RATE_LIMITER_ENABLED: bool = False
    RATE_LIMITER_MAX_REQUESTS: int = Field(default=300, gt=0)
    RATE_LIMITER_WINDOW_SECONDS: int = Field(default=900, gt=0)
    REDIS_URL: str | None = Field(default=None, repr=False)
    AUTH_RATE_LIMIT_ACCOUNT: str = "10 per 15 minutes"
    AUTH_RATE_LIMIT_ADDRESS: str = "100 per 15 minutes"

    # Third-party login
    API_CLIENT_ID_GITHUB: str | None = None
    API_CLIENT_SECRET_GITHUB: str | None = Field(default=None, repr=False)
    API_CLIENT_ID_DISCORD: str | None = None
    API_CLIENT_SECRET_DISCORD: str | None = Field(default=None, repr=False)
    API_CLIENT_ID_TWITCH: str | None = None
    API_CLIENT_SECRET_TWITCH: str | None = Field(default=None, repr=False)
    API_CLIENT_ID_GOOGLE: str | None = None
    API_CLIENT_SECRET_GOOGLE: str | None = Field(default=None, repr=False)
    API_CLIENT_ID_REDDIT: str | None = None
    API_CLIENT_SECRET_REDDIT: str | None = Field(default=None, repr=False)
    API_CLIENT_ID_TWITTER: str | None = None
    API_CLIENT_SECRET_TWITTER: str | None = Field(default=None, repr=False)
    OAUTH_PROVIDER_URLS: dict[str, dict[str, str]] = {}
    # The callback's whole exchange with a provider (code for token, profile) must fit
    # in this time, however slowly the provider answers.
    OAUTH_PROVIDER_DEADLINE_SECONDS: float = Field(default=10, gt=0, le=120)
    # Bluesky (AT Protocol OAuth). No registration: the client id is the URL of the
    # client metadata document this service publishes under BASE_URL.
    BLUESKY_ENABLED: bool = False
    # The ES256 private key that signs client assertions (a PEM, or a JWK as JSON);
    # empty: one is generated and kept, sealed, in the database.
    BLUESKY_CLIENT_KEY: str = Field(default="", repr=False)
    # What the sign-in asks for; "atproto" alone gives the identity only (then the
    # profile is not read).
    BLUESKY_SCOPE: str = "atproto transition:generic"
    # Where did:plc identities are looked up.
    BLUESKY_PLC_DIRECTORY_URL: str = "https://plc.directory"
    # DNS servers ("ip" or "ip:port", comma-separated) asked for _atproto TXT records;
    # empty: the system's.
    BLUESKY_DNS_SERVERS: Annotated[list[str], NoDecode] = []
    # Tests and local development only: identity, authorization and PDS servers may be
    # on loopback addresses, over plain http. Refused in production.
    BLUESKY_ALLOW_LOOPBACK: bool = False

    # Security and operations
    PASSWORD_BCRYPT_ROUNDS: int = Field(default=12, ge=4, le=31)
    DEACTIVATE_ON_PASSWORD_FORGOT: bool = False
    # A Pwned-Passwords-compatible range API (".../range/") asked whether a new password
    # is known from a breach; empty: not asked. Its whole answer must come within the
    # timeout, else the password is accepted (app.core.breached_passwords).
    PASSWORD_BREACH_CHECK_URL: str = ""
    PASSWORD_BREACH_CHECK_TIMEOUT_SECONDS: float = Field(default=2, gt=0, le=30)
    MAX_UPLOAD_SIZE_MB: int = Field(default=10, gt=0)
    # Signed picture URLs change once per this many seconds and stay valid one to two times
    # as long (see app.core.picture_links).
    PICTURE_URL_SECONDS: int = Field(default=14_400, ge=60, le=604_800)
    FORWARDED_ALLOW_IPS: Annotated[list[str], NoDecode] = []
    ALLOWED_REDIRECT_ORIGINS: Annotated[list[str], NoDecode] = []
    # Web apps on other origins that may call the API from a browser (CORS).
    CORS_ORIGINS: Annotated[list[str], NoDecode] = []
    FIRST_ADMIN_USERNAME: str | None = None
    FIRST_ADMIN_EMAIL: str | None = None
    FIRST_ADMIN_PASSWORD: str | None = Field(default=None, repr=False)
    METRICS_ENABLED: bool = False
    METRICS_ALLOW_IPS: Annotated[list[str], NoDecode] = ["127.0.0.1"]
    # Sessions and users kept in memory between requests (0 turns the cache off).
    AUTH_CACHE_SECONDS: int = Field(default=60, ge=0)
    # How long a re-authentication (password, or 2FA code / provider login for accounts
    # without a password) lets a session make sensitive changes.
    REAUTH_WINDOW_SECONDS: int = Field(default=300, gt=0)
    # Passkeys (WebAuthn). Empty: derived from FRONTEND_URL / BASE_URL (_settle_webauthn).
    # The relying party id: the domain passkeys are bound to (a host, no scheme or port).
    WEBAUTHN_RP_ID: str = ""
    # The name authenticators show beside the account (default PROJECT_NAME).
    WEBAUTHN_RP_NAME: str = ""
    # The origins (scheme://host[:port]) whose pages may use the passkeys.
    WEBAUTHN_ORIGINS: Annotated[list[str], NoDecode] = []
    # Server processes (scripts/serve.sh): several need Redis to share cache invalidations.
    WORKERS: int = Field(default=1, gt=0)
    # Every maintenance job's period, in seconds; 0 keeps each job's own (an hour, ten
    # minutes, a day: see the README's Scheduled jobs).
    MAINTENANCE_PERIOD_SECONDS: int = Field(default=0, ge=0, le=86400 * 7)
    # Days the admin audit log keeps a row; the trim_audit_log job deletes older ones.
    # 0 keeps every row.
    AUDIT_RETENTION_DAYS: int = Field(default=365, ge=0, le=36500)

    # Webhooks (app.services.webhook_delivery). How often each replica's worker looks
    # for events to send when it has nothing in hand.
    WEBHOOK_POLL_SECONDS: float = Field(default=1.0, gt=0, le=60)
    # One attempt (connect, send, answer) must fit in this time.
    WEBHOOK_TIMEOUT_SECONDS: float = Field(default=5.0, gt=0, le=60)
    # A failed attempt is retried after BASE * 2^(attempts-1) seconds, jittered, at most
    # MAX; after WEBHOOK_MAX_ATTEMPTS attempts the delivery is marked failed.
    WEBHOOK_RETRY_BASE_SECONDS: int = Field(default=5, ge=1, le=3600)
    WEBHOOK_RETRY_MAX_SECONDS: int = Field(default=3600, ge=1, le=86400)
    WEBHOOK_MAX_ATTEMPTS: int = Field(default=20, ge=1, le=1000)
    # An endpoint whose every attempt failed for this long is turned off, admins mailed.
    WEBHOOK_DISABLE_AFTER_SECONDS: int = Field(default=86400, ge=60)
    # Delivered and failed deliveries (and their events) are kept this many days.
    WEBHOOK_RETENTION_DAYS: int = Field(default=7, ge=1, le=3650)
    # Endpoints on loopback, private or link-local addresses. Unset: allowed, except
    # when ENVIRONMENT=production (a receiver inside the network is an SSRF target).
    WEBHOOK_ALLOW_PRIVATE_TARGETS: bool | None = None

    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("BASE_URL", "FRONTEND_URL")
    @classmethod
    def _url(cls, value: str, info) -> str:
        if info.field_name == "BASE_URL" and not value:
            # Unset: the address `make run` and the image serve on, so links in mails
            # point at the port actually in use.
            return f"http://localhost:{info.data.get('PORT', 8000)}"
        if info.field_name == "FRONTEND_URL" and not value.strip():
            return ""  # no front end
        return _check_http_url(info.field_name, value)

    @field_validator("PASSWORD_BREACH_CHECK_URL")
    @classmethod
    def _breach_check_url(cls, value: str, info) -> str:
        if not value.strip():
            return ""  # off
        return _check_http_url(info.field_name, value.strip()) + "/"

    @field_validator(
        "FRONTEND_VERIFY_PATH",
        "FRONTEND_RESET_PATH",
        "FRONTEND_CONFIRM_EMAIL_CHANGE_PATH",
        "FRONTEND_UNDO_EMAIL_CHANGE_PATH",
        "FRONTEND_FORGOT_PASSWORD_PATH",
    )
    @classmethod
    def _frontend_path(cls, value: str, info) -> str:
        # A path only: a host, query or fragment here would send tokens elsewhere.
        if (
            not value.startswith("/")
            or value.startswith("//")
            or any(c in value for c in _NOT_IN_PATH)
        ):
            raise ValueError(f"{info.field_name} must be a path such as /page, got {value!r}")
        return value

    @field_validator("API_STR")
    @classmethod
    def _api_str(cls, value: str) -> str:
        value = "/" + value.strip("/")
        if value == "/":
            raise ValueError("API_STR must be a path prefix such as /api, not /")
        return value

    @field_validator("ALLOWED_REDIRECT_ORIGINS", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        value = _split_list(value)
        if isinstance(value, list):
            return [_check_http_url("ALLOWED_REDIRECT_ORIGINS", str(v)) for v in value]
        return value

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _cors_origins(cls, value: object) -> object:
        value = _split_list(value)
        if isinstance(value, list):
            return [_check_origin(str(v)) for v in value]
        return value

    @field_validator("WEBAUTHN_ORIGINS", mode="before")
    @classmethod
    def _webauthn_origins(cls, value: object) -> object:
        value = _split_list(value)
        if isinstance(value, list):
            return [_check_origin(str(v)) for v in value]
        return value

    @field_validator("WEBAUTHN_RP_ID")
    @classmethod
    def _rp_id(cls, value: str) -> str:
        value = value.strip().lower()
        if value and not _is_rp_domain(value):
            raise ValueError(
                f"WEBAUTHN_RP_ID must be a domain such as example.com (no scheme, port "
                f"or path; browsers refuse IP addresses), got {value!r}"
            )
        return value

    @field_validator("FORWARDED_ALLOW_IPS", "METRICS_ALLOW_IPS", mode="before")
    @classmethod
    def _ip_list(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("EMAIL_METHOD", "LOG_LEVEL", "LOG_FILE_LEVEL", mode="before")
    @classmethod
    def _normalise_choice(cls, value: object, info) -> object:
        if not isinstance(value, str):
            return value
        if info.field_name == "EMAIL_METHOD":
            value = value.strip().lower()
            return "mj" if value == "mailjet" else value
        return value.strip().upper()

    @field_validator("AUTH_RATE_LIMIT_ACCOUNT", "AUTH_RATE_LIMIT_ADDRESS")
    @classmethod
    def _rate(cls, value: str, info) -> str:
        try:
            parse_rate(value)
        except ValueError:
            raise ValueError(
                f"{info.field_name} must look like '10 per 15 minutes', got {value!r}"
            ) from None
        return value

    @field_validator("FORWARDED_ALLOW_IPS")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"FORWARDED_ALLOW_IPS entries must be addresses, networks or *, got {entry!r}"
                ) from None
        return value

    @field_validator("OAUTH_PROVIDER_URLS")
    @classmethod
    def _provider_urls(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        allowed = {"authorize_url", "access_token_url", "api_base_url", "userinfo_url", "jwks_uri"}
        for provider, urls in value.items():
            if provider not in OAUTH_PROVIDERS:
                raise ValueError(f"OAUTH_PROVIDER_URLS: unknown provider {provider!r}")
            for key, url in urls.items():
                if key not in allowed:
                    raise ValueError(f"OAUTH_PROVIDER_URLS: {provider}.{key} is not a URL setting")
                _check_http_url(f"OAUTH_PROVIDER_URLS.{provider}.{key}", url)
        return value

    @field_validator("BLUESKY_CLIENT_KEY")
    @classmethod
    def _bluesky_key(cls, value: str) -> str:
        if value.strip():
            import_private_key(value)  # a ValueError names what is wrong, never the key
        return value.strip()

    @field_validator("BLUESKY_SCOPE")
    @classmethod
    def _bluesky_scope(cls, value: str) -> str:
        if "atproto" not in value.split():
            raise ValueError("BLUESKY_SCOPE must include 'atproto'")
        return " ".join(value.split())

    @field_validator("BLUESKY_PLC_DIRECTORY_URL")
    @classmethod
    def _plc_url(cls, value: str) -> str:
        return _check_http_url("BLUESKY_PLC_DIRECTORY_URL", value)

    @field_validator("BLUESKY_DNS_SERVERS", mode="before")
    @classmethod
    def _dns_servers(cls, value: object) -> object:
        value = _split_list(value)
        for entry in value if isinstance(value, list) else []:
            try:
                dns_server(str(entry))
            except ValueError:
                raise ValueError(
                    f"BLUESKY_DNS_SERVERS entries must be ip or ip:port, got {entry!r}"
                ) from None
        return value

    @field_validator("S3_ENDPOINT_URL")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        return _check_http_url("S3_ENDPOINT_URL", value) if value else None

    @field_validator("S3_PREFIX")
    @classmethod
    def _s3_prefix(cls, value: str) -> str:
        """No leading slash; a folder-like prefix ends with one ("" for none)."""
        value = value.strip().strip("/")
        return f"{value}/" if value else ""

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value or None

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.ENVIRONMENT == "production":
            key = self.JWT_SECRET_KEY
            if not key or len(key.encode()) < JWT_SECRET_MIN_BYTES:
                raise ValueError(
                    "JWT_SECRET_KEY must be set to at least "
                    f"{JWT_SECRET_MIN_BYTES} bytes when ENVIRONMENT=production"
                )
        given = [name for name in _POSTGRES_VARS if getattr(self, name)]
        if given and len(given) < len(_POSTGRES_VARS):
            missing = [name for name in _POSTGRES_VARS if name not in given]
            raise ValueError(
                f"incomplete PostgreSQL settings: {', '.join(missing)} missing "
                f"(set all of {', '.join(_POSTGRES_VARS)}, or none)"
            )
        if self.DATABASE_URI and not given:
            scheme = urlsplit(self.DATABASE_URI).scheme.split("+")[0]
            if scheme not in ("sqlite", "postgresql", "postgres"):
                raise ValueError(
                    f"DATABASE_URI must be a sqlite:// or postgresql:// URL, got scheme {scheme!r}"
                )
        if self.is_production and self.DATA_ENCRYPTION_KEY:
            short = [
                position
                for position, part in enumerate(self.DATA_ENCRYPTION_KEY.split(","), 1)
                if part.strip() and len(part.strip().encode()) < JWT_SECRET_MIN_BYTES
            ]
            if short:
                raise ValueError(
                    f"DATA_ENCRYPTION_KEY: every key must be at least {JWT_SECRET_MIN_BYTES} "
                    f"bytes when ENVIRONMENT=production (key {short[0]} is shorter)"
                )
        if self.EMAIL_METHOD == "console" and self.is_production:
            raise ValueError(
                "EMAIL_METHOD=console prints whole mails, links included, to the console; "
                "it is for development and refused when ENVIRONMENT=production "
                "(use smtp or mj)"
            )
        if self.BLUESKY_ALLOW_LOOPBACK and self.is_production:
            raise ValueError(
                "BLUESKY_ALLOW_LOOPBACK lets Bluesky sign-ins reach loopback addresses; "
                "it is for tests and is refused when ENVIRONMENT=production"
            )
        if self.STORAGE_BACKEND == "s3" and not self.S3_BUCKET:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET (the bucket that keeps files)")
        if self.STORAGE_BACKEND == "local" and self.S3_PRESIGNED_DOWNLOADS:
            self._warnings.append(
                "S3_PRESIGNED_DOWNLOADS is ignored with STORAGE_BACKEND=local: "
                "downloads are served by the service"
            )
        self._check_email_method()
        self._settle_webauthn()
        check_data_dir(self.DATA_DIR)
        self._settle_jwt_secret()
        return self

    def _settle_jwt_secret(self) -> None:
        """Give JWT_SECRET_KEY its value outside production when it was not set.

        Done last, once the rest is known to be valid, as it may write DATA_DIR. Failing
        to keep a secret raises :class:`ConfigError`, which validation lets through.
        """
        if not self.JWT_SECRET_KEY:
            self.JWT_SECRET_KEY = keep_jwt_secret(self.DATA_DIR)

    def _settle_webauthn(self) -> None:
        """Derive the passkey settings left empty, and check that they fit together.

        The relying party id defaults to the front end's host (where users sign in)
        or else BASE_URL's; the origins to those of BASE_URL and FRONTEND_URL that are
        on that domain (a browser refuses a passkey on any other).
        """
        pages = [url for url in (self.FRONTEND_URL, self.BASE_URL) if url]
        if not self.WEBAUTHN_RP_ID:
            # The first of those hosts that is a domain: browsers refuse an IP address
            # as relying party, and a service reached by IP must still start (its
            # passkeys then work nowhere until WEBAUTHN_RP_ID names a domain).
            hosts = [(urlsplit(url).hostname or "").lower() for url in pages]
            domains = [host for host in hosts if _is_rp_domain(host)]
            self.WEBAUTHN_RP_ID = domains[0] if domains else "localhost"
        if not self.WEBAUTHN_RP_NAME:
            self.WEBAUTHN_RP_NAME = self.PROJECT_NAME
        if not self.WEBAUTHN_ORIGINS:
            origins = [
                _check_origin(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}") for url in pages
            ]
            self.WEBAUTHN_ORIGINS = [
                origin for origin in dict.fromkeys(origins) if self._on_rp_domain(origin)
            ]
        for origin in self.WEBAUTHN_ORIGINS:
            if not self._on_rp_domain(origin):
                raise ValueError(
                    f"WEBAUTHN_ORIGINS entry {origin!r} is not on WEBAUTHN_RP_ID "
                    f"{self.WEBAUTHN_RP_ID!r} (its host must be that domain or under it)"
                )

    def _on_rp_domain(self, origin: str) -> bool:
        host = urlsplit(origin).hostname or ""
        return host == self.WEBAUTHN_RP_ID or host.endswith("." + self.WEBAUTHN_RP_ID)

    def _check_email_method(self) -> None:
        """Fall back to EMAIL_METHOD=none, with a warning, when its variables are incomplete."""
        if self.EMAIL_METHOD == "smtp":
            missing = [name for name in _SMTP_REQUIRED if not getattr(self, name)]
            if bool(self.SMTP_USER) != bool(self.SMTP_PASSWORD):
                missing.append("SMTP_PASSWORD" if self.SMTP_USER else "SMTP_USER")
        elif self.EMAIL_METHOD == "mj":
            missing = [name for name in _MJ_REQUIRED if not getattr(self, name)]
        else:
            return
        if missing:
            self._warnings.append(
                f"EMAIL_METHOD={self.EMAIL_METHOD} but {', '.join(missing)} "
                "not set: falling back to EMAIL_METHOD=none (no email will be sent)"
            )
            self.EMAIL_METHOD = "none"

    # Derived values -----------------------------------------------------------------

    @property
    def warnings(self) -> list[str]:
        """Configuration problems that did not stop the service, for the startup log."""
        return list(self._warnings)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL: POSTGRES_* first, then DATABASE_URI, then SQLite."""
        if self.POSTGRES_SERVER:
            user = quote(self.POSTGRES_USER or "", safe="")
            password = quote(self.POSTGRES_PASSWORD or "", safe="")
            return (
                f"postgresql+psycopg://{user}:{password}@{self.POSTGRES_SERVER}:"
                f"{self.POSTGRES_PORT}/{self.POSTGRES_DB}"
            )
        if self.DATABASE_URI:
            return async_database_url(self.DATABASE_URI)
        return f"sqlite+aiosqlite:///{(self.DATA_DIR / 'user_manager.db').resolve()}"

    @property
    def issuer(self) -> str:
        """This service's issuer identifier (``iss``): BASE_URL without a final slash."""
        return self.BASE_URL.rstrip("/")

    @property
    def secret_box(self) -> SecretBox:
        """Seals and opens the secrets this service keeps in its database."""
        return secret_box(self.DATA_ENCRYPTION_KEY, self.JWT_SECRET_KEY)

    @property
    def is_production(self) -> bool:
        """True when ENVIRONMENT=production (stricter cookies and secrets)."""
        return self.ENVIRONMENT == "production"

    @property
    def webhook_private_targets_allowed(self) -> bool:
        """WEBHOOK_ALLOW_PRIVATE_TARGETS, or its default: allowed outside production."""
        if self.WEBHOOK_ALLOW_PRIVATE_TARGETS is None:
            return not self.is_production
        return self.WEBHOOK_ALLOW_PRIVATE_TARGETS

    def oauth_client(self, provider: str) -> tuple[str, str] | None:
        """The (client id, client secret) of a provider, or None when not configured."""
        client_id = getattr(self, f"API_CLIENT_ID_{provider.upper()}", None)
        secret = getattr(self, f"API_CLIENT_SECRET_{provider.upper()}", None)
        return (client_id, secret) if client_id and secret else None


def async_database_url(url: str) -> str:
    """Turn a plain database URL into the async driver's one."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+")[0]
    if base in ("postgres", "postgresql"):
        return f"postgresql+psycopg{sep}{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite{sep}{rest}"
    return url


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the variable's name."""
    lines = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "configuration"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning validation errors into a :class:`ConfigError`.

    ``overrides`` take precedence over the environment and are converted like it.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(f"invalid configuration: {format_validation_error(error)}") from None


def check_data_dir(data_dir: Path) -> None:
    """Create ``data_dir`` if needed and make sure this process can write in it.

    Raises
    ------
    ConfigError
        Naming DATA_DIR, when the directory cannot be created or is not writable (owned
        by another user, on a read-only mount, or a file is in the way), so the service
        stops with one line instead of a traceback from whatever touched it first.

    Notes
    -----
    Nothing is written to test it: a full disk is not an unwritable directory (the
    service starts on one and says what fails), so the check is ``access(2)``, which
    also reports a read-only filesystem to root.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"DATA_DIR: cannot create {data_dir} ({error.strerror}); "
            "point DATA_DIR at a writable directory"
        ) from None
    if not data_dir.is_dir():
        raise ConfigError(f"DATA_DIR: {data_dir} is not a directory")
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(
            f"DATA_DIR: {data_dir} is not writable by this process (uid {os.getuid()}); "
            "change its owner or permissions, or point DATA_DIR elsewhere"
        )


def keep_jwt_secret(data_dir: Path) -> str:
    """The JWT secret generated and kept in ``data_dir`` (for when none is configured).

    Several workers may start at once, so the file never exists half-written: each
    worker writes a candidate to a temporary file beside it, flushed to disk, and
    publishes it with a hard link, which fails when the name is taken. The first link
    wins and every other worker reads that complete secret. (A rename would not do:
    it replaces, so two workers could each go on with their own secret.)
    """
    path = data_dir / JWT_SECRET_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _publish_new_secret(path)
        secret = path.read_text().strip()
    except OSError as error:
        raise ConfigError(
            f"JWT_SECRET_KEY is not set and no secret can be kept in {path} "
            f"({error.strerror}); free space there or set JWT_SECRET_KEY"
        ) from None
    if len(secret.encode()) < JWT_SECRET_MIN_BYTES:
        raise ConfigError(f"JWT_SECRET_KEY: the secret kept in {path} is too short; delete it")
    return secret


def _publish_new_secret(path: Path) -> None:
    """Write a new secret to ``path`` unless another process got there first."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp's mode: 0600
            handle.write(secrets.token_urlsafe(48))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # lost the race: the winner's is read
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return load_settings()
