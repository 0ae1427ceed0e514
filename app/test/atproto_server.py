"""A local AT Protocol world on loopback: PLC directory, PDS, authorization server, and
a DNS server for ``_atproto`` TXT records.

The authorization server holds to the OAuth profile strictly, so that a sign-in that
gets through proves the client right: it refuses an authorization request that was
not pushed (PAR), a DPoP proof that is missing, badly signed, for another method or
URL, reused (``jti``), old, or without the current nonce (``use_dpop_nonce``, with a
``DPoP-Nonce`` header), a token request whose proof key is not the one of the pushed
request, a wrong PKCE verifier, a client assertion not signed by a key of the
client's JWKS (fetched from the client metadata document at the client id, and kept,
as real servers keep it). The PDS checks the DPoP-bound token (its key, ``ath``) and
has nonces of its own.

It runs on the test's event loop (:class:`AtprotoServer`): it fetches the client's
documents from the app under test, in-process, through ``fetch_client``.

Tests misbehave it on demand: ``iss_override``, ``sub_override``, ``deny``,
``wrong_challenge``, ``nonce_every_request``, ``refuse_proofs``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx
import uvicorn
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from app.test.server import listening_socket

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def new_did() -> str:
    """A random did:plc identifier."""
    return "did:plc:" + "".join(secrets.choice(_BASE32) for _ in range(24))


@dataclass
class AtprotoAccount:
    """An account on the fake PDS."""

    did: str
    handle: str
    display_name: str | None = None
    avatar: str | None = None
    #: The PDS its DID document names (None: this server).
    pds_url: str | None = None


@dataclass
class _Pushed:
    client_id: str
    redirect_uri: str
    state: str
    challenge: str
    scope: str
    login_hint: str
    jkt: str
    expires_at: float


@dataclass
class _Grant:
    account: AtprotoAccount
    client_id: str
    jkt: str
    scope: str


class Refused(Exception):
    def __init__(self, error: str, status_code: int = 400, *, nonce: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.status_code = status_code
        self.nonce = nonce


def _b64url_sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass
class FakeAtproto:
    """State of the fake world."""

    url: str = ""
    dns_port: int = 0
    accounts: dict[str, AtprotoAccount] = field(default_factory=dict)
    #: TXT records: handle -> DID (``_atproto.<handle>``).
    dns_records: dict[str, str] = field(default_factory=dict)
    #: The app under test, for the client's documents (set once the app is up).
    fetch_client: httpx.AsyncClient | None = None
    requests: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    as_nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    pds_nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    seen_jtis: set[str] = field(default_factory=set)
    pushed: dict[str, _Pushed] = field(default_factory=dict)
    codes: dict[str, tuple[_Pushed, AtprotoAccount]] = field(default_factory=dict)
    access_tokens: dict[str, _Grant] = field(default_factory=dict)
    refresh_tokens: dict[str, _Grant] = field(default_factory=dict)
    client_jwks: dict[str, KeySet] = field(default_factory=dict)
    # Misbehaviour on demand.
    iss_override: str | None = None
    sub_override: str | None = None
    deny: bool = False
    wrong_challenge: bool = False
    nonce_every_request: bool = False
    #: Refuse every DPoP proof with this reason ("htu", "htm", "jti", "signature").
    refuse_proofs: str | None = None

    # The world ----------------------------------------------------------------------

    def add_account(self, handle: str, **values: Any) -> AtprotoAccount:
        """A new account, its DID document published and its handle in DNS."""
        account = AtprotoAccount(did=new_did(), handle=handle, **values)
        self.accounts[account.did] = account
        self.dns_records[handle] = account.did
        return account

    def rotate_nonce(self) -> None:
        """A new authorization server nonce: proofs with the old one are refused."""
        self.as_nonce = secrets.token_urlsafe(12)

    @property
    def issuer(self) -> str:
        return self.url

    def settings(self) -> dict[str, object]:
        """Settings that send identity resolution and the OAuth flow here."""
        return {
            "BLUESKY_ENABLED": True,
            "BLUESKY_ALLOW_LOOPBACK": True,
            "BLUESKY_PLC_DIRECTORY_URL": f"{self.url}/plc",
            "BLUESKY_DNS_SERVERS": [f"127.0.0.1:{self.dns_port}"],
            "BASE_URL": "http://testserver",
        }

    # Identity -----------------------------------------------------------------------

    async def plc(self, request: Request) -> Response:
        did = request.path_params["did"]
        self.requests.append(f"plc {did}")
        account = self.accounts.get(did)
        if account is None:
            return JSONResponse({"message": "DID not registered"}, status_code=404)
        return JSONResponse(
            {
                "id": did,
                "alsoKnownAs": [f"at://{account.handle}"],
                "service": [
                    {
                        "id": "#atproto_pds",
                        "type": "AtprotoPersonalDataServer",
                        "serviceEndpoint": account.pds_url or self.url,
                    }
                ],
            }
        )

    async def well_known_did(self, request: Request) -> Response:
        handle = request.headers.get("host", "").split(":")[0]
        self.requests.append(f"well-known {handle}")
        did = self.dns_records.get(request.query_params.get("handle", handle))
        if did is None:
            return PlainTextResponse("not found", status_code=404)
        return PlainTextResponse(did)

    async def protected_resource(self, _request: Request) -> Response:
        self.requests.append("protected-resource")
        return JSONResponse({"resource": self.url, "authorization_servers": [self.issuer]})

    async def server_metadata(self, _request: Request) -> Response:
        self.requests.append("server-metadata")
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.url}/oauth/authorize",
                "token_endpoint": f"{self.url}/oauth/token",
                "pushed_authorization_request_endpoint": f"{self.url}/oauth/par",
                "require_pushed_authorization_requests": True,
                "authorization_response_iss_parameter_supported": True,
                "client_id_metadata_document_supported": True,
                "scopes_supported": ["atproto", "transition:generic"],
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
                "dpop_signing_alg_values_supported": ["ES256"],
            }
        )

    # Checks ---------------------------------------------------------------------------

    def _check_proof(
        self,
        request: Request,
        nonce: str,
        *,
        access_token: str | None = None,
    ) -> str:
        """The proof's key thumbprint, once the DPoP proof is right; else Refused."""
        proof = request.headers.get("DPoP")
        if not proof:
            raise Refused("invalid_dpop_proof")
        try:
            header = jws.extract_compact(proof.encode()).protected
            if header.get("typ") != "dpop+jwt" or header.get("alg") != "ES256":
                raise Refused("invalid_dpop_proof")
            key = ECKey.import_key(header["jwk"])
            if key.is_private:
                raise Refused("invalid_dpop_proof")
            claims = jwt.decode(proof, key, algorithms=["ES256"]).claims
        except (JoseError, KeyError, ValueError, TypeError):
            raise Refused("invalid_dpop_proof") from None
        url = f"{self.url}{request.url.path}"
        refuse = self.refuse_proofs
        if claims.get("htm") != request.method or refuse == "htm":
            raise Refused("invalid_dpop_proof")
        if claims.get("htu") != url or refuse == "htu":
            raise Refused("invalid_dpop_proof")
        if not isinstance(claims.get("iat"), int) or abs(time.time() - claims["iat"]) > 60:
            raise Refused("invalid_dpop_proof")
        jti = claims.get("jti")
        if not isinstance(jti, str) or jti in self.seen_jtis or refuse == "jti":
            raise Refused("invalid_dpop_proof")
        if refuse == "signature":
            raise Refused("invalid_dpop_proof")
        if access_token is not None and claims.get("ath") != _b64url_sha256(access_token):
            raise Refused("invalid_dpop_proof", 401)
        if claims.get("nonce") != nonce or self.nonce_every_request:
            if self.nonce_every_request:
                self.rotate_nonce()
            raise Refused("use_dpop_nonce", 401 if access_token else 400, nonce=True)
        self.seen_jtis.add(jti)
        return key.thumbprint()

    async def _client_keys(self, client_id: str) -> tuple[dict[str, Any], KeySet]:
        """The client's metadata and keys, fetched at the client id (keys kept)."""
        assert self.fetch_client is not None, "the app under test is not attached"
        metadata = (await self.fetch_client.get(client_id)).json()
        if metadata.get("client_id") != client_id:
            raise Refused("invalid_client")
        if client_id not in self.client_jwks:
            jwks = (await self.fetch_client.get(metadata["jwks_uri"])).json()
            self.client_jwks[client_id] = KeySet.import_key_set(jwks)
        return metadata, self.client_jwks[client_id]

    async def _check_client(self, form: Any) -> dict[str, Any]:
        client_id = str(form.get("client_id", ""))
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            raise Refused("invalid_client")
        metadata, keys = await self._client_keys(client_id)
        if metadata.get("token_endpoint_auth_method") != "private_key_jwt":
            raise Refused("invalid_client")
        try:
            assertion = jwt.decode(
                str(form.get("client_assertion", "")), keys, algorithms=["ES256"]
            )
        except (JoseError, ValueError):
            raise Refused("invalid_client") from None
        claims = assertion.claims
        ok = (
            claims.get("iss") == client_id
            and claims.get("sub") == client_id
            and claims.get("aud") == self.issuer
            and isinstance(claims.get("exp"), int)
            and claims["exp"] > time.time()
            and isinstance(claims.get("jti"), str)
            and claims["jti"] not in self.seen_jtis
        )
        if not ok:
            raise Refused("invalid_client")
        self.seen_jtis.add(claims["jti"])
        return metadata

    def _refusal(self, refused: Refused, where: str) -> Response:
        self.refusals.append(f"{where} {refused.error}")
        headers = {"DPoP-Nonce": self.as_nonce} if refused.nonce else {}
        if refused.status_code == 401:
            headers = {
                "DPoP-Nonce": self.pds_nonce,
                "WWW-Authenticate": f'DPoP error="{refused.error}"',
            }
        return JSONResponse(
            {"error": refused.error}, status_code=refused.status_code, headers=headers
        )

    # Authorization server -----------------------------------------------------------

    async def par(self, request: Request) -> Response:
        self.requests.append("par")
        form = await request.form()
        try:
            jkt = self._check_proof(request, self.as_nonce)
            metadata = await self._check_client(form)
            if form.get("response_type") != "code":
                raise Refused("unsupported_response_type")
            if form.get("redirect_uri") not in metadata["redirect_uris"]:
                raise Refused("invalid_request")
            if form.get("code_challenge_method") != "S256" or not form.get("code_challenge"):
                raise Refused("invalid_request")
            scope = str(form.get("scope", ""))
            if "atproto" not in scope.split() or not set(scope.split()) <= set(
                metadata["scope"].split()
            ):
                raise Refused("invalid_scope")
        except Refused as refused:
            return self._refusal(refused, "par")
        request_uri = f"urn:ietf:params:oauth:request_uri:{secrets.token_urlsafe(16)}"
        challenge = str(form["code_challenge"])
        self.pushed[request_uri] = _Pushed(
            client_id=str(form["client_id"]),
            redirect_uri=str(form["redirect_uri"]),
            state=str(form.get("state", "")),
            challenge=_b64url_sha256("not the verifier") if self.wrong_challenge else challenge,
            scope=scope,
            login_hint=str(form.get("login_hint", "")),
            jkt=jkt,
            expires_at=time.time() + 60,
        )
        return JSONResponse(
            {"request_uri": request_uri, "expires_in": 60},
            status_code=201,
            headers={"DPoP-Nonce": self.as_nonce},
        )

    async def authorize(self, request: Request) -> Response:
        """The user consents at once (as whoever the login hint names)."""
        self.requests.append("authorize")
        params = request.query_params
        pushed = self.pushed.pop(params.get("request_uri", ""), None)
        if (
            pushed is None
            or pushed.client_id != params.get("client_id")
            or pushed.expires_at < time.time()
        ):
            self.refusals.append("authorize without a pushed request")
            return PlainTextResponse("authorization requests must be pushed", status_code=400)
        iss = self.iss_override or self.issuer
        if self.deny:
            query = urlencode({"error": "access_denied", "state": pushed.state, "iss": iss})
            return RedirectResponse(f"{pushed.redirect_uri}?{query}", status_code=302)
        hint = pushed.login_hint
        account = self.accounts.get(hint) or next(
            (account for account in self.accounts.values() if account.handle == hint), None
        )
        if account is None:
            return PlainTextResponse("no such account", status_code=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = (pushed, account)
        query = urlencode({"code": code, "state": pushed.state, "iss": iss})
        return RedirectResponse(f"{pushed.redirect_uri}?{query}", status_code=302)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        grant_type = form.get("grant_type")
        self.requests.append(f"token {grant_type}")
        try:
            jkt = self._check_proof(request, self.as_nonce)
            await self._check_client(form)
            if grant_type == "authorization_code":
                grant = self._code_grant(form, jkt)
            elif grant_type == "refresh_token":
                grant = self._refresh_grant(form, jkt)
            else:
                raise Refused("unsupported_grant_type")
        except Refused as refused:
            return self._refusal(refused, "token")
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access_tokens[access] = grant
        self.refresh_tokens[refresh] = grant
        body = {
            "access_token": access,
            "token_type": "DPoP",
            "expires_in": 3600,
            "refresh_token": refresh,
            "scope": grant.scope,
            "sub": self.sub_override or grant.account.did,
        }
        return JSONResponse(body, headers={"DPoP-Nonce": self.as_nonce})

    def _refresh_grant(self, form: Any, jkt: str) -> _Grant:
        """A refresh token works once, for its client, with the key it is bound to."""
        grant = self.refresh_tokens.pop(str(form.get("refresh_token", "")), None)
        if grant is None or grant.client_id != form.get("client_id"):
            raise Refused("invalid_grant")
        if grant.jkt != jkt:
            raise Refused("invalid_dpop_proof")
        return grant

    def _code_grant(self, form: Any, jkt: str) -> _Grant:
        found = self.codes.pop(str(form.get("code", "")), None)
        if found is None:
            raise Refused("invalid_grant")
        pushed, account = found
        if pushed.jkt != jkt:
            raise Refused("invalid_dpop_proof")
        if form.get("client_id") != pushed.client_id:
            raise Refused("invalid_grant")
        if form.get("redirect_uri") != pushed.redirect_uri:
            raise Refused("invalid_grant")
        verifier = str(form.get("code_verifier", ""))
        if not verifier or _b64url_sha256(verifier) != pushed.challenge:
            raise Refused("invalid_grant")
        return _Grant(account, pushed.client_id, jkt, pushed.scope)

    # PDS ------------------------------------------------------------------------------

    async def get_profile(self, request: Request) -> Response:
        self.requests.append("getProfile")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        grant = self.access_tokens.get(token) if scheme == "DPoP" else None
        try:
            if grant is None:
                raise Refused("invalid_token", 401)
            jkt = self._check_proof(request, self.pds_nonce, access_token=token)
            if jkt != grant.jkt:
                raise Refused("invalid_dpop_proof", 401)
        except Refused as refused:
            refused.status_code = 401
            return self._refusal(refused, "pds")
        account = self.accounts[request.query_params.get("actor", "")]
        return JSONResponse(
            {
                "did": account.did,
                "handle": account.handle,
                "displayName": account.display_name,
                "avatar": account.avatar,
            },
            headers={"DPoP-Nonce": self.pds_nonce},
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/plc/{did}", self.plc),
                Route("/.well-known/atproto-did", self.well_known_did),
                Route("/.well-known/oauth-protected-resource", self.protected_resource),
                Route("/.well-known/oauth-authorization-server", self.server_metadata),
                Route("/oauth/par", self.par, methods=["POST"]),
                Route("/oauth/authorize", self.authorize),
                Route("/oauth/token", self.token, methods=["POST"]),
                Route("/xrpc/app.bsky.actor.getProfile", self.get_profile),
            ]
        )


