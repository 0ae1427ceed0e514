"""Logging: request ids, std-logging interception, file sink, redaction."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from loguru import logger

from app.core.logging import log_file_path, redact, setup_logging
from app.test.conftest import make_settings
from app.test.server import ROOT, LiveServer, listening_socket, wait_ready


async def test_request_id_is_echoed_and_logged(
    client: httpx.AsyncClient, captured_logs: list[str]
) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    assert any("| trace-42 |" in line and "GET /health -> 200" in line for line in captured_logs)


async def test_unusable_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    generated = response.headers["X-Request-ID"]
    assert generated != "bad id\twith spaces"
    assert len(generated) == 32


async def test_each_request_gets_its_own_id(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/health")).headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3


async def test_access_log_leaves_out_the_query_string(
    client: httpx.AsyncClient, captured_logs: list[str]
) -> None:
    await client.get("/health?token=abcdef123456")
    assert any("GET /health -> 200" in line for line in captured_logs)
    assert not any("abcdef123456" in line for line in captured_logs)


def test_std_logging_goes_through_loguru(tmp_path: Path, captured_logs: list[str]) -> None:
    setup_logging(make_settings(tmp_path))
    logging.getLogger("uvicorn.error").warning("from uvicorn %s", "side")
    assert any("WARNING" in line and "from uvicorn side" in line for line in captured_logs)


@pytest.mark.parametrize(
    "secret_text",
    [
        "Authorization: Bearer abc.def.ghi",
        "password=hunter2",
        '{"refresh_token": "r3fr3sh"}',
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "$2b$12$" + "A" * 53,
    ],
)
def test_secrets_are_redacted(secret_text: str, captured_logs: list[str]) -> None:
    logger.info("about to leak: {}", secret_text)
    line = captured_logs[-1]
    assert "[REDACTED]" in line
    for part in ("hunter2", "r3fr3sh", "c2lnbmF0dXJl", "A" * 53, "def.ghi"):
        assert part not in line


def test_ordinary_text_is_not_redacted() -> None:
    text = "GET /api/users/me -> 200 status_code=200 user=alice"
    assert redact(text) == text


def test_file_sink_writes_to_data_dir(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        LOG_FILE_ENABLED=True,
        LOG_FILE_LEVEL="WARNING",
        LOG_FILE_ROTATION="100 MB",
        LOG_FILE_RETENTION="2",
    )
    setup_logging(settings)
    logger.info("not at file level")
    logger.warning("at file level")
    logger.complete()
    setup_logging(make_settings(tmp_path))  # closes the file sink
    content = log_file_path(settings).read_text()
    assert "at file level" in content
    assert "not at file level" not in content


@pytest.mark.parametrize("rotation", ["24", "'100 MB'", "1 week"])
def test_rotation_and_retention_values_are_accepted(tmp_path: Path, rotation: str) -> None:
    settings = make_settings(
        tmp_path, LOG_FILE_ENABLED=True, LOG_FILE_ROTATION=rotation, LOG_FILE_RETENTION="'24h'"
    )
    setup_logging(settings)
    logger.warning("rotating")
    logger.complete()
    setup_logging(make_settings(tmp_path))
    assert log_file_path(settings).exists()


def test_make_runs_command_logs_through_us(tmp_path: Path) -> None:
    """scripts/serve.sh (`make run` and the image) keeps our access log, not uvicorn's."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    sock.close()
    log_path = tmp_path / "run.log"
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["sh", "scripts/serve.sh"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        wait_ready(server)
        httpx.get(f"{server.url}/health?token=query-secret-123", timeout=5)
        time.sleep(0.3)
    finally:
        server.stop()
    output = server.output
    assert "GET /health -> 200" in output
    assert "query-secret-123" not in output
