"""One-time links (email verification and change, password reset, login codes):
reading them, and using them once."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import AppError
from app.core.security import TokenError, read_one_time_token
from app.models import UsedToken, User, now_epoch


class InvalidLink(AppError):
    """A one-time link that is forged, expired, already used, or no longer applies."""

    status_code = 400
    code = "INVALID_LINK"
    detail = "This link is invalid or has expired"


def _for_current_email(user: User, payload: dict) -> bool:
    return payload.get("email") == user.email


async def read_link(
    db: AsyncSession,
    settings: Settings,
    purpose: str,
    token: str,
    max_age_seconds: int,
    applies: Callable[[User, dict], bool] = _for_current_email,
) -> tuple[User, dict, str]:
    """The user, payload and id of a valid one-time link (used or not), or InvalidLink.

    ``applies`` says whether the link still applies to the account as it is now (by
    default: it was sent to the account's current email).
    """
    try:
        verified = read_one_time_token(settings.JWT_SECRET_KEY, purpose, token, max_age_seconds)
    except TokenError as error:
        raise InvalidLink(f"This link is invalid or has expired ({error})") from None
    user_uuid = verified.payload.get("uuid")
    user = await db.get(User, user_uuid) if isinstance(user_uuid, str) else None
    if user is None or not applies(user, verified.payload):
        raise InvalidLink()
    return user, verified.payload, verified.token_id


async def consume_link(
    db: AsyncSession,
    settings: Settings,
    purpose: str,
    token: str,
    max_age_seconds: int,
    applies: Callable[[User, dict], bool] = _for_current_email,
) -> tuple[User, dict]:
    """Verify a one-time link and mark it used (in the caller's transaction)."""
    user, payload, token_id = await read_link(
        db, settings, purpose, token, max_age_seconds, applies
    )
    db.add(
        UsedToken(
            token_id=token_id,
            purpose=purpose,
            user_uuid=user.uuid,
            expires_at=now_epoch() + max_age_seconds,
        )
    )
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        raise InvalidLink("This link was already used") from None
    return user, payload
