"""Sealing secrets kept in the database."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.core.secret_box import SealError, SecretBox, key_secrets


def test_a_sealed_value_opens_and_hides_its_plaintext() -> None:
    box = SecretBox(("k" * 40,))
    sealed = box.seal("private key material")
    assert "private key material" not in sealed
    assert sealed.startswith("fernet1:")
    assert box.open(sealed) == "private key material"
    assert box.seal("same") != box.seal("same")  # a fresh IV each time


def test_another_key_or_an_altered_value_does_not_open() -> None:
    sealed = SecretBox(("a" * 40,)).seal("secret")
    with pytest.raises(SealError):
        SecretBox(("b" * 40,)).open(sealed)
    altered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(SealError):
        SecretBox(("a" * 40,)).open(altered)
    with pytest.raises(SealError):
        SecretBox(("a" * 40,)).open("plain text that was never sealed")


def test_rotation_the_first_key_seals_every_key_opens() -> None:
    old, new = "o" * 40, "n" * 40
    sealed_by_old = SecretBox((old,)).seal("kept")
    rotated = SecretBox((new, old))
    assert rotated.open(sealed_by_old) == "kept"
    resealed = rotated.reseal(sealed_by_old)
    assert SecretBox((new,)).open(resealed) == "kept"
    with pytest.raises(SealError):
        SecretBox((old,)).open(resealed)


def test_settings_derive_the_key_from_the_jwt_secret_unless_given(tmp_path) -> None:
    assert key_secrets("", "jwt") == ("jwt",)
    assert key_secrets(" one , two ,", "jwt") == ("one", "two")
    settings = Settings(DATA_DIR=tmp_path, JWT_SECRET_KEY="j" * 40)
    sealed = settings.secret_box.seal("x")
    assert SecretBox(("j" * 40,)).open(sealed) == "x"


def test_production_refuses_a_short_encryption_key(tmp_path) -> None:
    with pytest.raises(ValueError, match="DATA_ENCRYPTION_KEY"):
        Settings(
            DATA_DIR=tmp_path,
            ENVIRONMENT="production",
            JWT_SECRET_KEY="j" * 40,
            DATA_ENCRYPTION_KEY="short",
            EMAIL_METHOD="smtp",
        )
