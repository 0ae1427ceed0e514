"""Run the app in a real uvicorn process, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LiveServer:
    """A uvicorn process serving the app at ``url``; its output goes to ``log_path``."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def output(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (SIGTERM, then SIGKILL when it does not exit in time)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def listening_socket() -> socket.socket:
    """A socket bound to a free loopback port, handed to uvicorn (no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # uvicorn takes a socket passed by --fd for a Unix one, so asyncio leaves Nagle's
    # algorithm on for its connections: every response on a kept-alive connection
    # would wait 40 ms for the client's delayed ACK. Accepted sockets inherit this.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def spawn_server(
    env: dict[str, str],
    log_path: Path,
    extra_args: Sequence[str] = (),
    sock: socket.socket | None = None,
    host: str = "127.0.0.1",
) -> LiveServer:
    """Start uvicorn with ``env`` added to this process's environment (and uvicorn's
    ``extra_args``) on ``sock`` (from :func:`listening_socket`; a new one if not given,
    e.g. when ``env`` must name the port in ``BASE_URL``), known as ``host``; do not
    wait."""
    sock = sock or listening_socket()
    port = sock.getsockname()[1]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            # The same proxy-header stance as `make run`: the app reads X-Forwarded-For
            # itself, from FORWARDED_ALLOW_IPS only.
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--fd",
                str(sock.fileno()),
                "--no-proxy-headers",
                *extra_args,
            ],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    sock.close()
    return LiveServer(url=f"http://{host}:{port}", process=process, log_path=log_path)


def wait_ready(server: LiveServer, timeout: float = 60) -> None:
    """Wait until ``/health`` answers 200; raise with the server's output otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.output}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"server not ready after {timeout} s:\n{server.output}")


def start_server(
    env: dict[str, str],
    log_path: Path,
    extra_args: Sequence[str] = (),
    sock: socket.socket | None = None,
    host: str = "127.0.0.1",
) -> LiveServer:
    """Start uvicorn serving the app and wait until it answers."""
    server = spawn_server(env, log_path, extra_args, sock, host)
    wait_ready(server)
    return server


def start_forked_workers(env: dict[str, str], log_path: Path, count: int = 2) -> list[LiveServer]:
    """Serve the app from ``count`` workers forked from one parent that imported it
    (the pre-fork model of gunicorn and the like; see ``app/test/forked_workers.py``),
    each on a port of its own. Stopping any of them stops all."""
    sockets = [listening_socket() for _ in range(count)]
    fds = [str(sock.fileno()) for sock in sockets]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.test.forked_workers", *fds],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=[sock.fileno() for sock in sockets],
        )
    servers = []
    for sock in sockets:
        port = sock.getsockname()[1]
        sock.close()
        servers.append(LiveServer(f"http://127.0.0.1:{port}", process, log_path))
    for server in servers:
        wait_ready(server)
    return servers


def run_cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run ``python -m app.cli`` with ``env`` on top of this process's environment."""
    from app.core.config import Settings

    base = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**base, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
