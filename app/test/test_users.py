"""Users API: profiles and views, updates, blocking, listing, history, bans, deletion."""

from __future__ import annotations

import asyncio
import re
import uuid as uuid_module
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select, text, update

from app.core.auth_cache import ALL, bulk_write
from app.models import Session, User
from app.services import deletion
from app.services.history import HISTORY_MAX_ENTRIES, record_event
from app.test.factories import (
    PASSWORD,
    bearer,
    create_user,
    delete_user,
    history,
    login,
    user_with_tokens,
)

ALL_ROLES = ("admin", "moderator", "tester", "user")
PUBLIC_KEYS = {"uuid", "username", "display_name", "description", "picture_url", "created_at"}
PRIVATE_KEYS = PUBLIC_KEYS | {
    "email",
    "email_verified",
    "pending_email",
    "roles",
    "otp_method",
    "is_active",
    "is_external_only",
    "updated_at",
}


@pytest.fixture
async def people(app: FastAPI, client: httpx.AsyncClient) -> dict[str, tuple[User, dict]]:
    """An admin (holding every role), a moderator, and two plain users: alice and bob."""
    return {
        "admin": await user_with_tokens(app, client, ALL_ROLES),
        "moderator": await user_with_tokens(app, client, ("moderator", "user")),
        "alice": await user_with_tokens(app, client),
        "bob": await user_with_tokens(app, client),
    }


async def _row(app: FastAPI, user_uuid: str) -> User | None:
    async with app.state.session_factory() as session:
        return await session.get(User, user_uuid)


# Reading -------------------------------------------------------------------------------


async def test_public_and_private_views(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    _, bob_tokens = people["bob"]
    _, moderator_tokens = people["moderator"]
    seen_by_bob = (await client.get(f"/api/user/{alice.uuid}", headers=bearer(bob_tokens))).json()
    assert set(seen_by_bob) == PUBLIC_KEYS
    # Signed for an <img> (test_picture_links.py).
    assert seen_by_bob["picture_url"].startswith(
        f"http://localhost:8000/api/user/{alice.uuid}/pfp?v="
    )
    seen_by_self = (
        await client.get(f"/api/user/{alice.uuid}", headers=bearer(alice_tokens))
    ).json()
    assert set(seen_by_self) == PRIVATE_KEYS
    seen_by_staff = (
        await client.get(f"/api/user/{alice.uuid}", headers=bearer(moderator_tokens))
    ).json()
    assert seen_by_staff["email"] == alice.email
    assert "otp_secret" not in seen_by_staff
    assert "hashed_password" not in seen_by_staff


async def test_unknown_and_malformed_uuids(client: httpx.AsyncClient, people) -> None:
    _, tokens = people["alice"]
    unknown = await client.get(f"/api/user/{uuid_module.uuid4()}", headers=bearer(tokens))
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "User not found", "code": "USER_NOT_FOUND"}
    for bad in ("not-a-uuid", "..%2F..%2Fetc%2Fpasswd", "1"):
        response = await client.get(f"/api/user/{bad}", headers=bearer(tokens))
        assert response.status_code in (404, 422), bad
        assert set(response.json()) >= {"detail", "code"}


