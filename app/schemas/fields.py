"""Validated field types shared by request schemas; each rule fails with its own error type.

A failed rule becomes a 422 whose ``errors[].type`` names the rule (``username_invalid``,
``password_too_common``, ...) and whose message says what to change.
"""

from __future__ import annotations

import re
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from app.core.security import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH, password_problem
from app.models.user import DESCRIPTION_MAX_LENGTH, USERNAME_MAX_LENGTH

USERNAME_PATTERN = re.compile(rf"^[a-z0-9_]{{1,{USERNAME_MAX_LENGTH}}}$")


def check_username(value: str) -> str:
    """1-31 characters of a-z, 0-9 and underscore."""
    if not USERNAME_PATTERN.match(value):
        raise PydanticCustomError(
            "username_invalid",
            "username must be 1 to {max} characters of lowercase letters a-z, digits and _",
            {"max": USERNAME_MAX_LENGTH},
        )
    return value


def check_email(value: str) -> str:
    """A syntactically valid address, stored lower-cased (deliverability is checked later)."""
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as error:
        raise PydanticCustomError(
            "email_invalid", "email is not valid: {reason}", {"reason": str(error)}
        ) from None
    return result.normalized.lower()


def check_password(value: str) -> str:
    """8-128 characters after NFKC normalisation, and not a common password."""
    problem = password_problem(value)
    if problem is not None:
        rule, message = problem
        raise PydanticCustomError(rule, "password " + message)
    return value


def check_description(value: str | None) -> str | None:
    """At most 256 characters."""
    if value is not None and len(value) > DESCRIPTION_MAX_LENGTH:
        raise PydanticCustomError(
            "description_too_long",
            "description must be at most {max} characters",
            {"max": DESCRIPTION_MAX_LENGTH},
        )
    return value


Username = Annotated[
    str,
    # Documented in the schema; checked by check_username (its own error type).
    Field(examples=["john_doe"], json_schema_extra={"pattern": USERNAME_PATTERN.pattern}),
    AfterValidator(check_username),
]
Email = Annotated[
    str,
    Field(max_length=320, examples=["john@example.com"], json_schema_extra={"format": "email"}),
    AfterValidator(check_email),
]
NewPassword = Annotated[
    str,
    Field(
        description="8 to 128 characters; common passwords are refused.",
        json_schema_extra={"minLength": PASSWORD_MIN_LENGTH, "maxLength": PASSWORD_MAX_LENGTH},
    ),
    AfterValidator(check_password),
]
# A password being checked (not set): any length up to a bound, so a login never
# reveals the policy and a huge body cannot make us hash megabytes.
GivenPassword = Annotated[str, Field(max_length=PASSWORD_MAX_LENGTH * 4)]
#: The caller's current password, confirming a sensitive change; it may be left out
#: when the session was re-authenticated (/auth/reauthenticate) in the last minutes.
CurrentPassword = Annotated[
    GivenPassword | None,
    Field(
        description="The current password. Not needed when this session was "
        "re-authenticated (POST /auth/reauthenticate) within REAUTH_WINDOW_SECONDS, nor "
        "right after a provider login for an account without a password."
    ),
]
Description = Annotated[str | None, AfterValidator(check_description)]


def display_name_matches(display_name: str, username: str) -> bool:
    """A display name is the username with capitals allowed and spaces for underscores."""
    return display_name.lower().replace(" ", "_") == username
