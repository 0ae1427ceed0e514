"""Feature flags: the flag file, rule evaluation, and FeatureFlagMiddleware.

The file (DATA_DIR/FEATURE_FLAGS_FILE) maps a flag to ``true``, ``false`` or a list
of rules. Within a rule every condition must hold (``percentageOfUsers`` and
``userRoles``); across the list any rule is enough. Rule lists are off for
anonymous requests. A flag missing from the file is on.

Percentages use a stable bucket per (flag, user): SHA-256 of both, as an integer
out of 10,000. Raising a percentage keeps everyone who had the feature, and two
flags at the same percentage pick different users.

Every endpoint has a flag named after its function, upper-cased; ``@feature_flag``
adds more. The middleware checks them before the endpoint runs; a disabled
feature answers 403 ``FEATURE_DISABLED``.

The flags of the endpoints that run the service (:data:`PROTECTED_ENDPOINTS`) are
refused by the admin API, so nobody locks the admins out through it; the file, and
the command line that writes it, still set any flag.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.authentication import caller_of
from app.core.errors import error_body, is_disk_full
from app.core.routes import Endpoint, endpoint_table

BUCKETS = 10_000
FLAG_ATTRIBUTE = "__feature_flags__"
#: Redis channel on which flag changes are announced to every replica.
FLAGS_CHANNEL = "user-manager:feature-flags"


class FlagRule(BaseModel):
    """One rule: every condition given must hold."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    percentage_of_users: float | None = Field(default=None, alias="percentageOfUsers", ge=0, le=1)
    user_roles: list[str] | None = Field(default=None, alias="userRoles", min_length=1)


FlagValue = bool | list[FlagRule]
#: The keys of a rule as the file spells them; the Python names are accepted too.
RULE_KEYS = ("percentageOfUsers", "userRoles")
_ACCEPTED_RULE_KEYS = {*RULE_KEYS, *FlagRule.model_fields}

#: The endpoints that run the service and keep its admins in control, each with why.
#: With one of them off nobody could sign in or stay signed in, the flags could not be
#: turned back on, or the orchestrator would take the service for dead; the admin API
#: therefore refuses their flags. ``{api}`` stands for API_STR.
PROTECTED_ENDPOINTS: dict[tuple[str, str], str] = {
    ("POST", "{api}/auth/login"): "signing in",
    ("POST", "{api}/auth/otp/verify"): "signing in with two-factor authentication",
    ("POST", "{api}/auth/otp/recovery-codes/verify"): "signing in with a recovery code",
    ("POST", "{api}/auth/refresh"): "staying signed in",
    ("GET", "/health"): "the liveness check",
    ("GET", "/health/ready"): "the readiness check",
    ("GET", "{api}/admin/feature-flags"): "reading the flags",
    ("PATCH", "{api}/admin/feature-flags"): "changing the flags back",
}


class InvalidFlags(ValueError):
    """A flag's value is not ``true``, ``false`` or a list of rules; names the flag."""


def _parse_rule(name: str, number: int, raw: object) -> FlagRule:
    where = f"flag {name!r}, rule {number}"
    if not isinstance(raw, dict):
        raise InvalidFlags(f'{where}: a rule is an object such as {{"userRoles": ["admin"]}}')
    unknown = [key for key in raw if key not in _ACCEPTED_RULE_KEYS]
    if unknown:
        # Checked here rather than left to the model, whose message for an unknown key
        # inside a list that could also have been a boolean is "should be a valid boolean".
        raise InvalidFlags(
            f"{where}: unknown rule key {unknown[0]!r} (a rule takes {' and/or '.join(RULE_KEYS)})"
        )
    try:
        return FlagRule.model_validate(raw)
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(part) for part in problem["loc"])
        raise InvalidFlags(f"{where}, {field}: {problem['msg']}") from None


