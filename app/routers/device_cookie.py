"""The device cookie: a browser's device token, sent back to the auth routes only.

See :mod:`app.services.devices` for what device tokens are for.
"""

from __future__ import annotations

from fastapi import Response

from app.core.config import Settings
from app.schemas.auth import TokenPair
from app.schemas.otp import OtpChallengeResponse
from app.services.devices import DEVICE_COOKIE, DEVICE_TOKEN_MAX_AGE_SECONDS


def remember_device(
    response: Response, settings: Settings, answer: TokenPair | OtpChallengeResponse
) -> None:
    """Keep a login's device token in a cookie that only the auth routes receive."""
    if isinstance(answer, TokenPair) and answer.device_token:
        response.set_cookie(
            DEVICE_COOKIE,
            answer.device_token,
            max_age=DEVICE_TOKEN_MAX_AGE_SECONDS,
            path=f"{settings.API_STR}/auth",
            httponly=True,
            samesite="lax",
            secure=settings.is_production,
        )
