"""Users: one's own account, other users' profiles, the staff list, history, blocking."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.routers.deps import (
    AuthDep,
    ClientDep,
    CurrentUser,
    GuardDep,
    MailerDep,
    PageDep,
    Reader,
    SessionDep,
    SettingsDep,
    UserCopiesDep,
    UserUuid,
)
from app.schemas.common import Text, error_responses
from app.schemas.users import (
    DeleteAccountRequest,
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
from app.services import deletion, directory, moderation, profile

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


@router.patch(
    "/users/me", response_model=UserPrivate, responses=error_responses(400, 401, 403, 409, 422, 429)
)
async def update_me(
    body: UserSelfUpdate,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> UserPrivate:
    """Change one's display name, email or description.

    A new email needs ``current_password`` (or a session re-authenticated in the last
    minutes, see /auth/reauthenticate). It is ``pending_email`` until the link mailed
    to it is followed; ``email`` stays in force meanwhile, and, when verified, is sent
    a notice with a link that refuses the change. Sending the current email again
    cancels a pending change. Fields that are not self-service (roles, flags, ...)
    are refused with 422.

    Returns
    -------
    UserPrivate
        The updated account.

    Raises
    ------
    400
        ``WRONG_PASSWORD``.
    401
        Not authenticated.
    403
        ``REAUTHENTICATION_REQUIRED``: a new email without a password or a recent
        re-authentication.
    409
        ``EMAIL_TAKEN``.
    422
        A field is invalid or not changeable here.
    429
        ``RATE_LIMITED``: too many wrong passwords for this account lately.
    """
    changes = body.model_dump(exclude_unset=True)
    user = await profile.update_profile(
        db, settings, mailer, guard, auth, auth.user.uuid, changes, client
    )
    return private_view(user, settings)


@router.get("/users", response_model=UserPage, responses=error_responses(401, 403, 422))
async def list_users(
    actor: Reader,
    db: SessionDep,
    settings: SettingsDep,
    page: PageDep,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="`next_cursor` of the previous page: the page after it "
            "(with `offset` left at 0).",
        ),
    ] = None,
    with_total: Annotated[
        bool, Query(description="Count the matching users (`total`); ignored with `cursor`.")
    ] = True,
    search: Annotated[
        Text | None,
        Query(
            max_length=100,
            description="Start of a username, display name (any case) or email.",
        ),
    ] = None,
    role: Annotated[Role | None, Query(description="Only users holding this role.")] = None,
    is_active: Annotated[bool | None, Query(description="Only active or inactive users.")] = None,
) -> UserPage:
    """List users (admins and moderators), oldest first, a page at a time.

    The order (creation time, then UUID) is stable, so walking the pages returns
    each user once. Walk with ``cursor`` (each page's ``next_cursor``): a deep page
    then costs what the first does, where a large ``offset`` makes the database skip
    every row before it. ``with_total=false`` spares the count on the first page.

    Returns
    -------
    UserPage
        ``items``, ``total`` (all matching users, or null), ``offset``, ``limit``,
        ``next_cursor``.

    Raises
    ------
    403
        The caller is not staff.
    422
        A cursor this list did not hand out (``INVALID_CURSOR``), or both a cursor and
        an offset (``CURSOR_WITH_OFFSET``).
    """
    users, total, next_cursor = await directory.list_users(
        db,
        actor,
        offset=page.offset,
        limit=page.limit,
        cursor=cursor,
        with_total=with_total,
        search=search,
        role=role,
        is_active=is_active,
    )
    return UserPage(
        items=[private_view(user, settings) for user in users],
        total=total,
        offset=page.offset,
        limit=page.limit,
        next_cursor=next_cursor,
    )


@router.get(
    "/user/{uuid}",
    response_model=UserPrivate | UserPublic,
    responses=error_responses(401, 404, 422),
)
async def read_user(
    user_uuid: UserUuid, actor: Reader, users: UserCopiesDep, settings: SettingsDep
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
    # A copy, usually from the auth cache: a database session opens only on a miss.
    user, private = directory.visible_user(actor, await users(user_uuid))
    return private_view(user, settings) if private else public_view(user, settings)


@router.patch(
    "/user/{uuid}",
    response_model=UserPrivate,
    responses=error_responses(400, 401, 403, 404, 409, 422, 429),
)
async def update_user(
    user_uuid: UserUuid,
    body: UserSelfUpdate,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> UserPrivate:
    """Change a user's display name, email or description (oneself, or as an admin).

    The rules of ``PATCH /users/me`` apply; a new email needs the caller's own
    re-authentication (an admin's password, for instance). An admin's change to
    someone else is an entry of the audit log (``user.updated``).

    Returns
    -------
    UserPrivate
        The updated account.

    Raises
    ------
    400
        ``WRONG_PASSWORD``.
    403
        Not oneself and not an admin, or ``REAUTHENTICATION_REQUIRED``.
    404
        ``USER_NOT_FOUND``.
    409
        ``EMAIL_TAKEN``.
    429
        ``RATE_LIMITED``.
    """
    changes = body.model_dump(exclude_unset=True)
    user = await profile.update_profile(
        db, settings, mailer, guard, auth, user_uuid, changes, client
    )
    return private_view(user, settings)


@router.delete(
    "/user/{uuid}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 401, 403, 404, 409, 422, 429),
)
async def delete_user(
    user_uuid: UserUuid,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    guard: GuardDep,
    client: ClientDep,
    body: DeleteAccountRequest | None = None,
) -> None:
    """Delete an account (oneself, or as an admin) with its files and links.

    Deletion cannot be undone: the caller confirms with ``current_password`` in the
    body, or after a recent re-authentication (/auth/reauthenticate) with no body.
    The account is deactivated first (its tokens stop working at once); if removing
    its data fails, it stays inactive and a scheduled job finishes the deletion. An
    admin deleting someone else is an entry of the audit log (``user.deleted``).

    Raises
    ------
    400
        ``WRONG_PASSWORD``.
    403
        Not oneself and not an admin, or ``REAUTHENTICATION_REQUIRED``.
    404
        ``USER_NOT_FOUND``.
    409
        ``LAST_ADMIN``: the only active admin cannot be deleted.
    429
        ``RATE_LIMITED``: too many wrong passwords for this account lately.
    """
    password = body.current_password if body is not None else None
    await deletion.delete_user(db, settings, guard, auth, user_uuid, password, client)


@router.get(
    "/user/{uuid}/history",
    response_model=HistoryPage,
    responses=error_responses(401, 403, 404, 422),
)
async def read_user_history(
    user_uuid: UserUuid, actor: Reader, db: SessionDep, page: PageDep
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
    entries, total = await directory.read_history(
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
    await moderation.set_blocked(db, actor, user_uuid, True, client)


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
    await moderation.set_blocked(db, actor, user_uuid, False, client)
