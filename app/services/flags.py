"""Feature flags as admins see and change them."""

from __future__ import annotations

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import AppError, InsufficientStorage, is_disk_full
from app.core.feature_flags import (
    FlagStore,
    FlagValue,
    InvalidFlags,
    dump_flags,
    parse_flags,
)
from app.core.flag_sources import FlagBroadcaster, FlagSource
from app.core.permissions import require_permission
from app.models import User
from app.services.audit import AuditTarget, record_audit
from app.services.context import ClientInfo


class InvalidFlagChange(AppError):
    """A flag's new value is not ``true``, ``false`` or a list of rules."""

    status_code = 422
    code = "INVALID_FLAG"


class ProtectedFlagChange(AppError):
    """A change names the flag of an endpoint that runs the service."""

    status_code = 422
    code = "PROTECTED_FLAG"


def _refuse_protected(store: FlagStore, names: list[str]) -> None:
    refused = [name for name in dict.fromkeys(names) if name in store.protected]
    if not refused:
        return
    reasons = "; ".join(f"{name} guards {store.protected[name]}" for name in refused)
    raise ProtectedFlagChange(
        f"{', '.join(refused)} cannot be changed through the API: {reasons}. "
        "Switched off, it would lock the admins out or take the service down; the command "
        "line (python -m app.cli flags set) still sets it."
    )


def read_flags(store: FlagStore, actor: User) -> dict:
    """Every flag and its value (admins)."""
    require_permission(actor, "feature_flags", "read")
    return dump_flags(store.flags)


async def change_flags(
    db: AsyncSession,
    source: FlagSource,
    broadcaster: FlagBroadcaster | None,
    actor: User,
    *,
    add: dict[str, object] | list[str] | None,
    remove: list[str] | None,
    client: ClientInfo,
) -> dict:
    """Add (or overwrite) and remove flags; applied at once, saved, announced, logged.

    ``add`` maps names to values; a plain list of names means ``true``. A removed
    flag is on again (a flag missing from the flags is on). A change naming a protected
    flag is refused whole, whatever the value.
    """
    require_permission(actor, "feature_flags", "update")
    raw = {name: True for name in add} if isinstance(add, list) else dict(add or {})
    _refuse_protected(source.store, [*raw, *(remove or [])])
    try:
        added: dict[str, FlagValue] = parse_flags(raw)
    except InvalidFlags as error:
        raise InvalidFlagChange(str(error)) from None
    await apply_flags(db, source, broadcaster, actor, added, remove or [], client)
    return dump_flags(source.store.flags)


async def apply_flags(
    db: AsyncSession,
    source: FlagSource,
    broadcaster: FlagBroadcaster | None,
    actor: User | None,
    add: dict[str, FlagValue],
    remove: list[str],
    client: ClientInfo,
) -> None:
    """Save checked flags (any flag: the API refuses the protected ones before, the
    command line, ``actor`` None, may set them), with one audit row per flag named.

    With the flags in the database the rows are written in the flags' transaction;
    with the file, the file is written first and the rows committed right after, so a
    file that cannot be saved (507) leaves none. ``from`` is the value this replica
    last read (another replica's change of the last seconds may not be in it yet).
    """
    before = dump_flags(source.store.flags)
    after = dump_flags(add)
    for name in add:
        change = {"from": before.get(name), "to": after[name]}
        record_audit(db, actor, "flag.changed", AuditTarget.of_flag(name), client, change)
    removed = [name for name in dict.fromkeys(remove) if name not in add]
    for name in removed:
        change = {"from": before.get(name)}
        record_audit(db, actor, "flag.removed", AuditTarget.of_flag(name), client, change)
    try:
        await source.change(add, removed, db)
        await db.commit()
    except OSError as error:  # nothing changed, in memory or on disk
        await db.rollback()
        if is_disk_full(error):
            logger.error("feature flags not saved: {}", error.strerror)
            raise InsufficientStorage() from None
        raise
    if broadcaster is not None:
        await broadcaster.publish()
    logger.info(
        "feature flags changed by {}: added/updated {}, removed {}",
        actor.uuid if actor is not None else "the command line",
        sorted(add),
        sorted(removed),
    )


def flags_for(store: FlagStore, user: User | None, *, enforced: bool) -> dict[str, bool]:
    """Every flag of ``store`` as it applies to ``user`` (None: anonymous), by name.

    While flags are not ``enforced`` (FEATURE_FLAGS_ENABLED is False) nothing is off.
    """
    subject = (user.uuid, list(user.roles)) if user is not None else None
    return {name: not enforced or store.is_enabled(name, subject) for name in sorted(store.flags)}
