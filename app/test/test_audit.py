"""The admin audit log: every staff action is one row (who, what, on what, when, from
where), written with the action and never without it; GET /admin/audit and its cursor
pages; who may read it; retention; no secrets in it; the command line's actions."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from PIL import Image
from sqlalchemy import func, select, update

from app.core.auth_cache import ALL, bulk_write
from app.core.config import Settings
from app.models import AuditEvent, ExternalAccount, Passkey, User, now_epoch
from app.services.audit import AuditTarget, record_audit
from app.services.context import ClientInfo
from app.test.conftest import settings_env
from app.test.factories import (
    PASSWORD,
    bearer,
    login,
    user_with_tokens,
)
from app.test.mail import MailCatcher, link_in, token_in
from app.test.server import run_cli

ALL_ROLES = ("admin", "moderator", "tester", "user")
#: The user agent every staff request sends, to find in the rows.
AGENT = "audit-test/1.0"
#: The address httpx's in-process transport gives the app as the client's.
CLIENT_IP = "127.0.0.1"


@pytest.fixture
def settings_overrides(smtp_server: MailCatcher) -> dict[str, object]:
    """Real mail: the reset link an admin sends must reach the user, not the log."""
    return smtp_server.settings()


@dataclass
class Staff:
    """An admin (holding every role), a moderator, and a plain user to act on."""

    admin: User
    admin_tokens: dict
    moderator: User
    moderator_tokens: dict
    target: User
    target_tokens: dict


@pytest.fixture
async def staff(app: FastAPI, client: httpx.AsyncClient) -> Staff:
    admin, admin_tokens = await user_with_tokens(app, client, ALL_ROLES)
    moderator, moderator_tokens = await user_with_tokens(app, client, ("moderator", "user"))
    target, target_tokens = await user_with_tokens(app, client, email_verified=True)
    return Staff(admin, admin_tokens, moderator, moderator_tokens, target, target_tokens)


def _as(tokens: dict) -> dict[str, str]:
    return {**bearer(tokens), "User-Agent": AGENT}


async def _rows(app: FastAPI) -> list[AuditEvent]:
    """Every row of the log, oldest first, read from the database."""
    async with app.state.session_factory() as db:
        return list(await db.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _session_of(tokens: dict) -> str:
    """The session an access token names (read, not verified: the test made it)."""
    return jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]


async def _add(app: FastAPI, row: Any) -> None:
    async with app.state.session_factory() as db:
        db.add(row)
        await db.commit()


async def _own_file(client: httpx.AsyncClient, staff: Staff) -> int:
    """A file the target uploads for themself (which is no staff action)."""
    uploaded = await client.post(
        "/api/file",
        files={"file": ("notes.txt", b"hello", "text/plain")},
        headers=bearer(staff.target_tokens),
    )
    assert uploaded.status_code == 201, uploaded.text
    return uploaded.json()["id"]


# Each staff action: (who acts, what to set up, the request, the row expected) --------

Setup = Callable[[FastAPI, httpx.AsyncClient, Staff], Awaitable[dict[str, Any]]]


async def _nothing(_app: FastAPI, _client: httpx.AsyncClient, _staff: Staff) -> dict[str, Any]:
    return {}


async def _banned(app: FastAPI, _client: httpx.AsyncClient, staff: Staff) -> dict[str, Any]:
    async with app.state.session_factory() as db:
        await bulk_write(
            db,
            update(User)
            .where(User.uuid == staff.target.uuid)
            .values(is_active=False, deactivated_reason="banned"),
            users=[staff.target.uuid],
        )
        await db.commit()
    return {}


async def _two_factor(app: FastAPI, _client: httpx.AsyncClient, staff: Staff) -> dict[str, Any]:
    async with app.state.session_factory() as db:
        user = await db.get_one(User, staff.target.uuid)
        user.otp_method = "authenticator"
        await db.commit()
    return {}


async def _linked(app: FastAPI, _client: httpx.AsyncClient, staff: Staff) -> dict[str, Any]:
    await _add(
        app,
        ExternalAccount(
            provider="github",
            external_id=f"github-{staff.target.uuid}",
            username="octo",
            user_uuid=staff.target.uuid,
        ),
    )
    return {}


async def _passkey(app: FastAPI, _client: httpx.AsyncClient, staff: Staff) -> dict[str, Any]:
    passkey = Passkey(
        user_uuid=staff.target.uuid,
        credential_id=f"credential-{staff.target.uuid}",
        public_key=b"not a real key",
        user_handle=f"handle-{staff.target.uuid}",
        name="Phone",
    )
    await _add(app, passkey)
    return {"passkey": passkey.id}


async def _file(_app: FastAPI, client: httpx.AsyncClient, staff: Staff) -> dict[str, Any]:
    return {"file": await _own_file(client, staff)}


async def _picture(_app: FastAPI, client: httpx.AsyncClient, staff: Staff) -> dict[str, Any]:
    set_up = await client.put(
        f"/api/user/{staff.target.uuid}/pfp",
        files={"file": ("me.png", _png(), "image/png")},
        headers=bearer(staff.target_tokens),
    )
    assert set_up.is_success, set_up.text
    return {}


async def _flag(_app: FastAPI, client: httpx.AsyncClient, staff: Staff) -> dict[str, Any]:
    added = await client.patch(
        "/api/admin/feature-flags",
        json={"add": {"AUDITED_FLAG": False}},
        headers=bearer(staff.admin_tokens),
    )
    assert added.status_code == 200, added.text
    return {}


@dataclass(frozen=True)
class Case:
    """One staff action and the row it must leave."""

    name: str
    actor: str  # "admin" or "moderator"
    method: str
    path: str  # {target}, {session}, {file}, {passkey} are filled in
    action: str
    setup: Setup = _nothing
    body: dict[str, Any] | None = None
    upload: tuple[str, bytes, str] | None = None
    details: dict[str, Any] | None = None  # expected subset; {session} etc. filled in
    target_type: str = "user"
    target_id: str | None = None  # None: the target user


CASES = [
    Case(
        "role change",
        "admin",
        "PATCH",
        "/api/admin/user/{target}",
        "user.role_changed",
        body={"roles": ["user", "tester"]},
        details={"from": ["user"], "to": ["user", "tester"]},
    ),
    Case(
        "ban",
        "moderator",
        "PATCH",
        "/api/admin/user/{target}",
        "user.banned",
        body={"is_active": False},
    ),
    Case(
        "unban",
        "admin",
        "PATCH",
        "/api/admin/user/{target}",
        "user.unbanned",
        setup=_banned,
        body={"is_active": True},
    ),
    Case(
        "deletion",
        "admin",
        "DELETE",
        "/api/user/{target}",
        "user.deleted",
        body={"current_password": PASSWORD},
    ),
    Case(
        "profile change",
        "admin",
        "PATCH",
        "/api/user/{target}",
        "user.updated",
        body={"description": "Edited by staff"},
        details={"fields": ["description"]},
    ),
    Case(
        "2FA reset",
        "admin",
        "POST",
        "/api/admin/user/{target}/two-factor/reset",
        "user.2fa_reset",
        setup=_two_factor,
        details={"method": "authenticator"},
    ),
    Case(
        "sign-in lock cleared",
        "moderator",
        "DELETE",
        "/api/admin/user/{target}/login-lock",
        "user.login_lock_cleared",
    ),
    Case(
        "every session ended",
        "moderator",
        "DELETE",
        "/api/admin/user/{target}/sessions",
        "user.sessions_revoked",
        details={"sessions": 1},
    ),
    Case(
        "one session ended",
        "admin",
        "DELETE",
        "/api/admin/user/{target}/sessions/{session}",
        "user.sessions_revoked",
        details={"session": "{session}"},
    ),
    Case(
        "reset link mailed",
        "admin",
        "POST",
        "/api/admin/user/{target}/password-reset",
        "user.password_reset_sent",
    ),
    Case(
        "provider unlinked",
        "admin",
        "DELETE",
        "/api/admin/user/{target}/external-accounts/github",
        "user.provider_unlinked",
        setup=_linked,
        details={"provider": "github"},
    ),
    Case(
        "passkey removed",
        "admin",
        "DELETE",
        "/api/admin/user/{target}/passkeys/{passkey}",
        "user.passkey_removed",
        setup=_passkey,
        details={"passkey": "{passkey}", "name": "Phone"},
    ),
    Case(
        "file uploaded for the user",
        "admin",
        "POST",
        "/api/user/{target}/file",
        "user.file_uploaded",
        upload=("report.txt", b"for you", "text/plain"),
        details={"file_name": "report.txt"},
    ),
    Case(
        "the user's file renamed",
        "admin",
        "PATCH",
        "/api/file/{file}",
        "user.file_updated",
        setup=_file,
        body={"file_name": "renamed.txt"},
        details={"file": "{file}", "file_name": "renamed.txt"},
    ),
    Case(
        "the user's file deleted",
        "admin",
        "DELETE",
        "/api/file/{file}",
        "user.file_deleted",
        setup=_file,
        details={"file": "{file}", "file_name": "notes.txt"},
    ),
    Case(
        "picture set for the user",
        "admin",
        "PUT",
        "/api/user/{target}/pfp",
        "user.picture_changed",
        upload=("face.png", _png(), "image/png"),
    ),
    Case(
        "picture removed",
        "admin",
        "DELETE",
        "/api/user/{target}/pfp",
        "user.picture_removed",
        setup=_picture,
    ),
    Case(
        "flag changed",
        "admin",
        "PATCH",
        "/api/admin/feature-flags",
        "flag.changed",
        body={"add": {"AUDITED_FLAG": [{"userRoles": ["tester"]}]}},
        details={"to": [{"userRoles": ["tester"]}]},
        target_type="flag",
        target_id="AUDITED_FLAG",
    ),
    Case(
        "flag removed",
        "admin",
        "PATCH",
        "/api/admin/feature-flags",
        "flag.removed",
        setup=_flag,
        body={"remove": ["AUDITED_FLAG"]},
        details={"from": False},
        target_type="flag",
        target_id="AUDITED_FLAG",
    ),
]


def _fill(value: Any, names: dict[str, Any]) -> Any:
    """``value`` with ``{name}`` placeholders replaced (whole strings keep the type)."""
    if isinstance(value, str):
        for name, filled in names.items():
            if value == f"{{{name}}}":
                return filled
            value = value.replace(f"{{{name}}}", str(filled))
        return value
    if isinstance(value, dict):
        return {key: _fill(item, names) for key, item in value.items()}
    return value


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_each_staff_action_is_one_row(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff, case: Case
) -> None:
    names: dict[str, Any] = {
        "target": staff.target.uuid,
        "session": _session_of(staff.target_tokens),
        **await case.setup(app, client, staff),
    }
    actor = staff.admin if case.actor == "admin" else staff.moderator
    tokens = staff.admin_tokens if case.actor == "admin" else staff.moderator_tokens
    before = len(await _rows(app))

    response = await client.request(
        case.method,
        _fill(case.path, names),
        headers=_as(tokens),
        json=case.body,
        files={"file": case.upload} if case.upload else None,
    )

    assert response.status_code < 300, response.text
    rows = await _rows(app)
    assert len(rows) == before + 1, [row.action for row in rows[before:]]
    row = rows[-1]
    assert (row.actor_uuid, row.actor_name, row.actor_role) == (
        actor.uuid,
        actor.username,
        case.actor,
    )
    assert row.action == case.action
    if case.target_id is None:
        expected_target = ("user", staff.target.uuid, staff.target.username)
    else:
        expected_target = (case.target_type, case.target_id, case.target_id)
    assert (row.target_type, row.target_id, row.target_display) == expected_target
    assert (row.ip, row.user_agent) == (CLIENT_IP, AGENT)
    assert abs(row.at - now_epoch()) <= 5
    for key, value in _fill(case.details or {}, names).items():
        assert row.details.get(key) == value, row.details


async def test_what_users_do_to_their_own_account_is_not_audited(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff
) -> None:
    own = bearer(staff.target_tokens)
    file_id = await _own_file(client, staff)
    await _picture(app, client, staff)
    assert (
        await client.patch(f"/api/file/{file_id}", json={"description": "x"}, headers=own)
    ).is_success
    assert (await client.delete(f"/api/file/{file_id}", headers=own)).is_success
    assert (await client.delete(f"/api/user/{staff.target.uuid}/pfp", headers=own)).is_success
    changed = await client.patch("/api/users/me", json={"description": "mine"}, headers=own)
    assert changed.is_success, changed.text
    # Staff changing their own profile act as users too.
    mine = await client.patch(
        "/api/users/me", json={"description": "admin"}, headers=bearer(staff.admin_tokens)
    )
    assert mine.is_success
    deleted = await client.request(
        "DELETE",
        f"/api/user/{staff.target.uuid}",
        json={"current_password": PASSWORD},
        headers=own,
    )
    assert deleted.status_code == 204, deleted.text
    assert await _rows(app) == []


# Refused and rolled-back actions leave no row --------------------------------------------


async def test_refused_actions_leave_no_row(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff
) -> None:
    plain, plain_tokens = await user_with_tokens(app, client)
    unverified, _ = await user_with_tokens(app, client)
    target = staff.target.uuid
    admin, moderator = _as(staff.admin_tokens), _as(staff.moderator_tokens)
    refused = [
        # Not allowed at all (403), or not on this user.
        ("PATCH", f"/api/admin/user/{target}", {"is_active": False}, _as(plain_tokens), 403),
        ("PATCH", f"/api/admin/user/{target}", {"roles": ["user"]}, moderator, 403),
        ("PATCH", f"/api/admin/user/{staff.admin.uuid}", {"is_active": False}, moderator, 403),
        ("POST", f"/api/admin/user/{target}/two-factor/reset", None, moderator, 403),
        ("DELETE", f"/api/admin/user/{staff.admin.uuid}/sessions", None, moderator, 403),
        ("PATCH", "/api/admin/feature-flags", {"add": {"X": False}}, moderator, 403),
        ("PATCH", f"/api/user/{target}", {"description": "x"}, moderator, 403),
        # Allowed, but refused by a rule: nothing happened.
        ("POST", f"/api/admin/user/{plain.uuid}/two-factor/reset", None, admin, 409),
        ("POST", f"/api/admin/user/{unverified.uuid}/password-reset", None, admin, 409),
        ("DELETE", f"/api/admin/user/{target}/external-accounts/github", None, admin, 404),
        ("DELETE", f"/api/admin/user/{target}/sessions/{staff.admin.uuid}", None, admin, 404),
        ("PATCH", f"/api/admin/user/{plain.uuid}", {"roles": ["user", "nobody"]}, admin, 422),
        ("PATCH", "/api/admin/feature-flags", {"add": {"LOGIN": False}}, admin, 422),
        ("PATCH", "/api/admin/feature-flags", {"add": {"X": [{"percentOf": 1}]}}, admin, 422),
        ("DELETE", f"/api/user/{target}", {"current_password": "wrong password"}, admin, 400),
        # Nobody there.
        ("PATCH", "/api/admin/user/00000000-0000-4000-8000-000000000001", {}, admin, 404),
    ]
    for method, path, body, headers, status in refused:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == status, (method, path, response.text)
    assert await _rows(app) == []


async def test_a_change_refused_half_way_is_rolled_back_with_its_rows(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The only admin demotes and bans themself in one request: the role change was
    recorded before the ban found the last admin; neither row is kept."""
    admin, tokens = await user_with_tokens(app, client, ALL_ROLES)
    refused = await client.patch(
        f"/api/admin/user/{admin.uuid}",
        json={"roles": ["admin", "user"], "is_active": False},
        headers=_as(tokens),
    )
    assert refused.status_code == 409
    assert refused.json()["code"] == "LAST_ADMIN"
    assert await _rows(app) == []
    me = await client.get("/api/users/me", headers=bearer(tokens))
    assert me.json()["roles"] == list(ALL_ROLES)


