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
- A webhook endpoint the fuzzer registers or changes points at ``webhook_url``, a
  loopback port where nothing listens, whatever URL was generated: the service's
  deliveries must never leave the machine. (The URL of a request generated to break
  the schema is replaced too when it fits the schema: the break is elsewhere.)
- Every request's operation, status and phase is written to the record file (and
  each sign-in, as phase ``auth``), which the test reads to check what was fuzzed
  and what succeeded.

The run's facts come from the JSON file named by FUZZ_CONTEXT: ``url``, ``record``,
``username``, ``password``, ``uuid`` (its account), ``other_uuid`` (another account),
``provider`` (a configured OAuth provider), ``webhook_url`` (see above).
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from PIL import Image

CONTEXT: dict[str, Any] = json.loads(Path(os.environ["FUZZ_CONTEXT"]).read_text())
RECORD = Path(CONTEXT["record"])
#: The docs pages' session cookie (app.routers.docs_pages.DOCS_COOKIE).
DOCS_COOKIE = "user_manager_docs"
#: Operations that only the service's own pages may call (they check ``Origin``).
SAME_ORIGIN = {"POST /interactive-docs", "POST /docs/token"}
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


def _bearer(http: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {_sign_in(http)['access_token']}"}


def _own_webhook() -> str:
    """An endpoint registered by the account (an admin's run), kept while it exists and
    is enabled, receiving its sign-ins (so that it has deliveries); another id when the
    account may not register one."""
    with _client() as http:
        headers = _bearer(http)
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
            response = http.get(path, headers=_bearer(http))
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
    if "webhook_id" in path and not linked:
        case.path_parameters = {**case.path_parameters, "webhook_id": _own_webhook()}
    if "delivery_id" in path and not linked:
        delivery = _own_delivery(case.path_parameters["webhook_id"])
        case.path_parameters = {**case.path_parameters, "delivery_id": delivery}
    if "provider" in path:
        case.path_parameters = {**case.path_parameters, "provider": CONTEXT["provider"]}
    if label in SAME_ORIGIN:
        case.headers = {**(case.headers or {}), "Origin": CONTEXT["url"]}
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
