"""Users: one's own account, other users' profiles, the staff list, history, blocking."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.routers.deps import (
    ClientDep,
    CurrentUser,
    MailerDep,
    PageDep,
    Reader,
    SessionDep,
    SettingsDep,
    UserUuid,
)
from app.schemas.common import Text, error_responses
from app.schemas.users import (
    HistoryEntry,
    HistoryPage,
    Role,
    UserPage,
    UserPrivate,
    UserPublic,
    UserSelfUpdate,
    private_view,
    public_view,
)
from app.services import users as user_service

router = APIRouter(tags=["users"])


@router.get("/users/me", response_model=UserPrivate, responses=error_responses(401))
async def read_me(user: Reader, settings: SettingsDep) -> UserPrivate:
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
    return private_view(user, settings)


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
    return private_view(updated, settings)


@router.get("/users", response_model=UserPage, responses=error_responses(401, 403, 422))
async def list_users(
    actor: Reader,
    db: SessionDep,
    settings: SettingsDep,
    page: PageDep,
    search: Annotated[
        Text | None,
        Query(max_length=100, description="Part of a username, email or display name."),
    ] = None,
    role: Annotated[Role | None, Query(description="Only users holding this role.")] = None,
    is_active: Annotated[bool | None, Query(description="Only active or inactive users.")] = None,
) -> UserPage:
    """List users (admins and moderators), oldest first, a page at a time.

    The order (creation time, then UUID) is stable, so walking the pages returns
    each user once.

    Returns
    -------
    UserPage
        ``items``, ``total`` (all matching users), ``offset``, ``limit``.

    Raises
    ------
    403
        The caller is not staff.
    """
    users, total = await user_service.list_users(
        db,
        actor,
        offset=page.offset,
        limit=page.limit,
        search=search,
        role=role,
        is_active=is_active,
    )
    return UserPage(
        items=[private_view(user, settings) for user in users],
        total=total,
        offset=page.offset,
        limit=page.limit,
    )


@router.get(
    "/user/{uuid}",
    response_model=UserPrivate | UserPublic,
    responses=error_responses(401, 404, 422),
)
async def read_user(
    user_uuid: UserUuid, actor: Reader, request: Request
) -> UserPrivate | UserPublic:
    """A user's profile.

    Others see the public profile (UUID, username, display name, description,
    picture, creation time); the owner and staff also see email, flags, roles and
    the 2FA method.

    Returns
    -------
    UserPrivate or UserPublic
        The view the caller is entitled to.

    Raises
    ------
    404
        ``USER_NOT_FOUND``: no such user, or one who blocked the caller, or an
        inactive account (for non-staff).
    """
    # A hot read: the app state is read directly (each dependency costs more than a
    # cache hit), and a database session is opened only on a miss.
    state = request.app.state
    user, private = await user_service.read_visible_user(
        state.session_factory, state.auth_cache, actor, user_uuid
    )
    return private_view(user, state.settings) if private else public_view(user, state.settings)


@router.patch(
    "/user/{uuid}", response_model=UserPrivate, responses=error_responses(401, 403, 404, 409, 422)
)
async def update_user(
    user_uuid: UserUuid,
    body: UserSelfUpdate,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> UserPrivate:
    """Change a user's display name, email or description (oneself, or as an admin).

    Returns
    -------
    UserPrivate
        The updated account.

    Raises
    ------
    403
        Not oneself and not an admin.
    404
        ``USER_NOT_FOUND``.
    409
        ``EMAIL_TAKEN``.
    """
    changes = body.model_dump(exclude_unset=True)
    user = await user_service.update_profile(
        db, settings, mailer, actor, user_uuid, changes, client
    )
    return private_view(user, settings)


@router.delete(
    "/user/{uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def delete_user(
    user_uuid: UserUuid,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> None:
    """Delete an account (oneself, or as an admin) with its files and links.

    The account is deactivated first (its tokens stop working at once); if removing
    its data fails, it stays inactive and a scheduled job finishes the deletion.

    Raises
    ------
    403
        Not oneself and not an admin.
    404
        ``USER_NOT_FOUND``.
    409
        ``LAST_ADMIN``: the only active admin cannot be deleted.
    """
    await user_service.delete_user(db, settings, actor, user_uuid, client)


@router.get(
    "/user/{uuid}/history",
    response_model=HistoryPage,
    responses=error_responses(401, 403, 404, 422),
)
async def read_user_history(
    user_uuid: UserUuid, actor: CurrentUser, db: SessionDep, page: PageDep
) -> HistoryPage:
    """A user's history (sign-ups, logins, changes...), newest first: owner and staff.

    Returns
    -------
    HistoryPage
        Entries with ``action``, ``at``, ``by`` (who), ``ip`` and ``details``.

    Raises
    ------
    403
        Neither the owner nor staff.
    404
        ``USER_NOT_FOUND``.
    """
    entries, total = await user_service.read_history(
        db, actor, user_uuid, offset=page.offset, limit=page.limit
    )
    return HistoryPage(
        items=[HistoryEntry.model_validate(entry) for entry in entries],
        total=total,
        offset=page.offset,
        limit=page.limit,
    )


@router.post(
    "/user/{uuid}/block",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 422),
)
async def block_user(
    user_uuid: UserUuid, actor: CurrentUser, db: SessionDep, client: ClientDep
) -> None:
    """Block a user: they no longer see your profile, files or picture.

    Raises
    ------
    404
        ``USER_NOT_FOUND``.
    422
        ``INVALID_BLOCK``: you cannot block yourself.
    """
    await user_service.set_blocked(db, actor, user_uuid, True, client)


@router.delete(
    "/user/{uuid}/block",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 422),
)
async def unblock_user(
    user_uuid: UserUuid, actor: CurrentUser, db: SessionDep, client: ClientDep
) -> None:
    """Unblock a user.

    Raises
    ------
    422
        ``INVALID_BLOCK``: you cannot block or unblock yourself.
    """
    await user_service.set_blocked(db, actor, user_uuid, False, client)
