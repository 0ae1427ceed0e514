"""What services know of the caller's connection (they never see ``Request``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientInfo:
    """The client's address and user agent, for sessions and history."""

    ip: str | None = None
    user_agent: str | None = None


SYSTEM = ClientInfo()