@pytest.mark.parametrize("body", [{"is_active": False}, {"roles": ["user"]}])
async def test_two_admins_removing_each_other_leave_one_row(
    app: FastAPI, client: httpx.AsyncClient, body: dict
) -> None:
    """At the same moment: one change wins, and the log holds exactly that one."""
    for _ in range(3):
        async with app.state.session_factory() as db:
            await bulk_write(
                db,
                update(User).where(User.is_active.is_(True)).values(roles=["user"]),
                users=[ALL],
            )
            await db.commit()
        before = len(await _rows(app))
        first, first_tokens = await user_with_tokens(app, client, ALL_ROLES)
        second, second_tokens = await user_with_tokens(app, client, ALL_ROLES)
        responses = await asyncio.gather(
            client.patch(f"/api/admin/user/{second.uuid}", json=body, headers=_as(first_tokens)),
            client.patch(f"/api/admin/user/{first.uuid}", json=body, headers=_as(second_tokens)),
        )
        won = [
            (actor, target)
            for response, actor, target in zip(
                responses, (first, second), (second, first), strict=True
            )
            if response.status_code == 200
        ]
        assert len(won) == 1, [response.text for response in responses]
        rows = (await _rows(app))[before:]
        assert [(row.actor_uuid, row.target_id) for row in rows] == [
            (won[0][0].uuid, won[0][1].uuid)
        ]


