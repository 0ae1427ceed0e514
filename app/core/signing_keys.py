"""The keys that sign tokens other services verify, and the keyring that uses them.

Access tokens and OpenID Connect ID tokens are signed with an asymmetric key (ES256 or
EdDSA, ``JWT_ALGORITHM``), so that another service can verify them with the public
half alone, published at ``/.well-known/jwks.json``. ``JWT_ALGORITHM=HS256`` keeps the
older shared-secret access tokens for deployments whose other services hold
``JWT_SECRET_KEY``; OpenID Connect still signs with the asymmetric keys then.

Keys live in the ``signing_key`` table, their private halves sealed with the
settings' secret box, so every replica signs with the same key and a new replica
needs nothing but the database. Each key has a generation; the newest one whose
``active_from`` has come signs. A rotation adds a key that becomes active a little
later (every replica re-reads the table every few seconds, so by then all of them
know it and can verify what it signs) and gives the key it replaces a
``publish_until``: the moment the last token that key signed expires. Until then
the old key stays published and keeps verifying.

Verification is in memory (it runs on every request whose token has not been seen):
a token names its key (``kid``), and only that key, with its own algorithm, is
tried.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from joserfc.jwk import ECKey, OKPKey
from loguru import logger
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.secret_box import SealError
from app.core.security import REQUIRED_CLAIMS, TokenError, decode_jwt, decode_token
from app.models import SigningKey, now_epoch

#: Algorithms of the asymmetric keys, and the key type each needs.
KEY_ALGORITHMS = ("ES256", "EdDSA")
#: How often each replica re-reads the keys (new ones, retired ones).
REFRESH_SECONDS = 10.0
#: Default delay between a rotation and the new key's first signature: every replica
#: has read it by then, and relying parties that cache the key set have had a chance
#: to fetch it.
ACTIVATION_DELAY_SECONDS = 60
#: Extra time a retired key stays published beyond the last expiry it signed
#: (clock skew between this service and the verifiers).
PUBLISH_MARGIN_SECONDS = 300


class KeyringNotReady(RuntimeError):
    """A token was to be signed before the keys were loaded (app not started)."""


@dataclass(frozen=True)
class PublicKey:
    """A published key: its id, algorithm, JWK and the key object that verifies."""

    kid: str
    algorithm: str
    jwk: dict[str, Any]
    verifier: Any
    publish_until: int | None


@dataclass(frozen=True)
class PrivateKey:
    """The key that signs now."""

    kid: str
    algorithm: str
    signer: Any
    active_from: int


def key_algorithm(settings: Settings) -> str:
    """The algorithm of new asymmetric keys (ES256 unless JWT_ALGORITHM is EdDSA)."""
    return settings.JWT_ALGORITHM if settings.JWT_ALGORITHM in KEY_ALGORITHMS else "ES256"


def _generate(algorithm: str) -> ECKey | OKPKey:
    if algorithm == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    return ECKey.generate_key("P-256")


def _public_jwk(key: ECKey | OKPKey, algorithm: str) -> dict[str, Any]:
    jwk = dict(key.as_dict(private=False))
    jwk.update({"kid": key.thumbprint(), "alg": algorithm, "use": "sig"})
    return jwk


def _import_public(jwk: Mapping[str, Any]) -> Any:
    kind = OKPKey if jwk.get("kty") == "OKP" else ECKey
    return kind.import_key(dict(jwk)).public_key


def _import_private(pem: str, algorithm: str) -> Any:
    kind = OKPKey if algorithm == "EdDSA" else ECKey
    return kind.import_key(pem).private_key


def new_key_row(
    settings: Settings, generation: int, active_from: int, algorithm: str | None = None
) -> SigningKey:
    """A fresh key pair as a row, its private half sealed."""
    algorithm = algorithm or key_algorithm(settings)
    key = _generate(algorithm)
    pem = key.as_pem(private=True).decode("ascii")
    return SigningKey(
        kid=key.thumbprint(),
        generation=generation,
        algorithm=algorithm,
        public_jwk=_public_jwk(key, algorithm),
        private_key=settings.secret_box.seal(pem),
        created_at=now_epoch(),
        active_from=active_from,
        publish_until=None,
    )


def signed_lifetime_seconds(settings: Settings) -> int:
    """The longest a token signed by these keys stays valid."""
    return max(
        settings.JWT_EXP * 60,
        settings.OIDC_ACCESS_TOKEN_SECONDS,
        settings.OIDC_ID_TOKEN_SECONDS,
    )


async def rotate_keys(
    db: AsyncSession,
    settings: Settings,
    *,
    activate_in_seconds: int = ACTIVATION_DELAY_SECONDS,
    algorithm: str | None = None,
) -> SigningKey:
    """Add a key that starts signing in ``activate_in_seconds``; the keys it replaces
    stay published until every token they can still sign has expired. Commits.

    Two rotations at once cannot both add a generation: the second fails on the
    unique generation and is retried on top of the first.
    """
    for _ in range(5):
        now = now_epoch()
        newest = (await db.execute(select(func.max(SigningKey.generation)))).scalar()
        active_from = now + max(0, activate_in_seconds)
        row = new_key_row(settings, (newest or 0) + 1, active_from, algorithm)
        # The keys that sign until the new one takes over sign their last token at
        # active_from; it expires at most a lifetime later.
        retire_at = active_from + signed_lifetime_seconds(settings) + PUBLISH_MARGIN_SECONDS
        await db.execute(
            update(SigningKey)
            .where(SigningKey.publish_until.is_(None))
            .values(publish_until=retire_at)
        )
        db.add(row)
        try:
            await db.commit()
        except IntegrityError:
            await db.rollback()
            continue
        return row
    raise RuntimeError("could not add a signing key: too many rotations at once")


async def _has_usable_key(db: AsyncSession, settings: Settings) -> bool:
    """Can the key that signs now (the newest active one, possibly about to be
    replaced by a rotation) be opened with this deployment's keys?"""
    now = now_epoch()
    current = await db.scalar(
        select(SigningKey)
        .where(
            SigningKey.active_from <= now,
            or_(SigningKey.publish_until.is_(None), SigningKey.publish_until > now),
        )
        .order_by(SigningKey.generation.desc())
        .limit(1)
    )
    if current is None:
        return False
    try:
        settings.secret_box.open(current.private_key)
    except SealError:
        logger.error(
            "signing key {} cannot be opened with DATA_ENCRYPTION_KEY; a new key replaces it",
            current.kid,
        )
        return False
    return True


