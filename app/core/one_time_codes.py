"""One-time passwords: TOTP for authenticator apps, random codes for email.

Authenticator codes are RFC 6238 TOTP (pyotp) over a random 32-character base32
secret per user, never derived from anything public. Email codes cannot be TOTP
(pyotp refuses steps over 120 s, and an emailed code should not be replayable from
the secret anyway): each is a random OTP_LENGTH-digit number made for one login or
enrolment, stored only as a keyed hash. Recovery codes are 16 random base32
characters (80 bits), stored as a plain SHA-256 (see :func:`recovery_code_hash`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import secrets
import time

import pyotp
import qrcode
from qrcode.image.pil import PilImage

from app.core.config import Settings

OTP_SECRET_LENGTH = 32
#: Steps of drift accepted either side of the current one.
TOTP_DRIFT_STEPS = 1


def new_otp_secret() -> str:
    """A random base32 secret of 32 characters (160 bits)."""
    return pyotp.random_base32(OTP_SECRET_LENGTH)


def totp_for(secret: str, settings: Settings) -> pyotp.TOTP:
    """The user's TOTP generator with the configured digits and step."""
    return pyotp.TOTP(
        secret,
        digits=settings.OTP_LENGTH,
        interval=settings.OTP_AUTHENTICATOR_INTERVAL,
        issuer=settings.PROJECT_NAME,
    )


def provisioning_uri(secret: str, account: str, settings: Settings) -> str:
    """The ``otpauth://`` URI an authenticator app scans, issued by PROJECT_NAME."""
    return totp_for(secret, settings).provisioning_uri(
        name=account, issuer_name=settings.PROJECT_NAME
    )


def _qr_png_sync(data: str) -> bytes:
    image = qrcode.make(data, image_factory=PilImage, box_size=8, border=4)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def qr_png(data: str) -> bytes:
    """A PNG QR code of ``data``, drawn in a worker thread."""
    return await asyncio.to_thread(_qr_png_sync, data)


def matching_timestep(
    secret: str, code: str, settings: Settings, now: float | None = None
) -> int | None:
    """The time step whose TOTP equals ``code``, within one step of drift, or None.

    The caller accepts it only if it is later than the last step used, so a code
    works once.
    """
    if not (code.isascii() and code.isdigit()) or len(code) != settings.OTP_LENGTH:
        return None
    totp = totp_for(secret, settings)
    current = int((time.time() if now is None else now) // settings.OTP_AUTHENTICATOR_INTERVAL)
    found = None
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def new_email_code(settings: Settings) -> str:
    """A random OTP_LENGTH-digit code."""
    return "".join(str(secrets.randbelow(10)) for _ in range(settings.OTP_LENGTH))


def email_code_hash(secret_key: str, challenge_id: str, code: str) -> str:
    """Keyed hash of an email code, bound to its challenge (a stolen table reveals nothing)."""
    message = f"{challenge_id}:{code}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


# Recovery codes ------------------------------------------------------------------------

#: Characters of a recovery code (RFC 4648 base32: no 0, 1, 8 or 9 to misread).
RECOVERY_CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
#: 16 characters of 5 bits: 80 random bits, shown in four groups of four.
RECOVERY_CODE_LENGTH = 16
RECOVERY_CODE_GROUP = 4
#: What people type for the letters that look like digits.
_LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})


def new_recovery_code() -> str:
    """A random recovery code as shown to the user: ``ABCD-EFGH-IJKL-MNOP``."""
    raw = "".join(secrets.choice(RECOVERY_CODE_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(
        raw[i : i + RECOVERY_CODE_GROUP]
        for i in range(0, RECOVERY_CODE_LENGTH, RECOVERY_CODE_GROUP)
    )


def normalized_recovery_code(code: str) -> str | None:
    """The 16 characters of a code as typed (any case, with or without dashes and
    spaces, 0/1/8 read as O/I/B), or None when it cannot be one."""
    compact = "".join(code.split()).replace("-", "").upper().translate(_LOOKALIKES)
    if len(compact) != RECOVERY_CODE_LENGTH or not all(
        c in RECOVERY_CODE_ALPHABET for c in compact
    ):
        return None
    return compact


def recovery_code_hash(user_uuid: str, normalized: str) -> str:
    """What is stored of a recovery code: SHA-256 of the user's UUID and the code.

    A plain hash, neither bcrypt nor keyed, on purpose: the code is 80 random bits, so
    a stolen table cannot be searched (2^80 guesses per code, whatever the speed of
    the hash), and a fast hash lets a login look its code up by equality in one
    conditional UPDATE (the single-use guarantee). The UUID makes each account's hashes
    its own. No server key is mixed in, so that rotating JWT_SECRET_KEY never voids the
    codes of users who have nothing else left to sign in with.
    """
    return hashlib.sha256(f"{user_uuid}:{normalized}".encode()).hexdigest()
