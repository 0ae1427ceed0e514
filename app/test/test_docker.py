"""Docker: both Dockerfiles pass hadolint, the compose file is valid and has the shape
documented (named data volume, a dev profile wired to Mailpit), the image starts like
`make run` and its health check asks the port in use."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from app.core.config import JWT_SECRET_FILE, Settings
from app.test.server import ROOT, LiveServer, listening_socket, wait_ready

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


# The compose file's shape, read as Docker Compose reads it (YAML with merge keys) ------


@pytest.fixture(scope="module")
def compose() -> dict:
    return YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())


def test_data_is_a_named_volume_the_image_user_can_write(compose: dict) -> None:
    """A named volume starts as a copy of the image's /data, owned by uid 10001; a bind
    mount would be created by Docker as root and refused by the service."""
    assert "data:/data" in compose["services"]["app"]["volumes"]
    assert "data-dev:/data" in compose["services"]["app-dev"]["volumes"]
    assert {"data", "data-dev"} <= set(compose["volumes"])
    assert "chown 10001:10001 /data" in (ROOT / "Dockerfile").read_text()


def test_without_a_front_end_mails_link_to_the_service(compose: dict) -> None:
    """FRONTEND_URL left unset means no front end: the mailed links open the service's
    own pages instead of a page nothing serves."""
    for name in ("app", "app-dev"):
        environment = compose["services"][name]["environment"]
        assert environment["FRONTEND_URL"] == "${FRONTEND_URL-}", name
        assert environment["CORS_ORIGINS"] == "${CORS_ORIGINS-}", name


def test_development_services_only_in_the_dev_profile(compose: dict) -> None:
    services = compose["services"]
    for name in ("app", "db", "redis"):
        assert "profiles" not in services[name], name
    for name in ("app-dev", "adminer", "mailpit"):
        assert services[name]["profiles"] == ["dev"], name


def test_the_dev_instance_mails_to_mailpit(compose: dict) -> None:
    services = compose["services"]
    dev, app = services["app-dev"], services["app"]
    env = dev["environment"]
    assert env["EMAIL_METHOD"] == "smtp"
    assert env["SMTP_HOST"] == "mailpit"
    assert env["SMTP_PORT"] == "1025"  # Mailpit's SMTP port
    assert env["SMTP_TLS"] == "False"  # Mailpit offers no STARTTLS by default
    assert env["SMTP_SENDER_EMAIL"]
    assert "mailpit" in dev["depends_on"]
    # Everything else is the production instance's (the YAML merge key worked)...
    own = ("SMTP_", "EMAIL_", "ENVIRONMENT", "BASE_URL", "JWT_", "POSTGRES_", "REDIS_")
    for name, value in app["environment"].items():
        if not name.startswith(own):
            assert env[name] == value, name
    # Its own port, inside and out, and links that point at it.
    assert env["PORT"] == "8080"
    assert dev["ports"] == ["8080:8080"]
    assert env["BASE_URL"] == "http://localhost:8080"
    assert env["ENVIRONMENT"] != "production"
    assert app["environment"]["ENVIRONMENT"] == "production"


def _healthcheck_command() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^HEALTHCHECK [^\n]*\\\n\s+CMD (\[.*\])$", text, flags=re.MULTILINE)
    assert found, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    command = json.loads(found.group(1))
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_healthcheck_asks_the_port_in_use(tmp_path: Path) -> None:
    """The image's HEALTHCHECK, run as Docker would, against a server on another PORT."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **{k: v for k, v in os.environ.items() if k not in Settings.model_fields},
        "DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", "scripts/serve.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        wait_ready(server)
        check = _healthcheck_command()
        healthy = subprocess.run(check, env=env, capture_output=True, timeout=30, check=False)
        assert healthy.returncode == 0, healthy.stderr
        elsewhere = {**env, "PORT": str(listening_socket_port_closed())}
        unhealthy = subprocess.run(check, env=elsewhere, capture_output=True, timeout=30)
        assert unhealthy.returncode != 0
    finally:
        server.stop()


def listening_socket_port_closed() -> int:
    """A port nothing listens on (taken, then released)."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_the_dev_instance_shares_no_accounts_with_production(compose: dict, tmp_path: Path) -> None:
    """The dev instance's settings, as the service reads them: its own SQLite database
    and JWT secret in its own volume, no Redis, so a token or an account made while
    trying things out means nothing to the production instance."""
    environment = compose["services"]["app-dev"]["environment"]
    isolating = ("JWT_SECRET_KEY", "POSTGRES_SERVER", "POSTGRES_USER", "POSTGRES_PASSWORD")
    assert all("${" not in environment[name] for name in (*isolating, "REDIS_URL"))
    # What the operator's shell fills in (${...}) is left at its default here.
    values: dict[str, Any] = {
        name: str(value) for name, value in environment.items() if "${" not in str(value)
    }
    settings = Settings(_env_file=None, **{**values, "DATA_DIR": tmp_path})
    assert settings.database_url.startswith("sqlite")
    assert str(tmp_path) in settings.database_url
    assert settings.REDIS_URL is None
    assert (tmp_path / JWT_SECRET_FILE).exists()  # generated in its own volume
    assert len(settings.JWT_SECRET_KEY) >= 32
    assert set(compose["services"]["app-dev"]["depends_on"]) == {"mailpit"}
