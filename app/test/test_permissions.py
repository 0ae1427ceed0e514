"""ABAC: every (role x resource x action) of ROLES, unknown ones, and the reasons given."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from app.core.permissions import (
    ROLES,
    RolesWithPermissions,
    check_permission,
    ungivable_roles,
)


@dataclass
class Person:
    """Just what the rules read of a user."""

    uuid: str
    roles: list[str]
    is_active: bool = True
    blocked_uuids: list[str] = field(default_factory=list)


ACTOR_UUID = "actor"
TARGETS = {
    "self": None,  # filled per actor
    "plain": Person("plain", ["user"]),
    "moderator": Person("mod", ["moderator", "user"]),
    "admin": Person("adm", ["admin", "user"]),
    "blocker": Person("blocker", ["user"], blocked_uuids=[ACTOR_UUID]),
    "inactive": Person("inactive", ["user"], is_active=False),
}
# Files: the rules read the users linked to them.
FILE_TARGETS = {
    "own_file": SimpleNamespace(users=[SimpleNamespace(uuid=ACTOR_UUID)]),
    "other_file": SimpleNamespace(users=[SimpleNamespace(uuid="plain")]),
}
EVERYONE = set(TARGETS)
ANY_FILE = set(FILE_TARGETS)
NOBODY: set[str] = set()
NOT_STAFF = {"plain", "blocker", "inactive"}
OTHERS = EVERYONE - {"self"}

# What each role may do to each kind of target, written out independently of ROLES.
EXPECTED: dict[str, dict[tuple[str, str], set[str]]] = {
    "admin": {
        ("user", "read"): EVERYONE,
        ("user", "read_private"): EVERYONE,
        ("user", "read_history"): EVERYONE,
        ("user", "list"): EVERYONE,
        ("user", "update"): EVERYONE,
        ("user", "delete"): EVERYONE,
        ("user", "deactivate"): EVERYONE,
        ("user", "change_roles"): EVERYONE,
        ("user", "reset_two_factor"): OTHERS,
        ("user", "clear_login_lock"): EVERYONE,
        ("user", "list_sessions"): EVERYONE,
        ("user", "revoke_sessions"): EVERYONE,
        ("user", "send_password_reset"): EVERYONE,
        ("user", "list_external_accounts"): EVERYONE,
        ("user", "unlink_external_account"): OTHERS,
        ("user", "list_passkeys"): EVERYONE,
        ("user", "remove_passkey"): EVERYONE,
        ("user_files", "create"): EVERYONE,
        ("user_files", "list"): EVERYONE,
        ("file", "read"): ANY_FILE,
        ("file", "update"): ANY_FILE,
        ("file", "delete"): ANY_FILE,
        ("feature_flags", "read"): EVERYONE,
        ("feature_flags", "update"): EVERYONE,
        ("webhook", "create"): EVERYONE,
        ("webhook", "list"): EVERYONE,
        ("webhook", "read"): EVERYONE,
        ("webhook", "update"): EVERYONE,
        ("webhook", "delete"): EVERYONE,
        ("webhook", "rotate_secret"): EVERYONE,
        ("webhook", "read_deliveries"): EVERYONE,
        ("webhook", "retry_delivery"): EVERYONE,
        ("audit", "read"): EVERYONE,
        ("oidc_clients", "read"): EVERYONE,
        ("oidc_clients", "create"): EVERYONE,
        ("oidc_clients", "update"): EVERYONE,
        ("oidc_clients", "delete"): EVERYONE,
        ("docs", "read"): EVERYONE,
    },
    "moderator": {
        ("user", "read"): EVERYONE,
        ("user", "read_private"): EVERYONE,
        ("user", "read_history"): EVERYONE,
        ("user", "list"): EVERYONE,
        ("user", "update"): {"self"},
        ("user", "delete"): {"self"},
        ("user", "deactivate"): NOT_STAFF,
        ("user", "clear_login_lock"): NOT_STAFF,
        ("user", "list_sessions"): NOT_STAFF,
        ("user", "revoke_sessions"): NOT_STAFF,
        ("user", "send_password_reset"): NOT_STAFF,
        ("user", "list_external_accounts"): NOT_STAFF,
        ("user_files", "create"): {"self"},
        ("user_files", "list"): EVERYONE,
        ("file", "read"): ANY_FILE,
        ("file", "update"): {"own_file"},
        ("file", "delete"): {"own_file"},
        ("docs", "read"): EVERYONE,
    },
    "tester": {},
    "user": {
        ("user", "read"): {"self", "plain", "moderator", "admin"},
        ("user", "read_private"): {"self"},
        ("user", "read_history"): {"self"},
        ("user", "update"): {"self"},
        ("user", "delete"): {"self"},
        ("user_files", "create"): {"self"},
        ("user_files", "list"): {"self"},
        ("file", "read"): {"own_file"},
        ("file", "update"): {"own_file"},
        ("file", "delete"): {"own_file"},
    },
}
UNKNOWN = [("user", "explode"), ("spaceship", "read"), ("docs", "write")]


def test_the_expectations_cover_every_rule_in_roles() -> None:
    in_table = {
        (role, resource, action)
        for role, resources in ROLES.items()
        for resource, actions in resources.items()
        for action in actions
        if resource != "role"  # role.give takes a role name: tested below
    }
    expected = {
        (role, resource, action) for role, rules in EXPECTED.items() for resource, action in rules
    }
    assert in_table == expected
    assert set(ROLES) == {"admin", "moderator", "tester", "user"}


def _cases():
    actions = sorted({key for rules in EXPECTED.values() for key in rules} | set(UNKNOWN))
    for role in EXPECTED:
        for resource, action in actions:
            for target in FILE_TARGETS if resource == "file" else TARGETS:
                yield role, resource, action, target


@pytest.mark.parametrize(("role", "resource", "action", "target_name"), list(_cases()))
def test_permission_matrix(role: str, resource: str, action: str, target_name: str) -> None:
    actor = Person(ACTOR_UUID, [role])
    targets = {**TARGETS, **FILE_TARGETS, "self": actor}
    target = targets[target_name]
    decision = check_permission(actor, resource, action, target)
    allowed = target_name in EXPECTED[role].get((resource, action), NOBODY)
    assert decision.allowed is allowed, decision.reason
    if allowed:
        assert decision.reason.startswith(f"allowed by role {role!r}: {resource}.{action} = ")
        assert decision.role == role
    else:
        assert decision.reason.startswith("denied: ")
        assert role in decision.reason


@pytest.mark.parametrize(
    ("roles", "resource", "action", "target", "reason"),
    [
        (
            ["admin"],
            "user",
            "delete",
            TARGETS["plain"],
            "allowed by role 'admin': user.delete = True",
        ),
        (
            ["user"],
            "user",
            "read",
            TARGETS["plain"],
            "allowed by role 'user': user.read = not_blocked_by",
        ),
        (
            ["user"],
            "user",
            "read",
            TARGETS["blocker"],
            "denied: role 'user': user.read = not_blocked_by is false",
        ),
        (
            ["user"],
            "user",
            "delete",
            TARGETS["plain"],
            "denied: role 'user': user.delete = is_self is false",
        ),
        (["user"], "user", "list", None, "denied: role 'user' has no rule for user.list"),
        (
            ["tester"],
            "user",
            "read",
            TARGETS["plain"],
            "denied: role 'tester' has no rules for 'user'",
        ),
        (["ghost"], "user", "read", TARGETS["plain"], "denied: role 'ghost' is not defined"),
        ([], "user", "read", TARGETS["plain"], "denied: the user has no roles"),
        (
            ["moderator"],
            "user",
            "deactivate",
            TARGETS["admin"],
            "denied: role 'moderator': user.deactivate = not_staff is false",
        ),
    ],
)
def test_reasons(roles, resource, action, target, reason) -> None:
    decision = check_permission(Person(ACTOR_UUID, roles), resource, action, target)
    assert decision.reason == reason


def test_any_role_that_allows_is_enough() -> None:
    actor = Person(ACTOR_UUID, ["tester", "user", "moderator"])
    decision = check_permission(actor, "user", "deactivate", TARGETS["plain"])
    assert decision.allowed
    assert decision.role == "moderator"


def test_anonymous_is_denied() -> None:
    assert check_permission(None, "user", "read", TARGETS["plain"]).reason == (
        "denied: not authenticated"
    )


def test_a_raising_predicate_denies_and_is_logged(captured_logs: list[str]) -> None:
    def broken(_user, target):
        return target.no_such_attribute

    table: RolesWithPermissions = {"user": {"thing": {"read": broken}}}
    decision = check_permission(
        Person(ACTOR_UUID, ["user"]), "thing", "read", object(), table=table
    )
    assert not decision.allowed
    assert decision.reason == "denied: role 'user': thing.read = broken raised AttributeError"
    assert any("raised AttributeError" in line and "ERROR" in line for line in captured_logs)


def test_nobody_gives_a_role_they_do_not_hold() -> None:
    admin = Person(ACTOR_UUID, ["admin", "user"])
    assert ungivable_roles(admin, ["admin", "user"]) == []
    assert ungivable_roles(admin, ["moderator", "tester"]) == ["moderator", "tester"]
    full = Person(ACTOR_UUID, ["admin", "moderator", "tester", "user"])
    assert ungivable_roles(full, ["moderator", "tester"]) == []
    moderator = Person(ACTOR_UUID, ["moderator", "user"])
    assert ungivable_roles(moderator, ["user"]) == ["user"]  # only admins give roles at all
