"""Passwords, access tokens (JWT), refresh tokens and signed one-time tokens.

Passwords are NFKC-normalised, hashed with SHA-256, base64-encoded, then given to
bcrypt: long passwords are neither truncated at bcrypt's 72 bytes nor refused by it.
bcrypt runs in a worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import bcrypt
import jwt
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from jwt.types import Options

from app.core.errors import AppError

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128
JWT_ALGORITHM = "HS256"
_COMMON_PASSWORDS_FILE = Path(__file__).parent / "data" / "common_passwords.txt"
T = TypeVar("T")


# Passwords -----------------------------------------------------------------------------


def normalize_password(password: str) -> str:
    """The form a password is checked and hashed in (Unicode NFKC)."""
    return unicodedata.normalize("NFKC", password)


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    lines = _COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def password_problem(password: str) -> tuple[str, str] | None:
    """Why ``password`` is refused by the password policy: ``(rule, message)``.

    None when it is acceptable. Lengths count characters after NFKC normalisation;
    there are no composition rules.
    """
    normalized = normalize_password(password)
    if len(normalized) < PASSWORD_MIN_LENGTH:
        return "password_too_short", f"must be at least {PASSWORD_MIN_LENGTH} characters long"
    if len(normalized) > PASSWORD_MAX_LENGTH:
        return "password_too_long", f"must be at most {PASSWORD_MAX_LENGTH} characters long"
    if normalized.casefold() in _common_passwords():
        return "password_too_common", "is too common: it appears in lists of leaked passwords"
    return None


def _prehash(password: str) -> bytes:
    # surrogatepass: a password with a lone surrogate is odd, but it hashes like any other.
    digest = hashlib.sha256(normalize_password(password).encode("utf-8", "surrogatepass")).digest()
    return base64.b64encode(digest)


def _hash_sync(password: str, rounds: int) -> str:
    return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(rounds)).decode("ascii")


def _verify_sync(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(_prehash(password), hashed.encode("ascii"))
    except ValueError:  # not a bcrypt hash
        return False


# bcrypt keeps a core busy for its whole run: more hashes at once than cores only adds
# latency to each. A pool of its own, one thread per core, also leaves the default
# thread pool free for everything else.
BCRYPT_WORKERS = os.cpu_count() or 2
#: The longest a password check may wait for a free core. Past the queue this allows,
#: a check is refused at once (503) rather than left to wait without end behind a
#: flood of logins. The queue is sized from how long a hash takes here, measured.
BCRYPT_MAX_WAIT_SECONDS = 2.0
_BCRYPT_POOL = ThreadPoolExecutor(max_workers=BCRYPT_WORKERS, thread_name_prefix="bcrypt")
_bcrypt_lock = threading.Lock()
_bcrypt_outstanding = 0
#: Average seconds of one hash (a moving average; bcrypt cost 12 on a typical core
#: until the first measurement, which the service makes when it starts).
_hash_seconds = 0.25


class PasswordCheckBusy(AppError):
    """Every core is busy hashing passwords and the queue is full."""

    status_code = 503
    code = "SERVER_BUSY"
    detail = "Too many password checks at once; try again in a moment"


def password_check_capacity() -> int:
    """How many password checks may be running or waiting at once."""
    waiting = int(BCRYPT_WORKERS * BCRYPT_MAX_WAIT_SECONDS / _hash_seconds)
    return BCRYPT_WORKERS + max(BCRYPT_WORKERS, waiting)


def password_capacity_left() -> bool:
    """Is there room for one more password check right now?"""
    return _bcrypt_outstanding < password_check_capacity()


def ensure_password_capacity() -> None:
    """PasswordCheckBusy now when the hashing queue is full: a flooded login is refused
    before it costs a database query (the hash itself reserves its place later)."""
    if not password_capacity_left():
        raise PasswordCheckBusy(headers={"Retry-After": "1"})


def _timed(function: Callable[..., T], *args: Any) -> T:
    global _hash_seconds
    started = time.perf_counter()
    try:
        return function(*args)
    finally:
        _hash_seconds = 0.8 * _hash_seconds + 0.2 * (time.perf_counter() - started)


async def _in_bcrypt_pool(function: Callable[..., T], *args: Any) -> T:
    global _bcrypt_outstanding
    with _bcrypt_lock:
        if _bcrypt_outstanding >= password_check_capacity():
            raise PasswordCheckBusy(headers={"Retry-After": "1"})
        _bcrypt_outstanding += 1
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_BCRYPT_POOL, _timed, function, *args)
    finally:
        with _bcrypt_lock:
            _bcrypt_outstanding -= 1


async def warm_up_password_hashing(rounds: int) -> None:
    """Make the dummy hash of ``rounds`` and measure a hash's time (at start-up): the
    first login does not pay for it, and the queue is sized from the start."""
    global _hash_seconds
    started = time.perf_counter()
    await asyncio.get_running_loop().run_in_executor(_BCRYPT_POOL, _dummy_hash, rounds)
    _hash_seconds = time.perf_counter() - started


async def hash_password(password: str, rounds: int) -> str:
    """Hash ``password`` with bcrypt at cost ``rounds``, off the event loop."""
    return await _in_bcrypt_pool(_hash_sync, password, rounds)


async def verify_password(password: str, hashed: str | None, rounds: int) -> bool:
    """Check ``password`` against ``hashed``, off the event loop.

    When there is no hash (unknown user, account without a password) a dummy hash of
    the same cost is checked instead, so the answer takes as long either way.
    """
    ok = await _in_bcrypt_pool(_verify_or_dummy, password, hashed, rounds)
    return ok and hashed is not None


def _verify_or_dummy(password: str, hashed: str | None, rounds: int) -> bool:
    # In the pool: the first dummy hash of a cost is made here, not on the event loop.
    return _verify_sync(password, hashed or _dummy_hash(rounds))


@lru_cache(maxsize=8)
def _dummy_hash(rounds: int) -> str:
    return _hash_sync(secrets.token_urlsafe(16), rounds)


def hash_secret(value: str) -> str:
    """SHA-256 hex digest of a high-entropy secret (refresh tokens, email codes)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def secrets_match(a: str, b: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a.encode(), b.encode())