async def test_parallel_flag_changes_each_keep_their_row(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff
) -> None:
    names = [f"PARALLEL_{index}" for index in range(6)]
    responses = await asyncio.gather(
        *(
            client.patch(
                "/api/admin/feature-flags",
                json={"add": {name: False}},
                headers=_as(staff.admin_tokens),
            )
            for name in names
        )
    )
    assert [response.status_code for response in responses] == [200] * len(names)
    rows = await _rows(app)
    assert sorted(str(row.target_id) for row in rows) == names
    assert {row.action for row in rows} == {"flag.changed"}


# Reading the log -----------------------------------------------------------------------


async def _record(app: FastAPI, count: int, **values: Any) -> None:
    """``count`` rows written as a service writes them (by the command line)."""
    async with app.state.session_factory() as db:
        for index in range(count):
            record_audit(
                db,
                None,
                values.get("action", "user.banned"),
                AuditTarget("user", values.get("target", f"t{index}"), "someone"),
                ClientInfo(ip="10.0.0.1"),
            )
        await db.commit()


async def _page(client: httpx.AsyncClient, tokens: dict, **params: Any) -> httpx.Response:
    return await client.get("/api/admin/audit", params=params, headers=bearer(tokens))


async def test_who_may_read_the_log(app: FastAPI, client: httpx.AsyncClient, staff: Staff) -> None:
    await _record(app, 1)
    assert (await client.get("/api/admin/audit")).status_code == 401
    for tokens in (staff.target_tokens, staff.moderator_tokens):
        refused = await _page(client, tokens)
        assert refused.status_code == 403
        assert refused.json()["code"] == "FORBIDDEN"
        assert "someone" not in refused.text
    allowed = await _page(client, staff.admin_tokens)
    assert allowed.status_code == 200
    [entry] = allowed.json()["items"]
    assert entry["actor_role"] == "cli"
    assert entry["actor_name"].startswith("cli:")
    assert entry["actor_uuid"] is None
    assert entry["target_display"] == "someone"


