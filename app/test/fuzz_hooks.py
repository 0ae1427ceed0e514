"""Schemathesis hooks for test_fuzz.py, loaded through SCHEMATHESIS_HOOKS.

A fuzzer cannot invent what only the account knows (its password, its UUID, its
files and sessions, a live refresh token, a real image), so without help many
requests stop at a 4xx before the code worth testing. These hooks fill that in on
every other valid request of an operation, and leave the rest as generated (a request
generated to break the schema is never touched):

- The run's account signs in, re-authenticates its session (sensitive changes need
  it), and signs in again whenever a request gets a 401: a fuzzed logout, session
  revocation, sign-out or password change ends the session, and the run carries on.
- A changed password is followed, and a request that would delete, ban or demote
  the run's own account aims at one that does not exist: the credentials stay
  usable until the end. (Deletions still succeed: on spare accounts signed up for
  them.)
- The OpenID Connect provider is driven as a client application would drive it: the
  hooks register a confidential client (as the admin), sign the run's account in
  to the provider (``POST /oauth2/session``), authorize with PKCE and consent, and
  hand the fuzzed token, introspection, revocation and userinfo requests a real
  code or real tokens; the browser pages get a valid authorization or logout
  request and the provider's sign-in cookie. A request about a client application
  aims at a new one (or, for a connected app, at one the account allowed).
- A webhook endpoint the fuzzer registers or changes points at ``webhook_url``, a
  loopback port where nothing listens, whatever URL was generated: the service's
  deliveries must never leave the machine. (The URL of a request generated to break
  the schema is replaced too when it fits the schema: the break is elsewhere.)
- Every request's operation, status and phase is written to the record file (and
  each sign-in, as phase ``auth``), which the test reads to check what was fuzzed
  and what succeeded.

The run's facts come from the JSON file named by FUZZ_CONTEXT: ``url``, ``record``,
``username``, ``password``, ``uuid`` (its account), ``other_uuid`` (another account),
``provider`` (a configured OAuth provider), ``admin_username`` and ``admin_password``
(the admin that registers client applications; the run's own account in the admin
run, whose password the run follows), ``webhook_url`` (see above).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import schemathesis
from PIL import Image

CONTEXT: dict[str, Any] = json.loads(Path(os.environ["FUZZ_CONTEXT"]).read_text())
RECORD = Path(CONTEXT["record"])
#: The docs pages' session cookie (app.routers.docs_pages.DOCS_COOKIE).
DOCS_COOKIE = "user_manager_docs"
#: The OpenID Connect provider's sign-in cookie (app.routers.oidc.SSO_COOKIE).
SSO_COOKIE = "user_manager_sso"
#: Operations that only the service's own pages may call (they check ``Origin``).
SAME_ORIGIN = {
    "POST /interactive-docs",
    "POST /docs/token",
    "POST /oauth2/authorize",
    "POST /oauth2/session",
    "POST /oauth2/logout",
}
#: Where the fuzzed client applications send their users back.
REDIRECT_URI = "https://rp.example/callback"
LOGOUT_REDIRECT_URI = "https://rp.example/signed-out"
FORM = "application/x-www-form-urlencoded"
#: Where each operation takes the account's password.
PASSWORD_FIELDS = {
    "POST /api/auth/otp/setup": "password",
    "POST /api/auth/otp/disable": "password",
    "POST /api/auth/otp/recovery-codes": "password",
    "POST /api/auth/password/change": "current_password",
    "PATCH /api/users/me": "current_password",
    "PATCH /api/user/{uuid}": "current_password",
    "DELETE /api/user/{uuid}": "current_password",
    "POST /api/auth/passkeys/register/begin": "password",
}
#: Operations that would delete, ban or demote the run's own account: nothing could be
#: tested after them.
ACCOUNT_ENDING = {"DELETE /api/user/{uuid}", "PATCH /api/admin/user/{uuid}"}

#: The OpenID Connect provider's endpoints for client applications.
PROVIDER_CLIENT_OPERATIONS = {
    "POST /oauth2/token",
    "POST /oauth2/introspect",
    "POST /oauth2/revoke",
    "GET /oauth2/userinfo",
    "POST /oauth2/userinfo",
}
#: Operations whose body describes a client application.
CLIENT_APPLICATION_BODIES = {
    "POST /api/admin/oidc-clients",
    "PATCH /api/admin/oidc-clients/{client_id}",
}
#: Its browser pages.
PROVIDER_PAGES = {"/oauth2/authorize", "/oauth2/signin", "/oauth2/session", "/oauth2/logout"}

#: Operations whose body names a webhook receiver's URL.
WEBHOOK_URL_BODIES = {"POST /api/admin/webhooks", "PATCH /api/admin/webhooks/{webhook_id}"}
#: The schema's longest webhook URL.
WEBHOOK_URL_MAX_LENGTH = 2048

_CALLS: Counter[str] = Counter()
_WEBHOOK: list[str] = []


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


def _client() -> httpx.Client:
    return httpx.Client(base_url=CONTEXT["url"], timeout=30)


def _sign_in(http: httpx.Client) -> dict[str, Any]:
    response = http.post(
        "/api/auth/login",
        data={"username": CONTEXT["username"], "password": CONTEXT["password"]},
    )
    response.raise_for_status()
    return response.json()


def _spare_account() -> str:
    """A new account's UUID, for a deletion to succeed on."""
    name = f"spare_{uuid.uuid4().hex[:12]}"
    with _client() as http:
        response = http.post(
            "/api/auth/signup",
            json={
                "username": name,
                "email": f"{name}@example.com",
                "password": CONTEXT["password"],
            },
        )
    response.raise_for_status()
    return response.json()["uuid"]