async def test_a_blocked_user_cannot_see_the_blocker(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    bob, bob_tokens = people["bob"]
    _, moderator_tokens = people["moderator"]
    blocked = await client.post(f"/api/user/{bob.uuid}/block", headers=bearer(alice_tokens))
    assert blocked.status_code == 204
    hidden = await client.get(f"/api/user/{alice.uuid}", headers=bearer(bob_tokens))
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "USER_NOT_FOUND"
    # Alice still sees Bob; staff still see Alice.
    assert (
        await client.get(f"/api/user/{bob.uuid}", headers=bearer(alice_tokens))
    ).status_code == 200
    staff = await client.get(f"/api/user/{alice.uuid}", headers=bearer(moderator_tokens))
    assert staff.status_code == 200
    unblocked = await client.delete(f"/api/user/{bob.uuid}/block", headers=bearer(alice_tokens))
    assert unblocked.status_code == 204
    assert (
        await client.get(f"/api/user/{alice.uuid}", headers=bearer(bob_tokens))
    ).status_code == 200


async def test_blocking_oneself_or_nobody(client: httpx.AsyncClient, people) -> None:
    alice, tokens = people["alice"]
    self_block = await client.post(f"/api/user/{alice.uuid}/block", headers=bearer(tokens))
    assert self_block.status_code == 422
    assert self_block.json()["code"] == "INVALID_BLOCK"
    ghost = await client.post(f"/api/user/{uuid_module.uuid4()}/block", headers=bearer(tokens))
    assert ghost.status_code == 404


async def test_inactive_users_are_hidden_from_non_staff(
    app: FastAPI, client: httpx.AsyncClient, people
) -> None:
    _, alice_tokens = people["alice"]
    _, moderator_tokens = people["moderator"]
    banned = await user_with_tokens(app, client)
    async with app.state.session_factory() as session:
        row = await session.get(User, banned[0].uuid)
        row.is_active = False
        await session.commit()
    assert (
        await client.get(f"/api/user/{banned[0].uuid}", headers=bearer(alice_tokens))
    ).status_code == 404
    assert (
        await client.get(f"/api/user/{banned[0].uuid}", headers=bearer(moderator_tokens))
    ).status_code == 200


# Writes and IDOR -----------------------------------------------------------------------


async def test_a_user_cannot_write_to_another(client: httpx.AsyncClient, people) -> None:
    alice, _ = people["alice"]
    bob, bob_tokens = people["bob"]
    headers = bearer(bob_tokens)
    attempts = [
        ("PATCH", f"/api/user/{alice.uuid}", {"description": "pwned"}),
        ("DELETE", f"/api/user/{alice.uuid}", None),
        ("PATCH", f"/api/admin/user/{alice.uuid}", {"is_active": False}),
        ("PATCH", f"/api/admin/user/{alice.uuid}", {"roles": ["admin"]}),
        ("GET", f"/api/user/{alice.uuid}/history", None),
        ("GET", "/api/users", None),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code in (403, 404), (method, path, response.text)
        assert set(response.json()) == {"detail", "code"}
    # Once Alice blocks Bob, her account is "not found" for him.
    _, alice_tokens = people["alice"]
    await client.post(f"/api/user/{bob.uuid}/block", headers=bearer(alice_tokens))
    for method, path, body in attempts[:2] + attempts[4:5]:
        response = await client.request(method, path, json=body, headers=headers)
        assert response.status_code == 404, (method, path)
    me = await client.get("/api/users/me", headers=bearer(alice_tokens))
    assert me.json()["description"] is None
    assert me.json()["roles"] == ["user"]


async def test_update_self_and_as_admin(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    _, admin_tokens = people["admin"]
    own = await client.patch(
        f"/api/user/{alice.uuid}", json={"description": "mine"}, headers=bearer(alice_tokens)
    )
    assert own.status_code == 200
    assert own.json()["description"] == "mine"
    by_admin = await client.patch(
        f"/api/user/{alice.uuid}", json={"description": "moderated"}, headers=bearer(admin_tokens)
    )
    assert by_admin.json()["description"] == "moderated"
    not_whitelisted = await client.patch(
        f"/api/user/{alice.uuid}", json={"roles": ["admin"]}, headers=bearer(admin_tokens)
    )
    assert not_whitelisted.status_code == 422


# Listing -------------------------------------------------------------------------------


async def test_list_users_is_for_staff(client: httpx.AsyncClient, people) -> None:
    _, alice_tokens = people["alice"]
    _, moderator_tokens = people["moderator"]
    assert (await client.get("/api/users", headers=bearer(alice_tokens))).status_code == 403
    page = await client.get("/api/users", headers=bearer(moderator_tokens))
    assert page.status_code == 200
    body = page.json()
    assert body["total"] == 4
    assert body["offset"] == 0
    assert body["limit"] == 50
    assert len(body["items"]) == 4
    assert set(body["items"][0]) == PRIVATE_KEYS


async def test_list_users_filters(app: FastAPI, client: httpx.AsyncClient, people) -> None:
    _, admin_tokens = people["admin"]
    alice, _ = people["alice"]

    async def listed(**params) -> list[str]:
        response = await client.get("/api/users", params=params, headers=bearer(admin_tokens))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == len(body["items"])
        return sorted(item["username"] for item in body["items"])

    assert await listed(search=alice.username.upper()) == [alice.username]
    assert await listed(search=alice.email.split("@")[0]) == [alice.username]
    assert await listed(search="100%_") == []
    assert await listed(role="moderator") == sorted(
        [people["admin"][0].username, people["moderator"][0].username]
    )
    async with app.state.session_factory() as session:
        row = await session.get(User, alice.uuid)
        row.is_active = False
        await session.commit()
    assert await listed(is_active="false") == [alice.username]
    bad = await client.get("/api/users", params={"limit": 1000}, headers=bearer(admin_tokens))
    assert bad.status_code == 422
    unknown_role = await client.get(
        "/api/users", params={"role": "wizard"}, headers=bearer(admin_tokens)
    )
    assert unknown_role.status_code == 422


async def test_walking_ten_thousand_users_page_by_page(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    moderator, tokens = await user_with_tokens(app, client, ("moderator", "user"))
    rows = [
        {
            "uuid": str(uuid_module.uuid4()),
            "username": f"bulk_{i}",
            "display_name": f"bulk_{i}",
            "email": f"bulk_{i}@example.com",
            "email_verified": False,
            "otp_method": "none",
            "roles": ["user"],
            "created_at": 1_700_000_000 + i // 7,  # many share a second: ties must not matter
            "updated_at": 1_700_000_000,
            "is_external_only": False,
            "is_active": True,
            "blocked_uuids": [],
        }
        for i in range(10_000)
    ]
    async with app.state.session_factory() as session:
        await session.execute(insert(User), rows)
        await session.commit()
    seen: list[str] = []
    offset = 0
    while True:
        response = await client.get(
            "/api/users", params={"offset": offset, "limit": 100}, headers=bearer(tokens)
        )
        body = response.json()
        assert body["total"] == 10_001
        if not body["items"]:
            break
        seen.extend(item["uuid"] for item in body["items"])
        offset += 100
    assert len(seen) == 10_001
    assert set(seen) == {row["uuid"] for row in rows} | {moderator.uuid}

    # The same walk by cursor: the same users in the same order, no count after the
    # first page, and the last page says there is none after it.
    by_cursor: list[str] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = await client.get("/api/users", params=params, headers=bearer(tokens))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["total"] == (10_001 if "cursor" not in params else None)
        by_cursor.extend(item["uuid"] for item in body["items"])
        if body["next_cursor"] is None:
            break
        params = {"limit": 100, "cursor": body["next_cursor"]}
    assert by_cursor == seen

    # A user created while walking, ordered after the cursor, is not skipped.
    first = await client.get("/api/users", params={"limit": 5}, headers=bearer(tokens))
    late, _ = await user_with_tokens(app, client)
    rest: list[str] = []
    cursor = first.json()["next_cursor"]
    while cursor:
        body = (
            await client.get(
                "/api/users", params={"limit": 100, "cursor": cursor}, headers=bearer(tokens)
            )
        ).json()
        rest.extend(item["uuid"] for item in body["items"])
        cursor = body["next_cursor"]
    assert rest[-1] == late.uuid
    assert len(rest) == 10_001 - 5 + 1


async def test_the_first_page_can_skip_the_count(client: httpx.AsyncClient, people) -> None:
    _, admin_tokens = people["admin"]
    page = await client.get(
        "/api/users", params={"with_total": "false", "limit": 3}, headers=bearer(admin_tokens)
    )
    assert page.json()["total"] is None
    assert len(page.json()["items"]) == 3
    assert page.json()["next_cursor"]
    last = await client.get(
        "/api/users", params={"with_total": "false", "limit": 4}, headers=bearer(admin_tokens)
    )
    assert last.json()["next_cursor"] is None  # exactly four users: nothing after


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"cursor": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"cursor": "MTIzLm5vdC1hLXV1aWQ"}, "INVALID_CURSOR"),  # "123.not-a-uuid"
        ({"cursor": "//8"}, "INVALID_CURSOR"),  # not UTF-8
        # a created_at no BIGINT holds (was a 500)
        (
            {
                "cursor": "MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMC4w"
                "MDAwMDAwMC0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMDAwMDA"
            },
            "INVALID_CURSOR",
        ),
        ({"cursor": "x" * 201}, "VALIDATION_ERROR"),
        (
            {"cursor": "MTIzLjAwMDAwMDAwLTAwMDAtNDAwMC04MDAwLTAwMDAwMDAwMDAwMA", "offset": 5},
            "CURSOR_WITH_OFFSET",
        ),
    ],
)
async def test_a_bad_cursor_is_a_clear_422(
    client: httpx.AsyncClient, people, params: dict[str, Any], code: str
) -> None:
    _, admin_tokens = people["admin"]
    response = await client.get("/api/users", params=params, headers=bearer(admin_tokens))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


