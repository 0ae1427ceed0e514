"""The app's endpoints as one flat table: methods, full path pattern, endpoint function.

FastAPI keeps included routers nested; middleware that must know the endpoint before
routing (feature flags) or every method of a path (the 405 ``Allow`` header) reads
this table instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute, compile_path


@dataclass(frozen=True)
class Endpoint:
    """One API endpoint."""

    methods: frozenset[str]
    path: str
    path_regex: re.Pattern[str]
    function: Callable[..., Any]


def endpoint_table(routes: list[BaseRoute]) -> list[Endpoint]:
    """Every API endpoint, with included routers' prefixes applied."""
    table = []
    for context in iter_route_contexts(routes):
        function, path = context.endpoint, context.path
        if function is None or path is None or not isinstance(context.original_route, APIRoute):
            continue
        regex, _, _ = compile_path(path)
        table.append(Endpoint(frozenset(context.methods or ()), path, regex, function))
    return table


def allowed_methods(table: list[Endpoint], path: str) -> list[str]:
    """The methods of the path template that ``path`` belongs to (for a 405's Allow).

    The template is the first one matching, as in routing; its methods are gathered
    from every endpoint declared on it.
    """
    template = next((e.path for e in table if e.path_regex.match(path)), None)
    methods: set[str] = set()
    for endpoint in table:
        if endpoint.path == template:
            methods |= endpoint.methods
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
