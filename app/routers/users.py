"""Users: one's own account (the rest of the users API builds on this)."""

from __future__ import annotations

from fastapi import APIRouter

from app.routers.deps import ClientDep, CurrentUser, MailerDep, SessionDep, SettingsDep
from app.schemas.common import error_responses
from app.schemas.users import UserPrivate, UserSelfUpdate
from app.services import users as user_service

router = APIRouter(tags=["users"])


@router.get("/users/me", response_model=UserPrivate, responses=error_responses(401))
async def read_me(user: CurrentUser) -> UserPrivate:
    """The current user's own account.

    Returns
    -------
    UserPrivate
        Everything the owner may see of their account.

    Raises
    ------
    401
        Not authenticated.
    """
    return UserPrivate.model_validate(user)


@router.patch("/users/me", response_model=UserPrivate, responses=error_responses(401, 409, 422))
async def update_me(
    body: UserSelfUpdate,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> UserPrivate:
    """Change one's display name, email or description.

    A new email is unverified until the link mailed to it is followed. Fields that
    are not self-service (roles, flags, ...) are refused with 422.

    Returns
    -------
    UserPrivate
        The updated account.

    Raises
    ------
    401
        Not authenticated.
    409
        ``EMAIL_TAKEN``.
    422
        A field is invalid or not changeable here.
    """
    changes = body.model_dump(exclude_unset=True)
    updated = await user_service.update_own_profile(db, settings, mailer, user, changes, client)
    return UserPrivate.model_validate(updated)
