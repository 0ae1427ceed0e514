"""Attribute-based access control: the ROLES table and ``check_permission``.

``ROLES`` maps role -> resource -> action -> rule, where a rule is ``True``,
``False`` or a predicate ``(user, target) -> bool``. A user is allowed when any of
their roles allows; a missing role, resource or action denies, and so does a
predicate that raises (it is logged). Every decision says why, so a denial can be
explained and tested.

Services call ``check_permission`` (or ``require_permission``); there is no
middleware for it: the rules need the objects the service has loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from app.core.errors import PermissionDenied
from app.core.feature_flags import feature_flag

__all__ = [
    "ROLES",
    "Decision",
    "RolesWithPermissions",
    "check_permission",
    "feature_flag",
    "require_permission",
    "ungivable_roles",
]

STAFF_ROLES = frozenset({"admin", "moderator"})
ALL_ROLES = ("admin", "moderator", "tester", "user")


class Subject(Protocol):
    """Who asks: anything with a UUID and roles (a ``User``)."""

    uuid: str
    roles: list[str]


Predicate = Callable[[Any, Any], bool]
Rule = bool | Predicate
RolesWithPermissions = dict[str, dict[str, dict[str, Rule]]]


def _is_self(user: Subject, target: Any) -> bool:
    return target is not None and user.uuid == target.uuid


def _not_blocked_by(user: Subject, target: Any) -> bool:
    """The target has not blocked the user (and is active: inactive accounts are hidden)."""
    return _is_self(user, target) or (
        target.is_active and user.uuid not in (target.blocked_uuids or [])
    )


def _not_staff(_user: Subject, target: Any) -> bool:
    return not (STAFF_ROLES & set(target.roles))


def _someone_else(user: Subject, target: Any) -> bool:
    """Not oneself: one's own account changes through one's own endpoints, which ask
    for a re-authentication."""
    return target is not None and user.uuid != target.uuid


def _linked(user: Subject, file: Any) -> bool:
    """The user is linked to the file (uploaded it, or it was uploaded for them)."""
    return any(linked.uuid == user.uuid for linked in file.users)


def _holds_role(user: Subject, role: str) -> bool:
    """Nobody gives a role they do not hold."""
    return role in user.roles


ROLES: RolesWithPermissions = {
    "admin": {
        "user": {
            "read": True,
            "read_private": True,
            "read_history": True,
            "list": True,
            "update": True,
            "delete": True,
            "deactivate": True,
            "change_roles": True,
            # Account tools (app.services.account_tools): helping a user back in.
            "reset_two_factor": _someone_else,
            "clear_login_lock": True,
            "list_sessions": True,
            "revoke_sessions": True,
            "send_password_reset": True,
            "list_external_accounts": True,
            "unlink_external_account": _someone_else,
            "list_passkeys": True,
            "remove_passkey": True,
        },
        "role": {"give": _holds_role, "remove": True},
        "feature_flags": {"read": True, "update": True},
        # Webhook endpoints and their delivery logs (app.services.webhooks).
        "webhook": {
            "create": True,
            "list": True,
            "read": True,
            "update": True,
            "delete": True,
            "rotate_secret": True,
            "read_deliveries": True,
            "retry_delivery": True,
        },
        "oidc_clients": {"read": True, "create": True, "update": True, "delete": True},
        # The audit log (app.services.audit): admins only. It shows every staff
        # member's actions with their addresses and devices, admins' own included;
        # moderators are among those it oversees, not its readers.
        "audit": {"read": True},
        "user_files": {"create": True, "list": True},
        "file": {"read": True, "update": True, "delete": True},
        "docs": {"read": True},
    },
    "moderator": {
        "user": {
            "read": True,
            "read_private": True,
            "read_history": True,
            "list": True,
            "update": _is_self,
            "delete": _is_self,
            "deactivate": _not_staff,
            # Account tools for users who are neither admin nor moderator; second
            # factors and providers stay with admins.
            "clear_login_lock": _not_staff,
            "list_sessions": _not_staff,
            "revoke_sessions": _not_staff,
            "send_password_reset": _not_staff,
            "list_external_accounts": _not_staff,
        },
        "user_files": {"create": _is_self, "list": True},
        "file": {"read": True, "update": _linked, "delete": _linked},
        "docs": {"read": True},
    },
    # Defined for feature flags and future use; it grants nothing beyond "user".
    "tester": {},
    "user": {
        "user": {
            "read": _not_blocked_by,
            "read_private": _is_self,
            "read_history": _is_self,
            "update": _is_self,
            "delete": _is_self,
        },
        # user_files: the files of a user (the target is that user).
        "user_files": {"create": _is_self, "list": _is_self},
        # file: one file (the target is the file, with its linked users loaded).
        "file": {"read": _linked, "update": _linked, "delete": _linked},
    },
}


@dataclass(frozen=True)
class Decision:
    """The outcome of a permission check and why."""

    allowed: bool
    reason: str
    role: str | None = None

    def __bool__(self) -> bool:
        return self.allowed


def _rule_name(rule: Rule) -> str:
    if isinstance(rule, bool):
        return str(rule)
    return getattr(rule, "__name__", repr(rule)).lstrip("_")


def check_permission(
    user: Subject | None,
    resource: str,
    action: str,
    target: Any = None,
    *,
    table: RolesWithPermissions | None = None,
) -> Decision:
    """Decide whether ``user`` may do ``action`` on ``resource`` (optionally ``target``).

    Returns
    -------
    Decision
        ``allowed`` and a ``reason``: which role and rule allowed, or why every role
        denied (no such role, resource or action; rule False; predicate false or
        raising).
    """
    roles_table = ROLES if table is None else table
    if user is None:
        return Decision(False, "denied: not authenticated")
    denials: list[str] = []
    for role in user.roles:
        permissions = roles_table.get(role)
        if permissions is None:
            denials.append(f"role {role!r} is not defined")
            continue
        actions = permissions.get(resource)
        if actions is None:
            denials.append(f"role {role!r} has no rules for {resource!r}")
            continue
        if action not in actions:
            denials.append(f"role {role!r} has no rule for {resource}.{action}")
            continue
        rule = actions[action]
        where = f"role {role!r}: {resource}.{action} = {_rule_name(rule)}"
        if rule is True:
            return Decision(True, f"allowed by {where}", role)
        if rule is False:
            denials.append(f"{where}")
            continue
        try:
            result = bool(rule(user, target))
        except Exception as error:  # a broken rule denies, and says so
            logger.error("permission rule {} raised {}: denied", where, type(error).__name__)
            denials.append(f"{where} raised {type(error).__name__}")
            continue
        if result:
            return Decision(True, f"allowed by {where}", role)
        denials.append(f"{where} is false")
    if not denials:
        return Decision(False, "denied: the user has no roles")
    return Decision(False, "denied: " + "; ".join(denials))


def require_permission(
    user: Subject | None,
    resource: str,
    action: str,
    target: Any = None,
    *,
    hide_as: Callable[[], Exception] | None = None,
) -> Decision:
    """Like :func:`check_permission`, raising when denied.

    ``hide_as`` makes the denial look like something else (a 404 for a profile the
    caller may not know exists).
    """
    decision = check_permission(user, resource, action, target)
    if not decision:
        logger.debug("permission {}.{}: {}", resource, action, decision.reason)
        if hide_as is not None:
            raise hide_as()
        raise PermissionDenied(f"Not allowed to {action} this {resource}")
    return decision


def ungivable_roles(user: Subject, roles: Iterable[str]) -> list[str]:
    """The roles in ``roles`` that ``user`` may not give (ROLES' ``role.give``)."""
    return [role for role in roles if not check_permission(user, "role", "give", role)]