def _own_file() -> int:
    """A new file of the account's, for a request about a file to succeed on."""
    with _client() as http:
        token = _sign_in(http)["access_token"]
        response = http.post(
            "/api/file",
            files={"file": ("fuzz.txt", b"fuzz", "text/plain")},
            headers={"Authorization": f"Bearer {token}"},
        )
    response.raise_for_status()
    return response.json()["id"]


def _own_session() -> str:
    """The id of a new session of the account's (not the one the run uses)."""
    with _client() as http:
        token = _sign_in(http)["access_token"]
        response = http.get(
            "/api/auth/token/validate", headers={"Authorization": f"Bearer {token}"}
        )
    response.raise_for_status()
    return response.json()["session_id"]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _basic(client: dict[str, Any]) -> dict[str, str]:
    pair = f"{client['client_id']}:{client['client_secret']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def _admin_headers(*, again: bool = False) -> dict[str, str]:
    """The admin's credentials, for registering client applications (signed in once,
    again when refused)."""
    if again or not _ADMIN:
        admin = CONTEXT["admin_username"]
        own = CONTEXT["username"] == admin
        password = CONTEXT["password"] if own else CONTEXT["admin_password"]
        with _client() as http:
            login = http.post("/api/auth/login", data={"username": admin, "password": password})
        login.raise_for_status()
        _ADMIN.update(_bearer(login.json()["access_token"]))
    return _ADMIN


_ADMIN: dict[str, str] = {}


def _new_client_application() -> dict[str, Any]:
    """A new confidential client application, registered by the admin."""
    body = {
        "name": f"Fuzzed app {uuid.uuid4().hex[:8]}",
        "redirect_uris": [REDIRECT_URI],
        "post_logout_redirect_uris": [LOGOUT_REDIRECT_URI],
        "scopes": ["openid", "profile", "email", "roles"],
    }
    with _client() as http:
        response = http.post("/api/admin/oidc-clients", json=body, headers=_admin_headers())
        if response.status_code == 401:  # the fuzzer ended the admin's session
            response = http.post(
                "/api/admin/oidc-clients", json=body, headers=_admin_headers(again=True)
            )
    response.raise_for_status()
    return response.json()


#: The run's client application, and the one requests about a client aim at.
_RELYING_PARTY: dict[str, Any] = {}
_SPARE_CLIENT: dict[str, Any] = {}


def _relying_party(*, again: bool = False) -> dict[str, Any]:
    """The run's client application (registered anew when ``again``: the fuzzer may
    have deleted it, or rotated its secret)."""
    if again or not _RELYING_PARTY:
        _RELYING_PARTY.clear()
        _RELYING_PARTY.update(_new_client_application())
    return _RELYING_PARTY


