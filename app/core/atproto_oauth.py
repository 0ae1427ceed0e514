"""AT Protocol OAuth, the client side: keys, DPoP proofs, client assertions, requests.

The profile is OAuth 2.1 without options: the client is the URL of its metadata
document (:func:`client_metadata`), authenticates with ``private_key_jwt`` (ES256,
keys published at ``jwks_uri``), pushes every authorization request (PAR), uses PKCE
S256, and gets DPoP-bound tokens. A DPoP proof is signed by a key made for each
sign-in; servers hand out nonces (``DPoP-Nonce``) that the next proof must carry,
and refuse a proof without the current one (``use_dpop_nonce``): the request is then
sent once more with it. JWS and JWK are joserfc's; nothing here signs by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.atproto_identity import Answer, guarded_request
from app.core.atproto_keys import import_private_key, new_private_key
from app.core.config import Settings
from app.core.oauth_answers import ProviderAnswerInvalid
from app.models import BlueskyClientKey, now_epoch

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: A client assertion is good for this long (it is made for one request).
CLIENT_ASSERTION_SECONDS = 60
_KEY_NAME = "client"


def client_id(settings: Settings) -> str:
    """The client id: the URL of the client metadata document."""
    return f"{settings.BASE_URL}{settings.API_STR}/oauth/bluesky/client-metadata.json"


def callback_url(settings: Settings) -> str:
    """Where authorization servers send the browser back (from BASE_URL, never Host)."""
    return f"{settings.BASE_URL}{settings.API_STR}/oauth/bluesky/callback"


def jwks_url(settings: Settings) -> str:
    """Where the client's public keys are published."""
    return f"{settings.BASE_URL}{settings.API_STR}/oauth/bluesky/jwks.json"


def client_metadata(settings: Settings) -> dict[str, Any]:
    """The client metadata document that authorization servers fetch at the client id."""
    return {
        "client_id": client_id(settings),
        "client_name": settings.PROJECT_NAME,
        "client_uri": settings.BASE_URL,
        "application_type": "web",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "redirect_uris": [callback_url(settings)],
        "scope": settings.BLUESKY_SCOPE,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256",
        "dpop_bound_access_tokens": True,
        "jwks_uri": jwks_url(settings),
    }


# Keys ----------------------------------------------------------------------------------


def key_to_text(key: ECKey) -> str:
    """A private key as JWK JSON (to be sealed before it is stored)."""
    return json.dumps(key.as_dict(private=True))


@dataclass(frozen=True)
class ClientKey:
    """The key that signs client assertions, and its id in the published JWKS."""

    key: ECKey
    kid: str

    def public_jwk(self) -> dict[str, Any]:
        """The public half, as published at ``jwks_uri``."""
        public = self.key.as_dict(private=False)
        return {**public, "kid": self.kid, "alg": "ES256", "use": "sig"}


class ClientKeys:
    """The client key of this process: BLUESKY_CLIENT_KEY, or the one kept in the
    database (generated at first use, sealed). Loaded once, then kept in memory."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._key: ClientKey | None = None

    async def get(self, db: AsyncSession) -> ClientKey:
        """The client key (reads or creates the stored one the first time)."""
        if self._key is None:
            self._key = await self._load(db)
        return self._key

    async def _load(self, db: AsyncSession) -> ClientKey:
        box = self._settings.secret_box
        if self._settings.BLUESKY_CLIENT_KEY:
            key = import_private_key(self._settings.BLUESKY_CLIENT_KEY)
            return ClientKey(key, key.thumbprint())
        row = await db.get(BlueskyClientKey, _KEY_NAME)
        if row is None:
            key = new_private_key()
            db.add(
                BlueskyClientKey(
                    name=_KEY_NAME,
                    kid=key.thumbprint(),
                    private_jwk=box.seal(key_to_text(key)),
                    created_at=now_epoch(),
                )
            )
            try:
                await db.commit()
            except IntegrityError:  # another process made it first: use theirs
                await db.rollback()
            row = await db.scalar(
                select(BlueskyClientKey).where(BlueskyClientKey.name == _KEY_NAME)
            )
            assert row is not None
            await db.commit()
        return ClientKey(import_private_key(box.open(row.private_jwk)), row.kid)


# Proofs and assertions -----------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def htu(url: str) -> str:
    """The ``htu`` of a proof: the URL without its query and fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def dpop_proof(
    key: ECKey, method: str, url: str, *, nonce: str | None = None, access_token: str | None = None
) -> str:
    """A DPoP proof (RFC 9449) for one request, signed with ``key``."""
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": method,
        "htu": htu(url),
        "iat": int(time.time()),
    }
    if nonce:
        claims["nonce"] = nonce
    if access_token:
        claims["ath"] = _b64url(hashlib.sha256(access_token.encode("ascii")).digest())
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    return jwt.encode(header, claims, key)