async def test_cursor_pages_list_each_row_once_while_rows_are_added(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff
) -> None:
    await _record(app, 23)
    existing = [row.id for row in reversed(await _rows(app))]  # newest first
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = (await _page(client, staff.admin_tokens, **params)).json()
        seen += [entry["id"] for entry in page["items"]]
        # Rows recorded between two pages are newer than every cursor: not in this walk.
        await _record(app, 2, action="user.unbanned")
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == existing
    assert len(seen) == 23


async def test_rows_of_one_second_keep_their_order_across_pages(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff
) -> None:
    """Rows of the same ``at`` are ordered by id, so a page boundary between them
    neither repeats nor skips one."""
    async with app.state.session_factory() as db:
        for index in range(7):
            db.add(
                AuditEvent(
                    at=1_000,
                    actor_name="someone",
                    actor_role="admin",
                    action="user.banned",
                    target_type="user",
                    target_id=f"same-second-{index}",
                    details={},
                )
            )
        await db.commit()
    first = (await _page(client, staff.admin_tokens, limit=3)).json()
    second = (await _page(client, staff.admin_tokens, limit=3, cursor=first["next_cursor"])).json()
    third = (await _page(client, staff.admin_tokens, limit=3, cursor=second["next_cursor"])).json()
    ids = [entry["id"] for page in (first, second, third) for entry in page["items"]]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 7
    assert third["next_cursor"] is None