def _authorization_request(client: dict[str, Any]) -> tuple[dict[str, str], str]:
    """A valid authorization request of ``client`` (PKCE), and its code verifier."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": REDIRECT_URI,
        "scope": "openid profile email roles",
        "state": secrets.token_urlsafe(8),
        "nonce": secrets.token_urlsafe(8),
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    return params, verifier


#: The browser of the run's account: it keeps the provider's sign-in cookie.
_BROWSER = _client()


def _authorization_code() -> tuple[dict[str, Any], str, str]:
    """The code flow as a browser goes through it: the run's account signs in to the
    provider (when its sign-in there ended), authorizes the client and consents (when
    asked). The client, a code and its verifier."""
    origin = {"Origin": CONTEXT["url"]}
    client = _relying_party()
    for _ in range(3):
        params, verifier = _authorization_request(client)
        answer = _BROWSER.get("/oauth2/authorize", params=params)
        if answer.status_code == 303:  # to the sign-in page
            token = _sign_in(_BROWSER)["access_token"]
            next_url = "/oauth2/authorize?" + urlencode(params)
            session = _BROWSER.post(
                "/oauth2/session", data={"token": token, "next": next_url}, headers=origin
            )
            assert session.status_code == 303, session.text
            answer = _BROWSER.get("/oauth2/authorize", params=params)
        if answer.status_code == 200:  # the consent page
            answer = _BROWSER.post(
                "/oauth2/authorize", data={**params, "decision": "allow"}, headers=origin
            )
        query = parse_qs(urlsplit(answer.headers.get("location", "")).query)
        if answer.status_code == 302 and "code" in query:
            return client, query["code"][0], verifier
        if answer.status_code == 400:  # the fuzzer deleted the client or changed it
            client = _relying_party(again=True)
    raise AssertionError(f"the code flow failed: {answer.status_code} {answer.text[:300]}")


def _client_tokens() -> tuple[dict[str, Any], dict[str, Any]]:
    """The client and the tokens a code exchange gave it."""
    for _ in range(2):
        client, code, verifier = _authorization_code()
        response = _BROWSER.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier,
            },
            headers=_basic(client),
        )
        if response.status_code == 401:  # the secret was rotated meanwhile
            _relying_party(again=True)
            continue
        response.raise_for_status()
        return client, response.json()
    raise AssertionError(f"the code exchange failed: {response.text[:300]}")


#: The tokens userinfo requests present, until one is refused.
_USERINFO_TOKENS: dict[str, Any] = {}


def _userinfo_token() -> str:
    if not _USERINFO_TOKENS:
        _USERINFO_TOKENS.update(_client_tokens()[1])
    return _USERINFO_TOKENS["access_token"]


def _fill_provider_request(case: Any, label: str, turn: int) -> None:
    """Fill a request to the OpenID Connect provider's client endpoints."""
    if label in ("GET /oauth2/userinfo", "POST /oauth2/userinfo"):
        case.headers = {**(case.headers or {}), **_bearer(_userinfo_token())}
        return
    if label == "POST /oauth2/token" and turn % 4 == 1:
        client, code, verifier = _authorization_code()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }
    else:
        client, tokens = _client_tokens()
        if label == "POST /oauth2/token":
            form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        else:  # introspection, revocation: of an access token or of a refresh token
            kind = "access_token" if turn % 4 == 1 else "refresh_token"
            form = {"token": tokens[kind], "token_type_hint": kind}
    if turn % 8 < 4:
        case.headers = {**(case.headers or {}), **_basic(client)}
    else:  # client_secret_post
        form = {**form, "client_id": client["client_id"], "client_secret": client["client_secret"]}
        headers = case.headers or {}
        case.headers = {key: headers[key] for key in headers if key.lower() != "authorization"}
    case.body = form
    case.media_type = FORM


def _fill_provider_page(case: Any, label: str, token: str | None) -> None:
    """Fill a request to the provider's browser pages: a valid authorization or
    logout request, and the sign-in cookie of the run's account."""
    client = _relying_party()
    params, _ = _authorization_request(client)
    if label == "GET /oauth2/signin":
        case.query = {"next": "/oauth2/authorize?" + urlencode(params)}
    elif label == "POST /oauth2/session" and token is not None:
        case.body = {"token": token, "next": "/oauth2/authorize?" + urlencode(params)}
    elif label == "GET /oauth2/authorize":
        case.query = params
    elif label == "POST /oauth2/authorize" and isinstance(case.body, dict):
        case.body = {**params, **case.body}
    elif label in ("GET /oauth2/logout", "POST /oauth2/logout"):
        case.query = {
            "client_id": client["client_id"],
            "post_logout_redirect_uri": LOGOUT_REDIRECT_URI,
            "state": secrets.token_urlsafe(8),
        }
        if label == "POST /oauth2/logout":
            # Signing out ends the sign-in: one of its own, not the run's.
            with _client() as http:
                token = _sign_in(http)["access_token"]
    if token is not None and label != "POST /oauth2/session":
        case.cookies = {**(case.cookies or {}), SSO_COOKIE: token}


