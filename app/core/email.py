"""Sending email: one ``EmailSender`` protocol, four implementations, one outbox.

``none`` only logs that nothing was sent; ``console`` prints whole mails to standard
output for development (refused in production by the settings); ``smtp`` uses
aiosmtplib (STARTTLS when SMTP_TLS); ``mj`` uses mailjet_rest in a worker thread.
Services hand messages to the :class:`Mailer`, which renders templates and sends in
the background once the caller's transaction is committed: a failure is logged, never
lost silently, and never turns into an error for the user.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol, TextIO

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from loguru import logger

from app.core.config import Settings

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates" / "email"


@dataclass(frozen=True)
class OutgoingEmail:
    """A rendered message."""

    to: str
    subject: str
    text: str
    html: str


class EmailSender(Protocol):
    """Delivers one message or raises."""

    name: str

    async def send(self, message: OutgoingEmail) -> None:
        """Deliver ``message``."""


class NoEmailSender:
    """EMAIL_METHOD=none: nothing leaves the service."""

    name = "none"

    async def send(self, message: OutgoingEmail) -> None:
        """Log that nothing was sent (without the content, which may hold links)."""
        logger.info("email not sent (EMAIL_METHOD=none): {!r}", message.subject)


class ConsoleEmailSender:
    """EMAIL_METHOD=console: whole mails, links included, printed to standard output.

    For development only (the settings refuse it when ENVIRONMENT=production). The mail
    is written straight to the process's standard output, not through the logger: log
    records are redacted (a ``token=`` in a link would be cut) and may go to the log
    file, and a mail's links are credentials that must stay out of that file.
    """

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    @staticmethod
    def format(message: OutgoingEmail) -> str:
        """The printed form: headers and the text part between two delimiter lines."""
        rule = "=" * 72
        return (
            f"{rule}\n"
            f"EMAIL (EMAIL_METHOD=console, not sent)\n"
            f"To: {message.to}\n"
            f"Subject: {message.subject}\n"
            f"{'-' * 72}\n"
            f"{message.text.rstrip()}\n"
            f"{rule}\n"
        )

    async def send(self, message: OutgoingEmail) -> None:
        """Print ``message`` in one write, so workers' mails do not interleave."""
        stream = self.stream or sys.stdout  # looked up now: tests and servers replace it
        stream.write(self.format(message))
        stream.flush()


class SmtpEmailSender:
    """EMAIL_METHOD=smtp, through aiosmtplib."""

    name = "smtp"

    def __init__(self, settings: Settings, timeout_seconds: float = 15) -> None:
        self.settings = settings
        self.timeout_seconds = timeout_seconds

    async def send(self, message: OutgoingEmail) -> None:
        """Deliver ``message`` over SMTP (STARTTLS when SMTP_TLS, implicit TLS on 465)."""
        settings = self.settings
        mime = EmailMessage()
        mime["From"] = settings.SMTP_SENDER_EMAIL
        mime["To"] = message.to
        mime["Subject"] = message.subject
        mime.set_content(message.text)
        mime.add_alternative(message.html, subtype="html")
        implicit_tls = settings.SMTP_TLS and settings.SMTP_PORT == 465
        await aiosmtplib.send(
            mime,
            hostname=settings.SMTP_HOST,
            port=settings.SMTP_PORT,
            username=settings.SMTP_USER,
            password=settings.SMTP_PASSWORD,
            use_tls=implicit_tls,
            start_tls=settings.SMTP_TLS and not implicit_tls,
            timeout=self.timeout_seconds,
        )


class MailjetEmailSender:
    """EMAIL_METHOD=mj, through Mailjet's Send API v3.1 (blocking client, run in a thread)."""

    name = "mj"

    def __init__(self, settings: Settings, api_url: str | None = None) -> None:
        from mailjet_rest import Client

        options: dict[str, Any] = {"version": "v3.1", "timeout": 15}
        if api_url:
            options["api_url"] = api_url
        public, private = settings.MJ_APIKEY_PUBLIC, settings.MJ_APIKEY_PRIVATE
        if not (public and private):  # Settings fall back to EMAIL_METHOD=none without them
            raise ValueError("Mailjet needs MJ_APIKEY_PUBLIC and MJ_APIKEY_PRIVATE")
        self.sender = settings.MJ_SENDER_EMAIL
        self.project = settings.PROJECT_NAME
        self.client = Client(auth=(public, private), **options)

    def _send_sync(self, message: OutgoingEmail) -> None:
        payload = {
            "Messages": [
                {
                    "From": {"Email": self.sender, "Name": self.project},
                    "To": [{"Email": message.to}],
                    "Subject": message.subject,
                    "TextPart": message.text,
                    "HTMLPart": message.html,
                }
            ]
        }
        response = self.client.send.create(data=payload)
        if response.status_code >= 300:
            raise RuntimeError(f"Mailjet answered HTTP {response.status_code}")

    async def send(self, message: OutgoingEmail) -> None:
        """Deliver ``message`` through Mailjet, off the event loop."""
        await asyncio.to_thread(self._send_sync, message)


def create_sender(settings: Settings) -> EmailSender:
    """The sender EMAIL_METHOD asks for."""
    if settings.EMAIL_METHOD == "smtp":
        return SmtpEmailSender(settings)
    if settings.EMAIL_METHOD == "mj":
        return MailjetEmailSender(settings)
    if settings.EMAIL_METHOD == "console":
        return ConsoleEmailSender()
    return NoEmailSender()


class Mailer:
    """Renders templates and sends in the background; failures are logged.

    ``send_later`` returns at once. ``drain`` waits for what is in flight (on shutdown,
    and in tests).
    """

    def __init__(self, settings: Settings, sender: EmailSender | None = None) -> None:
        self.settings = settings
        self.sender = sender or create_sender(settings)
        self._templates = Environment(
            loader=FileSystemLoader(TEMPLATES_DIR),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
        )
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        """False when EMAIL_METHOD=none."""
        return self.sender.name != "none"

    def render(self, template: str, to: str, subject: str, **context: Any) -> OutgoingEmail:
        """Render ``template``.txt and ``template``.html with the common context."""
        values = {
            "project_name": self.settings.PROJECT_NAME,
            "contact_email": self.settings.CONTACT_EMAIL,
            "subject": subject,
            **context,
        }
        return OutgoingEmail(
            to=to,
            subject=subject,
            text=self._templates.get_template(f"{template}.txt").render(values),
            html=self._templates.get_template(f"{template}.html").render(values),
        )

    def send_later(self, message: OutgoingEmail) -> None:
        """Queue ``message``; it is sent in the background."""
        task = asyncio.get_running_loop().create_task(self._deliver(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, message: OutgoingEmail) -> None:
        try:
            await self.sender.send(message)
        except Exception as error:  # any failure: log it, the user's request already succeeded
            logger.error(
                "email {!r} via {} failed: {}: {}",
                message.subject,
                self.sender.name,
                type(error).__name__,
                error,
            )
        else:
            if self.enabled:
                logger.info("email {!r} sent via {}", message.subject, self.sender.name)

    async def drain(self, timeout_seconds: float = 30) -> None:
        """Wait for every queued message to be sent or to fail."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_seconds)
