"""A local OAuth 2 provider on loopback that speaks like GitHub, Discord, Twitch, Google,
Reddit and X.

Each provider has an authorize endpoint (redirects straight back with a code, as if
the user consented), a token endpoint, and its user endpoints in that provider's own
JSON shape. Tests choose who "signs in" with ``provider.next_user``.

It misbehaves on demand: ``provider.tamper["github user"]`` (or ``"github token"``)
turns the normal answer into another one (wrong types, huge fields, a body that is not
JSON, a trickling or endless body), and ``provider.codes_reusable`` accepts a code
more than once, as some real providers do.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from app.test.server import listening_socket


@dataclass
class ProviderUser:
    """A user of the fake provider."""

    id: str
    username: str
    email: str | None
    email_verified: bool = True
    name: str | None = None
    picture_url: str | None = None


@dataclass
class FakeProvider:
    """State of the fake provider: codes, tokens, who signs in next, what was asked."""

    next_user: ProviderUser | None = None
    codes: dict[str, ProviderUser] = field(default_factory=dict)
    tokens: dict[str, ProviderUser] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""
    #: "<provider> <api path>" or "<provider> token" -> what to answer instead, given
    #: the normal answer: a JSON value, or a Response.
    tamper: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    #: Accept an authorization code again and again (a replay reaches our callback).
    codes_reusable: bool = False
    #: Bytes of trickling or endless bodies written so far.
    streamed_bytes: int = 0

    def overrides(self) -> dict[str, dict[str, str]]:
        """OAUTH_PROVIDER_URLS pointing every provider here."""
        return {
            name: {
                "authorize_url": f"{self.url}/{name}/authorize",
                "access_token_url": f"{self.url}/{name}/token",
                "api_base_url": f"{self.url}/{name}/api/",
                **({"userinfo_url": f"{self.url}/google/userinfo"} if name == "google" else {}),
            }
            for name in ("github", "discord", "twitch", "google", "reddit", "twitter")
        }

    # Endpoints -----------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        self.requests.append(f"{provider} authorize")
        params = request.query_params
        if self.next_user is None:
            denied = urlencode({"error": "access_denied", "state": params["state"]})
            return RedirectResponse(f"{params['redirect_uri']}?{denied}")
        code = secrets.token_urlsafe(16)
        self.codes[code] = self.next_user
        query = urlencode({"code": code, "state": params["state"]})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    async def token(self, request: Request) -> Response:
        provider = request.path_params["provider"]
        form = await request.form()
        self.requests.append(f"{provider} token {form.get('grant_type')}")
        if self.codes_reusable:
            user = self.codes.get(str(form.get("code")))
        else:
            user = self.codes.pop(str(form.get("code")), None)
        if user is None:
            return _json({"error": "invalid_grant"}, status_code=400)
        access, refresh = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self.tokens[access] = user
        body = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": 3600,
            "scope": "read",
        }
        return self._answer(f"{provider} token", body)

    def _user(self, request: Request) -> ProviderUser | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return self.tokens.get(token) if scheme.lower() == "bearer" else None

    async def api(self, request: Request) -> Response:
        provider, path = request.path_params["provider"], request.path_params["path"]
        self.requests.append(f"{provider} api {path}")
        user = self._user(request)
        if user is None:
            return _json({"message": "Bad credentials"}, status_code=401)
        body = self._shape(provider, path, user)
        if body is None:
            return _json({"message": "Not Found"}, status_code=404)
        return self._answer(f"{provider} {path}", body)

    def _answer(self, key: str, body: Any) -> Response:
        tamper = self.tamper.get(key)
        if tamper is not None:
            body = tamper(body)
        return body if isinstance(body, Response) else _json(body)

    # Misbehaving bodies ----------------------------------------------------------------

    def trickling(self, body: bytes, interval_seconds: float) -> Response:
        """``body`` one byte at a time, one every ``interval_seconds``."""

        async def drip() -> AsyncIterator[bytes]:
            for byte in body:
                await asyncio.sleep(interval_seconds)
                self.streamed_bytes += 1
                yield bytes([byte])

        return _StopsWhenLeft(drip(), media_type="application/json")

    def endless(self, size_bytes: int, *, declare_length: bool = False) -> Response:
        """A JSON string of ``size_bytes`` bytes, streamed in 64 KiB chunks (with its
        Content-Length when ``declare_length``, else chunked)."""
        chunk = b"x" * 65536

        async def flood() -> AsyncIterator[bytes]:
            yield b'"'
            sent = 1
            while sent < size_bytes - 1:
                piece = chunk[: size_bytes - 1 - sent]
                sent += len(piece)
                self.streamed_bytes = sent
                yield piece
                # Once the client is gone, sending no longer waits: let the listener
                # for the disconnect run.
                await asyncio.sleep(0)
            yield b'"'

        headers = {"content-length": str(size_bytes)} if declare_length else None
        return _StopsWhenLeft(flood(), media_type="application/json", headers=headers)

    async def picture(self, _request: Request) -> Response:
        self.requests.append("picture")
        return Response(b"not fetched", media_type="image/png")

    @staticmethod
    def _shape(provider: str, path: str, user: ProviderUser) -> Any:
        if provider == "github" and path == "user":
            return {
                "id": int(user.id),
                "login": user.username,
                "name": user.name,
                "email": None,
                "avatar_url": user.picture_url,
            }
        if provider == "github" and path == "user/emails":
            if user.email is None:
                return []
            return [
                {"email": "old@example.net", "primary": False, "verified": True},
                {"email": user.email, "primary": True, "verified": user.email_verified},
            ]
        if provider == "discord" and path == "users/@me":
            return {
                "id": user.id,
                "username": user.username,
                "global_name": user.name,
                "email": user.email,
                "verified": user.email_verified,
                "avatar": None,
            }
        if provider == "twitch" and path == "users":
            # Twitch gives the email only once it is verified.
            return {
                "data": [
                    {
                        "id": user.id,
                        "login": user.username,
                        "display_name": user.name or user.username,
                        "email": user.email if user.email_verified else None,
                        "profile_image_url": user.picture_url,
                    }
                ]
            }
        if provider == "reddit" and path == "api/v1/me":
            return {"id": user.id, "name": user.username, "icon_img": user.picture_url}
        if provider == "twitter" and path == "users/me":
            return {
                "data": {
                    "id": user.id,
                    "name": user.name,
                    "username": user.username,
                    "profile_image_url": user.picture_url,
                }
            }
        if provider == "google" and path == "userinfo":
            return {
                "sub": user.id,
                "email": user.email,
                "email_verified": user.email_verified,
                "name": user.name,
                "picture": user.picture_url,
            }
        return None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{provider}/authorize", self.authorize),
                Route("/{provider}/token", self.token, methods=["POST"]),
                Route("/google/userinfo", self._google_userinfo),
                Route("/{provider}/api/{path:path}", self.api),
                Route("/picture.png", self.picture),
            ]
        )

    async def _google_userinfo(self, request: Request) -> Response:
        request.path_params["provider"] = "google"
        request.path_params["path"] = "userinfo"
        return await self.api(request)


class _StopsWhenLeft(StreamingResponse):
    """A stream that stops as soon as the client goes away (so that ``streamed_bytes``
    tells what the client let through). Starlette does that by listening for the
    disconnect on ASGI before 2.4; uvicorn speaks 2.4, where it would stream on."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        older = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}
        await super().__call__(older, receive, send)


def _json(body: Any, status_code: int = 200) -> Response:
    # ASCII escapes, so that NUL characters and lone surrogates reach the client as sent.
    return Response(json.dumps(body), status_code=status_code, media_type="application/json")


class ProviderServer:
    """Serves a :class:`FakeProvider` with uvicorn in a thread of its own."""

    def __init__(self) -> None:
        self.provider = FakeProvider()
        sock = listening_socket()
        self.port = sock.getsockname()[1]
        self.provider.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.provider.app(), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    def start(self) -> FakeProvider:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.provider

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