async def ensure_signing_key(db: AsyncSession, settings: Settings) -> None:
    """Create a key when none may sign (the first start), or when none that may sign
    can be opened with the configured DATA_ENCRYPTION_KEY. Commits.

    Replicas starting together race for the same generation: one adds it, the others
    fail on the unique generation, find the winner's key and use it, so that every
    replica signs with one key from the start.
    """
    for _ in range(5):
        # Read first: a key another replica adds after this read takes the generation
        # this one would add, and the insert below then fails and looks again.
        newest = (await db.execute(select(func.max(SigningKey.generation)))).scalar()
        if await _has_usable_key(db, settings):
            return
        now = now_epoch()
        retire_at = now + signed_lifetime_seconds(settings) + PUBLISH_MARGIN_SECONDS
        await db.execute(
            update(SigningKey)
            .where(SigningKey.publish_until.is_(None))
            .values(publish_until=retire_at)
        )
        db.add(new_key_row(settings, (newest or 0) + 1, now))
        try:
            await db.commit()
            return
        except IntegrityError:
            await db.rollback()  # another replica added this generation: look again
    raise RuntimeError("could not create a signing key")


async def published_keys(db: AsyncSession) -> list[SigningKey]:
    """The keys still published, newest first."""
    now = now_epoch()
    statement = (
        select(SigningKey)
        .where(or_(SigningKey.publish_until.is_(None), SigningKey.publish_until > now))
        .order_by(SigningKey.generation.desc())
    )
    return list((await db.execute(statement)).scalars().all())


