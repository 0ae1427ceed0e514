"""Serve the app from forked workers, for tests: ``python -m app.test.forked_workers FD...``.

The pre-fork model of gunicorn and the like: the parent imports the app once, then
each worker is an ``os.fork()`` of it serving one inherited listening socket (file
descriptor ``FD``). Nothing of ``multiprocessing`` marks such workers as children.
SIGTERM or SIGINT to the parent stops them all.
"""

from __future__ import annotations

import os
import signal
import sys

import uvicorn


def main(fds: list[int]) -> None:
    from app.main import app  # imported before forking, as a preloading server does

    workers = []
    for fd in fds:
        pid = os.fork()
        if pid == 0:
            config = uvicorn.Config(app, fd=fd, proxy_headers=False, log_level="info")
            uvicorn.Server(config).run()
            os._exit(0)
        workers.append(pid)

    def stop(_signum: int, _frame: object) -> None:
        for pid in workers:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in workers:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main([int(fd) for fd in sys.argv[1:]])
