"""The OpenAPI document as a client generator reads it: readable and unique operation
ids, only API operations, error examples that match their status, readable
descriptions, and a TypeScript client generated from it that type-checks."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from app.core.errors import STATUS_CODES
from app.core.openapi import readable_description
from app.core.routes import endpoint_table
from app.main import create_app
from app.test.conftest import make_settings, require_tool

#: Served for browsers and Prometheus, kept out of the document (the README lists them).
OUT_OF_THE_DOCUMENT = {
    "/metrics",
    "/signin",
    "/interactive-docs",
    "/docs/token",
    "/signout",
    "/terms",
    "/privacy",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
OPERATION_ID = re.compile(r"[a-z]+(-[a-z0-9]+)*")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """An application that is only asked for its document (never started)."""
    return create_app(make_settings(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_operation_ids_are_readable_unique_and_start_with_the_tag(
    document: dict[str, Any],
) -> None:
    operations = _operations(document)
    ids = [operation["operationId"] for _, operation in operations]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for where, operation in operations:
        assert OPERATION_ID.fullmatch(operation["operationId"]), where
        assert operation["operationId"].startswith(operation["tags"][0]), where
    by_route = {where: operation["operationId"] for where, operation in operations}
    assert by_route["POST /api/auth/login"] == "auth-login"
    assert by_route["GET /api/users/me"] == "users-read-me"
    assert by_route["GET /health/ready"] == "health-ready"
    assert by_route["GET /api/oauth/{provider}"] == "oauth-login"


def test_each_operation_is_listed_once_under_one_tag(document: dict[str, Any]) -> None:
    for where, operation in _operations(document):
        assert len(operation["tags"]) == 1, (where, operation["tags"])
    tags = {operation["tags"][0] for _, operation in _operations(document)}
    assert "pages" not in tags
    assert "health" in tags


def test_pages_and_metrics_are_served_but_not_documented(
    app: FastAPI, document: dict[str, Any]
) -> None:
    served = {endpoint.path for endpoint in endpoint_table(app.routes)}
    assert served >= OUT_OF_THE_DOCUMENT
    assert not OUT_OF_THE_DOCUMENT & set(document["paths"])
    # Everything else under the API prefix, and the health checks, are documented.
    assert {"/health", "/health/ready"} <= set(document["paths"])
    assert all(
        path.startswith(("/api/", "/health", "/oauth2/", "/.well-known/"))
        for path in document["paths"]
    )


def test_error_examples_carry_their_status_code(document: dict[str, Any]) -> None:
    checked = 0
    for where, operation in _operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            content = response["content"]["application/json"]
            example = content["example"]
            assert isinstance(example["detail"], str), (where, status)
            schema = content["schema"]["$ref"].rsplit("/", 1)[-1]
            if schema in {"ErrorResponse", "ValidationErrorResponse"} and int(status) in (
                STATUS_CODES
            ):
                assert example["code"] == STATUS_CODES[int(status)], (where, status)
                checked += 1
            if status == "422":
                assert example["errors"], where
    assert checked > 100
    login = dict(_operations(document))["POST /api/auth/login"]["responses"]
    assert login["401"]["content"]["application/json"]["example"]["code"] == "UNAUTHORIZED"
    # The shared schema names no code of its own: a 401 must not show NOT_FOUND.
    assert "NOT_FOUND" not in json.dumps(document["components"]["schemas"]["ErrorResponse"])


def test_descriptions_render_docstring_sections_as_markdown(document: dict[str, Any]) -> None:
    for where, operation in _operations(document):
        description = operation["description"]
        assert not re.search(r"^-{3,}$", description, re.MULTILINE), where
        assert "``" not in description, where
        assert "\n    " not in description, where
    login = dict(_operations(document))["POST /api/auth/login"]["description"]
    assert "**Returns**\n\n- `TokenPair`: `access_token`" in login
    assert "**Errors**\n\n- `401`: `INVALID_CREDENTIALS`: the same answer" in login


def test_readable_description_keeps_prose_and_lists_entries() -> None:
    text = (
        "Do a thing with ``x``.\n\nMore prose.\n\nReturns\n-------\nThing\n"
        "    The thing,\n    in two lines.\n\nRaises\n------\n404\n    ``NOT_FOUND``.\n"
        "409\n"
    )
    assert readable_description(text) == (
        "Do a thing with `x`.\n\nMore prose.\n\n**Returns**\n\n"
        "- `Thing`: The thing, in two lines.\n\n**Errors**\n\n"
        "- `404`: `NOT_FOUND`.\n- `409`:"
    )


def test_a_generated_typescript_client_type_checks(
    document: dict[str, Any], tmp_path: Path
) -> None:
    """openapi-typescript (the README's way) turns the document into types that tsc
    accepts, with operations under their readable ids."""
    generator = require_tool("openapi-typescript")
    tsc = require_tool("tsc")
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    subprocess.run(
        [generator, "openapi.json", "--output", "api.ts"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    # A front end's use of the types: the wrong key or field would not compile.
    (tmp_path / "use.ts").write_text(
        'import type { components, operations, paths } from "./api";\n'
        'type LoginAnswer = operations["auth-login"]["responses"][200]'
        '["content"]["application/json"];\n'
        'type Me = operations["users-read-me"]["responses"][200]'
        '["content"]["application/json"];\n'
        'type Failure = components["schemas"]["ErrorResponse"];\n'
        'type MePath = paths["/api/users/me"]["get"];\n'
        'export const failure: Failure = { detail: "no", code: "UNAUTHORIZED" };\n'
        "export function username(me: Me): string { return me.username; }\n"
        "export function isTokens(answer: LoginAnswer): boolean {\n"
        '  return "access_token" in answer;\n'
        "}\n"
        'export type MeAnswer = MePath["responses"][200];\n'
    )
    result = _type_check(tsc, tmp_path, "use.ts")
    assert result.returncode == 0, result.stdout + result.stderr
    # The check has teeth: a field the API does not answer is refused.
    (tmp_path / "wrong.ts").write_text(
        'import type { operations } from "./api";\n'
        'type Me = operations["users-read-me"]["responses"][200]'
        '["content"]["application/json"];\n'
        "export function nope(me: Me): string { return me.no_such_field; }\n"
    )
    wrong = _type_check(tsc, tmp_path, "wrong.ts")
    assert wrong.returncode != 0
    assert "no_such_field" in wrong.stdout


def _type_check(tsc: str, where: Path, source: str) -> subprocess.CompletedProcess[str]:
    """``tsc --noEmit`` in strict mode on ``api.ts`` and ``source``."""
    options = ["--noEmit", "--strict", "--target", "es2020", "--module", "esnext"]
    return subprocess.run(
        [tsc, *options, "--moduleResolution", "bundler", "api.ts", source],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
