"""moto's S3-compatible server on a listening socket handed over by file descriptor.

The tests start it as a subprocess (``python -m app.test.s3_server FD``, see the
``s3_server`` fixture in conftest) on a socket they bound and made listen on a free
loopback port, so there is no race for the port. It speaks the S3 REST API over real
HTTP; the service under test reaches it through aiobotocore like any other S3 store.
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server


def main() -> None:
    fd = int(sys.argv[1])
    application = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1",
        0,
        application,
        threaded=True,
        request_handler=MotoRequestHandler,
        fd=fd,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