def _client_id(label: str) -> str:
    """The client application a request about one aims at."""
    if label == "DELETE /api/users/me/connected-apps/{client_id}":
        client, _, _ = _authorization_code()  # allowed by the run's account
        return client["client_id"]
    if label == "DELETE /api/admin/oidc-clients/{client_id}":
        return _new_client_application()["client_id"]
    if not _SPARE_CLIENT:
        _SPARE_CLIENT.update(_new_client_application())
    return _SPARE_CLIENT["client_id"]


def _signed_in(http: httpx.Client) -> dict[str, str]:
    return _bearer(_sign_in(http)["access_token"])


def _own_webhook() -> str:
    """An endpoint registered by the account (an admin's run), kept while it exists and
    is enabled, receiving its sign-ins (so that it has deliveries); another id when the
    account may not register one."""
    with _client() as http:
        headers = _signed_in(http)
        if _WEBHOOK:
            kept = http.get(f"/api/admin/webhooks/{_WEBHOOK[0]}", headers=headers)
            if kept.is_success and kept.json()["enabled"]:
                return _WEBHOOK[0]
        response = http.post(
            "/api/admin/webhooks",
            json={"url": CONTEXT["webhook_url"], "event_types": ["session.created"]},
            headers=headers,
        )
    if response.status_code != 201:
        return str(uuid.uuid4())
    _WEBHOOK[:] = [response.json()["id"]]
    return _WEBHOOK[0]


def _own_delivery(webhook_id: str) -> int:
    """A delivery to that endpoint: the worker makes one from a sign-in within a poll
    period or two (1 when none comes, or the account may not read them)."""
    path = f"/api/admin/webhooks/{webhook_id}/deliveries"
    with _client() as http:
        for _ in range(10):
            response = http.get(path, headers=_signed_in(http))
            if not response.is_success:
                return 1
            if response.json()["items"]:
                return response.json()["items"][0]["id"]
            time.sleep(0.3)
    return 1


def _target(label: str, turn: int) -> str:
    """The account a request about some account aims at."""
    if label == "DELETE /api/user/{uuid}":
        return _spare_account()
    if label in ACCOUNT_ENDING or turn % 4 == 3:
        return CONTEXT["other_uuid"]
    return CONTEXT["uuid"]