def client_assertion(settings: Settings, key: ClientKey, audience: str) -> dict[str, str]:
    """The form fields that authenticate this client to ``audience`` (private_key_jwt)."""
    now = int(time.time())
    assertion = jwt.encode(
        {"alg": "ES256", "kid": key.kid},
        {
            "iss": client_id(settings),
            "sub": client_id(settings),
            "aud": audience,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + CLIENT_ASSERTION_SECONDS,
        },
        key.key,
    )
    return {
        "client_id": client_id(settings),
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


# Requests ------------------------------------------------------------------------------


def _error_of(answer: Answer) -> str | None:
    try:
        body = json.loads(answer.body)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


class ServerRefused(Exception):
    """An authorization server's ``{"error": ...}`` answer."""

    def __init__(self, error: str | None, status_code: int) -> None:
        super().__init__(f"{error or 'no error code'} ({status_code})")
        self.error = error
        self.status_code = status_code


async def post_with_dpop(
    settings: Settings,
    url: str,
    form: Callable[[], dict[str, str]],
    dpop_key: ECKey,
    nonce: str | None,
) -> tuple[Any, str | None]:
    """POST ``form()`` to an authorization server with a DPoP proof; once more with
    the server's nonce when it asks for one. Returns the JSON answer and the latest
    nonce; ServerRefused for an error answer. ``form`` is called for each attempt (a
    client assertion is used once)."""
    for _attempt in range(2):
        headers = {
            "DPoP": dpop_proof(dpop_key, "POST", url, nonce=nonce),
            "Accept": "application/json",
        }
        answer = await guarded_request(settings, "POST", url, headers=headers, data=form())
        fresh = answer.headers.get("DPoP-Nonce")
        error = _error_of(answer) if answer.status_code >= 400 else None
        if error == "use_dpop_nonce" and fresh and fresh != nonce:
            nonce = fresh
            continue
        nonce = fresh or nonce
        if answer.status_code >= 400:
            raise ServerRefused(error, answer.status_code)
        if answer.status_code not in (200, 201):
            raise ProviderAnswerInvalid(f"{urlsplit(url).path} answered {answer.status_code}")
        return answer.json(), nonce
    raise ServerRefused("use_dpop_nonce", 400)


async def get_with_dpop(
    settings: Settings,
    url: str,
    access_token: str,
    dpop_key: ECKey,
    nonce: str | None = None,
) -> Any:
    """GET a resource on a PDS with a DPoP-bound access token; once more with the
    server's nonce when it asks for one. ProviderAnswerInvalid for anything but 200."""
    for _attempt in range(2):
        headers = {
            "Authorization": f"DPoP {access_token}",
            "DPoP": dpop_proof(dpop_key, "GET", url, nonce=nonce, access_token=access_token),
            "Accept": "application/json",
        }
        answer = await guarded_request(settings, "GET", url, headers=headers)
        fresh = answer.headers.get("DPoP-Nonce")
        asks_nonce = "use_dpop_nonce" in answer.headers.get("WWW-Authenticate", "")
        if answer.status_code == 401 and asks_nonce and fresh and fresh != nonce:
            nonce = fresh
            continue
        if answer.status_code != 200:
            raise ProviderAnswerInvalid(f"{urlsplit(url).path} answered {answer.status_code}")
        return answer.json()
    raise ProviderAnswerInvalid("the PDS kept asking for another DPoP nonce")
