"""Cross-origin calls from web apps (CORS_ORIGINS), with Starlette's ``CORSMiddleware``.

The middleware sits outside everything else (see ``app.main``): a preflight
``OPTIONS`` is answered before the request id, the access log, the caller, the rate
limit and the feature flags, so a preflight costs nothing, is never limited, flagged
or refused as an unknown method, and every answer (the last-resort 500 included)
carries the CORS headers a browser needs to read it.

Only origins named exactly are allowed, with credentials: a browser sends the
``Authorization`` header and the device cookie only to an origin it was told by name.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from app.core.errors import error_body
from app.core.middleware import REQUEST_ID_HEADER
from app.services.devices import DEVICE_HEADER

#: Methods the API uses.
ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
#: Request headers a web app may send besides the CORS-safelisted ones.
ALLOWED_HEADERS = ("Authorization", "Content-Type", DEVICE_HEADER, REQUEST_ID_HEADER)
#: Response headers a web app's script may read besides the CORS-safelisted ones: the
#: global rate limit's budget, when to come back after a 429 or 503, the request id.
EXPOSED_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    REQUEST_ID_HEADER,
)
#: How long a browser may keep a preflight's answer, in seconds.
PREFLIGHT_MAX_AGE_SECONDS = 600

_REFUSALS = {
    "origin": "the origin is not one of CORS_ORIGINS",
    "method": "the method is not allowed",
    "headers": "a requested header is not allowed",
    "private-network": "private network access is not allowed",
}


class Cors(CORSMiddleware):
    """Starlette's CORS middleware for ``origins``, refusing in the common error shape."""

    def __init__(self, app: ASGIApp, *, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            allow_credentials=True,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE_SECONDS,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        """Starlette's answer; a refusal (400) says why as ``CORS_REFUSED`` JSON."""
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        failures = bytes(response.body).decode().removeprefix("Disallowed CORS ").split(", ")
        reasons = "; ".join(_REFUSALS.get(failure, failure) for failure in failures)
        headers = {
            name: value for name, value in response.headers.items() if name.startswith("access-")
        }
        headers["Vary"] = response.headers["vary"]
        return JSONResponse(
            error_body(f"Cross-origin request refused: {reasons}", "CORS_REFUSED"),
            status_code=400,
            headers=headers,
        )
