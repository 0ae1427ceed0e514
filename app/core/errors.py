"""Domain errors and the handlers that turn every error into one JSON shape.

Services raise :class:`AppError` subclasses (``UsernameTaken``, ``PermissionDenied``,
...); routers never build error responses themselves. Every error a client sees is
``{"detail": str, "code": "UPPER_SNAKE"}``; validation errors add ``errors``, the list
of fields at fault (without the submitted values, which may be passwords).
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeGuard, TypeVar, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from loguru import logger
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import HTTPExceptionHandler

from app.core.routes import allowed_methods, endpoint_table

_E = TypeVar("_E", bound=Exception)

#: Default ``code`` for an HTTP status when the raiser gave none.
STATUS_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
    507: "INSUFFICIENT_STORAGE",
}

#: ``errno`` values meaning "no room left": the disk is full, or the user's quota is.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: PostgreSQL's SQLSTATE for "disk full".
POSTGRESQL_DISK_FULL = "53100"


class AppError(Exception):
    """An error meant for the client: an HTTP status, a stable code and a message."""

    status_code: int = 400
    code: str = "BAD_REQUEST"
    detail: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.detail
        self.code = code or self.code
        self.status_code = status_code or self.status_code
        self.headers = headers
        self.extra = extra or {}
        super().__init__(self.detail)


class NotFound(AppError):
    """The resource does not exist, or the caller may not know that it does."""

    status_code = 404
    code = "NOT_FOUND"
    detail = "Not found"


class Unauthorized(AppError):
    """No valid credentials."""

    status_code = 401
    code = "UNAUTHORIZED"
    detail = "Not authenticated"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class PermissionDenied(AppError):
    """Authenticated, but not allowed."""

    status_code = 403
    code = "FORBIDDEN"
    detail = "Not allowed"


class Conflict(AppError):
    """The request clashes with existing data (a taken username, for one)."""

    status_code = 409
    code = "CONFLICT"
    detail = "Conflict"


class ServiceUnavailable(AppError):
    """A dependency (database, Redis) is not reachable."""

    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    detail = "Service unavailable"


class InsufficientStorage(AppError):
    """Something could not be saved for lack of space; nothing of it was kept."""

    status_code = 507
    code = "INSUFFICIENT_STORAGE"
    detail = "The server has no room left to save this; nothing was kept. Try again later"


def is_disk_full(error: BaseException) -> TypeGuard[OSError]:
    """True when ``error`` says the disk (or a quota) is full (it is then an OSError)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def error_body(detail: str, code: str, **extra: Any) -> dict[str, Any]:
    """The common error shape."""
    return {"detail": detail, "code": code, **extra}


def _code_for(status_code: int) -> str:
    if status_code in STATUS_CODES:
        return STATUS_CODES[status_code]
    try:
        return HTTPStatus(status_code).name
    except ValueError:
        return "ERROR"


async def _app_error(_request: Request, exc: AppError) -> JSONResponse:
    extra = dict(exc.extra)
    if exc.status_code == 422:
        # Every 422 has the field list, even when the rule is about the whole request.
        extra.setdefault("errors", [{"loc": [], "msg": exc.detail, "type": exc.code.lower()}])
    return JSONResponse(
        error_body(exc.detail, exc.code, **extra),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; list them all.
        table = getattr(request.app.state, "endpoint_table", None)
        if table is None:
            table = request.app.state.endpoint_table = endpoint_table(request.app.routes)
        methods = allowed_methods(table, request.url.path)
        if methods:
            headers["Allow"] = ", ".join(methods)
    return JSONResponse(
        error_body(detail, _code_for(exc.status_code)),
        status_code=exc.status_code,
        headers=headers or None,
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors: list[dict[str, Any]] = [
        {
            "loc": list(error.get("loc", ())),
            "msg": error.get("msg", "invalid"),
            "type": error.get("type", "value_error"),
        }
        for error in exc.errors()
    ]
    first: dict[str, Any] = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    detail = f"{_location(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
    return JSONResponse(
        error_body(detail, "VALIDATION_ERROR", errors=errors),
        status_code=422,
    )


def _database_disk_full(exc: Exception) -> bool:
    """The database could not write for lack of space (SQLite or PostgreSQL)."""
    original = getattr(exc, "orig", None)
    return (
        getattr(original, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or getattr(original, "sqlstate", None) == POSTGRESQL_DISK_FULL
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if _database_disk_full(exc):
        logger.error("the database has no room left to write")
        return await _app_error(request, InsufficientStorage())
    # The database went away (restart, network): say so, and recover once it is back
    # (the pool pre-pings and replaces dead connections).
    logger.error("database unavailable: {}", type(exc).__name__)
    return JSONResponse(
        error_body("The database is unavailable; try again shortly", "DATABASE_UNAVAILABLE"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _database_busy(_request: Request, _exc: Exception) -> JSONResponse:
    # Every pooled connection stayed busy past the pool's timeout: an overload, not a
    # fault. Say so and when to come back.
    logger.warning("database pool exhausted: request refused")
    return JSONResponse(
        error_body("The database is busy; try again shortly", "DATABASE_BUSY"),
        status_code=503,
        headers={"Retry-After": "2"},
    )


def _add_handler(
    app: FastAPI, kind: type[_E], handler: Callable[[Request, _E], Awaitable[Response]]
) -> None:
    """Register ``handler`` for ``kind`` and its subclasses.

    Starlette calls a handler only with instances of the class it was registered for,
    but types every handler as taking any Exception; this signature says which one.
    """
    app.add_exception_handler(kind, cast("HTTPExceptionHandler", handler))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the common shape.

    Unhandled exceptions are answered by ``RequestIdMiddleware`` (a 500 in the same
    shape, with the request id).
    """
    _add_handler(app, AppError, _app_error)
    _add_handler(app, StarletteHTTPException, _http_error)
    _add_handler(app, RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(InterfaceError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_busy)