def new_refresh_token() -> str:
    """An opaque, random refresh token (only its hash is stored)."""
    return secrets.token_urlsafe(32)


# Access tokens -------------------------------------------------------------------------


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header (raw ASGI headers), or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


class TokenError(Exception):
    """A token is malformed, forged, expired, or of the wrong kind."""


@dataclass(frozen=True)
class AccessClaims:
    """What an access token says: who, which session, until when."""

    user_uuid: str
    session_id: str
    expires_at: int
    token_type: str


def create_token(
    *,
    subject: str,
    token_type: str,
    secret: str,
    expires_in_seconds: int,
    session_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Sign a JWT of kind ``token_type`` (``access``, ``otp_pending``, ...)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": now,
        "exp": now + expires_in_seconds,
        "jti": uuid.uuid4().hex,
        "typ": token_type,
        **(extra or {}),
    }
    if session_id is not None:
        claims["sid"] = session_id
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def decode_jwt(
    token: str,
    key: Any,
    *,
    algorithm: str,
    require: list[str],
    audience: str | None = None,
    issuer: str | None = None,
) -> dict[str, Any]:
    """Verify a JWT's signature with ``key`` and ``algorithm`` alone (no ``alg: none``,
    no key confusion), its expiry, and ``audience``/``issuer`` when given; return its
    claims. The one place any token of this service is decoded."""
    options: Options = {"require": require, "verify_aud": audience is not None}
    try:
        return jwt.decode(
            token, key, algorithms=[algorithm], audience=audience, issuer=issuer, options=options
        )
    except jwt.ExpiredSignatureError as error:
        raise TokenError("token expired") from error
    except jwt.PyJWTError as error:
        raise TokenError("invalid token") from error


#: Claims every token this service signs carries.
REQUIRED_CLAIMS = ["exp", "sub", "iat", "jti", "typ"]


def decode_token(token: str, *, secret: str, token_type: str) -> dict[str, Any]:
    """Verify an HS256 JWT's signature, expiry and kind; return its claims.

    ``exp``, ``sub``, ``iat``, ``jti`` and ``typ`` are required.
    """
    claims = decode_jwt(token, secret, algorithm=JWT_ALGORITHM, require=REQUIRED_CLAIMS)
    if claims.get("typ") != token_type:
        raise TokenError("wrong kind of token")
    return claims


# One-time signed tokens (email links) --------------------------------------------------


@dataclass(frozen=True)
class OneTimeToken:
    """A verified one-time token: its payload and the id that makes it single-use."""

    token_id: str
    payload: dict[str, Any]


def create_one_time_token(secret: str, purpose: str, payload: dict[str, Any]) -> str:
    """Sign ``payload`` for ``purpose`` (the salt: a token for one purpose fails any other)."""
    serializer = URLSafeTimedSerializer(secret, salt=f"user-manager:{purpose}")
    return serializer.dumps({**payload, "tid": uuid.uuid4().hex})


def read_one_time_token(
    secret: str, purpose: str, token: str, max_age_seconds: int
) -> OneTimeToken:
    """Verify a one-time token's signature, purpose and age (not yet its single use)."""
    serializer = URLSafeTimedSerializer(secret, salt=f"user-manager:{purpose}")
    try:
        data = serializer.loads(token, max_age=max_age_seconds)
    except SignatureExpired as error:
        raise TokenError("link expired") from error
    except BadSignature as error:
        raise TokenError("invalid link") from error
    if not isinstance(data, dict) or not isinstance(data.get("tid"), str):
        raise TokenError("invalid link")
    token_id = data.pop("tid")
    return OneTimeToken(token_id=token_id, payload=data)


def password_fingerprint(hashed_password: str | None) -> str:
    """A short digest of the current password hash: a reset link dies once it changes."""
    return hashlib.sha256((hashed_password or "").encode()).hexdigest()[:16]
