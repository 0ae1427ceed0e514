"""Web origins (scheme, host, port), compared the way browsers compare them.

Three places ask "is this URL from that origin": the CORS list, the redirect targets of
provider logins, and the same-origin check of the sign-in form. They all use
:func:`url_origin`, so ``https://app.example.com`` and ``https://APP.example.com:443``
are one origin everywhere.
"""

from __future__ import annotations

from urllib.parse import urlsplit

Origin = tuple[str, str, int]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_origin(url: str) -> Origin | None:
    """(scheme, lower-cased host, port) of an http(s) URL, the port filled in from the
    scheme when absent; None for anything else (or a malformed port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme]


def serialize(origin: Origin) -> str:
    """The origin as a browser sends it in ``Origin``: the default port left out."""
    scheme, host, port = origin
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{scheme}://{host}" if port == _DEFAULT_PORTS[scheme] else f"{scheme}://{host}:{port}"
