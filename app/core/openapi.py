"""The OpenAPI document, made to tell the truth about this API.

FastAPI describes every 422 with its own ``HTTPValidationError``; ours answer the
common error shape with a field list. The OAuth2 token URL follows API_STR.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi

from app.schemas.common import ErrorResponse, ValidationErrorResponse

_VALIDATION_CONTENT = {
    "application/json": {"schema": {"$ref": "#/components/schemas/ValidationErrorResponse"}}
}


_MALFORMED_BODY = {
    "description": "The body cannot be decoded",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


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
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"]["content"] = _VALIDATION_CONTENT
                if "requestBody" in operation:
                    # A body that cannot be decoded at all (bad bytes, broken multipart).
                    responses.setdefault("400", _MALFORMED_BODY)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        for scheme in components.get("securitySchemes", {}).values():
            password_flow = scheme.get("flows", {}).get("password")
            if password_flow is not None:
                password_flow["tokenUrl"] = f"{api_prefix}/auth/login"
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