async def test_filters(app: FastAPI, client: httpx.AsyncClient, staff: Staff) -> None:
    admin = _as(staff.admin_tokens)
    target = staff.target.uuid
    for body in ({"roles": ["user", "tester"]}, {"is_active": False}, {"is_active": True}):
        changed = await client.patch(f"/api/admin/user/{target}", json=body, headers=admin)
        assert changed.status_code == 200, changed.text
    flags = await client.patch(
        "/api/admin/feature-flags", json={"add": {"ONE": False}}, headers=admin
    )
    assert flags.status_code == 200
    await _record(app, 1, action="user.banned", target="someone-else")
    async with app.state.session_factory() as db:
        await db.execute(update(AuditEvent).where(AuditEvent.action == "flag.changed").values(at=5))
        await db.commit()

    async def actions(**params: Any) -> list[str]:
        response = await _page(client, staff.admin_tokens, **params)
        assert response.status_code == 200, response.text
        return [entry["action"] for entry in response.json()["items"]]

    newest_first = ["user.banned", "user.unbanned", "user.banned", "user.role_changed"]
    assert await actions() == [*newest_first, "flag.changed"]
    assert await actions(action="user.banned") == ["user.banned", "user.banned"]
    assert await actions(action="user.*") == newest_first
    assert await actions(action="user.ban*") == ["user.banned", "user.banned"]
    assert await actions(action="flag.*") == ["flag.changed"]
    assert await actions(action="user_*") == []  # "_" is a character, not a wildcard
    assert await actions(target=target) == newest_first[1:]
    assert await actions(target=target.upper()) == newest_first[1:]  # one UUID
    assert await actions(target="ONE", target_type="flag") == ["flag.changed"]
    assert await actions(actor=staff.admin.uuid) == [*newest_first[1:], "flag.changed"]
    assert await actions(actor=staff.admin.username) == [*newest_first[1:], "flag.changed"]
    assert (await actions(actor=staff.moderator.uuid)) == []
    assert await actions(until=5) == ["flag.changed"]
    assert await actions(since=6) == newest_first
    assert await actions(since=5, until=5) == ["flag.changed"]
    assert (
        await actions(action="user.*", target=target, actor=staff.admin.uuid) == (newest_first[1:])
    )


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not a cursor"},
        {"cursor": "MTIzNDU2Nzg5MA"},  # one part only
        {"cursor": "YWJjLmRlZg"},  # "abc.def": not numbers
        # "1" and 30 zeros, ".1": a number no BIGINT holds (was a 500)
        {"cursor": "MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMC4x"},
        {"action": "USER.BANNED"},
        {"action": "user.%"},
        {"action": "*"},
        {"target_type": "User"},
        {"since": -1},
        {"until": 10**13},
        {"limit": 0},
        {"limit": 101},
        {"actor": "nul\x00"},
        {"target": "x" * 256},
    ],
)
async def test_bad_queries_are_422(
    client: httpx.AsyncClient, staff: Staff, params: dict[str, Any]
) -> None:
    response = await _page(client, staff.admin_tokens, **params)
    assert response.status_code == 422, response.text
    if "cursor" in params:
        assert response.json()["code"] == "INVALID_CURSOR"