async def test_search_matches_the_start_of_names_and_emails(
    app: FastAPI, client: httpx.AsyncClient, people
) -> None:
    _, admin_tokens = people["admin"]
    await create_user(
        app.state.session_factory,
        username="zoe_search",
        display_name="Marie Curie",
        email="radium@lab.example",
    )

    async def found(search: str) -> list[str]:
        response = await client.get(
            "/api/users", params={"search": search}, headers=bearer(admin_tokens)
        )
        assert response.status_code == 200, response.text
        return [item["username"] for item in response.json()["items"]]

    assert await found("zoe_") == ["zoe_search"]  # username
    assert await found("ZOE_SEA") == ["zoe_search"]
    assert await found("marie c") == ["zoe_search"]  # display name, any case
    assert await found("MARIE") == ["zoe_search"]
    assert await found("radium@") == ["zoe_search"]  # email
    assert await found("curie") == []  # the middle of a name is not its start
    assert await found("search") == []
    assert await found("zoe%") == []  # LIKE's wildcards are plain characters
    assert await found("z_e") == []
    assert await found("\U0010ffff".encode().decode("unicode_escape")) == []
    assert await found("zoé") == []


@pytest.mark.parametrize(
    ("filters", "indexes"),
    [
        ({"cursor": True}, {"ix_user_created_at_uuid"}),
        (
            {"search": "bulk_77"},
            {
                "postgresql": {
                    "ix_user_username_pattern",
                    "ix_user_email_pattern",
                    "ix_user_display_name_lower",
                },
                "sqlite": {
                    "sqlite_autoindex_user_2",  # username
                    "sqlite_autoindex_user_3",  # email
                    "ix_user_display_name_lower",
                },
            },
        ),
    ],
)
async def test_pages_and_searches_are_answered_by_indexes(
    app: FastAPI, filters: dict[str, Any], indexes: Any
) -> None:
    """The query a cursor page or a search sends seeks through indexes instead of
    reading the whole table: what keeps them as cheap at a million users as at ten
    thousand (the planner is asked about the very statement the service builds)."""
    from app.services import directory

    rows = [
        {
            "uuid": str(uuid_module.uuid4()),
            "username": f"bulk_{i}",
            "display_name": f"Bulk {i}",
            "email": f"bulk_{i}@example.com",
            "roles": ["user"],
            "created_at": 1_700_000_000 + i,
            "updated_at": 1_700_000_000,
            "blocked_uuids": [],
        }
        for i in range(10_000)
    ]
    async with app.state.session_factory() as session:
        await session.execute(insert(User), rows)
        await session.commit()
        dialect = session.get_bind().dialect.name
        await session.execute(text("ANALYZE"))
        query, _ = directory.listing_query(session, search=filters.get("search"))
        if filters.get("cursor"):
            last = await session.get(User, rows[5_000]["uuid"])
            assert last is not None
            query = directory.after(query, directory.encode_cursor(last))
        sql = str(
            query.limit(51).compile(
                dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}
            )
        )
        explain = "EXPLAIN " if dialect == "postgresql" else "EXPLAIN QUERY PLAN "
        plan = "\n".join(str(row) for row in (await session.execute(text(explain + sql))).all())
    wanted = indexes[dialect] if isinstance(indexes, dict) else indexes
    for index in wanted:
        assert index in plan, plan
    assert "Seq Scan" not in plan, plan
    assert not re.search(r"SCAN user(?! USING)", plan), plan