def parse_flag_value(name: str, value: object) -> FlagValue:
    """Validate one flag's value: ``true``, ``false`` or a list of rules."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, list):
        raise InvalidFlags(f"flag {name!r}: the value must be true, false or a list of rules")
    return [_parse_rule(name, number, rule) for number, rule in enumerate(value, start=1)]


def parse_flags(raw: object) -> dict[str, FlagValue]:
    """Validate a flags mapping (as read from JSON)."""
    if not isinstance(raw, dict):
        raise InvalidFlags("the flags must be a JSON object of name -> value")
    flags: dict[str, FlagValue] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise InvalidFlags(f"invalid flag name {name!r}")
        flags[name] = parse_flag_value(name, value)
    return flags


def dump_flags(flags: dict[str, FlagValue]) -> dict[str, Any]:
    """The JSON form of ``flags`` (rules with the seed's camelCase keys)."""
    return {
        name: value
        if isinstance(value, bool)
        else [rule.model_dump(by_alias=True, exclude_none=True) for rule in value]
        for name, value in sorted(flags.items())
    }


def bucket(flag: str, user_uuid: str) -> int:
    """The user's stable bucket (0-9999) for a flag."""
    digest = hashlib.sha256(f"{flag}:{user_uuid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def rule_matches(rule: FlagRule, flag: str, user_uuid: str, roles: Iterable[str]) -> bool:
    """Every condition of ``rule`` holds for the user."""
    if rule.user_roles is not None and not set(rule.user_roles) & set(roles):
        return False
    if rule.percentage_of_users is not None:
        threshold = round(rule.percentage_of_users * BUCKETS)
        if bucket(flag, user_uuid) >= threshold:
            return False
    return True


def evaluate(flags: dict[str, FlagValue], name: str, user: tuple[str, list[str]] | None) -> bool:
    """Whether ``name`` is on for ``user`` ((uuid, roles), or None when anonymous)."""
    value = flags.get(name, True)
    if isinstance(value, bool):
        return value
    if user is None:
        return False
    user_uuid, roles = user
    return any(rule_matches(rule, name, user_uuid, roles) for rule in value)


def feature_flag(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Put an endpoint behind a custom flag (on until the file says otherwise).

    Works above or below the route decorator.
    """

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        names = [*getattr(function, FLAG_ATTRIBUTE, []), name.upper()]
        setattr(function, FLAG_ATTRIBUTE, names)
        return function

    return decorate


def endpoint_flags(endpoint: Callable[..., Any]) -> list[str]:
    """The flags an endpoint is behind: its own name's, then its custom ones."""
    return [endpoint.__name__.upper(), *getattr(endpoint, FLAG_ATTRIBUTE, [])]


class FlagStore:
    """The flags in memory, backed by the JSON file; reloaded when the file changes.

    ``protected`` maps the flags the admin API must not change to what they guard
    (:func:`protected_flags`, set once the app's routes are in place); the store
    itself, used by the command line too, sets anything.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.protected: dict[str, str] = {}
        self.flags: dict[str, FlagValue] = {}
        self._mtime: float | None = None

    def load(self) -> bool:
        """Read the file; a malformed one keeps the last good flags. True when read."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False
        try:
            flags = parse_flags(json.loads(self.path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, InvalidFlags, UnicodeDecodeError) as error:
            logger.error(
                "feature flag file {} is malformed, keeping the last good flags: {}",
                self.path,
                error,
            )
            self._mtime = stat.st_mtime
            return False
        self.flags = flags
        self._mtime = stat.st_mtime
        return True

    def reload_if_changed(self) -> bool:
        """Re-read the file when its modification time moved."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        return self.load()

    def save(self, flags: dict[str, FlagValue] | None = None) -> None:
        """Write ``flags`` (default: the current ones) atomically: temporary file, rename.

        The temporary file is in the same folder; on failure (a full disk) the file is
        left as it was.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(dump_flags(self.flags if flags is None else flags), indent=2) + "\n"
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".flags-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._mtime = self.path.stat().st_mtime

    def register(self, names: Iterable[str]) -> list[str]:
        """Add each missing flag as ``true``; save when something was added.

        On a full disk the new flags are kept in memory only, which means the same:
        a flag missing from the file is on.
        """
        added = [name for name in dict.fromkeys(names) if name not in self.flags]
        for name in added:
            self.flags[name] = True
        if added or not self.path.exists():
            try:
                self.save()
            except OSError as error:
                if not is_disk_full(error):
                    raise
                logger.error("feature flags not saved to {}: {}", self.path, error.strerror)
        return added

    def replace(self, flags: dict[str, FlagValue]) -> None:
        """Take a complete set of flags (from an admin change or another replica).

        Saved first: when the file cannot be written (OSError), nothing changes.
        """
        flags = dict(flags)
        self.save(flags)
        self.flags = flags

    def is_enabled(self, name: str, user: tuple[str, list[str]] | None) -> bool:
        """See :func:`evaluate`."""
        return evaluate(self.flags, name, user)


def flagged_routes(routes: list[BaseRoute]) -> list[tuple[Endpoint, tuple[str, ...]]]:
    """Every endpoint with the flags it is behind."""
    return [
        (endpoint, tuple(endpoint_flags(endpoint.function))) for endpoint in endpoint_table(routes)
    ]


def protected_flags(routes: list[BaseRoute], api_prefix: str) -> dict[str, str]:
    """Every flag of a :data:`PROTECTED_ENDPOINTS` endpoint -> the endpoint and why.

    A flag of its own or added by ``@feature_flag``: either one off turns the endpoint
    off. Raises ``LookupError`` when an endpoint of the list no longer exists, so a
    renamed path cannot silently lose its protection.
    """
    table = flagged_routes(routes)
    protected: dict[str, str] = {}
    for (method, template), why in PROTECTED_ENDPOINTS.items():
        path = template.format(api=api_prefix)
        names = next(
            (
                flags
                for endpoint, flags in table
                if endpoint.path == path and method in endpoint.methods
            ),
            None,
        )
        if names is None:
            raise LookupError(f"protected endpoint {method} {path} does not exist")
        for name in names:
            protected.setdefault(name, f"{method} {path} ({why})")
    return protected


class FeatureFlagMiddleware:
    """Refuse a request whose endpoint is behind a disabled flag (pure ASGI).

    The endpoint is found by matching the app's routes (built on the first request,
    once every route is in place). The user, needed by rule-based flags only, is the
    request's caller (``app.core.authentication``): anonymous when its token is
    missing or refused.
    """

    def __init__(self, app: ASGIApp, *, store: FlagStore, routes: list[BaseRoute]) -> None:
        self.app = app
        self.store = store
        self.routes = routes
        self._endpoints: list[tuple[Endpoint, tuple[str, ...]]] | None = None

    def _flags_for(self, scope: Scope) -> tuple[str, ...]:
        if self._endpoints is None:
            self._endpoints = flagged_routes(self.routes)
        method, path = scope["method"], scope["path"]
        for endpoint, flags in self._endpoints:
            if method in endpoint.methods and endpoint.path_regex.match(path):
                return flags
        return ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = self._flags_for(scope)
        values = [self.store.flags.get(name, True) for name in names]
        if any(value is False for value in values):
            await self._refuse(scope, receive, send)
            return
        if any(isinstance(value, list) for value in values):
            auth = await caller_of(scope).optional_reader()
            user = (auth.user.uuid, list(auth.user.roles)) if auth is not None else None
            if not all(self.store.is_enabled(name, user) for name in names):
                await self._refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            error_body("This feature is disabled", "FEATURE_DISABLED"), status_code=403
        )
        await response(scope, receive, send)
