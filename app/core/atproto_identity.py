"""AT Protocol identities: handle -> DID -> DID document -> PDS -> authorization server.

Every address here comes from strangers (a handle typed by anyone, a DID document, a
PDS's metadata), so every fetch goes through :func:`guarded_request`: https only, to
hosts whose every address is public, connected to the address that was checked (a
DNS answer that changes in between cannot point it inside the network), no
redirects, no proxy, a time limit and a size cap. ``BLUESKY_ALLOW_LOOPBACK`` (tests,
local development) also lets plain http reach loopback addresses, and nothing else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import httpx

from app.core.config import Settings, dns_server
from app.core.oauth_answers import (
    DID_MAX_CHARS,
    DID_PATTERN,
    AuthorizationServerMetadata,
    DidDocument,
    ProtectedResourceMetadata,
    ProviderAnswerInvalid,
    http_url,
    read_answer,
)

#: One request to an identity, PDS or authorization server must be over by then.
REQUEST_TIMEOUT_SECONDS = 5
#: Bodies larger than this are not read (DID documents and metadata are a few kB).
MAX_BODY_BYTES = 256 * 1024
#: A DNS lookup of ``_atproto.<handle>`` must be answered by then.
DNS_TIMEOUT_SECONDS = 3
#: A handle as AT Protocol defines it: a domain name of at least two labels.
HANDLE_PATTERN = re.compile(
    r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"
)
#: Top-level domains AT Protocol refuses in handles.
REFUSED_TLDS = {"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion"}
PDS_SERVICE_ID = "#atproto_pds"
PDS_SERVICE_TYPE = "AtprotoPersonalDataServer"


class UnsafeServer(ValueError):
    """A URL that must not be fetched: not https, or a host with a non-public address."""


class IdentityNotFound(LookupError):
    """The handle or DID does not lead to an account (nothing published, or a mismatch)."""


@dataclass(frozen=True)
class Answer:
    """A server's answer, read whole (within the cap)."""

    status_code: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or ProviderAnswerInvalid."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise ProviderAnswerInvalid("the answer is not JSON") from None


@dataclass(frozen=True)
class Identity:
    """Who is signing in and where their account lives."""

    did: str
    handle: str | None  # None when the document's handle does not point back at the DID
    pds_url: str
    server: AuthorizationServerMetadata


# Guarded requests ----------------------------------------------------------------------