# History -------------------------------------------------------------------------------


async def test_history_is_for_the_owner_and_staff(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    _, bob_tokens = people["bob"]
    _, moderator_tokens = people["moderator"]
    await client.patch("/api/users/me", json={"description": "x"}, headers=bearer(alice_tokens))
    own = await client.get(f"/api/user/{alice.uuid}/history", headers=bearer(alice_tokens))
    assert own.status_code == 200
    items = own.json()["items"]
    assert [item["action"] for item in items] == ["profile_updated", "login"]
    assert items[0]["by"] == alice.uuid
    assert items[0]["ip"] == "127.0.0.1"
    assert items[0]["details"] == {"fields": ["description"]}
    staff = await client.get(f"/api/user/{alice.uuid}/history", headers=bearer(moderator_tokens))
    assert staff.json()["total"] == 2
    other = await client.get(f"/api/user/{alice.uuid}/history", headers=bearer(bob_tokens))
    assert other.status_code == 403


async def test_parallel_events_are_all_recorded(
    app: FastAPI, client: httpx.AsyncClient, people
) -> None:
    """Ten failed logins at once leave ten entries (a list rewritten per event lost nine)."""
    alice, alice_tokens = people["alice"]
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/auth/login", data={"username": alice.username, "password": f"wrong {i:04}"}
            )
            for i in range(10)
        )
    )
    assert [response.status_code for response in responses] == [401] * 10
    events = await history(app.state.session_factory, alice.uuid)
    assert [event.action for event in events].count("login_failed") == 10
    page = await client.get(f"/api/user/{alice.uuid}/history", headers=bearer(alice_tokens))
    assert page.json()["total"] == len(events)