async def test_a_cursor_of_the_users_list_is_refused(
    client: httpx.AsyncClient, staff: Staff
) -> None:
    users = await client.get("/api/users", params={"limit": 1}, headers=bearer(staff.admin_tokens))
    cursor = users.json()["next_cursor"]
    assert cursor is not None
    refused = await _page(client, staff.admin_tokens, cursor=cursor)
    assert refused.status_code == 422
    assert refused.json()["code"] == "INVALID_CURSOR"


# Retention -------------------------------------------------------------------------------


@pytest.mark.parametrize(("days", "kept"), [(30, 2), (0, 3)])
async def test_retention_job_deletes_rows_past_the_retention(
    app: FastAPI, days: int, kept: int
) -> None:
    app.state.settings.AUDIT_RETENTION_DAYS = days
    await _record(app, 3)
    day = 86400
    async with app.state.session_factory() as db:
        ids = [row.id for row in await _rows(app)]
        for row_id, age in zip(ids, (31 * day, 29 * day, 0), strict=True):
            await db.execute(
                update(AuditEvent).where(AuditEvent.id == row_id).values(at=now_epoch() - age)
            )
        await db.commit()
    result = await app.state.scheduler.run("trim_audit_log", force=True)
    assert result == {"audit_events": 3 - kept}
    assert [row.id for row in await _rows(app)] == ids[3 - kept :]


# No secrets ------------------------------------------------------------------------------


