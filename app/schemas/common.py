"""Response models shared by every router: the error shapes and the list envelope."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from app.core.errors import STATUS_CODES


def check_text(value: str) -> str:
    """Refuse text no database stores faithfully: NUL characters and lone surrogates."""
    if "\x00" in value:
        raise PydanticCustomError("text_nul", "text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "text_invalid_unicode", "text must be valid Unicode (no lone surrogates)"
        ) from None
    return value


def _check_nested(value: Any) -> Any:
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, list):
        return [_check_nested(item) for item in value]
    if isinstance(value, dict):
        return {_check_nested(key): _check_nested(item) for key, item in value.items()}
    return value


#: A query or form string held to the same rule as request bodies.
Text = Annotated[str, AfterValidator(check_text)]


class RequestModel(BaseModel):
    """Base of every request body: unknown fields refused, types strict, strings checked.

    Strict: ``0.0`` is not ``false`` and ``"1"`` is not ``1``; a request means what it
    says or is refused.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _check_nested(value)


class ErrorResponse(BaseModel):
    """The one shape of every error."""

    detail: str = Field(description="What went wrong, for a person to read.")
    # No example here: each response gives its own, with its status's code.
    code: str = Field(description="Stable machine-readable code, UPPER_SNAKE.")


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
    507: "No room left to save this (the disk is full); nothing was kept",
}


def error_example(status_code: int) -> dict[str, Any]:
    """An example body of an error with this status: its default code, not another's."""
    code = STATUS_CODES.get(status_code) or HTTPStatus(status_code).name
    body: dict[str, Any] = {"detail": _DESCRIPTIONS.get(status_code, "Error"), "code": code}
    if status_code == 422:
        body["errors"] = [
            {"loc": ["body", "email"], "msg": "Field required", "type": "missing"},
        ]
    return body


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the errors an endpoint can answer, each with
    an example carrying that status's code."""
    return {
        code: {
            "model": ValidationErrorResponse if code == 422 else ErrorResponse,
            "description": _DESCRIPTIONS.get(code, "Error"),
            "content": {"application/json": {"example": error_example(code)}},
        }
        for code in status_codes
    }
