"""Logging with loguru: console and file sinks, std-logging interception, redaction.

Every record carries the current request id (``-`` outside a request). Before a
record is written, anything that looks like a secret (a JWT, a bearer token, a
``password=...``/``token=...`` pair) is replaced with ``[REDACTED]``, so a careless
log call cannot leak one.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

    from app.core.config import Settings

#: The id of the request being handled, set by RequestIdMiddleware.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

LOG_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{extra[request_id]}</cyan> | <cyan>{name}</cyan>:<cyan>{line}</cyan> - "
    "<level>{message}</level>"
)
FILE_FORMAT = (
    "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {extra[request_id]} | "
    "{name}:{function}:{line} - {message}"
)

_REDACTED = "[REDACTED]"
_SECRET_PATTERNS = (
    # JSON Web Tokens (three base64url parts, the first one a JSON header).
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    # Authorization headers.
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # key=value or "key": "value" pairs whose key names a secret.
    re.compile(
        r"(?i)((?<![a-z])(?:password|passwd|secret|token|api_?key)"
        r"[\"']?\s*[:=]\s*[\"']?)([^\s\"'&,}]+)"
    ),
    # bcrypt hashes.
    re.compile(r"\$2[aby]?\$\d{2}\$[./A-Za-z0-9]{53}"),
)

#: Std-logging loggers routed into loguru (uvicorn's access log is replaced by ours).
_INTERCEPTED = ("uvicorn", "uvicorn.error", "fastapi", "sqlalchemy", "alembic", "apscheduler")

_handler_ids: list[int] = []
_default_sink_removed = False


def redact(text: str) -> str:
    """Replace anything that looks like a secret in ``text`` with ``[REDACTED]``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + _REDACTED, text)
        else:
            text = pattern.sub(_REDACTED, text)
    return text


def _patch_record(record: Record) -> None:
    record["extra"]["request_id"] = request_id_var.get()
    record["message"] = redact(record["message"])
    exception = record["exception"]
    if exception is not None and exception.value is not None:
        # Exception messages may quote values (SQL parameters, for one).
        exception.value.args = tuple(
            redact(arg) if isinstance(arg, str) else arg for arg in exception.value.args
        )


class InterceptHandler(logging.Handler):
    """Send std-logging records to loguru, keeping the caller's location."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def _rotation(value: str) -> str:
    """LOG_FILE_ROTATION: a bare number means hours, anything else is loguru's syntax."""
    return f"{value} hours" if value.strip().isdigit() else value.strip("'\" ")


def _retention(value: str) -> str:
    """LOG_FILE_RETENTION: a bare number means days, anything else is loguru's syntax."""
    return f"{value} days" if value.strip().isdigit() else value.strip("'\" ")


def log_file_path(settings: Settings) -> Path:
    """Where the log file lives when LOG_FILE_ENABLED."""
    return settings.DATA_DIR / "logs" / "user_manager.log"


def setup_logging(settings: Settings) -> None:
    """(Re)configure loguru's sinks and route std logging through it.

    Only the sinks this function added before are replaced, so sinks added by
    others (tests capturing logs, for one) survive a second call.
    """
    global _default_sink_removed
    if not _default_sink_removed:
        logger.remove()  # loguru's default stderr sink
        _default_sink_removed = True
    for handler_id in _handler_ids:
        try:
            logger.remove(handler_id)
        except OSError as error:
            # Closing the log file flushes lines it could not write (a full disk):
            # they are lost, the file sink is gone all the same, and we carry on.
            sys.stderr.write(f"log file lines lost: {error}\n")
    _handler_ids.clear()
    logger.configure(patcher=_patch_record)

    _handler_ids.append(
        logger.add(
            sys.stderr,
            level=settings.LOG_LEVEL,
            format=LOG_FORMAT,
            colorize=None,
            backtrace=False,
            diagnose=False,
        )
    )
    if settings.LOG_FILE_ENABLED:
        _handler_ids.append(
            logger.add(
                log_file_path(settings),
                level=settings.LOG_FILE_LEVEL,
                format=FILE_FORMAT,
                rotation=_rotation(settings.LOG_FILE_ROTATION),
                retention=_retention(settings.LOG_FILE_RETENTION),
                enqueue=True,
                backtrace=False,
                diagnose=False,
            )
        )

    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for name in _INTERCEPTED:
        std_logger = logging.getLogger(name)
        std_logger.handlers = [InterceptHandler()]
        std_logger.propagate = False
    # Our middleware writes the access log (with the request id, without query strings).
    logging.getLogger("uvicorn.access").handlers = []
    logging.getLogger("uvicorn.access").propagate = False
    # Drivers log statements with their parameters (password hashes, token hashes):
    # only at TRACE, the level documented as not recommended.
    sql_level = logging.DEBUG if settings.LOG_LEVEL == "TRACE" else logging.WARNING
    for name in ("sqlalchemy.engine", "aiosqlite", "psycopg"):
        logging.getLogger(name).setLevel(sql_level)
    # Authlib's server logs every token it issues at DEBUG: never below INFO.
    logging.getLogger("authlib").setLevel(max(logging.INFO, sql_level))
