"""Serve the example web app on its own origin (standard library only).

    python3 examples/web-app/serve.py --port 5173 --api http://localhost:8000/api

Any path that is not a file gets index.html, as a single-page app's host would do, so
the mailed links (``/verify-email?token=...``) open the app; ``/config.js`` tells the
app where the API answers.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent


class WebAppHandler(SimpleHTTPRequestHandler):
    """Serves this directory, with index.html for unknown paths and a generated
    ``/config.js``."""

    api = "http://localhost:8000/api"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/config.js":
            body = f"window.USERMANAGER_API = {json.dumps(self.api)};\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        if path.endswith("/") or not (HERE / path.lstrip("/")).is_file():
            self.path = "/index.html"
        super().do_GET()


def handler_for(api: str) -> partial[WebAppHandler]:
    """A request handler class serving the app, pointed at ``api``."""
    bound = type("BoundWebAppHandler", (WebAppHandler,), {"api": api.rstrip("/")})
    return partial(bound, directory=str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=5173)
    parser.add_argument("--api", default="http://localhost:8000/api")
    arguments = parser.parse_args()
    server = ThreadingHTTPServer((arguments.host, arguments.port), handler_for(arguments.api))
    print(f"Example web app on http://{arguments.host}:{arguments.port}/ using {arguments.api}")
    server.serve_forever()


if __name__ == "__main__":
    main()
