"""Device tokens: a client that logged in before is limited on its own.

Without them, anyone who knows a username can lock its owner out: enough wrong
passwords from anywhere use up the account's allowance. After each successful login
the client gets a signed device token (a cookie for browsers, and in the answer for
other clients); a login that presents a valid token of the same account counts its
failures against that device only, so the owner's device still logs in while
strangers are refused. A device that uses up its own allowance is refused until its
window passes (as the OWASP "device cookies" scheme has it).
"""

from __future__ import annotations

from app.core.brute_force import BruteForceGuard, Slot
from app.core.config import Settings
from app.core.security import TokenError, create_one_time_token, read_one_time_token

DEVICE_PURPOSE = "device"
DEVICE_COOKIE = "user_manager_device"
DEVICE_HEADER = "X-Device-Token"
#: How long a device stays known without logging in again.
DEVICE_TOKEN_MAX_AGE_SECONDS = 365 * 86400


def new_device_token(settings: Settings, user_uuid: str) -> str:
    """A token that marks the client as one this account logged in from."""
    return create_one_time_token(settings.JWT_SECRET_KEY, DEVICE_PURPOSE, {"uuid": user_uuid})


def device_of(settings: Settings, token: str | None, user_uuid: str) -> str | None:
    """The id of a valid device token of ``user_uuid``, or None."""
    if not token:
        return None
    try:
        verified = read_one_time_token(
            settings.JWT_SECRET_KEY, DEVICE_PURPOSE, token, DEVICE_TOKEN_MAX_AGE_SECONDS
        )
    except TokenError:
        return None
    return verified.token_id if verified.payload.get("uuid") == user_uuid else None


async def claim_login(
    guard: BruteForceGuard,
    settings: Settings,
    account: str,
    device_token: str | None,
    action: str = "login",
) -> Slot:
    """The guard slot a sign-in attempt on ``account`` uses (a password login, or
    ``action`` for another way in such as a passkey): its known device's own allowance
    (a device that used it up is refused), else the account-wide one that every
    unknown client shares."""
    device = device_of(settings, device_token, account)
    if device is not None:
        return await guard.claim(action, account=f"device:{device}")
    return await guard.claim(action, account=account)
