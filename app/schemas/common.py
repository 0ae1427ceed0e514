"""Response models shared by every router: the error shapes and the list envelope."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """The one shape of every error."""

    detail: str = Field(description="What went wrong, for a person to read.")
    code: str = Field(
        description="Stable machine-readable code, UPPER_SNAKE.", examples=["NOT_FOUND"]
    )


class FieldError(BaseModel):
    """One invalid field of a request."""

    loc: list[str | int] = Field(description="Where the field is, e.g. ['body', 'password'].")
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    """A 422: the common shape plus the list of invalid fields."""

    errors: list[FieldError]


_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing, invalid or expired credentials",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict with existing data",
    413: "Payload too large",
    422: "Invalid request",
    429: "Too many requests",
    503: "A dependency is unavailable",
}


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the errors an endpoint can answer."""
    return {
        code: {
            "model": ValidationErrorResponse if code == 422 else ErrorResponse,
            "description": _DESCRIPTIONS.get(code, "Error"),
        }
        for code in status_codes
    }
