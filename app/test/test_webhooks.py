"""Webhooks end to end: admins register a real receiver on loopback, users change
their accounts through the API, and the receiver gets signed events, in order per
user, once each, however it behaves (down, slow, failing)."""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from standardwebhooks import Webhook

from app.core.config import Settings
from app.core.database import create_engine, create_session_factory
from app.main import create_app
from app.models import WebhookDelivery, WebhookEndpoint, WebhookEvent, now_epoch
from app.services import webhooks as webhook_service
from app.services.history import record_event
from app.services.webhook_delivery import (
    WebhookWorker,
    fan_out,
    post_signed,
    purge_old_deliveries,
    retry_delay_seconds,
    signed_headers,
)
from app.services.webhook_events import EVENT_TYPES, EVENTS, NOT_SENT, WebhookEventType
from app.test.conftest import make_settings
from app.test.factories import (
    PASSWORD,
    bearer,
    create_user,
    delete_user,
    login,
    signup_and_login,
    user_with_tokens,
)
from app.test.mail import MailCatcher, text_body, verify_address
from app.test.webhook_receiver import Received, WebhookReceiver

#: Webhook settings that make retries quick.
FAST = {
    "WEBHOOK_POLL_SECONDS": 0.1,
    "WEBHOOK_RETRY_BASE_SECONDS": 1,
    "WEBHOOK_RETRY_MAX_SECONDS": 1,
    "WEBHOOK_TIMEOUT_SECONDS": 3,
}
SERVICES = Path(__file__).resolve().parents[1] / "services"
#: Words that must never appear as keys of a payload sent out.
SECRET_WORDS = ("password", "hash", "token", "secret", "code", "otp_secret")


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return dict(FAST)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A receiver on loopback, down until the test starts it."""
    server = WebhookReceiver()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def admin_tokens(app: FastAPI, client: httpx.AsyncClient) -> dict:
    _, tokens = await user_with_tokens(app, client, roles=("admin", "moderator", "user"))
    return tokens


async def register(
    client: httpx.AsyncClient,
    tokens: dict,
    url: str,
    event_types: list[str] | None = None,
) -> dict[str, Any]:
    """Register ``url`` for ``event_types`` (all by default); the answer with the secret."""
    response = await client.post(
        "/api/admin/webhooks",
        json={"url": url, "event_types": event_types or list(EVENT_TYPES)},
        headers=bearer(tokens),
    )
    assert response.status_code == 201, response.text
    return response.json()


def independent_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The Standard Webhooks signature, computed here without the package."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def check_signed(secret: str, received: Received) -> dict[str, Any]:
    """The payload, once both the package and an independent HMAC accept it."""
    payload = Webhook(secret).verify(received.body, received.headers)
    assert received.headers["webhook-signature"] == independent_signature(
        secret, received.headers, received.body
    )
    return payload


def keys_of(value: Any) -> set[str]:
    """Every key at any depth of a JSON value."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in keys_of(item)}
    if isinstance(value, list):
        return {key for item in value for key in keys_of(item)}
    return set()


# The event catalogue ----------------------------------------------------------------


def _strings(node: ast.AST) -> set[str]:
    return {
        part.value
        for part in ast.walk(node)
        if isinstance(part, ast.Constant) and isinstance(part.value, str)
    }