def _allowed_addresses(host: str, port: int, *, allow_loopback: bool) -> tuple[list[str], bool]:
    """Resolve ``host``; its addresses when each is public (or loopback, when allowed),
    and whether they are all loopback."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise UnsafeServer(f"{host} does not resolve") from error
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    if not addresses:
        raise UnsafeServer(f"{host} does not resolve")
    for ip in addresses:
        public = ip.is_global and not ip.is_multicast
        if not public and not (allow_loopback and ip.is_loopback):
            raise UnsafeServer(f"{host} resolves to a non-public address")
    ordered = sorted(addresses, key=lambda ip: (ip.version, int(ip)))
    return [str(ip) for ip in ordered], all(ip.is_loopback for ip in addresses)


async def guarded_request(
    settings: Settings,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    data: dict[str, str] | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> Answer:
    """``method`` ``url``, only to a public host over https (see the module docstring).

    Raises UnsafeServer for a URL that must not be fetched, httpx.HTTPError when the
    server cannot be reached, is too slow or sends too much.
    """
    parts = urlsplit(url)
    allow_loopback = settings.BLUESKY_ALLOW_LOOPBACK
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username:
        raise UnsafeServer("only plain http(s) URLs are fetched")
    if parts.scheme == "http" and not allow_loopback:
        raise UnsafeServer("only https URLs are fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses, loopback = await asyncio.to_thread(
        _allowed_addresses, parts.hostname, port, allow_loopback=allow_loopback
    )
    if parts.scheme == "http" and not loopback:
        raise UnsafeServer("plain http is only used on loopback")
    target = httpx.URL(url)
    sent_headers = {
        "Host": target.netloc.decode("ascii"),
        "Accept-Encoding": "identity",
        "User-Agent": f"{settings.PROJECT_NAME} (AT Protocol OAuth client)",
        **(headers or {}),
    }
    address = addresses[0]
    async with (
        httpx.AsyncClient(
            timeout=REQUEST_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False
        ) as http,
        http.stream(
            method,
            target.copy_with(host=address),
            headers=sent_headers,
            data=data,
            extensions={"sni_hostname": target.raw_host.decode("ascii")},
        ) as response,
    ):
        if response.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise httpx.DecodingError("compressed body")
        chunks, size = [], 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > max_bytes:
                raise httpx.DecodingError(f"body over {max_bytes} bytes")
            chunks.append(chunk)
        return Answer(response.status_code, response.headers, b"".join(chunks))


async def _get_json(settings: Settings, url: str) -> Any:
    answer = await guarded_request(settings, "GET", url, headers={"Accept": "application/json"})
    if answer.status_code != 200:
        raise ProviderAnswerInvalid(f"{urlsplit(url).path} answered {answer.status_code}")
    return answer.json()


# Handles and DIDs ----------------------------------------------------------------------


def normal_handle(text: str) -> str | None:
    """``text`` as a handle (lower case, without a leading ``@``), or None."""
    handle = text.strip().removeprefix("@").lower()
    if len(handle) > 253 or not HANDLE_PATTERN.match(handle):
        return None
    if handle.rsplit(".", 1)[-1] in REFUSED_TLDS:
        return None
    return handle


def is_did(text: str) -> bool:
    """Whether ``text`` is a did:plc or did:web identifier."""
    return len(text) <= DID_MAX_CHARS and bool(DID_PATTERN.fullmatch(text))


async def _did_from_dns(settings: Settings, handle: str) -> str | None:
    resolver = dns.asyncresolver.Resolver(configure=not settings.BLUESKY_DNS_SERVERS)
    if settings.BLUESKY_DNS_SERVERS:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*dns_server(entry))
            for entry in settings.BLUESKY_DNS_SERVERS
        ]
    try:
        answer = await resolver.resolve(f"_atproto.{handle}", "TXT", lifetime=DNS_TIMEOUT_SECONDS)
    except dns.exception.DNSException:
        return None
    dids = set()
    for record in answer:
        text = b"".join(record.strings).decode("ascii", "replace")
        if text.startswith("did="):
            dids.add(text.removeprefix("did="))
    # Several different DIDs: the handle is ambiguous, and so not trusted.
    return dids.pop() if len(dids) == 1 else None


async def did_from_well_known(settings: Settings, url: str) -> str | None:
    """The DID an ``/.well-known/atproto-did`` answer names, or None."""
    try:
        answer = await guarded_request(settings, "GET", url, max_bytes=2048)
    except (UnsafeServer, httpx.HTTPError):
        return None
    if answer.status_code != 200:
        return None
    lines = answer.body.decode("ascii", "replace").strip().splitlines()
    did = lines[0].strip() if lines else ""
    return did if is_did(did) else None


async def resolve_handle(settings: Settings, handle: str) -> str:
    """The DID of ``handle``: its ``_atproto`` TXT record, else its HTTPS well-known."""
    did = await _did_from_dns(settings, handle)
    if did is None:
        did = await did_from_well_known(settings, f"https://{handle}/.well-known/atproto-did")
    if did is None or not is_did(did):
        raise IdentityNotFound("the handle names no DID")
    return did


def _did_document_url(settings: Settings, did: str) -> str:
    if did.startswith("did:plc:"):
        return f"{settings.BLUESKY_PLC_DIRECTORY_URL}/{quote(did)}"
    host = did.removeprefix("did:web:").replace("%3A", ":").replace("%3a", ":")
    # A port only for local development, where plain http is allowed too.
    scheme = "http" if ":" in host and settings.BLUESKY_ALLOW_LOOPBACK else "https"
    if ":" in host and scheme == "https":
        raise IdentityNotFound("did:web with a port is only for local development")
    return f"{scheme}://{host}/.well-known/did.json"


async def did_document(settings: Settings, did: str) -> DidDocument:
    """The DID's document, checked to be about that DID."""
    try:
        data = await _get_json(settings, _did_document_url(settings, did))
    except ProviderAnswerInvalid as error:
        raise IdentityNotFound(f"no DID document: {error}") from None
    document = read_answer(DidDocument, data, "DID document")
    if document.id != did:
        raise IdentityNotFound("the DID document is about another DID")
    return document


