"""Docker: both Dockerfiles pass hadolint, the compose file is valid, the image starts like
`make run`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.test.server import ROOT

BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (it is pinned in app/test/requirements.txt)")
    return path


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile_dev"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [
            _tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_and_make_run_start_the_service_the_same_way() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert 'CMD ["sh", "scripts/serve.sh"]' in dockerfile
    assert re.search(r"^run:.*\n\t.*sh scripts/serve\.sh", makefile, flags=re.MULTILINE)
    assert "FROM python:3.13-slim AS build" in dockerfile
    assert "USER 10001" in dockerfile
    assert 'VOLUME ["/data"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "/health" in dockerfile
    serve = (ROOT / "scripts" / "serve.sh").read_text()
    assert "fastapi run app/main.py" in serve
    assert '--workers "${WORKERS:-1}"' in serve
