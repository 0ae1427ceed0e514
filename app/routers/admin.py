"""Staff endpoints: roles, bans, feature flags, and a user's passkeys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.routers.deps import (
    ClientDep,
    CurrentUser,
    FlagBroadcasterDep,
    FlagStoreDep,
    MailerDep,
    Reader,
    SessionDep,
    SettingsDep,
    UserUuid,
)
from app.schemas.common import error_responses
from app.schemas.flags import FeatureFlagChange, FeatureFlags
from app.schemas.passkeys import PasskeyInfo, PasskeyList
from app.schemas.users import AdminUserUpdate, UserPrivate, private_view
from app.services import flags as flag_service
from app.services import moderation, passkeys

router = APIRouter(prefix="/admin", tags=["admin"])


@router.patch(
    "/user/{uuid}",
    response_model=UserPrivate,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def admin_update_user(
    user_uuid: UserUuid,
    body: AdminUserUpdate,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> UserPrivate:
    """Change a user's roles (admins) or ban / unban them with ``is_active``.

    Moderators may ban and unban users who are neither admin nor moderator. Nobody
    gives a role they do not hold, and the last active admin can lose neither the
    role nor the account. A ban ends every session of the user at once.

    Returns
    -------
    UserPrivate
        The updated account.

    Raises
    ------
    403
        Not allowed (``FORBIDDEN``), or ``ROLE_NOT_HELD``.
    404
        ``USER_NOT_FOUND``.
    409
        ``LAST_ADMIN``.
    """
    user = await moderation.admin_update(
        db, actor, user_uuid, roles=body.roles, is_active=body.is_active, client=client
    )
    return private_view(user, settings)


@router.get("/feature-flags", response_model=FeatureFlags, responses=error_responses(401, 403))
async def read_feature_flags(
    actor: Reader, store: FlagStoreDep, settings: SettingsDep
) -> FeatureFlags:
    """Every feature flag and its value (admins).

    Returns
    -------
    FeatureFlags
        ``enabled`` (FEATURE_FLAGS_ENABLED), ``notice`` (set while flags are not
        enforced), ``flags``, and ``protected``: the flags this API refuses to change.

    Raises
    ------
    403
        Not an admin.
    """
    flags = flag_service.read_flags(store, actor)
    return FeatureFlags.of(flags, enabled=settings.FEATURE_FLAGS_ENABLED, protected=store.protected)


@router.patch(
    "/feature-flags",
    response_model=FeatureFlags,
    responses=error_responses(401, 403, 422, 507),
)
async def update_feature_flags(
    body: FeatureFlagChange,
    actor: CurrentUser,
    store: FlagStoreDep,
    broadcaster: FlagBroadcasterDep,
    settings: SettingsDep,
) -> FeatureFlags:
    """Add, change or remove feature flags (admins); applied at once on every replica.

    ``add`` maps a name to ``true``, ``false`` or a list of rules
    (``{"percentageOfUsers": 0.25, "userRoles": ["admin"]}``: every condition of a
    rule must hold, any rule of the list is enough); a plain list of names means
    ``true``. ``remove`` deletes flags, which turns them on.

    The flags of the endpoints that run the service (signing in, staying signed in,
    health checks, these two endpoints) cannot be changed here, so no admin locks
    everyone out; the answer's ``protected`` lists them with the reason, and the
    command line still sets them. While FEATURE_FLAGS_ENABLED is False a change is
    stored, and ``notice`` says that nothing enforces it.

    Returns
    -------
    FeatureFlags
        The flags after the change.

    Raises
    ------
    403
        Not an admin.
    422
        ``INVALID_FLAG``, naming the flag and the rule key at fault, or
        ``PROTECTED_FLAG``, naming the flag and the endpoint it guards.
    507
        ``INSUFFICIENT_STORAGE``: the flag file cannot be saved (disk full); no flag
        changed.
    """
    flags = await flag_service.change_flags(
        store, broadcaster, actor, add=body.add, remove=body.remove
    )
    return FeatureFlags.of(flags, enabled=settings.FEATURE_FLAGS_ENABLED, protected=store.protected)


@router.get(
    "/user/{uuid}/passkeys",
    response_model=PasskeyList,
    responses=error_responses(401, 403, 404, 422),
)
async def admin_list_user_passkeys(
    user_uuid: UserUuid, actor: Reader, db: SessionDep
) -> PasskeyList:
    """A user's passkeys (admins), oldest first.

    Returns
    -------
    PasskeyList
        Each passkey's id, name, dates and flags (never its key).

    Raises
    ------
    403
        Not an admin.
    404
        ``USER_NOT_FOUND``.
    """
    items = await passkeys.list_for_admin(db, actor, user_uuid)
    return PasskeyList(items=[PasskeyInfo.model_validate(item) for item in items])


@router.delete(
    "/user/{uuid}/passkeys/{passkey_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
)
async def admin_remove_user_passkey(
    user_uuid: UserUuid,
    passkey_id: Annotated[str, Path(min_length=1, max_length=36)],
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> None:
    """Delete one of a user's passkeys (admins): a lost or stolen authenticator, say. It
    signs in no more; the user's history names the admin, and their verified email is
    told.

    Raises
    ------
    403
        Not an admin.
    404
        ``USER_NOT_FOUND`` or ``PASSKEY_NOT_FOUND``.
    """
    await passkeys.remove_by_admin(db, settings, mailer, actor, user_uuid, passkey_id, client)
