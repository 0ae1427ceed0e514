"""Signed picture URLs: a profile picture an ``<img>`` can show, with no Authorization header.

``{BASE_URL}{API_STR}/user/{uuid}/pfp?v={version}&exp={expiry}&sig={signature}``

- ``v``, the picture's version, names what the picture shows: it changes when a picture
  is uploaded or removed (the user's random ``picture_version``) and when the initials
  of the generated one change. An old URL never serves a newer picture, so whatever
  it served may be cached until it expires.
- ``exp``, the expiry (epoch seconds), is rounded up to the end of the period after
  the current one (periods of ``PICTURE_URL_SECONDS``): every profile read in one
  period hands out the same URL, which caches well, and each stays valid for one to
  two periods.
- ``sig`` is an HMAC-SHA256 over the UUID, version and expiry, keyed with a key
  derived from the JWT secret for this use only (a signature made for anything else
  never passes as one of these, nor the reverse), compared in constant time.

Whoever holds the URL sees the picture until it expires: it is handed out only in
the views of a user that the caller may see (a user who blocked the caller answers
404, with no URL). Blocking someone later does not recall URLs already handed out;
they expire within two periods.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from functools import lru_cache

from app.core.config import Settings
from app.core.errors import AppError, NotFound
from app.core.images import initials
from app.core.security import secrets_match
from app.models import User

#: What the key is derived for; a new value would void every URL handed out.
_KEY_PURPOSE = b"UserManager profile picture URL v1"


class PictureLinkInvalid(AppError):
    """The signature does not match the UUID, version and expiry (or one is missing)."""

    status_code = 403
    code = "PICTURE_LINK_INVALID"
    detail = "This picture link is not valid: read the profile for its picture_url"


class PictureLinkExpired(AppError):
    """A genuine picture URL past its expiry."""

    status_code = 403
    code = "PICTURE_LINK_EXPIRED"
    detail = "This picture link has expired: read the profile again for a new picture_url"


class PictureReplaced(NotFound):
    """A genuine URL of a picture that has changed since (uploaded, removed, renamed)."""

    code = "PICTURE_REPLACED"
    detail = "This picture was replaced: read the profile again for its new picture_url"


@lru_cache(maxsize=4)
def _key(secret: str) -> bytes:
    """The signing key: the JWT secret is never used as it is for another purpose."""
    return hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest()


def picture_version(user: User) -> str:
    """What names the user's current picture (see the module docstring).

    Read from columns that cached copies of the user carry (not the picture's file id,
    which the database may clear behind the cache's back).
    """
    seed = f"{user.picture_version or ''}\n{initials(user.display_name)}"
    return hashlib.sha256(seed.encode()).hexdigest()[:20]


def expiry(settings: Settings, now: float) -> int:
    """The end of the period after the current one: valid for one to two periods."""
    period = settings.PICTURE_URL_SECONDS
    return (int(now) // period + 2) * period


def signature(settings: Settings, user_uuid: str, version: str, expires: int) -> str:
    """The URL's ``sig``: unpadded URL-safe base64 of the HMAC."""
    message = f"{user_uuid}\n{version}\n{expires}".encode()
    digest = hmac.new(_key(settings.JWT_SECRET_KEY), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signed_picture_url(settings: Settings, user: User, now: float | None = None) -> str:
    """A URL of the user's current picture that needs no Authorization header."""
    version = picture_version(user)
    expires = expiry(settings, time.time() if now is None else now)
    sig = signature(settings, user.uuid, version, expires)
    return (
        f"{settings.BASE_URL}{settings.API_STR}/user/{user.uuid}/pfp"
        f"?v={version}&exp={expires}&sig={sig}"
    )


@dataclass(frozen=True)
class PictureLink:
    """A checked signed URL: the version it names and how long it stays valid."""

    version: str
    seconds_left: int


def check_picture_link(
    settings: Settings,
    user_uuid: str,
    version: str | None,
    expires: int | None,
    sig: str | None,
    now: float | None = None,
) -> PictureLink:
    """The URL's version and remaining seconds; PictureLinkInvalid or PictureLinkExpired else.

    The signature is checked first: an expiry or version someone changed reads as
    "not valid", never as "expired".
    """
    if not version or expires is None or not sig:
        raise PictureLinkInvalid()
    if not secrets_match(signature(settings, user_uuid, version, expires), sig):
        raise PictureLinkInvalid()
    left = expires - int(time.time() if now is None else now)
    if left <= 0:
        raise PictureLinkExpired()
    return PictureLink(version=version, seconds_left=left)