@schemathesis.hook
def before_call(_context: Any, case: Any, _kwargs: dict[str, Any]) -> None:
    """Fill in what the account knows, on every other valid request of each operation."""
    label = case.operation.label
    if case.method.upper() != case.operation.method.upper():
        return  # a probe of an undeclared method: nothing to fill in
    path = case.path_parameters or {}
    if label in WEBHOOK_URL_BODIES and isinstance(case.body, dict):
        url = case.body.get("url")
        if isinstance(url, str) and 1 <= len(url) <= WEBHOOK_URL_MAX_LENGTH:
            case.body = {**case.body, "url": CONTEXT["webhook_url"]}
    if label in ACCOUNT_ENDING and path.get("uuid") == CONTEXT["uuid"]:
        # At an account that does not exist: a 404, which no check mistakes for a
        # deletion (another account, deleted, would be one the fuzzer did not mean).
        case.path_parameters = {**path, "uuid": str(uuid.uuid4())}
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        # A request generated to break the schema stays as it is: filled in, the
        # fuzzer would still expect it refused.
        return
    _CALLS[label] += 1
    turn = _CALLS[label]
    if turn % 2 == 0:
        return
    # The stateful phase fills path parameters from earlier answers (a file's id from
    # its upload, then its deletion, then a read that must be a 404): left as they are.
    linked = case.meta is not None and case.meta.phase.name.value == "stateful"
    if "uuid" in path and not linked:
        case.path_parameters = {**case.path_parameters, "uuid": _target(label, turn)}
    if "file_id" in path and not linked:
        case.path_parameters = {**case.path_parameters, "file_id": _own_file()}
    if "session_id" in path and not linked:
        case.path_parameters = {**case.path_parameters, "session_id": _own_session()}
    if "client_id" in path and not linked:
        case.path_parameters = {**case.path_parameters, "client_id": _client_id(label)}
    if "webhook_id" in path and not linked:
        case.path_parameters = {**case.path_parameters, "webhook_id": _own_webhook()}
    if "delivery_id" in path and not linked:
        delivery = _own_delivery(case.path_parameters["webhook_id"])
        case.path_parameters = {**case.path_parameters, "delivery_id": delivery}
    if "provider" in path:
        case.path_parameters = {**case.path_parameters, "provider": CONTEXT["provider"]}
    if label in SAME_ORIGIN:
        case.headers = {**(case.headers or {}), "Origin": CONTEXT["url"]}
    scheme, _, token = (case.headers or {}).get("Authorization", "").partition(" ")
    if label == "POST /interactive-docs" and scheme == "Bearer" and isinstance(case.body, dict):
        case.body = {**case.body, "token": token}  # what the sign-in page hands over
    if label in PROVIDER_CLIENT_OPERATIONS:
        _fill_provider_request(case, label, turn)
    elif case.operation.path in PROVIDER_PAGES:
        _fill_provider_page(case, label, token if scheme == "Bearer" else None)
    if label == "PUT /api/user/{uuid}/pfp":
        case.body = {"file": PNG}
    elif label == "POST /api/auth/login":
        case.body = {"username": CONTEXT["username"], "password": CONTEXT["password"]}
    elif label == "POST /api/auth/reauthenticate":
        case.body = {"password": CONTEXT["password"]}
    elif label == "POST /api/auth/refresh":
        # A session of its own: refreshing it leaves the run's session alone.
        with _client() as http:
            case.body = {"refresh_token": _sign_in(http)["refresh_token"]}
    elif label in CLIENT_APPLICATION_BODIES and isinstance(case.body, dict):
        # Redirect URIs must be exact https ones (or a native app's scheme): the
        # fuzzer's strings are not.
        uris = {"redirect_uris": [REDIRECT_URI], "post_logout_redirect_uris": [LOGOUT_REDIRECT_URI]}
        if label.startswith("PATCH"):
            uris = {key: value for key, value in uris.items() if key in case.body}
        case.body = {**case.body, **uris}
    elif label == "POST /api/auth/otp/setup":
        # Email is off on the fuzzed server: an authenticator is the method that works.
        case.body = {"method": "authenticator", "password": CONTEXT["password"]}
    elif label in PASSWORD_FIELDS and isinstance(case.body, dict):
        case.body = {**case.body, PASSWORD_FIELDS[label]: CONTEXT["password"]}


@schemathesis.hook
def after_call(_context: Any, case: Any, response: Any) -> None:
    """Record the answer; follow a password change."""
    phase = case.meta.phase.name.value if case.meta is not None else "unknown"
    with RECORD.open("a", encoding="utf-8") as record:
        record.write(json.dumps([case.operation.label, response.status_code, phase]) + "\n")
    if case.operation.label.endswith(" /oauth2/userinfo") and response.status_code == 401:
        _USERINFO_TOKENS.clear()  # its grant ended (a revocation, a sign-out): new ones
    if (
        case.operation.label == "POST /api/auth/password/change"
        and 200 <= response.status_code < 300
        and isinstance(case.body, dict)
    ):
        CONTEXT["password"] = case.body["new_password"]


@schemathesis.auth()  # refreshed after any 401 (schemathesis replays the request once)
class SignedIn:
    """Signs in and re-authenticates the session."""

    def get(self, _case: Any, _context: Any) -> str:
        with _client() as http:
            token = _sign_in(http)["access_token"]
            http.post(
                "/api/auth/reauthenticate",
                json={"password": CONTEXT["password"]},
                headers={"Authorization": f"Bearer {token}"},
            ).raise_for_status()
        with RECORD.open("a", encoding="utf-8") as record:
            record.write(json.dumps(["(sign-in)", 200, "auth"]) + "\n")
        return token

    def set(self, case: Any, data: str, _context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
        if case.operation.label in {"POST /docs/token", "GET /signout"}:
            # The docs pages' session travels in a cookie.
            case.cookies = {**(case.cookies or {}), DOCS_COOKIE: data}