async def test_no_secret_reaches_the_log(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff, smtp_server: MailCatcher
) -> None:
    sent = await client.post(
        f"/api/admin/user/{staff.target.uuid}/password-reset", headers=_as(staff.admin_tokens)
    )
    assert sent.status_code == 202, sent.text
    token = token_in(link_in(await smtp_server.wait_for(staff.target.email)))
    logged = await _page(client, staff.admin_tokens)
    assert token not in logged.text
    assert token[:16] not in json.dumps([row.details for row in await _rows(app)])
    for secret in (staff.admin_tokens["access_token"], PASSWORD):
        assert secret not in logged.text

    async with app.state.session_factory() as db:
        for details in ({"token": "x"}, {"new_password": "x"}, {"nested": [{"client_secret": 1}]}):
            with pytest.raises(ValueError, match="never holds secrets"):
                record_audit(db, None, "user.updated", AuditTarget("user"), None, details)
        with pytest.raises(ValueError, match="dotted"):
            record_audit(db, None, "Banned", AuditTarget("user"))


# The command line ------------------------------------------------------------------------


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    result = run_cli(settings_env(settings), *args)
    assert result.returncode == 0, result.stderr
    return result


async def test_command_line_actions_are_recorded_as_the_operator(
    app: FastAPI, settings: Settings, client: httpx.AsyncClient, staff: Staff, tmp_path: Path
) -> None:
    target = staff.target
    await _two_factor(app, client, staff)
    _cli(settings, "users", "reset-2fa", target.username)
    _cli(settings, "users", "revoke-sessions", target.email)
    _cli(settings, "flags", "set", "LOGIN", "true")
    imported = tmp_path / "flags.json"
    imported.write_text('{"IMPORTED": false}')
    _cli(settings, "flags", "import", str(imported))
    _cli(
        settings,
        "create-admin",
        "--username",
        "second_admin",
        "--email",
        "second@example.com",
        "--password",
        PASSWORD,
    )
    rows = await _rows(app)
    assert [(row.action, row.target_display) for row in rows] == [
        ("user.2fa_reset", target.username),
        ("user.sessions_revoked", target.username),
        ("flag.changed", "LOGIN"),
        ("flag.changed", "IMPORTED"),
        ("user.created", "second_admin"),
    ]
    for row in rows:
        assert row.actor_uuid is None
        assert row.actor_role == "cli"
        assert row.actor_name.startswith("cli:")
        assert row.ip is None
    assert rows[-1].details == {"roles": list(ALL_ROLES)}
    assert rows[2].details["to"] is True

    # The command line reads the log too, with the API's filters and cursors.
    listed = json.loads(_cli(settings, "audit", "--action", "user.*", "--limit", "2").stdout)
    assert [entry["action"] for entry in listed["items"]] == [
        "user.created",
        "user.sessions_revoked",
    ]
    rest = json.loads(
        _cli(settings, "audit", "--action", "user.*", "--cursor", listed["next_cursor"]).stdout
    )
    assert [entry["action"] for entry in rest["items"]] == ["user.2fa_reset"]
    assert rest["next_cursor"] is None
    # The same rows through the API.
    response = await _page(client, staff.admin_tokens, actor=rows[0].actor_name)
    assert len(response.json()["items"]) == 5


async def test_first_admin_from_the_settings_is_recorded(settings: Settings) -> None:
    from app.main import create_app

    configured = settings.model_copy(
        update={
            "FIRST_ADMIN_USERNAME": "boot_admin",
            "FIRST_ADMIN_EMAIL": "boot@example.com",
            "FIRST_ADMIN_PASSWORD": PASSWORD,
        }
    )
    application = create_app(configured)
    async with (
        application.router.lifespan_context(application),
        application.state.session_factory() as db,
    ):
        row = await db.scalar(select(AuditEvent))
        count = await db.scalar(select(func.count()).select_from(AuditEvent))
    assert count == 1
    assert row is not None
    assert (row.actor_name, row.actor_role, row.action, row.target_display) == (
        "service",
        "system",
        "user.created",
        "boot_admin",
    )


async def test_reading_is_not_recorded(
    app: FastAPI, client: httpx.AsyncClient, staff: Staff
) -> None:
    admin = bearer(staff.admin_tokens)
    target = staff.target.uuid
    for path in (
        "/api/users",
        f"/api/user/{target}",
        f"/api/user/{target}/history",
        f"/api/admin/user/{target}/sessions",
        f"/api/admin/user/{target}/external-accounts",
        f"/api/admin/user/{target}/passkeys",
        "/api/admin/feature-flags",
        "/api/admin/audit",
    ):
        assert (await client.get(path, headers=admin)).status_code == 200, path
    await login(client, staff.admin.username)
    assert await _rows(app) == []