async def test_history_names_the_admin_who_edited(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    admin, admin_tokens = people["admin"]
    edited = await client.patch(
        f"/api/user/{alice.uuid}", json={"description": "by staff"}, headers=bearer(admin_tokens)
    )
    assert edited.status_code == 200
    page = await client.get(f"/api/user/{alice.uuid}/history", headers=bearer(alice_tokens))
    newest = page.json()["items"][0]
    assert (newest["action"], newest["by"]) == ("profile_updated", admin.uuid)


async def test_owners_do_not_see_the_address_staff_acted_from(
    client: httpx.AsyncClient, people
) -> None:
    alice, alice_tokens = people["alice"]
    _, admin_tokens = people["admin"]
    await client.patch(
        f"/api/user/{alice.uuid}", json={"description": "by staff"}, headers=bearer(admin_tokens)
    )
    url = f"/api/user/{alice.uuid}/history"
    own = (await client.get(url, headers=bearer(alice_tokens))).json()["items"]
    assert [(item["action"], item["ip"]) for item in own] == [
        ("profile_updated", None),  # the admin's address is the admin's
        ("login", "127.0.0.1"),
    ]
    staff = (await client.get(url, headers=bearer(admin_tokens))).json()["items"]
    assert staff[0]["ip"] == "127.0.0.1"


async def test_a_file_change_is_in_the_owners_history(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    admin, admin_tokens = people["admin"]
    upload = await client.post(
        "/api/file",
        files={"file": ("plan.txt", b"plan", "text/plain")},
        headers=bearer(alice_tokens),
    )
    file_id = upload.json()["id"]
    await client.patch(
        f"/api/file/{file_id}", json={"description": "seen"}, headers=bearer(admin_tokens)
    )
    await client.delete(f"/api/file/{file_id}", headers=bearer(admin_tokens))
    items = (
        await client.get(f"/api/user/{alice.uuid}/history", headers=bearer(alice_tokens))
    ).json()["items"]
    assert [(item["action"], item["by"]) for item in items[:2]] == [
        ("file_deleted", admin.uuid),
        ("file_updated", admin.uuid),
    ]


async def test_history_pages_newest_first(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    for i in range(60):
        await client.patch(
            "/api/users/me", json={"description": f"v{i}"}, headers=bearer(alice_tokens)
        )
    url = f"/api/user/{alice.uuid}/history"
    first = (await client.get(url, headers=bearer(alice_tokens))).json()
    second = (await client.get(f"{url}?offset=50&limit=50", headers=bearer(alice_tokens))).json()
    assert first["total"] == second["total"] == 61  # 60 edits and the login
    assert len(first["items"]) == 50
    assert len(second["items"]) == 11
    assert first["items"][0]["details"] == {"fields": ["description"]}
    assert first["items"][0]["at"] >= first["items"][-1]["at"]
    assert second["items"][-1]["action"] == "login"


async def test_retention_keeps_the_newest_entries(
    app: FastAPI, client: httpx.AsyncClient, people
) -> None:
    alice, alice_tokens = people["alice"]
    bob, _ = people["bob"]
    async with app.state.session_factory() as session:
        for i in range(HISTORY_MAX_ENTRIES + 10):
            record_event(session, alice.uuid, "test_event", details={"n": i})
        await session.commit()
    result = await app.state.scheduler.run("trim_history", force=True)
    assert result == {"events": 11}  # ten test events and the login, the oldest
    page = (
        await client.get(f"/api/user/{alice.uuid}/history", headers=bearer(alice_tokens))
    ).json()
    assert page["total"] == HISTORY_MAX_ENTRIES
    assert page["items"][0]["details"] == {"n": HISTORY_MAX_ENTRIES + 9}
    # Other users' short histories are untouched.
    assert [event.action for event in await history(app.state.session_factory, bob.uuid)] == [
        "login"
    ]


# Roles and bans ------------------------------------------------------------------------


async def test_admin_changes_roles(client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    _, admin_tokens = people["admin"]
    _, moderator_tokens = people["moderator"]
    promoted = await client.patch(
        f"/api/admin/user/{alice.uuid}",
        json={"roles": ["moderator", "user"]},
        headers=bearer(admin_tokens),
    )
    assert promoted.status_code == 200
    assert promoted.json()["roles"] == ["moderator", "user"]
    # Now a moderator, Alice may list users.
    assert (await client.get("/api/users", headers=bearer(alice_tokens))).status_code == 200
    by_moderator = await client.patch(
        f"/api/admin/user/{alice.uuid}", json={"roles": ["user"]}, headers=bearer(moderator_tokens)
    )
    assert by_moderator.status_code == 403


async def test_nobody_gives_a_role_they_do_not_hold(
    app: FastAPI, client: httpx.AsyncClient, people
) -> None:
    alice, _ = people["alice"]
    _, narrow_admin_tokens = await user_with_tokens(app, client, ("admin", "user"))
    refused = await client.patch(
        f"/api/admin/user/{alice.uuid}",
        json={"roles": ["tester", "user"]},
        headers=bearer(narrow_admin_tokens),
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "ROLE_NOT_HELD"
    row = await _row(app, alice.uuid)
    assert row is not None
    assert row.roles == ["user"]


async def test_the_last_admin_stays(app: FastAPI, client: httpx.AsyncClient, people) -> None:
    admin, admin_tokens = people["admin"]
    for body in ({"roles": ["user"]}, {"is_active": False}):
        response = await client.patch(
            f"/api/admin/user/{admin.uuid}", json=body, headers=bearer(admin_tokens)
        )
        assert response.status_code == 409, body
        assert response.json()["code"] == "LAST_ADMIN"
    deleted = await delete_user(client, admin.uuid, admin_tokens)
    assert deleted.status_code == 409
    # With a second admin, the first may step down.
    second, _ = await user_with_tokens(app, client, ALL_ROLES)
    response = await client.patch(
        f"/api/admin/user/{admin.uuid}", json={"roles": ["user"]}, headers=bearer(admin_tokens)
    )
    assert response.status_code == 200
    assert second.uuid


@pytest.mark.parametrize("body", [{}, {"is_active": True}, {"roles": ["user"]}])
async def test_a_no_op_admin_change_shows_nothing_to_a_plain_user(
    client: httpx.AsyncClient, people, body: dict
) -> None:
    """A body that changes nothing used to skip the permission check and answer 200
    with the target's private view."""
    alice, alice_tokens = people["alice"]
    bob, bob_tokens = people["bob"]
    response = await client.patch(
        f"/api/admin/user/{alice.uuid}", json=body, headers=bearer(bob_tokens)
    )
    assert response.status_code == 403
    assert alice.email not in response.text
    # Hidden targets (who blocked the caller, or banned) stay hidden: 404.
    await client.post(f"/api/user/{bob.uuid}/block", headers=bearer(alice_tokens))
    blocked = await client.patch(
        f"/api/admin/user/{alice.uuid}", json=body, headers=bearer(bob_tokens)
    )
    assert blocked.status_code == 404
    assert alice.email not in blocked.text


async def test_a_no_op_admin_change_on_a_banned_user(client: httpx.AsyncClient, people) -> None:
    alice, _ = people["alice"]
    _, bob_tokens = people["bob"]
    _, moderator_tokens = people["moderator"]
    banned = await client.patch(
        f"/api/admin/user/{alice.uuid}", json={"is_active": False}, headers=bearer(moderator_tokens)
    )
    assert banned.status_code == 200
    for body in ({}, {"is_active": False}):
        response = await client.patch(
            f"/api/admin/user/{alice.uuid}", json=body, headers=bearer(bob_tokens)
        )
        assert response.status_code == 404
        assert alice.email not in response.text


async def test_an_empty_admin_change_is_for_who_could_change_something(
    client: httpx.AsyncClient, people
) -> None:
    admin, _ = people["admin"]
    alice, _ = people["alice"]
    _, moderator_tokens = people["moderator"]
    # A moderator may ban Alice, so an empty body shows her; not an admin.
    shown = await client.patch(
        f"/api/admin/user/{alice.uuid}", json={}, headers=bearer(moderator_tokens)
    )
    assert shown.status_code == 200
    assert shown.json()["email"] == alice.email
    refused = await client.patch(
        f"/api/admin/user/{admin.uuid}", json={}, headers=bearer(moderator_tokens)
    )
    assert refused.status_code == 403
    assert admin.email not in refused.text


@pytest.mark.parametrize("body", [{"is_active": False}, {"roles": ["user"]}])
async def test_two_admins_removing_each_other_leave_one(
    app: FastAPI, client: httpx.AsyncClient, body: dict
) -> None:
    """Two admins banning (or demoting) each other at the same moment: one wins."""
    for _ in range(3):
        async with app.state.session_factory() as session:
            await bulk_write(
                session,
                update(User).where(User.is_active.is_(True)).values(roles=["user"]),
                users=[ALL],
            )
            await session.commit()
        first, first_tokens = await user_with_tokens(app, client, ALL_ROLES)
        second, second_tokens = await user_with_tokens(app, client, ALL_ROLES)
        responses = await asyncio.gather(
            client.patch(f"/api/admin/user/{second.uuid}", json=body, headers=bearer(first_tokens)),
            client.patch(f"/api/admin/user/{first.uuid}", json=body, headers=bearer(second_tokens)),
        )
        codes = sorted(response.status_code for response in responses)
        assert codes[0] == 200, [response.text for response in responses]
        # The loser is refused: LAST_ADMIN, or its token already ended by a ban, or
        # its admin role already gone when its own request was checked.
        assert codes[1] in (401, 403, 409), [response.text for response in responses]
        async with app.state.session_factory() as session:
            admins = [
                user
                for user in await session.scalars(select(User).where(User.is_active.is_(True)))
                if "admin" in user.roles
            ]
        assert len(admins) == 1


async def test_ban_ends_sessions_and_unban_restores_login(
    client: httpx.AsyncClient, people
) -> None:
    alice, alice_tokens = people["alice"]
    _, moderator_tokens = people["moderator"]
    banned = await client.patch(
        f"/api/admin/user/{alice.uuid}", json={"is_active": False}, headers=bearer(moderator_tokens)
    )
    assert banned.status_code == 200
    assert banned.json()["is_active"] is False
    assert (await client.get("/api/users/me", headers=bearer(alice_tokens))).status_code == 401
    refused = await client.post(
        "/api/auth/login", data={"username": alice.username, "password": PASSWORD}
    )
    assert refused.status_code == 401
    unbanned = await client.patch(
        f"/api/admin/user/{alice.uuid}", json={"is_active": True}, headers=bearer(moderator_tokens)
    )
    assert unbanned.json()["is_active"] is True
    await login(client, alice.username)


async def test_moderators_cannot_ban_staff(client: httpx.AsyncClient, people) -> None:
    admin, _ = people["admin"]
    _, moderator_tokens = people["moderator"]
    response = await client.patch(
        f"/api/admin/user/{admin.uuid}", json={"is_active": False}, headers=bearer(moderator_tokens)
    )
    assert response.status_code == 403


# Deletion ------------------------------------------------------------------------------


async def test_deleting_oneself(app: FastAPI, client: httpx.AsyncClient, people) -> None:
    alice, alice_tokens = people["alice"]
    folder = app.state.settings.DATA_DIR / "users" / alice.uuid
    folder.mkdir(parents=True)
    (folder / "left-behind.txt").write_text("x")
    response = await delete_user(client, alice.uuid, alice_tokens)
    assert response.status_code == 204
    assert (await client.get("/api/users/me", headers=bearer(alice_tokens))).status_code == 401
    assert await _row(app, alice.uuid) is None
    assert not folder.exists()
    async with app.state.session_factory() as session:
        sessions = (
            await session.scalars(select(Session).where(Session.user_uuid == alice.uuid))
        ).all()
    assert sessions == []


async def test_admin_deletes_a_user(app: FastAPI, client: httpx.AsyncClient, people) -> None:
    bob, bob_tokens = people["bob"]
    _, admin_tokens = people["admin"]
    response = await delete_user(client, bob.uuid, admin_tokens)
    assert response.status_code == 204
    assert await _row(app, bob.uuid) is None
    assert (await client.get("/api/users/me", headers=bearer(bob_tokens))).status_code == 401


async def test_a_failed_deletion_leaves_the_user_inactive_and_finishable(
    app: FastAPI, client: httpx.AsyncClient, people, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, alice_tokens = people["alice"]

    async def disk_full(*_args, **_kwargs) -> None:
        raise OSError("No space left on device")

    real_purge = deletion.purge_user
    monkeypatch.setattr(deletion, "purge_user", disk_full)
    response = await delete_user(client, alice.uuid, alice_tokens)
    assert response.status_code == 204
    row = await _row(app, alice.uuid)
    assert row is not None
    assert row.is_active is False
    assert row.deactivated_reason == "deleting"
    assert (await client.get("/api/users/me", headers=bearer(alice_tokens))).status_code == 401
    refused = await client.post(
        "/api/auth/login", data={"username": alice.username, "password": PASSWORD}
    )
    assert refused.status_code == 401

    monkeypatch.setattr(deletion, "purge_user", real_purge)
    finished = await deletion.finish_pending_deletions(
        app.state.session_factory, app.state.settings
    )
    assert finished == 1
    assert await _row(app, alice.uuid) is None
