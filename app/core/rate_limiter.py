"""Rate limiting with the ``limits`` package: storage, the client's address, middleware.

One storage serves the global limit (RATE_LIMITER_*): Redis when REDIS_URL is set
(so replicas share their counts), else memory. ``RateLimitMiddleware`` applies it per
user (a request with a validly signed access token) or per client address. The
brute-force guard (passwords, codes, mails) is ``app.core.brute_force``: always on,
and never failing open.

If the storage fails (Redis down) the limiter lets requests through and logs a
warning at most once a minute: an outage of the limiter must not become an outage
of the service.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from loguru import logger
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.authentication import caller_of
from app.core.errors import AppError, error_body

_WARNING_INTERVAL_SECONDS = 60
#: Paths never limited (load balancers poll them).
EXEMPT_PATHS = frozenset({"/health", "/health/ready", "/metrics"})


class RateLimited(AppError):
    """Too many requests; carries Retry-After and RateLimit headers."""

    status_code = 429
    code = "RATE_LIMITED"
    detail = "Too many requests; try again later"


def create_storage(redis_url: str | None) -> Storage:
    """Redis storage (shared by replicas) when configured, else in-memory."""
    if redis_url:
        scheme, sep, rest = redis_url.partition("://")
        return RedisStorage(
            f"async+{scheme}{sep}{rest}",
            implementation="redispy",
            wrap_exceptions=True,
            socket_connect_timeout=1,
            socket_timeout=1,
        )
    return MemoryStorage()


@dataclass(frozen=True)
class LimitResult:
    """The outcome of one hit."""

    allowed: bool
    limit: int
    remaining: int
    reset_in_seconds: int
    #: False when the storage failed and the request was let through uncounted.
    counted: bool = True

    def headers(self) -> dict[str, str]:
        """Retry-After and the RateLimit-* headers."""
        return {"Retry-After": str(max(1, self.reset_in_seconds)), **self.budget_headers()}

    def budget_headers(self) -> dict[str, str]:
        """The RateLimit-* headers: the budget, what is left of it, when it refills."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(max(1, self.reset_in_seconds)),
        }


class Limiter:
    """A moving-window limiter over one storage, failing open."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)
        self._last_warning = 0.0

    async def hit(self, item: RateLimitItem, *key: str) -> LimitResult:
        """Count one request for ``key`` against ``item``."""
        try:
            allowed = await self.strategy.hit(item, *key)
            stats = await self.strategy.get_window_stats(item, *key)
        except Exception as error:  # storage down: let the request through
            now = time.monotonic()
            if now - self._last_warning > _WARNING_INTERVAL_SECONDS:
                self._last_warning = now
                logger.warning(
                    "rate limiter storage unavailable ({}): requests are not limited",
                    type(error).__name__,
                )
            return LimitResult(True, item.amount, item.amount, 0, counted=False)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return LimitResult(allowed, item.amount, max(0, stats.remaining), reset)


def window_item(max_requests: int, window_seconds: int) -> RateLimitItem:
    """``max_requests`` per ``window_seconds``."""
    return parse(f"{max_requests} per {window_seconds} seconds")


# Client address ------------------------------------------------------------------------


class TrustedProxies:
    """Addresses (or networks) whose X-Forwarded-For is believed; ``*`` trusts all."""

    def __init__(self, entries: list[str]) -> None:
        self.trust_all = "*" in entries
        self.networks = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        ]

    def __contains__(self, address: str | None) -> bool:
        if address is None:
            return False
        if self.trust_all:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def client_address(scope: Scope, proxies: TrustedProxies) -> str | None:
    """The client's address: the peer, or, behind trusted proxies, the first untrusted hop.

    X-Forwarded-For is read right to left, skipping trusted proxies; a forged
    header from an untrusted peer changes nothing.
    """
    peer = scope.get("client")
    address = peer[0] if peer else None
    if address not in proxies:
        return address
    forwarded = [
        value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name == b"x-forwarded-for"
    ]
    hops = [hop.strip() for header in forwarded for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in proxies:
            return hop
        address = hop
    return address


class ClientAddressMiddleware:
    """Set the ASGI client address from trusted proxies' X-Forwarded-For (pure ASGI).

    Replaces uvicorn's own proxy-header handling (which is turned off) so that
    FORWARDED_ALLOW_IPS means the same everywhere and defaults to trusting nobody.
    """

    def __init__(self, app: ASGIApp, *, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client") and scope["client"][0] in self.proxies:
            address = client_address(scope, self.proxies)
            if address is not None:
                scope = {**scope, "client": (address, 0)}
        await self.app(scope, receive, send)


# Global limit --------------------------------------------------------------------------


class RateLimitMiddleware:
    """The global limit: per user with a valid token, else per client address (pure ASGI).

    Every answer it counted carries the ``RateLimit-*`` headers (the 429 adds
    ``Retry-After``); the exempt paths and answers while the storage is down carry none.

    The user is the one a validly signed access token names (the request's caller,
    ``app.core.authentication``): no database or cache is asked, so a flood of tokens
    whose sessions ended is still counted per user.
    """

    def __init__(self, app: ASGIApp, *, limiter: Limiter, item: RateLimitItem) -> None:
        self.app = app
        self.limiter = limiter
        self.item = item

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        subject = caller_of(scope).subject()
        if subject is not None:
            key = f"user:{subject}"
        else:
            client = scope.get("client")
            key = f"ip:{client[0] if client else 'unknown'}"
        result = await self.limiter.hit(self.item, "global", key)
        if not result.allowed:
            response = JSONResponse(
                error_body("Too many requests; try again later", "RATE_LIMITED"),
                status_code=429,
                headers=result.headers(),
            )
            await response(scope, receive, send)
            return
        if not result.counted:  # nothing known about the budget: say nothing
            await self.app(scope, receive, send)
            return
        budget = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in result.budget_headers().items()
        ]

        async def send_with_budget(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Every answer tells the client its budget, not only the 429.
                message["headers"] = [*message.get("headers", ()), *budget]
            await send(message)

        await self.app(scope, receive, send_with_budget)