def recorded_actions() -> set[str]:
    """Every action the services pass to ``record_event``, read from their source: a
    literal, either literal of a conditional, or what the function assigns to the
    variable it passes."""
    actions: set[str] = set()
    for source in SERVICES.glob("*.py"):
        for function in ast.walk(ast.parse(source.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "record_event"
                    and len(node.args) >= 3
                ):
                    continue
                action = node.args[2]
                if isinstance(action, ast.Name):
                    for assigned in ast.walk(function):
                        if isinstance(assigned, ast.Assign) and any(
                            isinstance(target, ast.Name) and target.id == action.id
                            for target in assigned.targets
                        ):
                            actions |= _strings(assigned.value)
                else:
                    actions |= _strings(action)
    return actions


def test_every_history_action_is_sent_or_deliberately_kept_inside() -> None:
    """A new history action must be classified: sent as an event, or kept inside."""
    # The passkey ceremony passes its failure's action in a variable.
    actions = recorded_actions() | {"login_failed", "otp_failed"}
    assert len(actions) > 30
    assert actions - set(EVENTS) - NOT_SENT == set()
    assert set(EVENTS) & NOT_SENT == set()
    assert set(EVENTS) <= actions
    assert actions >= NOT_SENT  # nothing listed that no longer exists


def test_the_event_types_are_the_documented_ones() -> None:
    required = {
        "user.created",
        "user.verified",
        "user.updated",
        "user.deleted",
        "user.banned",
        "session.created",
        "password.changed",
        "2fa.changed",
        "oauth.linked",
        "role.changed",
    }
    produced = {spec.type for spec in EVENTS.values()}
    assert required <= produced
    assert produced == set(EVENT_TYPES) == set(get_args(WebhookEventType))


async def test_each_event_carries_only_what_it_lists(app: FastAPI) -> None:
    """Details a history entry holds beyond an event's list never leave the service."""
    factory = app.state.session_factory
    user = await create_user(factory)
    leaky = {"token": "t0k3n", "hash": "h", "code": "123456", "secret": "s", "new_password": "p"}
    async with factory() as db:
        for action in EVENTS:
            record_event(db, user.uuid, action, by=user.uuid, details=leaky)
        await db.commit()
        events = (await db.scalars(select(WebhookEvent).order_by(WebhookEvent.id))).all()
    assert [event.type for event in events] == [spec.type for spec in EVENTS.values()]
    for event in events:
        assert set(event.payload) == {"type", "timestamp", "data"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event.payload["timestamp"])
        assert event.payload["data"]["user"]["id"] == user.uuid
        assert not keys_of(event.payload) & set(leaky), event.payload
        assert not {"t0k3n", "123456", "p"} & set(map(str, event.payload["data"].values()))


# The admin API ----------------------------------------------------------------------


async def test_admins_register_list_change_rotate_and_remove(
    client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    created = await register(client, admin_tokens, receiver.url, ["user.created"])
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"][6:])) == 32
    path = f"/api/admin/webhooks/{created['id']}"

    listed = (await client.get("/api/admin/webhooks", headers=bearer(admin_tokens))).json()
    assert [item["id"] for item in listed["items"]] == [created["id"]]
    assert "secret" not in listed["items"][0]
    read = (await client.get(path, headers=bearer(admin_tokens))).json()
    assert "secret" not in read
    assert read["event_types"] == ["user.created"]

    changed = await client.patch(
        path,
        json={"event_types": ["user.deleted", "user.deleted"], "enabled": False},
        headers=bearer(admin_tokens),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["event_types"] == ["user.deleted"]
    assert (changed.json()["enabled"], changed.json()["disabled_reason"]) == (False, "admin")

    rotated = await client.post(f"{path}/secret", headers=bearer(admin_tokens))
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != created["secret"]

    assert (await client.delete(path, headers=bearer(admin_tokens))).status_code == 204
    gone = await client.get(path, headers=bearer(admin_tokens))
    assert (gone.status_code, gone.json()["code"]) == (404, "WEBHOOK_NOT_FOUND")


async def test_the_secret_is_stored_sealed(
    app: FastAPI, client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    created = await register(client, admin_tokens, receiver.url)
    async with app.state.session_factory() as db:
        stored = await db.get(WebhookEndpoint, created["id"])
    assert stored is not None
    assert created["secret"] not in stored.secret_sealed
    assert app.state.settings.secret_box.open(stored.secret_sealed) == created["secret"]


async def test_bad_input_is_refused_with_a_4xx(
    client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    def body(**changes: Any) -> dict[str, Any]:
        return {"url": receiver.url, "event_types": ["user.created"], **changes}

    refused = {
        "ftp://example.com/hook": "INVALID_WEBHOOK_URL",
        "http://user:pass@127.0.0.1/hook": "INVALID_WEBHOOK_URL",
        "javascript:alert(1)": "INVALID_WEBHOOK_URL",
        "http:///no-host": "INVALID_WEBHOOK_URL",
        "http://127.0.0.1:99999/": "INVALID_WEBHOOK_URL",
        "https://example.com/a b": "INVALID_WEBHOOK_URL",
    }
    for url, code in refused.items():
        answer = await client.post(
            "/api/admin/webhooks", json=body(url=url), headers=bearer(admin_tokens)
        )
        assert (answer.status_code, answer.json()["code"]) == (422, code), url
    for bad in (
        body(event_types=["user.exploded"]),
        body(event_types=[]),
        body(event_types="user.created"),
        body(url="x" * 3000),
        body(secret="whsec_mine"),
        {"url": receiver.url},
    ):
        answer = await client.post("/api/admin/webhooks", json=bad, headers=bearer(admin_tokens))
        assert answer.status_code == 422, bad
    for path in ("/api/admin/webhooks/not-a-uuid", "/api/admin/webhooks/1/deliveries"):
        assert (await client.get(path, headers=bearer(admin_tokens))).status_code == 422
    created = await register(client, admin_tokens, receiver.url)
    deliveries = f"/api/admin/webhooks/{created['id']}/deliveries"
    assert (
        await client.get(f"{deliveries}?status=lost", headers=bearer(admin_tokens))
    ).status_code == 422
    missing = await client.post(f"{deliveries}/12345/retry", headers=bearer(admin_tokens))
    assert (missing.status_code, missing.json()["code"]) == (404, "DELIVERY_NOT_FOUND")
    for zero in (f"{deliveries}/0/retry", f"{deliveries}/x/retry"):
        assert (await client.post(zero, headers=bearer(admin_tokens))).status_code == 422


async def test_only_admins_manage_webhooks(
    app: FastAPI, client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    created = await register(client, admin_tokens, receiver.url)
    path = f"/api/admin/webhooks/{created['id']}"
    _, moderator = await user_with_tokens(app, client, roles=("moderator", "user"))
    _, plain = await signup_and_login(client)
    calls = [
        ("POST", "/api/admin/webhooks", {"url": receiver.url, "event_types": ["user.created"]}),
        ("GET", "/api/admin/webhooks", None),
        ("GET", path, None),
        ("PATCH", path, {"enabled": False}),
        ("DELETE", path, None),
        ("POST", f"{path}/secret", None),
        ("GET", f"{path}/deliveries", None),
        ("POST", f"{path}/deliveries/1/retry", None),
    ]
    for method, url, json_body in calls:
        for tokens in (moderator, plain):
            answer = await client.request(method, url, json=json_body, headers=bearer(tokens))
            assert answer.status_code == 403, (method, url)
        anonymous = await client.request(method, url, json=json_body)
        assert anonymous.status_code == 401, (method, url)
    assert (await client.get(path, headers=bearer(admin_tokens))).json()["enabled"] is True


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/hook",
    ],
)
async def test_private_targets_are_refused_unless_allowed(tmp_path: Path, url: str) -> None:
    """Production refuses receivers inside the network by default (no traffic is sent:
    the address is refused before any connection)."""
    settings = make_settings(
        tmp_path / "data",
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        ENVIRONMENT="production",
    )
    assert not settings.webhook_private_targets_allowed
    with pytest.raises(webhook_service.InvalidWebhookUrl):
        await webhook_service.check_url(settings, url)
    allowed = make_settings(tmp_path / "data", WEBHOOK_ALLOW_PRIVATE_TARGETS=True)
    assert await webhook_service.check_url(allowed, url) == url


async def test_an_attempt_refuses_a_private_target_without_connecting(
    receiver: WebhookReceiver,
) -> None:
    """The guard runs again at each attempt: a name that now resolves inside is refused."""
    receiver.start()
    outcome = await post_signed(receiver.url, "{}", {}, timeout_seconds=2, allow_private=False)
    assert not outcome.ok
    assert outcome.response.startswith("refused")
    await asyncio.sleep(0.2)
    assert receiver.arrived == 0


def test_retries_back_off_exponentially_with_jitter_up_to_a_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, WEBHOOK_RETRY_BASE_SECONDS=5, WEBHOOK_RETRY_MAX_SECONDS=3600)
    for attempts, ceiling in ((1, 5), (2, 10), (3, 20), (8, 640), (12, 3600), (200, 3600)):
        delays = {retry_delay_seconds(settings, attempts) for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempts, delays)
        if ceiling >= 20:
            assert len(delays) > 1  # jittered


# Delivery ---------------------------------------------------------------------------


async def test_events_arrive_signed_and_without_secrets(
    client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    receiver.start()
    endpoint = await register(client, admin_tokens, receiver.url)
    user, tokens = await signup_and_login(client)
    uuid = user["uuid"]
    renamed = await client.patch(
        f"/api/user/{uuid}", json={"description": "Renamed"}, headers=bearer(tokens)
    )
    assert renamed.status_code == 200, renamed.text
    changed = await client.post(
        "/api/auth/password/change",
        json={"current_password": PASSWORD, "new_password": "another long passphrase"},
        headers=bearer(tokens),
    )
    assert changed.status_code == 204, changed.text
    staff = await client.patch(
        f"/api/admin/user/{uuid}",
        json={"roles": ["user", "moderator"]},
        headers=bearer(admin_tokens),
    )
    assert staff.status_code == 200, staff.text
    banned = await client.patch(
        f"/api/admin/user/{uuid}", json={"is_active": False}, headers=bearer(admin_tokens)
    )
    assert banned.status_code == 200, banned.text
    deleted = await client.request(
        "DELETE",
        f"/api/user/{uuid}",
        json={"current_password": PASSWORD},
        headers=bearer(admin_tokens),
    )
    assert deleted.status_code == 204, deleted.text

    expected = [
        "user.created",
        "session.created",
        "user.updated",
        "password.changed",
        "role.changed",
        "user.banned",
        "user.deleted",
    ]
    await receiver.until(len(expected))
    mine = [item for item in receiver.received if item.payload["data"]["user"]["id"] == uuid]
    assert [item.payload["type"] for item in mine] == expected
    for item in mine:
        payload = check_signed(endpoint["secret"], item)
        assert set(payload) == {"type", "timestamp", "data"}
        assert not keys_of(payload) & set(SECRET_WORDS), payload
        assert PASSWORD not in item.body.decode()
        assert item.headers["content-type"] == "application/json"
        assert re.fullmatch(r"msg_[0-9a-f]{32}", item.message_id)
    by_type = {item.payload["type"]: item.payload["data"] for item in mine}
    assert by_type["user.created"]["user"]["username"] == user["username"]
    assert by_type["user.created"]["user"]["email"] == user["email"]
    assert by_type["user.updated"]["fields"] == ["description"]
    assert by_type["password.changed"]["reset"] is False
    assert by_type["role.changed"]["from"] == ["user"]
    assert by_type["role.changed"]["to"] == ["user", "moderator"]
    assert by_type["role.changed"]["user"]["roles"] == ["user", "moderator"]
    assert by_type["user.deleted"]["actor_id"] != uuid  # the admin did it
    assert set(receiver.counts().values()) == {1}


async def test_an_endpoint_gets_only_its_event_types(
    client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    receiver.start()
    await register(client, admin_tokens, receiver.url, ["user.deleted"])
    user, tokens = await signup_and_login(client)
    assert (await delete_user(client, user["uuid"], tokens)).status_code == 204
    received = await receiver.until(1)
    await asyncio.sleep(0.5)
    assert [item.payload["type"] for item in receiver.received] == ["user.deleted"]
    assert received[0].payload["data"]["user"]["id"] == user["uuid"]


async def test_receiver_down_then_back_gets_every_event_in_order_per_user(
    client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    endpoint = await register(
        client, admin_tokens, receiver.url, ["user.created", "user.updated", "session.created"]
    )
    users = [await signup_and_login(client) for _ in range(3)]
    sent: dict[str, list[str]] = {
        user["uuid"]: ["user.created", "session.created"] for user, _ in users
    }
    for round_number in range(3):
        for user, tokens in users:
            answer = await client.patch(
                f"/api/user/{user['uuid']}",
                json={"description": f"round {round_number}"},
                headers=bearer(tokens),
            )
            assert answer.status_code == 200, answer.text
            sent[user["uuid"]].append("user.updated")
    # Down for a while: every user's first event fails, at least twice.
    path = f"/api/admin/webhooks/{endpoint['id']}/deliveries"
    deadline = time.monotonic() + 20
    while True:
        log = (await client.get(path, headers=bearer(admin_tokens))).json()
        tried = [item for item in log["items"] if item["attempts"] >= 2]
        # Every event fanned out (the worker may still be at it under load), and
        # every user's first one tried twice.
        if len(tried) >= len(users) and log["total"] == sum(map(len, sent.values())):
            break
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.1)
    assert all(item["status"] == "pending" for item in log["items"])
    assert log["total"] == sum(len(events) for events in sent.values())
    # Later events of a user wait for the first: only the first was tried.
    assert {item["user_id"] for item in tried} == set(sent)
    assert all(item["event_type"] == "user.created" for item in log["items"] if item["attempts"])
    assert receiver.arrived == 0

    receiver.start()
    await receiver.until(sum(len(events) for events in sent.values()), timeout=30)
    arrived: dict[str, list[str]] = {uuid: [] for uuid in sent}
    for item in receiver.received:
        payload = check_signed(endpoint["secret"], item)
        arrived[payload["data"]["user"]["id"]].append(payload["type"])
    assert arrived == sent
    assert set(receiver.counts().values()) == {1}
    deadline = time.monotonic() + 10  # the worker writes the answers down just after
    while True:
        log = (await client.get(f"{path}?status=delivered", headers=bearer(admin_tokens))).json()
        if log["total"] == sum(len(events) for events in sent.values()):
            break
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.1)


async def test_a_slow_receiver_does_not_slow_the_api(
    app: FastAPI, client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    app.state.settings.WEBHOOK_TIMEOUT_SECONDS = 30  # slow, not dead
    receiver.start()
    receiver.hold()
    await register(client, admin_tokens, receiver.url, ["user.created"])
    first = await client.post(
        "/api/auth/signup",
        json={"username": "slow_one", "email": "slow_one@example.com", "password": PASSWORD},
    )
    assert first.status_code == 201
    deadline = time.monotonic() + 10
    while receiver.arrived == 0:  # the receiver holds the delivery, unanswered
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    # Meanwhile the API answers: sign-ups, logins and reads, none waiting for it.
    for number in range(3):
        answer = await client.post(
            "/api/auth/signup",
            json={
                "username": f"fast_{number}",
                "email": f"fast_{number}@example.com",
                "password": PASSWORD,
            },
        )
        assert answer.status_code == 201
        await login(client, f"fast_{number}")
    assert receiver.received == []  # still holding the first one
    receiver.release()
    received = await receiver.until(4)
    names = {item.payload["data"]["user"]["username"] for item in received}
    assert names == {"slow_one", "fast_0", "fast_1", "fast_2"}


async def test_a_failed_delivery_is_logged_and_an_admin_retries_it(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_tokens: dict,
    receiver: WebhookReceiver,
) -> None:
    app.state.settings.WEBHOOK_MAX_ATTEMPTS = 2
    receiver.status_code = 500
    receiver.answer_body = b"database exploded \x00\xff " + b"x" * 2000
    receiver.start()
    endpoint = await register(client, admin_tokens, receiver.url, ["user.created"])
    path = f"/api/admin/webhooks/{endpoint['id']}/deliveries"
    await signup_and_login(client)
    deadline = time.monotonic() + 15
    while True:
        failed = (await client.get(f"{path}?status=failed", headers=bearer(admin_tokens))).json()
        if failed["total"]:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    item = failed["items"][0]
    assert (item["attempts"], item["last_status_code"]) == (2, 500)
    assert item["last_response"].startswith("database exploded")
    assert len(item["last_response"]) <= 500
    assert item["next_attempt_at"] is None
    pending = (await client.get(f"{path}?status=pending", headers=bearer(admin_tokens))).json()
    assert pending == {"items": [], "total": 0}
    assert receiver.arrived == 2

    receiver.status_code = 204
    retried = await client.post(f"{path}/{item['id']}/retry", headers=bearer(admin_tokens))
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "pending"
    await receiver.until(3)
    deadline = time.monotonic() + 10
    while True:
        done = (await client.get(f"{path}?status=delivered", headers=bearer(admin_tokens))).json()
        if done["total"]:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    again = await client.post(f"{path}/{item['id']}/retry", headers=bearer(admin_tokens))
    assert (again.status_code, again.json()["code"]) == (409, "DELIVERY_ALREADY_DELIVERED")
    assert len(set(receiver.counts())) == 1  # the same webhook-id every attempt


async def test_an_endpoint_failing_too_long_is_turned_off_and_admins_mailed(
    tmp_path: Path, db_backend: str, smtp_server: MailCatcher, receiver: WebhookReceiver
) -> None:
    settings = make_settings(tmp_path / "data", db_backend, **FAST, **smtp_server.settings())
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            admin, tokens = await user_with_tokens(
                application, client, roles=("admin", "user"), email_verified=True
            )
            receiver.status_code = 503
            receiver.start()
            endpoint = await register(client, tokens, receiver.url, ["user.created"])
            # Failing since longer than WEBHOOK_DISABLE_AFTER_SECONDS (a day), last a
            # moment ago: one more failure turns it off.
            async with application.state.session_factory() as db:
                await db.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id == endpoint["id"])
                    .values(failing_since=now_epoch() - 86400, last_failure_at=now_epoch() - 2)
                )
                await db.commit()
            await signup_and_login(client)
            path = f"/api/admin/webhooks/{endpoint['id']}"
            deadline = time.monotonic() + 15
            while (await client.get(path, headers=bearer(tokens))).json()["enabled"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            info = (await client.get(path, headers=bearer(tokens))).json()
            assert info["disabled_reason"] == "failing"
            mail = await smtp_server.wait_for(admin.email)
            assert "webhook endpoint was turned off" in mail["Subject"]
            assert receiver.url in text_body(mail)
            # Off: nothing more is attempted, and the delivery waits, pending.
            arrived = receiver.arrived
            await asyncio.sleep(1.5)
            assert receiver.arrived == arrived
            # Turned back on, the receiver working again: the waiting event arrives.
            receiver.status_code = 204
            on = await client.patch(path, json={"enabled": True}, headers=bearer(tokens))
            assert on.json()["failing_since"] is None
            await receiver.until(1)


async def test_parallel_workers_never_deliver_one_event_twice(
    app: FastAPI, settings: Settings, receiver: WebhookReceiver
) -> None:
    """Four workers, each with its own connection pool, race for the same deliveries."""
    receiver.start()
    factory = app.state.session_factory
    async with factory() as db:
        await webhook_service.create_endpoint(
            db, settings, None, url=receiver.url, event_types=list(EVENT_TYPES)
        )
    users = [await create_user(factory) for _ in range(5)]
    async with factory() as db:
        for round_number in range(8):
            for user in users:
                record_event(
                    db, user.uuid, "profile_updated", details={"fields": [f"f{round_number}"]}
                )
        await db.commit()
    engines = [create_engine(settings.database_url) for _ in range(4)]
    try:
        workers = [
            WebhookWorker(create_session_factory(engine), settings, app.state.mailer)
            for engine in engines
        ]
        await asyncio.gather(*(worker.drain() for worker in workers))
        await asyncio.gather(*(worker.drain() for worker in workers))
    finally:
        for engine in engines:
            await engine.dispose()
    await receiver.until(40)
    await asyncio.sleep(0.5)
    counts = receiver.counts()
    assert len(counts) == 40
    assert set(counts.values()) == {1}
    for user in users:
        mine = [
            p["data"]["fields"] for p in receiver.payloads() if p["data"]["user"]["id"] == user.uuid
        ]
        assert mine == [[f"f{n}"] for n in range(8)]


async def test_fan_out_takes_each_event_once_under_parallel_workers(
    app: FastAPI, settings: Settings, receiver: WebhookReceiver
) -> None:
    factory = app.state.session_factory
    async with factory() as db:
        endpoint, _ = await webhook_service.create_endpoint(
            db, settings, None, url=receiver.url, event_types=["user.updated"]
        )
        # Off while the events pile up: the app's own worker must not take them first.
        await webhook_service.update_endpoint(db, settings, None, endpoint.id, enabled=False)
    user = await create_user(factory)
    async with factory() as db:
        for _ in range(50):
            record_event(db, user.uuid, "profile_updated", details={"fields": ["x"]})
        await db.commit()
    async with factory() as db:
        await db.execute(update(WebhookEndpoint).values(enabled=True, since_event_id=0))
        await db.commit()
    engines = [create_engine(settings.database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(fan_out(create_session_factory(engine)) for engine in engines)
        )
    finally:
        for engine in engines:
            await engine.dispose()
    async with factory() as db:
        deliveries = (await db.scalars(select(WebhookDelivery.event_id))).all()
    assert len(deliveries) == len(set(deliveries)) == 50
    assert sum(results) <= 50


async def test_old_deliveries_are_purged_pending_ones_kept(
    app: FastAPI, settings: Settings, receiver: WebhookReceiver
) -> None:
    factory = app.state.session_factory
    async with factory() as db:
        endpoint, _ = await webhook_service.create_endpoint(
            db, settings, None, url=receiver.url, event_types=["user.updated"]
        )
        await db.execute(update(WebhookEndpoint).values(enabled=False))
        await db.commit()
    user = await create_user(factory)
    async with factory() as db:
        for _ in range(3):
            record_event(db, user.uuid, "profile_updated", details={"fields": ["x"]})
        await db.commit()
        events = (await db.scalars(select(WebhookEvent).order_by(WebhookEvent.id))).all()
        old = now_epoch() - settings.WEBHOOK_RETENTION_DAYS * 86400 - 1
        for event, status in zip(events, ("delivered", "failed", "pending"), strict=True):
            db.add(
                WebhookDelivery(
                    endpoint_id=endpoint.id,
                    event_id=event.id,
                    user_key=user.uuid,
                    status=status,
                    created_at=old,
                )
            )
            event.created_at = old
            event.fanned_out = True
        await db.commit()
    assert await purge_old_deliveries(factory, settings) == {"deliveries": 2, "events": 2}
    async with factory() as db:
        left = (await db.scalars(select(WebhookDelivery.status))).all()
    assert left == ["pending"]


def test_signed_headers_follow_the_specification() -> None:
    from datetime import UTC, datetime

    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    now = datetime(2026, 11, 29, 12, 0, 0, 700000, tzinfo=UTC)
    headers = signed_headers(secret, "msg_1", '{"a":1}', now)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"] == independent_signature(secret, headers, b'{"a":1}')


async def test_verification_and_two_factor_changes_are_sent(
    tmp_path: Path, db_backend: str, smtp_server: MailCatcher, receiver: WebhookReceiver
) -> None:
    settings = make_settings(tmp_path / "data", db_backend, **FAST, **smtp_server.settings())
    application = create_app(settings)
    receiver.start()
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            _, admin = await user_with_tokens(application, client, roles=("admin", "user"))
            endpoint = await register(client, admin, receiver.url, ["user.verified", "2fa.changed"])
            user, tokens = await signup_and_login(client)
            await verify_address(client, smtp_server, user["email"])
            setup = await client.post(
                "/api/auth/otp/setup",
                json={"method": "authenticator", "password": PASSWORD},
                headers=bearer(tokens),
            )
            assert setup.status_code == 200, setup.text
            totp = pyotp.parse_uri(setup.json()["provisioning_uri"])
            assert isinstance(totp, pyotp.TOTP)
            enabled = await client.post(
                "/api/auth/otp/enable",
                json={"method": "authenticator", "code": totp.now()},
                headers=bearer(tokens),
            )
            assert enabled.status_code == 200, enabled.text
            received = await receiver.until(2)
    payloads = [check_signed(endpoint["secret"], item) for item in received]
    assert [payload["type"] for payload in payloads] == ["user.verified", "2fa.changed"]
    verified, two_factor = (payload["data"] for payload in payloads)
    assert verified["email"] == user["email"]
    assert verified["user"]["email_verified"] is True
    assert (two_factor["enabled"], two_factor["method"]) == (True, "authenticator")
    assert totp.secret not in received[1].body.decode()


async def test_events_of_the_time_an_endpoint_was_off_are_not_sent(
    client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    receiver.start()
    endpoint = await register(client, admin_tokens, receiver.url, ["user.created"])
    path = f"/api/admin/webhooks/{endpoint['id']}"
    off = await client.patch(path, json={"enabled": False}, headers=bearer(admin_tokens))
    assert off.json()["enabled"] is False
    await signup_and_login(client, username="while_off")
    on = await client.patch(path, json={"enabled": True}, headers=bearer(admin_tokens))
    assert (on.json()["enabled"], on.json()["disabled_reason"]) == (True, None)
    await signup_and_login(client, username="after_on")
    await receiver.until(1)
    await asyncio.sleep(0.5)
    names = [payload["data"]["user"]["username"] for payload in receiver.payloads()]
    assert names == ["after_on"]


async def test_a_failure_after_a_long_silence_starts_a_new_streak(
    app: FastAPI, client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    """An endpoint that failed once, days ago, then had nothing to receive, has not
    been failing for days: a new failure does not turn it off."""
    receiver.status_code = 500
    receiver.start()
    endpoint = await register(client, admin_tokens, receiver.url, ["user.created"])
    long_ago = now_epoch() - 3 * 86400
    async with app.state.session_factory() as db:
        await db.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint["id"])
            .values(failing_since=long_ago, last_failure_at=long_ago)
        )
        await db.commit()
    await signup_and_login(client)
    path = f"/api/admin/webhooks/{endpoint['id']}"
    deadline = time.monotonic() + 10
    while (info := (await client.get(path, headers=bearer(admin_tokens))).json())[
        "failing_since"
    ] == long_ago:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert info["enabled"] is True
    assert info["failing_since"] >= now_epoch() - 30


async def test_every_change_to_an_endpoint_is_in_the_audit_log(
    client: httpx.AsyncClient, admin_tokens: dict, receiver: WebhookReceiver
) -> None:
    created = await register(client, admin_tokens, receiver.url, ["user.created"])
    path = f"/api/admin/webhooks/{created['id']}"
    headers = bearer(admin_tokens)
    await client.patch(path, json={"event_types": ["user.deleted"]}, headers=headers)
    await client.patch(path, json={"enabled": False}, headers=headers)
    rotated = (await client.post(f"{path}/secret", headers=headers)).json()
    refused = await client.patch(path, json={"url": "ftp://example.com"}, headers=headers)
    assert refused.status_code == 422
    assert (await client.delete(path, headers=headers)).status_code == 204

    log = (
        await client.get("/api/admin/audit", params={"action": "webhook.*"}, headers=headers)
    ).json()["items"]
    assert [entry["action"] for entry in reversed(log)] == [
        "webhook.endpoint_created",
        "webhook.endpoint_updated",
        "webhook.endpoint_updated",
        "webhook.secret_rotated",
        "webhook.endpoint_deleted",
    ]
    assert {(entry["target_type"], entry["target_id"]) for entry in log} == {
        ("webhook", created["id"])
    }
    # Only the receiver's origin: a URL's path or query often carries a token.
    origin = receiver.url.rsplit("/", 1)[0]
    assert receiver.url != origin
    assert {entry["target_display"] for entry in log} == {origin}
    assert receiver.url not in json.dumps(log)
    changes = [entry["details"] for entry in reversed(log)][1:3]
    assert changes == [
        {"event_types": {"from": ["user.created"], "to": ["user.deleted"]}},
        {"enabled": False},
    ]
    text = json.dumps(log)
    assert created["secret"] not in text
    assert rotated["secret"] not in text


async def test_event_ids_never_go_back_once_retention_empties_the_outbox(app: FastAPI) -> None:
    """Endpoints start at an event id and deliveries keep per-user order by id: an id
    handed out again (SQLite reuses the highest by default) would hide new events."""
    from sqlalchemy import delete

    async def add_event() -> int:
        async with app.state.session_factory() as db:
            event = WebhookEvent(
                message_id=f"msg_{uuid.uuid4().hex}",
                type="user.created",
                user_uuid=None,
                payload={"type": "user.created", "timestamp": "", "data": {}},
                created_at=now_epoch(),
                fanned_out=True,
            )
            db.add(event)
            await db.commit()
            return event.id

    first = await add_event()
    second = await add_event()
    async with app.state.session_factory() as db:
        await db.execute(delete(WebhookEvent))  # what retention does after a quiet week
        await db.commit()
    assert await add_event() > second > first