class _DnsProtocol(asyncio.DatagramProtocol):
    """Answers ``_atproto.<handle>`` TXT questions from the fake's records."""

    def __init__(self, fake: FakeAtproto) -> None:
        self.fake = fake
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".")
        handle = name.removeprefix("_atproto.")
        did = self.fake.dns_records.get(handle)
        self.fake.requests.append(f"dns {name}")
        if question.rdtype == dns.rdatatype.TXT and name.startswith("_atproto.") and did:
            response.answer.append(
                dns.rrset.from_text(question.name, 60, "IN", "TXT", f'"did={did}"')
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


class AtprotoServer:
    """Serves a :class:`FakeAtproto` (HTTP with uvicorn, and DNS over UDP) on the
    running event loop. Ports are taken when made, so settings can name them before
    the app under test exists."""

    def __init__(self) -> None:
        self.fake = FakeAtproto()
        self._sock = listening_socket()
        self.fake.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self.fake.dns_port = self._udp.getsockname()[1]
        config = uvicorn.Config(self.fake.app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self._dns: asyncio.DatagramTransport | None = None

    async def start(self, app_client: httpx.AsyncClient) -> FakeAtproto:
        self.fake.fetch_client = app_client
        loop = asyncio.get_running_loop()
        self._dns, _ = await loop.create_datagram_endpoint(
            lambda: _DnsProtocol(self.fake), sock=self._udp
        )
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self.fake

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        if self._dns is not None:
            self._dns.close()
        self._sock.close()
