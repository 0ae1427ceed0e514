"""What services know of the caller's connection (they never see ``Request``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClientInfo:
    """The client's address and user agent (sessions, history), and the device token it
    presented, if any (the brute-force guard: ``app.services.devices``)."""

    ip: str | None = None
    user_agent: str | None = None
    device_token: str | None = None


SYSTEM = ClientInfo()
