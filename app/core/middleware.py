"""Pure ASGI middleware: request ids, the access log, the last-resort 500, body limits,
the OAuth session cookie, the security headers of HTML pages, and the gate that sheds
password requests under a flood."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
import uuid

from loguru import logger
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings
from app.core.errors import error_body
from app.core.logging import request_id_var
from app.core.security import PasswordCheckBusy, password_capacity_left

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Give every request an id (the client's X-Request-ID when sane, else a new one).

    The id is in every log line written while handling the request and is echoed in
    the response's X-Request-ID header. One access-log line is written per request:
    method, path (never the query string, which may carry tokens), status, duration.

    It also answers an unhandled exception with the common error shape: Starlette's
    own last-resort handler sits outside every middleware, where the request id
    is already gone.

    Answers under ``api_prefix`` that set no ``Cache-Control`` get ``no-store``: they
    carry tokens, recovery codes and personal data that no browser or proxy cache may
    keep (the picture URLs, which are meant to be cached, set their own).
    """

    def __init__(self, app: ASGIApp, api_prefix: str = "/api") -> None:
        self.app = app
        self.api_prefix = api_prefix.rstrip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if given and _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        started_response = False

        api = scope["path"].startswith(self.api_prefix)

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as error:
            logger.opt(exception=error).error("unhandled error: {}", type(error).__name__)
            if started_response:
                raise
            status = 500
            await _internal_error(request_id)(scope, receive, send)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.info(
                "{} {} -> {} in {:.1f} ms",
                scope["method"],
                scope["path"],
                status,
                elapsed_ms,
            )
            request_id_var.reset(token)


def _internal_error(request_id: str) -> JSONResponse:
    return JSONResponse(
        error_body("Internal server error", "INTERNAL_ERROR"),
        status_code=500,
        headers={REQUEST_ID_HEADER: request_id},
    )


class BodyTooLarge(HTTPException):
    """The request body is over the limit (raised while it is being read)."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, f"Request body too large: the limit is {limit_bytes} bytes")


class BodySizeLimitMiddleware:
    """Refuse request bodies over a limit with 413, without reading them whole.

    Multipart bodies (uploads) may be up to ``upload_limit_bytes``, anything else up
    to ``limit_bytes``. A Content-Length over the limit is refused before a byte is
    read; a body without one (chunked) is counted as it streams in, and the read
    that crosses the limit raises :class:`BodyTooLarge` (an HTTP exception, so the
    body parser lets it through as the 413 it is).
    """

    def __init__(self, app: ASGIApp, *, limit_bytes: int, upload_limit_bytes: int) -> None:
        self.app = app
        self.limit_bytes = limit_bytes
        self.upload_limit_bytes = upload_limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_type = b""
        content_length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
        limit = (
            self.upload_limit_bytes
            if content_type.startswith(b"multipart/form-data")
            else self.limit_bytes
        )
        if content_length is not None and (
            not content_length.isdigit() or int(content_length) > limit
        ):
            response = JSONResponse(
                error_body(
                    f"Request body too large: the limit is {limit} bytes", "PAYLOAD_TOO_LARGE"
                ),
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class OAuthSessionMiddleware:
    """Starlette's signed-cookie session, for the OAuth paths only (Authlib keeps ``state``
    there), signed with a key derived from the JWT secret."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.prefix = f"{settings.API_STR}/oauth/"
        key = hashlib.sha256(f"oauth-session:{settings.JWT_SECRET_KEY}".encode())
        self._sessions = SessionMiddleware(
            app,
            secret_key=key.hexdigest(),
            session_cookie="user_manager_oauth",
            max_age=600,
            path=self.prefix,
            same_site="lax",
            https_only=settings.is_production,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        await self._sessions(scope, receive, send)


class HtmlSecurityHeadersMiddleware:
    """Give every HTML response a Content-Security-Policy and ``X-Frame-Options: DENY``.

    ``policy`` is used unless the route chose its own (the docs pages need a little
    more than the rest). Whatever produced the HTML (a page, an error, a served file),
    it cannot be framed by another site and runs no inline script.
    """

    def __init__(self, app: ASGIApp, *, policy: str) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            # Raw headers first: most answers are JSON, and this runs on every one.
            if message["type"] == "http.response.start" and any(
                name == b"content-type" and value.startswith(b"text/html")
                for name, value in message.get("headers", ())
            ):
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", self.policy)
                headers["X-Frame-Options"] = "DENY"
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: How long a password request refused as busy waits before its 503 (its Retry-After).
BUSY_ANSWER_DELAY_SECONDS = 1


class PasswordCheckGate:
    """Refuse a request that checks or sets a password (503 ``SERVER_BUSY``) while every
    core is hashing and the queue is full, before the request costs anything else.

    Under a login flood the event loop always has as many requests waiting as the
    flood keeps open; each refusal must cost next to nothing, or together they delay
    every other request. Here one costs a path lookup and a counter read.
    """

    def __init__(self, app: ASGIApp, *, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] in self.paths
            and scope["method"] == "POST"
            and not password_capacity_left()
        ):
            # Answered after a pause: a flood that keeps its connections busy sends no
            # more than one request per connection per pause, and a waiting request
            # costs a timer, nothing else.
            # Spread over the pause, so that the refused do not all come back at once.
            await asyncio.sleep(BUSY_ANSWER_DELAY_SECONDS * (0.5 + random.random()))  # noqa: S311
            response = JSONResponse(
                error_body(PasswordCheckBusy.detail, PasswordCheckBusy.code),
                status_code=503,
                headers={"Retry-After": str(BUSY_ANSWER_DELAY_SECONDS)},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
