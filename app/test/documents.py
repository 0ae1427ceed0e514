"""The OpenAPI document with the routes it leaves out put back, for the tests that
call every route it lists (the fuzzer, the abuse tests): pages, the OpenID Connect
provider's browser pages and /metrics are served, so they are attacked like the API."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from app.core.openapi import install_openapi, operation_id
from app.routers import docs_pages, legal

#: Served but left out of the API's document; fuzzed all the same.
UNDOCUMENTED = {
    "/metrics",
    "/signin",
    "/interactive-docs",
    "/docs/token",
    "/signout",
    "/terms",
    "/privacy",
    # The OpenID Connect provider's browser side (app.routers.oidc).
    "/oauth2/authorize",
    "/oauth2/signin",
    "/oauth2/session",
    "/oauth2/logout",
}


def complete_document(app: FastAPI) -> dict[str, Any]:
    """``app``'s document (a copy) plus the UNDOCUMENTED routes, described as their
    decorators declare them (built by a throwaway app that includes them)."""
    pages = FastAPI(generate_unique_id_function=operation_id)
    pages.include_router(docs_pages.router)
    pages.include_router(legal.router)
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if context.path == "/metrics" and isinstance(route, APIRoute):
            pages.add_api_route(
                context.path,
                route.endpoint,
                methods=["GET"],
                response_class=route.response_class,
                responses=route.responses,
                tags=route.tags,
            )
        elif (context.path or "").startswith("/oauth2/") and context.path in UNDOCUMENTED:
            assert isinstance(route, APIRoute)
            pages.add_api_route(
                context.path,
                route.endpoint,
                methods=sorted(route.methods or ()),
                status_code=route.status_code,
                response_class=route.response_class,
                responses=route.responses,
                dependencies=route.dependencies,
                tags=route.tags,
            )
    install_openapi(pages, app.state.settings.API_STR)
    document = copy.deepcopy(app.openapi())
    extra = pages.openapi()
    for path, item in extra["paths"].items():
        if path in UNDOCUMENTED:
            document["paths"][path] = item
    for name, schema in extra["components"]["schemas"].items():
        document["components"]["schemas"].setdefault(name, schema)
    return document
