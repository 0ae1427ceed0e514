"""Passwords known from data breaches, asked of a Pwned-Passwords range API (k-anonymity).

Off unless PASSWORD_BREACH_CHECK_URL is set. Only the first 5 hex characters of the
password's SHA-1 leave the service; the API answers every suffix it knows under that
prefix (``SUFFIX:COUNT`` lines), and the comparison happens here. ``Add-Padding``
asks for decoy lines (count 0) so that the answer's size does not tell an observer
the prefix either; those lines are not breaches.

The check helps and must never stand in the way: an API that is slow (past
PASSWORD_BREACH_CHECK_TIMEOUT_SECONDS, for the whole exchange), down, or answers
nonsense lets the password through, and a warning is logged (never the password, its
hash or its prefix).
"""

from __future__ import annotations

import asyncio
import hashlib
import re

import httpx
from loguru import logger

from app.core.config import Settings
from app.core.errors import AppError
from app.core.security import normalize_password

#: Characters of the SHA-1 (hex) sent to the API; the rest is compared here.
PREFIX_LENGTH = 5
#: The largest answer read (a real one is some 40 KB, padded).
MAX_ANSWER_BYTES = 2 * 1024 * 1024
_LINE = re.compile(r"^([0-9A-F]{35}):(\d+)$")


class PasswordBreached(AppError):
    """The new password appears in a known data breach."""

    status_code = 422
    code = "VALIDATION_ERROR"
    detail = "password appears in a known data breach: choose another one"

    def __init__(self, field: str) -> None:
        super().__init__(
            f"body.{field}: {self.detail}",
            extra={
                "errors": [
                    {"loc": ["body", field], "msg": self.detail, "type": "password_breached"}
                ]
            },
        )


class _BadAnswer(Exception):
    """The API's answer is not a range answer."""


def _sha1_hex(password: str) -> str:
    data = normalize_password(password).encode("utf-8", "surrogatepass")
    return hashlib.sha1(data, usedforsecurity=False).hexdigest().upper()


def _breach_count(body: str, suffix: str) -> int:
    """How often the answer says ``suffix`` was seen (0: not at all, or padding)."""
    found = 0
    for line in body.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _LINE.match(line.upper())
        if match is None:
            raise _BadAnswer("a line is not SUFFIX:COUNT")
        if match.group(1) == suffix:
            found = int(match.group(2))
    return found


async def _ask(settings: Settings, prefix: str) -> str:
    url = settings.PASSWORD_BREACH_CHECK_URL.rstrip("/") + "/" + prefix
    headers = {"Add-Padding": "true", "User-Agent": settings.PROJECT_NAME}
    async with (
        httpx.AsyncClient(timeout=settings.PASSWORD_BREACH_CHECK_TIMEOUT_SECONDS) as http,
        http.stream("GET", url, headers=headers) as response,
    ):
        if response.status_code != 200:
            raise _BadAnswer(f"status {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise _BadAnswer("the answer is too large")
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        raise _BadAnswer("the answer is not text") from None


async def breach_count(settings: Settings, password: str) -> int | None:
    """How many times the range API has seen ``password`` in breaches (0: never);
    None when the check is off or got no usable answer in time."""
    if not settings.PASSWORD_BREACH_CHECK_URL:
        return None
    digest = _sha1_hex(password)
    prefix, suffix = digest[:PREFIX_LENGTH], digest[PREFIX_LENGTH:]
    try:
        async with asyncio.timeout(settings.PASSWORD_BREACH_CHECK_TIMEOUT_SECONDS):
            body = await _ask(settings, prefix)
        return _breach_count(body, suffix)
    except TimeoutError:
        reason = "no answer in time"
    except (httpx.HTTPError, httpx.InvalidURL, _BadAnswer) as error:
        reason = str(error) if isinstance(error, _BadAnswer) else type(error).__name__
    logger.warning("breached-password check skipped, password accepted: {}", reason)
    return None


async def ensure_not_breached(settings: Settings, password: str, *, field: str) -> None:
    """Refuse (422 ``password_breached`` on ``field``) a password the API knows from a
    breach; accept it when the check is off or fails."""
    if await breach_count(settings, password):
        raise PasswordBreached(field)
