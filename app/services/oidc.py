"""The OpenID Connect provider: other applications sign their users in with this service.

Authlib's server components speak the protocol (authorization code grant with PKCE,
OpenID Connect's ID token, nonce and prompt rules, refresh tokens, RFC 7009
revocation, RFC 7662 introspection, RP-initiated logout); this module gives them
storage and keys. Authlib's hooks are synchronous: each request runs them inside
:meth:`AsyncSession.run_sync`, which hands them a synchronous view of the request's
database session (the I/O is still asynchronous underneath, so the event loop never
blocks). The server object is built per request, around that session.

What the protocol does not say, decided here:

- Authorization codes live 60 seconds and are claimed by one conditional UPDATE:
  two exchanges of one code cannot both succeed, and a code presented a second time
  ends every grant it gave (RFC 6749 §4.1.2).
- Refresh tokens rotate; a used one presented again ends its grant (and with it the
  access tokens, which :func:`read_access_token` checks against their grant).
- Access tokens are JWTs (RFC 9068, ``typ: at+jwt``) for the client (``aud``),
  signed by the same keys as ID tokens; they are not accepted by this service's own
  API, whose tokens are a different kind.
- Public clients must use PKCE, and only S256 is accepted from anyone.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import OpenIDCode, UserInfo
from authlib.oidc.core.util import create_half_hash
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as SyncSession

from app.core.config import Settings
from app.core.errors import AppError
from app.core.picture_links import signed_picture_url
from app.core.security import TokenError, hash_secret, secrets_match
from app.core.signing_keys import KEY_ALGORITHMS, Keyring
from app.models import (
    OidcClient,
    OidcCode,
    OidcConsent,
    OidcGrant,
    OidcRefreshToken,
    User,
    now_epoch,
)

T = TypeVar("T")

#: The scopes a client may ask for.
SCOPES = ("openid", "profile", "email", "roles")
#: How long an authorization code lives.
CODE_SECONDS = 60
#: The ``typ`` of the access tokens given to clients (RFC 9068).
ACCESS_TOKEN_TYPE = "at+jwt"
#: Response headers of the token, introspection and revocation endpoints.
NO_STORE = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]


# Requests -------------------------------------------------------------------------------


class _Payload(OAuth2Payload):
    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in items:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class ProviderRequest(OAuth2Request):
    """An HTTP request as Authlib reads it: the query and the form, already read.

    ``uri`` is the public one (under BASE_URL), not the one a proxy forwarded.
    """

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        args: Iterable[tuple[str, str]],
        form: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self._args = dict(args)
        self._form = dict(form)
        self.payload = _Payload([*self._args.items(), *self._form.items()])

    @property
    def args(self) -> dict[str, str | None]:
        return dict(self._args)

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(frozen=True)
class ProtocolAnswer:
    """What an endpoint answers: status, a JSON body (or none), headers."""

    status: int
    body: Any
    headers: list[tuple[str, str]]

    @property
    def location(self) -> str | None:
        """The redirect target, when it is a redirect."""
        return dict(self.headers).get("Location")


# Models as Authlib sees them -------------------------------------------------------------


class RegisteredClient(ClientMixin):
    """A client row with the checks Authlib asks of it."""

    def __init__(self, row: OidcClient) -> None:
        self.row = row
        self.client_id = row.client_id

    @property
    def client_metadata(self) -> dict[str, Any]:
        return {"post_logout_redirect_uris": list(self.row.post_logout_redirect_uris)}

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> Any:
        # OpenID Connect requires redirect_uri in every request: no default.
        return None

    def get_allowed_scope(self, scope: Any) -> str:
        allowed = set(self.row.scopes)
        requested = scope.split() if isinstance(scope, str) else list(scope or ())
        return " ".join(item for item in requested if item in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.row.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        stored = self.row.secret_hash
        return stored is not None and secrets_match(hash_secret(client_secret), stored)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.row.is_public:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


class IssuedCode:
    """A claimed authorization code."""

    def __init__(self, row: OidcCode) -> None:
        self.row = row

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return self.row.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class GrantToken:
    """A grant, reached through one of its tokens (refresh, revocation, introspection)."""

    def __init__(self, grant: OidcGrant, user: User | None = None) -> None:
        self.grant = grant
        self.user = user

    def check_client(self, client: RegisteredClient) -> bool:
        return self.grant.client_id == client.client_id

    def get_scope(self) -> str:
        return self.grant.scope

    def is_expired(self) -> bool:
        return self.grant.expires_at <= now_epoch()

    def is_revoked(self) -> bool:
        return self.grant.revoked_at is not None


# Claims ---------------------------------------------------------------------------------


def user_claims(settings: Settings, user: User, scope: str) -> dict[str, Any]:
    """What a client learns about ``user`` with ``scope`` (ID token and userinfo)."""
    scopes = set(scope.split())
    claims: dict[str, Any] = {"sub": user.uuid}
    if "profile" in scopes:
        claims.update(
            name=user.display_name,
            preferred_username=user.username,
            updated_at=user.updated_at,
        )
        claims["picture"] = signed_picture_url(settings, user)
    if "email" in scopes:
        claims.update(email=user.email, email_verified=bool(user.email_verified))
    if "roles" in scopes:
        claims["roles"] = list(user.roles)
    return dict(UserInfo(claims))


def is_client_id(value: object) -> bool:
    """Could ``value`` name a client? (Not NUL, which PostgreSQL cannot even compare.)"""
    return isinstance(value, str) and 0 < len(value) <= 64 and "\x00" not in value


# The server -----------------------------------------------------------------------------


class _CodeChallenge(CodeChallenge):
    """PKCE: S256 only; required of public clients when they ask for a code."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        client = grant.request.client
        if client is not None and client.row.is_public and not data.get("code_challenge"):
            raise InvalidRequestError(
                "A public client must send 'code_challenge' (PKCE, S256)",
                redirect_uri=redirect_uri,
            )
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            raise InvalidRequestError(
                "'code_challenge_method' must be S256", redirect_uri=redirect_uri
            )
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: IssuedCode) -> str | None:
        return authorization_code.row.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: IssuedCode) -> str | None:
        return authorization_code.row.code_challenge_method


