"""ES256 keys for AT Protocol OAuth (the client's, and each sign-in's DPoP key), with
joserfc. Apart from the settings so that they can check BLUESKY_CLIENT_KEY at start."""

from __future__ import annotations

import json
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey


class InvalidClientKey(ValueError):
    """Not an ES256 (P-256) private key."""


def import_private_key(text: str) -> ECKey:
    """An ES256 private key from a PEM or a JWK (JSON); InvalidClientKey otherwise."""
    try:
        source: str | dict[str, Any] = json.loads(text) if text.lstrip().startswith("{") else text
        key = ECKey.import_key(source)
    except (JoseError, ValueError, TypeError) as error:
        raise InvalidClientKey(f"not an EC key ({type(error).__name__})") from None
    if key.get("crv") != "P-256" or not key.is_private:
        raise InvalidClientKey("an ES256 key is a P-256 private key")
    return key


def new_private_key() -> ECKey:
    """A new P-256 key (for a client, or for one sign-in's DPoP proofs)."""
    return ECKey.generate_key("P-256", private=True)
