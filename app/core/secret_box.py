"""Encryption of secrets the service must read back (signing keys, provider tokens).

Values are sealed with Fernet (AES-128-CBC with an HMAC-SHA256, from the
``cryptography`` package) under keys derived with HKDF-SHA256 from the
``DATA_ENCRYPTION_KEY`` setting, or from ``JWT_SECRET_KEY`` when that is empty.
The setting may list several secrets separated by commas: the first seals, every
one opens, so a key is rotated by putting the new one first and dropping the old one
once nothing sealed with it is needed any more (signing keys retire with rotations,
provider tokens are replaced as they are refreshed).

A sealed value carries a prefix naming the scheme (``fernet1:``) so that another one
can follow without guessing what a stored value is.
"""

from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "fernet1:"
_INFO = b"user-manager data encryption v1"


class SealError(Exception):
    """A sealed value cannot be opened: another key sealed it, or it was altered."""


def _fernet_key(secret: str) -> bytes:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret.encode("utf-8")
    )
    return base64.urlsafe_b64encode(derived)


def key_secrets(data_encryption_key: str, jwt_secret_key: str) -> tuple[str, ...]:
    """The secrets, newest first, that the settings give for sealing."""
    listed = tuple(part.strip() for part in data_encryption_key.split(",") if part.strip())
    return listed or (jwt_secret_key,)


class SecretBox:
    """Seals and opens short secrets with the keys of the settings."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        if not secrets:
            raise ValueError("a secret box needs at least one key")
        self._fernet = MultiFernet([Fernet(_fernet_key(secret)) for secret in secrets])

    def seal(self, plaintext: str) -> str:
        """The sealed form of ``plaintext`` (ASCII, safe to store in a text column)."""
        return PREFIX + self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        """The plaintext of a value :meth:`seal` made with any of the box's keys."""
        if not sealed.startswith(PREFIX):
            raise SealError("not a sealed value")
        try:
            return self._fernet.decrypt(sealed[len(PREFIX) :].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError) as error:
            raise SealError("the value cannot be opened with the configured keys") from error

    def reseal(self, sealed: str) -> str:
        """``sealed`` sealed again under the newest key (for key rotation)."""
        return self.seal(self.open(sealed))


@lru_cache(maxsize=8)
def secret_box(data_encryption_key: str, jwt_secret_key: str) -> SecretBox:
    """The box for these settings (built once: deriving keys costs a little)."""
    return SecretBox(key_secrets(data_encryption_key, jwt_secret_key))
