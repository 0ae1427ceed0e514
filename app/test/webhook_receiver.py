"""A webhook receiver for tests: a real HTTP server on a loopback port, in a thread.

Its port is reserved from the start (a bound socket), so a test can leave the
receiver down (connections refused) and bring it up later at the same URL. It keeps
every request it answered, can answer with any status, or hold its answers until
released (a slow receiver).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        """The body, parsed."""
        return json.loads(self.body)

    @property
    def message_id(self) -> str:
        """The ``webhook-id`` header."""
        return self.headers["webhook-id"]


class WebhookReceiver:
    """Receives POSTs at :attr:`url`; down until :meth:`start`."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))  # bound, not listening: connections refused
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status_code = 204
        self.answer_body = b""
        self.received: list[Received] = []
        #: Requests that arrived, answered or not (a held one counts at once).
        self.arrived = 0
        self._release: threading.Event | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start answering (at the URL it had while down)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.arrived += 1
                    release = receiver._release
                if release is not None:
                    release.wait(30)
                with receiver._lock:
                    receiver.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status, answer = receiver.status_code, receiver.answer_body
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._socket
        server.daemon_threads = True
        server.server_activate()  # listen()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering and free the port."""
        if self._release is not None:
            self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        else:
            self._socket.close()

    def hold(self) -> None:
        """Hold every answer from now on until :meth:`release` (a slow receiver)."""
        self._release = threading.Event()

    def release(self) -> None:
        """Answer the held requests, and the next ones at once."""
        release, self._release = self._release, None
        if release is not None:
            release.set()

    def counts(self) -> Counter[str]:
        """How many times each ``webhook-id`` was received."""
        with self._lock:
            return Counter(item.message_id for item in self.received)

    def payloads(self) -> list[dict[str, Any]]:
        """The bodies received, in order of arrival."""
        with self._lock:
            return [item.payload for item in self.received]

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """Block until ``count`` requests were answered (raise after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.received)} webhooks received, {count} expected")

    async def until(self, count: int, timeout: float = 30) -> list[Received]:
        """:meth:`wait_for` for async tests: the app's worker runs on the same loop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.received)} webhooks received, {count} expected")