def _claimed_handle(document: DidDocument) -> str | None:
    for name in document.alsoKnownAs:
        if isinstance(name, str) and name.startswith("at://"):
            return normal_handle(name.removeprefix("at://"))
    return None


def _pds_url(document: DidDocument) -> str:
    for service in document.service:
        if service.id in (PDS_SERVICE_ID, f"{document.id}{PDS_SERVICE_ID}") and (
            service.type == PDS_SERVICE_TYPE
        ):
            try:
                return http_url(service.serviceEndpoint).rstrip("/")
            except ValueError:
                break
    raise ProviderAnswerInvalid("the DID document names no PDS")


def check_server_metadata(metadata: AuthorizationServerMetadata, issuer: str) -> None:
    """Refuse an authorization server that does not speak AT Protocol's OAuth profile."""
    needs = {
        "the issuer it was asked for": metadata.issuer == issuer,
        "pushed authorization requests": metadata.require_pushed_authorization_requests,
        "the iss parameter": metadata.authorization_response_iss_parameter_supported,
        "client metadata documents": metadata.client_id_metadata_document_supported,
        "the atproto scope": "atproto" in metadata.scopes_supported,
        "PKCE S256": "S256" in metadata.code_challenge_methods_supported,
        "private_key_jwt": "private_key_jwt" in metadata.token_endpoint_auth_methods_supported,
        "ES256 client assertions": "ES256"
        in metadata.token_endpoint_auth_signing_alg_values_supported,
        "ES256 DPoP proofs": "ES256" in metadata.dpop_signing_alg_values_supported,
    }
    missing = [need for need, met in needs.items() if not met]
    if missing:
        raise ProviderAnswerInvalid(f"authorization server metadata: no {', '.join(missing)}")


async def authorization_server(settings: Settings, issuer: str) -> AuthorizationServerMetadata:
    """The metadata of the authorization server ``issuer``, checked."""
    if urlsplit(issuer).path not in ("", "/"):
        raise ProviderAnswerInvalid("an issuer is an origin")
    issuer = issuer.rstrip("/")
    data = await _get_json(settings, f"{issuer}/.well-known/oauth-authorization-server")
    metadata = read_answer(AuthorizationServerMetadata, data, "authorization server metadata")
    check_server_metadata(metadata, issuer)
    return metadata


async def resolve_identity(settings: Settings, identifier: str) -> Identity:
    """Handle or DID -> DID, document, PDS and its authorization server.

    A handle must be named back by its DID's document (``alsoKnownAs``); a DID's
    handle is kept only when it resolves back to the DID. Raises IdentityNotFound,
    UnsafeServer, ProviderAnswerInvalid or httpx.HTTPError.
    """
    given_handle = None if is_did(identifier) else identifier
    did = identifier if given_handle is None else await resolve_handle(settings, identifier)
    document = await did_document(settings, did)
    handle = _claimed_handle(document)
    if given_handle is not None and handle != given_handle:
        raise IdentityNotFound("the DID document does not name this handle")
    if given_handle is None and handle is not None:
        try:
            handle = handle if await resolve_handle(settings, handle) == did else None
        except IdentityNotFound:
            handle = None
    pds_url = _pds_url(document)
    resource = read_answer(
        ProtectedResourceMetadata,
        await _get_json(settings, f"{pds_url}/.well-known/oauth-protected-resource"),
        "protected resource metadata",
    )
    server = await authorization_server(settings, resource.authorization_servers[0])
    return Identity(did=did, handle=handle, pds_url=pds_url, server=server)