class Keyring:
    """The signing key and the published keys, in memory, for one app.

    Parameters
    ----------
    settings
        The app's settings (algorithm, secret box, the HS256 secret).
    refresh_seconds
        How often :meth:`watch` re-reads the table.
    """

    def __init__(self, settings: Settings, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.settings = settings
        self.refresh_seconds = refresh_seconds
        self._public: dict[str, PublicKey] = {}
        self._signers: list[PrivateKey] = []
        self._session_factory: async_sessionmaker[AsyncSession] | None = None

    @property
    def shared_secret_access_tokens(self) -> bool:
        """True when access tokens are HS256 with JWT_SECRET_KEY (JWT_ALGORITHM=HS256)."""
        return self.settings.JWT_ALGORITHM == "HS256"

    async def start(self, session_factory: async_sessionmaker[AsyncSession]) -> None:
        """Make sure a key exists, then load the keys (at app start)."""
        self._session_factory = session_factory
        async with session_factory() as db:
            await ensure_signing_key(db, self.settings)
        await self.reload()

    async def reload(self) -> None:
        """Read the published keys again (new keys, retired ones)."""
        if self._session_factory is None:
            raise KeyringNotReady("the keyring has not been started")
        async with self._session_factory() as db:
            rows = await published_keys(db)
        public: dict[str, PublicKey] = {}
        signers: list[PrivateKey] = []
        for row in rows:
            public[row.kid] = PublicKey(
                kid=row.kid,
                algorithm=row.algorithm,
                jwk=dict(row.public_jwk),
                verifier=_import_public(row.public_jwk),
                publish_until=row.publish_until,
            )
            if row.publish_until is None or len(signers) < 2:
                try:
                    pem = self.settings.secret_box.open(row.private_key)
                except SealError:
                    continue
                signers.append(
                    PrivateKey(
                        kid=row.kid,
                        algorithm=row.algorithm,
                        signer=_import_private(pem, row.algorithm),
                        active_from=row.active_from,
                    )
                )
        self._public = public
        self._signers = sorted(signers, key=lambda key: key.active_from, reverse=True)

    async def watch(self) -> None:
        """Re-read the keys every ``refresh_seconds`` (a background task)."""
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                await self.reload()
            except Exception as error:  # keep watching whatever happened
                logger.error("signing keys: {}: {}", type(error).__name__, error)

    # Signing ---------------------------------------------------------------------------

    def signing_key(self) -> PrivateKey:
        """The key that signs now: the newest one whose time has come."""
        now = time.time()
        for key in self._signers:
            if key.active_from <= now:
                return key
        raise KeyringNotReady("no signing key is loaded")

    def sign(self, claims: dict[str, Any], *, token_type: str | None = None) -> str:
        """A JWT of ``claims`` signed with the current key (``typ`` header if given)."""
        key = self.signing_key()
        headers: dict[str, Any] = {"kid": key.kid}
        if token_type is not None:
            headers["typ"] = token_type
        return jwt.encode(claims, key.signer, algorithm=key.algorithm, headers=headers)

    def jwks(self) -> dict[str, Any]:
        """The published key set (``/.well-known/jwks.json``)."""
        return {"keys": [key.jwk for key in self._public.values()]}

    # Verifying -------------------------------------------------------------------------

    def verify(
        self,
        token: str,
        *,
        require: list[str],
        audience: str | None = None,
        issuer: str | None = None,
    ) -> dict[str, Any]:
        """The claims of a token signed by one of the published keys (TokenError if
        not, or expired, or missing one of ``require``)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise TokenError("invalid token") from error
        kid = header.get("kid")
        key = self._public.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("unknown signing key")
        return decode_jwt(
            token,
            key.verifier,
            algorithm=key.algorithm,
            require=require,
            audience=audience,
            issuer=issuer,
        )

    # The service's own access tokens ---------------------------------------------------

    def sign_access_token(self, *, subject: str, session_id: str, expires_in_seconds: int) -> str:
        """An access token of a session of this service's API."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": now,
            "exp": now + expires_in_seconds,
            "jti": uuid.uuid4().hex,
            "typ": "access",
            "sid": session_id,
        }
        if self.shared_secret_access_tokens:
            return jwt.encode(claims, self.settings.JWT_SECRET_KEY, algorithm="HS256")
        claims["iss"] = self.settings.issuer
        return self.sign(claims)

    def verify_access_token(self, token: str) -> dict[str, Any]:
        """The claims of one of this API's access tokens (TokenError if it is not)."""
        if self.shared_secret_access_tokens:
            return decode_token(token, secret=self.settings.JWT_SECRET_KEY, token_type="access")
        claims = self.verify(token, require=REQUIRED_CLAIMS, issuer=self.settings.issuer)
        if claims.get("typ") != "access":
            raise TokenError("wrong kind of token")
        return claims
