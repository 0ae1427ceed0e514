"""A software WebAuthn authenticator for tests: an ES256 key, "none" attestation.

It answers the options the service hands out the way a browser and a platform
authenticator would (``PublicKeyCredential.toJSON()``), and lets a test lie where a
real client could: another origin, another relying party id, a copied authenticator
whose counter lags.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from base64 import urlsafe_b64decode, urlsafe_b64encode
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

_UP, _UV, _BE, _BS, _AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    """Base64url without padding, as WebAuthn's JSON writes bytes."""
    return urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """The bytes of a base64url string, padded or not."""
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftAuthenticator:
    """One discoverable credential for ``rp_id``, used from ``origin``.

    ``counting``: the signature counter goes up by one per use (else it stays 0, as
    synced passkeys do). ``user_verified``: the UV flag it sets.
    """

    def __init__(
        self, rp_id: str, origin: str, *, counting: bool = True, user_verified: bool = True
    ) -> None:
        self.rp_id = rp_id
        self.origin = origin
        self.counting = counting
        self.user_verified = user_verified
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        self.sign_count = 0
        self.user_handle: str | None = None

    def clone(self) -> SoftAuthenticator:
        """A copy with the same key and counter (what a cloned security key would be)."""
        twin = copy.copy(self)
        return twin

    def _flags(self, extra: int = 0) -> bytes:
        flags = _UP | _BE | _BS | extra
        if self.user_verified:
            flags |= _UV
        return bytes([flags])

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": challenge,
                "origin": origin or self.origin,
                "crossOrigin": False,
            }
        ).encode()

    def _public_key_cose(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )

    def create(
        self, options: dict[str, Any], *, origin: str | None = None, rp_id: str | None = None
    ) -> dict[str, Any]:
        """Answer ``navigator.credentials.create()`` options."""
        self.user_handle = options["user"]["id"]
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        attested = (
            bytes(16)  # AAGUID: none
            + struct.pack(">H", len(self.credential_id))
            + self.credential_id
            + self._public_key_cose()
        )
        auth_data = rp_hash + self._flags(_AT) + struct.pack(">I", self.sign_count) + attested
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal", "hybrid"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        origin: str | None = None,
        rp_id: str | None = None,
        user_handle: str | None = None,
    ) -> dict[str, Any]:
        """Answer ``navigator.credentials.get()`` options (the counter goes up first)."""
        if self.counting:
            self.sign_count += 1
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        auth_data = rp_hash + self._flags() + struct.pack(">I", self.sign_count)
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signature = self.key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256())
        )
        return {
            "id": b64url(self.credential_id),
            "rawId": b64url(self.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": user_handle or self.user_handle,
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }
