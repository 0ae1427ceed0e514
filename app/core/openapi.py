"""The OpenAPI document, made to tell the truth about this API and to read well.

FastAPI describes every 422 with its own ``HTTPValidationError``; ours answer the
common error shape with a field list. The OAuth2 token URL follows API_STR.
Operation ids are short and stable (``auth-login``), so that generated clients get
readable names; the numpydoc sections of the endpoints' docstrings become Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from app.schemas.common import ErrorResponse, ValidationErrorResponse, error_example

_VALIDATION_CONTENT = {
    "application/json": {
        "schema": {"$ref": "#/components/schemas/ValidationErrorResponse"},
        "example": error_example(422),
    }
}


#: ``openapi_extra`` of an operation that answers anonymous callers too: an empty
#: security requirement beside the bearer token is OpenAPI's "optional". (FastAPI
#: appends a list given here to the one it made, which names the token already.)
OPTIONAL_BEARER: dict[str, Any] = {"security": [{}]}

_MALFORMED_BODY = {
    "description": "The body cannot be decoded",
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"},
            "example": error_example(400),
        }
    },
}
_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}


#: Section titles of numpydoc docstrings, as the reader of the API sees them.
_SECTION_TITLES = {"Returns": "Returns", "Raises": "Errors"}
_UNDERLINE = re.compile(r"-{3,}")


def operation_id(route: APIRoute) -> str:
    """A route's operation id: its first tag and its function name, in kebab-case.

    ``login`` tagged ``auth`` gives ``auth-login``; a name that already starts with
    its tag is not prefixed twice (``health_ready`` gives ``health-ready``). Generated
    clients name their methods after these, so they must stay unique and stable.
    """
    name = route.name
    tag = str(route.tags[0]) if route.tags else ""
    if tag and name != tag and not name.startswith(f"{tag}_"):
        name = f"{tag}_{name}"
    return name.replace("_", "-").lower()


def readable_description(text: str) -> str:
    """A docstring made readable as Markdown.

    Numpydoc sections (a title underlined with dashes, then entries whose explanation
    is indented) would show as a heading and a code block: a listing section
    (Returns, Raises) becomes a bold title and a list, any other a bold title and
    its text. reStructuredText's double backquotes become Markdown's single ones.
    """
    lines = text.replace("``", "`").split("\n")
    out: list[str] = []
    section: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() and _UNDERLINE.fullmatch(following.strip()):
            section = line.strip()
            out += [f"**{_SECTION_TITLES.get(section, section)}**", ""]
            index += 2
            continue
        index += 1
        if section not in _SECTION_TITLES or not line.strip():
            out.append(line.strip() if section else line)
        elif line[:1].isspace() and out[-1].startswith("- "):
            out[-1] += " " + line.strip()  # the explanation of the entry above
        else:
            out.append(f"- `{line.strip()}`:")
    return "\n".join(out).strip()


def _add_error_examples(responses: dict[str, Any]) -> None:
    """Give each plain error response without an example one with its status's code
    (a client reading a 401 must not see ``NOT_FOUND``)."""
    for status, response in responses.items():
        content = response.get("content", {}).get("application/json")
        if status.isdigit() and content is not None and content.get("schema") == _ERROR_SCHEMA:
            content.setdefault("example", error_example(int(status)))


def install_openapi(app: FastAPI, api_prefix: str, reading_order: Sequence[APIRouter] = ()) -> None:
    """Replace ``app.openapi`` with a builder that fixes 422s and the token URL.

    The document lists the routers in ``reading_order`` first, whatever order they
    were included in (routing order is chosen for speed, not for readers).
    """
    rank = {id(router): position for position, router in enumerate(reading_order)}

    def reading_rank(route: object) -> int:
        return rank.get(id(getattr(route, "original_router", None)), len(rank))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=sorted(app.routes, key=reading_rank),
            license_info=app.license_info,
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.setdefault(
            "ErrorResponse",
            ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        model_schema = ValidationErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        for name, definition in model_schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas["ValidationErrorResponse"] = model_schema
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                if "description" in operation:
                    operation["description"] = readable_description(operation["description"])
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"]["content"] = _VALIDATION_CONTENT
                if "requestBody" in operation:
                    # A body that cannot be decoded at all (bad bytes, broken multipart).
                    responses.setdefault("400", _MALFORMED_BODY)
                _add_error_examples(responses)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        for scheme in components.get("securitySchemes", {}).values():
            password_flow = scheme.get("flows", {}).get("password")
            if password_flow is not None:
                password_flow["tokenUrl"] = f"{api_prefix}/auth/login"
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