class _OpenIDCode(OpenIDCode):
    """ID tokens, signed by the keyring (the one signer of the service)."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=False)
        self.provider = provider

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        # A nonce already used by this client's codes is a replay.
        return (
            self.provider.db.scalar(
                select(OidcCode.code_hash).where(
                    OidcCode.client_id == request.payload.client_id, OidcCode.nonce == nonce
                )
            )
            is not None
        )

    def generate_user_info(self, user: User, scope: str) -> UserInfo:
        return UserInfo(user_claims(self.provider.settings, user, scope))

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        provider = self.provider
        code: IssuedCode = request.authorization_code
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": provider.settings.issuer,
            "aud": request.client.get_client_id(),
            "iat": now,
            "exp": now + provider.settings.OIDC_ID_TOKEN_SECONDS,
            "auth_time": code.get_auth_time(),
            "azp": request.client.get_client_id(),
        }
        if code.get_nonce():
            claims["nonce"] = code.get_nonce()
        if code.row.sso_session_id:
            claims["sid"] = code.row.sso_session_id
        algorithm = provider.keyring.signing_key().algorithm
        at_hash = create_half_hash(token["access_token"], algorithm)
        if at_hash is not None:
            claims["at_hash"] = at_hash.decode("ascii")
        claims.update(user_claims(provider.settings, request.user, token["scope"]))
        return provider.keyring.sign(claims)


class _CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    server: Provider

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        now = now_epoch()
        self.server.db.add(
            OidcCode(
                code_hash=hash_secret(code),
                client_id=request.client.get_client_id(),
                user_uuid=request.user.uuid,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                auth_time=self.server.auth_time or now,
                sso_session_id=self.server.sso_session_id,
                created_at=now,
                expires_at=now + CODE_SECONDS,
            )
        )

    def query_authorization_code(self, code: str, client: Any) -> Any:
        db = self.server.db
        code_hash = hash_secret(code)
        now = now_epoch()
        claimed = db.execute(
            update(OidcCode)
            .where(
                OidcCode.code_hash == code_hash,
                OidcCode.client_id == client.client_id,
                OidcCode.used_at.is_(None),
                OidcCode.expires_at > now,
            )
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            used = db.scalar(
                select(OidcCode.used_at).where(
                    OidcCode.code_hash == code_hash, OidcCode.client_id == client.client_id
                )
            )
            if used is not None:
                self.server.reused_code = code_hash
            return None
        row = db.get(OidcCode, code_hash, populate_existing=True)
        return IssuedCode(row) if row is not None else None

    def delete_authorization_code(self, authorization_code: IssuedCode) -> None:
        # Kept, marked used, until it expires: a second use must be recognised.
        return None

    def authenticate_user(self, authorization_code: IssuedCode) -> User | None:
        user = self.server.db.get(User, authorization_code.row.user_uuid)
        if user is None or not user.is_active:
            return None
        self.server.grant_code = authorization_code.row
        return user


class _RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: Provider

    def authenticate_refresh_token(self, refresh_token: str) -> Any:
        db = self.server.db
        token_hash = hash_secret(refresh_token)
        now = now_epoch()
        row = db.execute(
            select(OidcRefreshToken, OidcGrant)
            .join(OidcGrant, OidcGrant.id == OidcRefreshToken.grant_id)
            .where(OidcRefreshToken.token_hash == token_hash)
        ).first()
        if row is None:
            return None
        token, grant = row
        if token.used_at is not None:
            self.server.reused_grant = grant.id
            return None
        if grant.revoked_at is not None or grant.expires_at <= now:
            return None
        claimed = db.execute(
            update(OidcRefreshToken)
            .where(OidcRefreshToken.token_hash == token_hash, OidcRefreshToken.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            self.server.reused_grant = grant.id
            return None
        return GrantToken(grant)

    def authenticate_user(self, refresh_token: GrantToken) -> User | None:
        user = self.server.db.get(User, refresh_token.grant.user_uuid)
        if user is None or not user.is_active:
            return None
        self.server.grant = refresh_token.grant
        return user

    def revoke_old_credential(self, refresh_token: Any) -> None:
        return None  # already marked used when it was claimed


class _Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    server: Provider

    def query_token(self, token_string: str, token_type_hint: str | None) -> GrantToken | None:
        return self.server.grant_of_token(token_string)

    def revoke_token(self, token: GrantToken, request: Any) -> None:
        if token.grant.revoked_at is None:
            token.grant.revoked_at = now_epoch()


class _Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
    server: Provider

    def query_token(self, token_string: str, token_type_hint: str | None) -> GrantToken | None:
        found = self.server.grant_of_token(token_string, with_user=True)
        if found is None or found.grant.revoked_at is not None:
            return None
        if found.user is None or not found.user.is_active:
            return None
        if found.grant.expires_at <= now_epoch():
            return None
        return found

    def check_permission(self, token: GrantToken, client: RegisteredClient, request: Any) -> bool:
        # A client learns about its own tokens only.
        return token.check_client(client)

    def introspect_token(self, token: GrantToken) -> dict[str, Any]:
        grant, user = token.grant, token.user
        assert user is not None
        answer: dict[str, Any] = {
            "active": True,
            "client_id": grant.client_id,
            "scope": grant.scope,
            "sub": grant.user_uuid,
            "username": user.username,
            "iss": self.server.settings.issuer,
            "aud": grant.client_id,
        }
        claims = self.server.presented_access_claims
        if claims is not None:
            answer.update(
                token_type="Bearer", exp=claims["exp"], iat=claims["iat"], jti=claims["jti"]
            )
        else:
            answer.update(token_type="refresh_token", exp=grant.expires_at)
        return answer


class _EndSession(EndSessionEndpoint):
    server: Provider

    def get_server_jwks(self) -> dict[str, Any]:
        return self.server.keyring.jwks()

    def get_algorithms(self) -> list[str]:
        return list(KEY_ALGORITHMS)

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        return None  # the route ends the sign-in session itself


class Provider(AuthorizationServer):
    """Authlib's authorization server, for one request, on ``db`` (synchronous view)."""

    def __init__(
        self,
        db: SyncSession,
        settings: Settings,
        keyring: Keyring,
        *,
        auth_time: int | None = None,
        sso_session_id: str | None = None,
    ) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.db = db
        self.settings = settings
        self.keyring = keyring
        self.auth_time = auth_time
        self.sso_session_id = sso_session_id
        #: Set when a used code or refresh token came back: its grants must end.
        self.reused_code: str | None = None
        self.reused_grant: str | None = None
        #: The code or grant the token being issued continues.
        self.grant_code: OidcCode | None = None
        self.grant: OidcGrant | None = None
        self.presented_access_claims: dict[str, Any] | None = None
        self.register_grant(_CodeGrant, [_CodeChallenge(required=True), _OpenIDCode(self)])
        self.register_grant(_RefreshGrant)
        self.register_endpoint(_Revocation)
        self.register_endpoint(_Introspection)
        self.register_endpoint(_EndSession)
        self.register_token_generator("default", self._generate_token)  # type: ignore[arg-type]

    # Authlib's framework hooks

    def query_client(self, client_id: str) -> Any:
        if not is_client_id(client_id):
            return None
        row = self.db.get(OidcClient, client_id)
        return RegisteredClient(row) if row is not None else None

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request

    def create_json_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> ProtocolAnswer:
        return ProtocolAnswer(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def validate_end_session(self, request: OAuth2Request) -> EndSessionRequest:
        """A checked RP-initiated logout request (OAuth2Error when invalid)."""
        validated = self.validate_endpoint_request("end_session", request)
        assert isinstance(validated, EndSessionRequest)
        return validated

    # Tokens

    def _generate_token(
        self,
        grant_type: str,
        client: RegisteredClient,
        user: User | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        assert user is not None
        scope = scope or ""
        now = now_epoch()
        if self.grant is None:  # a code exchange: a new grant
            code = self.grant_code
            assert code is not None
            self.grant = OidcGrant(
                id=str(uuid.uuid4()),
                client_id=client.client_id,
                user_uuid=user.uuid,
                scope=scope,
                code_hash=code.code_hash,
                sso_session_id=code.sso_session_id,
                auth_time=code.auth_time,
                created_at=now,
                expires_at=now + self.settings.OIDC_REFRESH_TOKEN_DAYS * 86400,
            )
            self.db.add(self.grant)
        lifetime = self.settings.OIDC_ACCESS_TOKEN_SECONDS
        claims = {
            "iss": self.settings.issuer,
            "sub": user.uuid,
            "aud": client.client_id,
            "client_id": client.client_id,
            "scope": scope,
            "iat": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            "gid": self.grant.id,
        }
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": self.keyring.sign(claims, token_type=ACCESS_TOKEN_TYPE),
            "expires_in": lifetime,
            "scope": scope,
        }
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        assert self.grant is not None
        refresh_token = token.get("refresh_token")
        if refresh_token:
            self.db.add(
                OidcRefreshToken(
                    token_hash=hash_secret(refresh_token),
                    grant_id=self.grant.id,
                    created_at=now_epoch(),
                )
            )

    def grant_of_token(self, token_string: str, *, with_user: bool = False) -> GrantToken | None:
        """The grant behind an access token (signed by us, for a client) or a refresh
        token; None for anything else."""
        grant_id: str | None = None
        try:
            claims = read_access_claims(self.keyring, token_string)
        except TokenError:
            claims = None
        if claims is not None:
            grant_id = claims["gid"]
            self.presented_access_claims = claims
        else:
            grant_id = self.db.scalar(
                select(OidcRefreshToken.grant_id).where(
                    OidcRefreshToken.token_hash == hash_secret(token_string)
                )
            )
        if grant_id is None:
            return None
        grant = self.db.get(OidcGrant, grant_id)
        if grant is None:
            return None
        user = self.db.get(User, grant.user_uuid) if with_user else None
        return GrantToken(grant, user)


def read_access_claims(keyring: Keyring, token: str) -> dict[str, Any]:
    """The claims of an access token this provider gave a client (TokenError if not).

    The type header tells them from the service's own access tokens and ID tokens,
    which the same keys sign.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise TokenError("invalid token") from error
    if header.get("typ") != ACCESS_TOKEN_TYPE:
        raise TokenError("not an access token of a client")
    claims = keyring.verify(
        token,
        require=["exp", "iat", "sub", "jti", "client_id", "gid"],
        issuer=keyring.settings.issuer,
    )
    if not isinstance(claims.get("gid"), str) or not isinstance(claims.get("sub"), str):
        raise TokenError("invalid token")
    return claims


# Running the protocol ---------------------------------------------------------------------


async def run_provider(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    step: Callable[[Provider], T],
    *,
    auth_time: int | None = None,
    sso_session_id: str | None = None,
) -> T:
    """Run ``step`` with a provider on ``db``; commit when it succeeded.

    A step that fails (an OAuth error answer, or an exception) is rolled back, so a
    code or refresh token claimed on the way is not used up; a reused one then ends
    its grants in a transaction of its own.
    """

    def run(sync_db: SyncSession) -> tuple[T, Provider]:
        provider = Provider(
            sync_db, settings, keyring, auth_time=auth_time, sso_session_id=sso_session_id
        )
        return step(provider), provider

    try:
        answer, provider = await db.run_sync(run)
    except Exception:
        await db.rollback()
        raise
    failed = isinstance(answer, ProtocolAnswer) and answer.status >= 400
    if failed:
        await db.rollback()
        if provider.reused_code is not None or provider.reused_grant is not None:
            await _end_reused(db, provider.reused_code, provider.reused_grant)
    else:
        await db.commit()
    return answer


async def _end_reused(db: AsyncSession, code_hash: str | None, grant_id: str | None) -> None:
    """End the grants a replayed code gave, or the grant of a replayed refresh token."""
    now = now_epoch()
    statement = update(OidcGrant).where(OidcGrant.revoked_at.is_(None)).values(revoked_at=now)
    if code_hash is not None:
        await db.execute(statement.where(OidcGrant.code_hash == code_hash))
    if grant_id is not None:
        await db.execute(statement.where(OidcGrant.id == grant_id))
    await db.commit()


def error_answer(error: OAuth2Error) -> ProtocolAnswer:
    """An Authlib error as an answer (JSON, or a redirect carrying it to the client)."""
    status, body, headers = error()
    return ProtocolAnswer(status, body, list(headers))


# Consent and connected apps ----------------------------------------------------------------


class UnknownClient(AppError):
    """No client application has this id."""

    status_code = 404
    code = "CLIENT_NOT_FOUND"
    detail = "No such client application"


def has_consent(db: SyncSession, user_uuid: str, client_id: str, scope: str) -> bool:
    """Has the user already allowed every scope of ``scope`` to this client?"""
    consent = db.get(OidcConsent, (user_uuid, client_id))
    return consent is not None and set(scope.split()) <= set(consent.scopes)


def remember_consent(db: SyncSession, user_uuid: str, client_id: str, scope: str) -> None:
    """Add ``scope`` to what the user allowed the client (the caller commits)."""
    consent = db.get(OidcConsent, (user_uuid, client_id))
    if consent is None:
        db.add(
            OidcConsent(
                user_uuid=user_uuid,
                client_id=client_id,
                scopes=sorted(set(scope.split())),
                granted_at=now_epoch(),
            )
        )
    else:
        consent.scopes = sorted(set(consent.scopes) | set(scope.split()))
        consent.granted_at = now_epoch()


async def connected_apps(db: AsyncSession, user_uuid: str) -> list[tuple[OidcConsent, OidcClient]]:
    """The client applications the user allowed, with what they may read."""
    rows = await db.execute(
        select(OidcConsent, OidcClient)
        .join(OidcClient, OidcClient.client_id == OidcConsent.client_id)
        .where(OidcConsent.user_uuid == user_uuid)
        .order_by(OidcClient.name)
    )
    return [(consent, client) for consent, client in rows.all()]


async def revoke_consent(db: AsyncSession, user_uuid: str, client_id: str) -> None:
    """Withdraw the user's consent to a client: its grants end (refresh tokens and
    access tokens stop working) and the next sign-in asks again. Commits."""
    consent = await db.get(OidcConsent, (user_uuid, client_id))
    if consent is None:
        raise UnknownClient(detail="This application has no access to the account")
    await db.delete(consent)
    await db.execute(
        update(OidcGrant)
        .where(
            OidcGrant.user_uuid == user_uuid,
            OidcGrant.client_id == client_id,
            OidcGrant.revoked_at.is_(None),
        )
        .values(revoked_at=now_epoch())
    )
    await db.commit()


async def end_sso_session_grants(db: AsyncSession, sso_session_id: str) -> None:
    """End the grants given during one sign-in session (RP-initiated logout); the
    caller commits."""
    await db.execute(
        update(OidcGrant)
        .where(OidcGrant.sso_session_id == sso_session_id, OidcGrant.revoked_at.is_(None))
        .values(revoked_at=now_epoch())
    )


# Userinfo ----------------------------------------------------------------------------------


class InvalidClientToken(AppError):
    """The bearer token is not a live access token of a client."""

    status_code = 401
    code = "INVALID_TOKEN"
    detail = "The access token is invalid, expired or revoked"


async def userinfo(
    db: AsyncSession, settings: Settings, keyring: Keyring, token: str | None
) -> dict[str, Any]:
    """The claims a client's access token may read about its user."""
    if not token:
        raise InvalidClientToken(detail="A client's access token is required")
    try:
        claims = read_access_claims(keyring, token)
    except TokenError:
        raise InvalidClientToken() from None
    if "openid" not in str(claims.get("scope", "")).split():
        raise InsufficientScope()
    row = (
        await db.execute(
            select(OidcGrant, User)
            .join(User, User.uuid == OidcGrant.user_uuid)
            .where(OidcGrant.id == claims["gid"])
        )
    ).first()
    if row is None:
        raise InvalidClientToken()
    grant, user = row
    if grant.revoked_at is not None or not user.is_active or grant.user_uuid != claims["sub"]:
        raise InvalidClientToken()
    return user_claims(settings, user, str(claims["scope"]))


class InsufficientScope(AppError):
    """The token was not given the ``openid`` scope."""

    status_code = 403
    code = "INSUFFICIENT_SCOPE"
    detail = "The access token was not given the 'openid' scope"


# Discovery ---------------------------------------------------------------------------------


def discovery_document(settings: Settings, keyring: Keyring) -> dict[str, Any]:
    """``/.well-known/openid-configuration``."""
    issuer = settings.issuer
    algorithm = keyring.signing_key().algorithm
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth2/authorize",
        "token_endpoint": f"{issuer}/oauth2/token",
        "userinfo_endpoint": f"{issuer}/oauth2/userinfo",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "revocation_endpoint": f"{issuer}/oauth2/revoke",
        "introspection_endpoint": f"{issuer}/oauth2/introspect",
        "end_session_endpoint": f"{issuer}/oauth2/logout",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": sorted({algorithm, "ES256", "EdDSA"}),
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
        ],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "sid",
            "name",
            "preferred_username",
            "picture",
            "updated_at",
            "email",
            "email_verified",
            "roles",
        ],
        "prompt_values_supported": ["none", "login", "consent"],
        "request_parameter_supported": False,
        "claims_parameter_supported": False,
    }
