"""Staff endpoints: roles and bans (feature flags join them later)."""

from __future__ import annotations

from fastapi import APIRouter

from app.routers.deps import ClientDep, CurrentUser, SessionDep, SettingsDep, UserUuid
from app.schemas.common import error_responses
from app.schemas.users import AdminUserUpdate, UserPrivate, private_view
from app.services import users as user_service

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
    user = await user_service.admin_update(
        db, actor, user_uuid, roles=body.roles, is_active=body.is_active, client=client
    )
    return private_view(user, settings)
