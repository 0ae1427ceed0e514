"""Webhooks across real processes: the command line, a service killed between a change
and its delivery, and two replicas sharing one database."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from app.core.config import Settings
from app.test.conftest import replicas, settings_env
from app.test.factories import PASSWORD, bearer, live_signup_and_login
from app.test.server import LiveServer, run_cli, start_server
from app.test.test_webhooks import FAST
from app.test.webhook_receiver import WebhookReceiver

ADMIN = {
    "FIRST_ADMIN_USERNAME": "hook_admin",
    "FIRST_ADMIN_EMAIL": "hook_admin@example.com",
    "FIRST_ADMIN_PASSWORD": PASSWORD,
}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {**FAST, **ADMIN}


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.stop()


def admin_token(url: str) -> dict[str, str]:
    answer = httpx.post(
        f"{url}/api/auth/login", data={"username": "hook_admin", "password": PASSWORD}
    )
    assert answer.status_code == 200, answer.text
    return bearer(answer.json())


def register(url: str, receiver: WebhookReceiver, event_types: list[str]) -> dict:
    answer = httpx.post(
        f"{url}/api/admin/webhooks",
        json={"url": receiver.url, "event_types": event_types},
        headers=admin_token(url),
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def found(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in ``text`` (which must hold it)."""
    match = re.search(pattern, text)
    assert match is not None, text
    return match.group(1)


def test_the_command_line_manages_endpoints(settings: Settings, receiver: WebhookReceiver) -> None:
    env = settings_env(settings)
    added = run_cli(
        env, "webhooks", "add", receiver.url, "-e", "user.created", "-e", "user.deleted"
    )
    assert added.returncode == 0, added.stderr
    endpoint_id = found(r"Endpoint ([0-9a-f-]{36}) added", added.stdout)
    secret = found(r"(whsec_\S+)", added.stdout)
    assert run_cli(env, "webhooks", "disable", endpoint_id).returncode == 0
    listed = json.loads(run_cli(env, "webhooks", "list").stdout)
    assert [(item["id"], item["event_types"], item["enabled"]) for item in listed] == [
        (endpoint_id, ["user.created", "user.deleted"], False)
    ]
    assert secret not in json.dumps(listed)
    rotated = run_cli(env, "webhooks", "rotate-secret", endpoint_id)
    assert rotated.returncode == 0
    assert found(r"(whsec_\S+)", rotated.stdout) != secret

    unknown = run_cli(env, "webhooks", "add", receiver.url, "-e", "user.exploded")
    assert unknown.returncode == 2
    assert "user.exploded" in unknown.stderr
    assert run_cli(env, "webhooks", "remove", endpoint_id).returncode == 0
    missing = run_cli(env, "webhooks", "remove", endpoint_id)
    assert missing.returncode == 1
    assert "WEBHOOK_NOT_FOUND" in missing.stderr


def test_a_service_killed_before_delivering_delivers_after_restart(
    settings: Settings, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """The event is in the outbox with the change: killing the service (SIGKILL, no
    shutdown) while the receiver is down loses nothing."""
    env = settings_env(settings)
    server = start_server(env, tmp_path / "first.log")
    try:
        endpoint = register(server.url, receiver, ["user.created", "session.created"])
        user, _ = live_signup_and_login(server.url)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
    finally:
        server.stop()
    assert receiver.arrived == 0

    receiver.start()
    restarted = start_server(env, tmp_path / "second.log")
    try:
        received = receiver.wait_for(2, timeout=45)
        time.sleep(1)
    finally:
        restarted.stop()
    webhook = Webhook(endpoint["secret"])
    payloads = [webhook.verify(item.body, item.headers) for item in receiver.received]
    assert [payload["type"] for payload in payloads] == ["user.created", "session.created"]
    assert {payload["data"]["user"]["id"] for payload in payloads} == {user["uuid"]}
    assert set(receiver.counts().values()) == {1}
    assert len(received) == 2


def test_two_replicas_deliver_each_event_once(
    settings: Settings, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    """Both replicas' workers poll the same outbox; the receiver counts each webhook-id."""
    receiver.start()
    with replicas(settings, None, tmp_path) as servers:
        register(servers[0].url, receiver, ["user.created", "session.created"])
        users = []
        for number in range(6):
            server: LiveServer = servers[number % 2]
            users.append(live_signup_and_login(server.url)[0])
        expected = 2 * len(users)
        receiver.wait_for(expected, timeout=60)
        time.sleep(2)  # a duplicate would come now
    counts = receiver.counts()
    assert len(counts) == expected
    assert set(counts.values()) == {1}
    for user in users:
        mine = [p["type"] for p in receiver.payloads() if p["data"]["user"]["id"] == user["uuid"]]
        assert mine == ["user.created", "session.created"]
