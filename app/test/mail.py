"""A real SMTP server for tests: aiosmtpd on loopback, keeping what it receives."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from urllib.parse import parse_qs, urlsplit

import httpx
from aiosmtpd.controller import Controller

from app.test.server import listening_socket


class _Handler:
    def __init__(self, catcher: MailCatcher) -> None:
        self.catcher = catcher

    async def handle_DATA(self, _server, _session, envelope) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.catcher.lock:
            self.catcher.messages.append(message)
        return "250 Message accepted"


class MailCatcher:
    """Start with ``start()``; read ``messages`` or wait for one with ``wait_for``."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        sock = listening_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        """Serve until ``stop()``."""
        self.controller.start()

    def stop(self) -> None:
        """Stop serving."""
        self.controller.stop()

    def settings(self) -> dict[str, object]:
        """Settings that send the app's mail here."""
        return {
            "EMAIL_METHOD": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": self.port,
            "SMTP_TLS": False,
            "SMTP_SENDER_EMAIL": "no-reply@usermanager.example",
            "CONTACT_EMAIL": "support@usermanager.example",
            "EMAIL_CHECK_DELIVERABILITY": False,
        }

    def to(self, address: str) -> list[EmailMessage]:
        """Messages received for ``address`` so far."""
        with self.lock:
            return [m for m in self.messages if address.lower() in str(m["To"]).lower()]

    async def wait_for(self, address: str, count: int = 1, timeout: float = 10) -> EmailMessage:
        """The ``count``-th message for ``address``, waiting (without blocking) for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received = self.to(address)
            if len(received) >= count:
                return received[count - 1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no message #{count} for {address} within {timeout} s")


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"the message has no text/{subtype} part"
    return part.get_content()


def text_body(message: EmailMessage) -> str:
    """The plain-text part of a message."""
    return _body(message, "plain")


def html_body(message: EmailMessage) -> str:
    """The HTML part of a message."""
    return _body(message, "html")


def links_in(message: EmailMessage) -> list[str]:
    """Every link of the plain-text body, in order."""
    return re.findall(r"https?://[^\s)]+", text_body(message))


def link_in(message: EmailMessage) -> str:
    """The one link of the plain-text body."""
    links = links_in(message)
    assert len(links) == 1, links
    return links[0]


def token_in(link: str) -> str:
    """The token of a mailed link: its ``token`` query parameter (a front end's page) or
    fragment parameter (the service's own page)."""
    parts = urlsplit(link)
    return parse_qs(parts.query or parts.fragment)["token"][0]


async def verify_address(
    client: httpx.AsyncClient, catcher: MailCatcher, address: str, count: int = 1
) -> None:
    """Do what the page of the ``count``-th verification link to ``address`` does."""
    link = link_in(await catcher.wait_for(address, count))
    response = await client.post("/api/auth/email/verify", json={"token": token_in(link)})
    assert response.status_code == 200, response.text
