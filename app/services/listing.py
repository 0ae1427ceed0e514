"""What the filtered, paginated lists (users, the audit log) share: opaque cursors and
prefix matches an index can answer.

A cursor names the last row of a page by the values of the list's order; the next page
starts after it, so a deep page costs what the first does and rows added meanwhile
neither repeat nor push others out of the walk. It is those values joined by ``.``,
URL-safe base64 without padding: opaque to clients, cheap to check.
"""

from __future__ import annotations

import sys
from base64 import urlsafe_b64decode, urlsafe_b64encode

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, func
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import AppError


class InvalidCursor(AppError):
    """A ``cursor`` this service did not hand out."""

    status_code = 422
    code = "INVALID_CURSOR"
    detail = "The cursor is not one this list handed out; start again without it"


def pack_cursor(*parts: object) -> str:
    """The cursor of the row whose place in the order is ``parts`` (no ``.`` inside)."""
    return urlsafe_b64encode(".".join(map(str, parts)).encode()).decode().rstrip("=")


def unpack_cursor(cursor: str, count: int) -> list[str]:
    """The ``count`` parts of a cursor from :func:`pack_cursor`; InvalidCursor otherwise
    (the caller converts them, and raises InvalidCursor on a part of the wrong type)."""
    try:
        parts = urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(".")
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor() from None
    if len(parts) != count:
        raise InvalidCursor()
    return parts


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def starts_with(
    db: AsyncSession, column: SQLColumnExpression[str], prefix: str
) -> ColumnElement[bool]:
    """``column`` starts with ``prefix``, in a form the column's index can answer.

    PostgreSQL: ``LIKE 'prefix%'`` over an index with pattern operators (which works
    whatever the database's collation). SQLite: the range ``prefix <= column < next``,
    where ``next`` is the prefix with its last character raised by one: SQLite compares
    bytes, so every string with the prefix, and nothing else, falls in that range, and
    a plain index answers it (SQLite's LIKE is case-blind and uses no ordinary index).
    """
    if db.get_bind().dialect.name == "postgresql":
        return column.like(f"{_escape_like(prefix)}%", escape="\\")
    if ord(prefix[-1]) == sys.maxunicode:  # no character above it: compare the start
        return func.substr(column, 1, len(prefix)) == prefix
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return and_(column >= prefix, column < upper)
