"""Staff endpoints: roles, bans, account tools, a user's passkeys, feature flags, and the
audit log."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response, status

from app.routers.deps import (
    ClientDep,
    CurrentUser,
    FlagBroadcasterDep,
    FlagSourceDep,
    FlagStoreDep,
    GuardDep,
    MailerDep,
    Reader,
    SessionDep,
    SettingsDep,
    UserUuid,
)
from app.schemas.account_tools import ExternalAccountInfo, ExternalAccountList, SessionsRevoked
from app.schemas.audit import AuditEntry, AuditPage
from app.schemas.auth import Message, ProviderName, SessionInfo, SessionList
from app.schemas.common import Text, error_responses
from app.schemas.flags import FeatureFlagChange, FeatureFlags
from app.schemas.passkeys import PasskeyInfo, PasskeyList
from app.schemas.users import AdminUserUpdate, UserPrivate, private_view
from app.services import account_tools, audit, moderation, passkeys
from app.services import flags as flag_service

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
    role nor the account. A ban ends every session of the user at once. Each change is
    an entry of the audit log (``user.role_changed``, ``user.banned``,
    ``user.unbanned``); a refused one leaves none.

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


# Account tools ------------------------------------------------------------------------
# Who may use which (ROLES): admins all of them (not on themselves for 2FA and
# providers), moderators the others on users who are neither admin nor moderator.


@router.post(
    "/user/{uuid}/two-factor/reset",
    response_model=UserPrivate,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def reset_user_two_factor(
    user_uuid: UserUuid,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> UserPrivate:
    """Turn off a user's two-factor authentication (admins), for someone who lost their
    second factor.

    The user then signs in with the password alone and may enrol again. Every session
    of theirs ends; the history records ``otp_reset``, the audit log
    ``user.2fa_reset``, and the user's verified email is told. An admin's own 2FA is
    changed through their own endpoints, which ask for a re-authentication.

    Returns
    -------
    UserPrivate
        The account after the reset.

    Raises
    ------
    403
        Not an admin, or the admin's own account.
    404
        ``USER_NOT_FOUND``.
    409
        ``OTP_NOT_ENABLED``: the user has no two-factor authentication.
    """
    user = await account_tools.reset_two_factor(db, settings, mailer, actor, user_uuid, client)
    return private_view(user, settings)


@router.delete(
    "/user/{uuid}/login-lock",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
)
async def clear_user_login_lock(
    user_uuid: UserUuid,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> None:
    """Clear the lock that failed sign-ins put on an account (admins; moderators for
    users who are not staff).

    The failed passwords and two-factor codes counted against the account are
    forgotten, so that its owner signs in again at once. The limits per client address
    stay. The history records ``login_lock_cleared``, the audit log
    ``user.login_lock_cleared``; the user's verified email is told.

    Raises
    ------
    403
        Not allowed for this user.
    404
        ``USER_NOT_FOUND``.
    """
    await account_tools.clear_login_lock(db, settings, mailer, guard, actor, user_uuid, client)


@router.get(
    "/user/{uuid}/sessions",
    response_model=SessionList,
    responses=error_responses(401, 403, 404, 422),
)
async def list_user_sessions(user_uuid: UserUuid, actor: Reader, db: SessionDep) -> SessionList:
    """List a user's open sessions, newest first (admins; moderators for users who are
    not staff).

    Returns
    -------
    SessionList
        Each session's id, times, user agent and address (``current`` is always false).

    Raises
    ------
    403
        Not allowed for this user.
    404
        ``USER_NOT_FOUND``.
    """
    sessions = await account_tools.list_sessions(db, actor, user_uuid)
    return SessionList(items=[SessionInfo.model_validate(session) for session in sessions])


@router.delete(
    "/user/{uuid}/sessions",
    response_model=SessionsRevoked,
    responses=error_responses(401, 403, 404, 422),
)
async def revoke_user_sessions(
    user_uuid: UserUuid,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> SessionsRevoked:
    """End every session of a user (admins; moderators for users who are not staff).

    Their access and refresh tokens are refused at once. The history records
    ``sessions_revoked``, the audit log ``user.sessions_revoked``; the user's verified
    email is told.

    Returns
    -------
    SessionsRevoked
        How many sessions ended.

    Raises
    ------
    403
        Not allowed for this user.
    404
        ``USER_NOT_FOUND``.
    """
    revoked = await account_tools.revoke_user_sessions(
        db, settings, mailer, actor, user_uuid, client
    )
    return SessionsRevoked(revoked=revoked)


@router.delete(
    "/user/{uuid}/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
)
async def revoke_user_session(
    user_uuid: UserUuid,
    session_id: UUID,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> None:
    """End one session of a user (admins; moderators for users who are not staff).

    Its access and refresh tokens are refused at once. The history records
    ``sessions_revoked``, the audit log ``user.sessions_revoked``; the user's verified
    email is told.

    Raises
    ------
    403
        Not allowed for this user.
    404
        ``USER_NOT_FOUND``, or ``SESSION_NOT_FOUND``: no open session of this user has
        this id.
    """
    await account_tools.revoke_user_sessions(
        db, settings, mailer, actor, user_uuid, client, session_id=str(session_id)
    )


@router.post(
    "/user/{uuid}/password-reset",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(401, 403, 404, 409, 422, 429),
)
async def send_user_password_reset(
    user_uuid: UserUuid,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
) -> Message:
    """Mail a user a password-reset link (admins; moderators for users who are not
    staff).

    The same link as ``/auth/password/forgot`` sends: to the user's verified email
    only, valid one hour, once. The history records ``password_reset_sent``, the audit
    log ``user.password_reset_sent`` (never the link).

    Returns
    -------
    Message
        An acknowledgement.

    Raises
    ------
    403
        Not allowed for this user.
    404
        ``USER_NOT_FOUND``.
    409
        ``EMAIL_DISABLED`` (no mail on this server), ``EMAIL_NOT_VERIFIED`` or
        ``USER_INACTIVE`` (banned or being deleted).
    429
        ``RATE_LIMITED``: too many reset mails for this email lately.
    """
    await account_tools.send_password_reset(db, settings, mailer, guard, actor, user_uuid, client)
    return Message(detail="A password-reset link was sent to the user's email")


@router.get(
    "/user/{uuid}/external-accounts",
    response_model=ExternalAccountList,
    responses=error_responses(401, 403, 404, 422),
)
async def list_user_external_accounts(
    user_uuid: UserUuid, actor: Reader, db: SessionDep
) -> ExternalAccountList:
    """List the provider accounts linked to a user (admins; moderators for users who
    are not staff).

    Returns
    -------
    ExternalAccountList
        Each account's provider, its name and email there, and when it was linked.

    Raises
    ------
    403
        Not allowed for this user.
    404
        ``USER_NOT_FOUND``.
    """
    accounts = await account_tools.list_external_accounts(db, actor, user_uuid)
    return ExternalAccountList(
        items=[ExternalAccountInfo.model_validate(account) for account in accounts]
    )


@router.delete(
    "/user/{uuid}/external-accounts/{provider}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409, 422),
)
async def unlink_user_external_account(
    user_uuid: UserUuid,
    provider: ProviderName,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> None:
    """Unlink a provider account from a user (admins; not their own account).

    Signing in with that provider account no longer opens the user's. Refused when it
    is the user's only way to sign in. The history records ``oauth_unlinked``, the audit
    log ``user.provider_unlinked``; the user's verified email is told.

    Raises
    ------
    403
        Not an admin, or the admin's own account.
    404
        ``USER_NOT_FOUND``, or ``OAUTH_ACCOUNT_NOT_LINKED``.
    409
        ``LAST_LOGIN_METHOD``: the user has no password, no other provider and no passkey.
    """
    await account_tools.unlink_external_account(
        db, settings, mailer, actor, user_uuid, provider, client
    )


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
    db: SessionDep,
    source: FlagSourceDep,
    broadcaster: FlagBroadcasterDep,
    settings: SettingsDep,
    client: ClientDep,
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
    stored, and ``notice`` says that nothing enforces it. Each flag named is an entry
    of the audit log (``flag.changed``, ``flag.removed``, with its value before).

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
        changed. (With the flags in the database, a failed write changes none either.)
    """
    flags = await flag_service.change_flags(
        db, source, broadcaster, actor, add=body.add, remove=body.remove, client=client
    )
    return FeatureFlags.of(
        flags, enabled=settings.FEATURE_FLAGS_ENABLED, protected=source.store.protected
    )


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
    signs in no more; the user's history names the admin, the audit log records
    ``user.passkey_removed``, and their verified email is told.

    Raises
    ------
    403
        Not an admin.
    404
        ``USER_NOT_FOUND`` or ``PASSKEY_NOT_FOUND``.
    """
    await passkeys.remove_by_admin(db, settings, mailer, actor, user_uuid, passkey_id, client)


#: The largest epoch second a filter takes (the year 33658): anything beyond is a typo.
LATEST_EPOCH_SECONDS = 10**12


@router.get("/audit", response_model=AuditPage, responses=error_responses(401, 403, 422))
async def read_audit_log(
    actor: Reader,
    db: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Entries to return (1-100).")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` of the previous page: the page after it."),
    ] = None,
    by: Annotated[
        Text | None,
        Query(
            alias="actor",
            max_length=100,
            description="Who acted: a UUID, or the name they had (`alice`, `cli:root`).",
        ),
    ] = None,
    action: Annotated[
        str | None,
        Query(
            max_length=65,
            pattern=r"^[a-z0-9_.]+\*?$",
            description="An action (`user.banned`), or the start of one followed by `*` "
            "(`user.*`, `flag.*`).",
        ),
    ] = None,
    target: Annotated[
        Text | None,
        Query(max_length=255, description="What the action was about: a user's UUID, a flag."),
    ] = None,
    target_type: Annotated[
        str | None,
        Query(max_length=32, pattern=r"^[a-z0-9_]+$", description="`user`, `flag`, ..."),
    ] = None,
    since: Annotated[
        int | None,
        Query(ge=0, le=LATEST_EPOCH_SECONDS, description="From this time on (epoch seconds)."),
    ] = None,
    until: Annotated[
        int | None,
        Query(ge=0, le=LATEST_EPOCH_SECONDS, description="Up to this time (epoch seconds)."),
    ] = None,
) -> AuditPage:
    """The audit log: what staff did, newest first, a page at a time (admins).

    Every action staff take with their powers is one entry: role changes, bans,
    deletions and profile changes of other users, the account tools, changes to other
    users' files and pictures, feature flag changes, and the command line's admin
    commands. Each says who acted (and in which role), what, on what, when and from
    where; reading is not recorded. Entries are kept AUDIT_RETENTION_DAYS.

    Walk the pages with ``cursor`` (each page's ``next_cursor``): entries recorded
    meanwhile come before the first page and never shift the walk, so each entry is
    listed once. Filters combine; ``since`` and ``until`` are both included.

    Moderators may not read it: it shows every staff member's actions with their
    addresses and devices, admins' own included, and moderators are among those it
    oversees.

    Returns
    -------
    AuditPage
        ``items``, ``limit``, ``next_cursor``.

    Raises
    ------
    403
        Not an admin.
    422
        A cursor this list did not hand out (``INVALID_CURSOR``), or a malformed
        filter.
    """
    events, next_cursor = await audit.read_audit_log(
        db,
        actor,
        limit=limit,
        cursor=cursor,
        by=by,
        action=action,
        target=target,
        target_type=target_type,
        since=since,
        until=until,
    )
    return AuditPage(
        items=[AuditEntry.model_validate(event) for event in events],
        limit=limit,
        next_cursor=next_cursor,
    )
