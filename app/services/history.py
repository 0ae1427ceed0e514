"""The one place that writes ``user_history``."""

from __future__ import annotations

from typing import Any

from app.models import User, now_epoch
from app.services.context import ClientInfo

#: Entries kept per user; older ones are dropped (failed logins must not grow a row forever).
HISTORY_MAX_ENTRIES = 500


def record_event(
    user: User,
    action: str,
    *,
    by: str | None = None,
    client: ClientInfo | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append ``{action, at, by, ip, details}`` to the user's history (caller commits).

    Parameters
    ----------
    user
        Whose history it is.
    action
        What happened, snake_case (``login``, ``password_changed``, ...).
    by
        UUID of who did it: the user, an admin, or None for the system.
    client
        Where the request came from.
    details
        Extra facts; never secrets.
    """
    entry = {
        "action": action,
        "at": now_epoch(),
        "by": by,
        "ip": client.ip if client else None,
        "details": details or {},
    }
    history = list(user.user_history or [])[-(HISTORY_MAX_ENTRIES - 1) :]
    user.user_history = [*history, entry]
