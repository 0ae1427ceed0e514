"""Passkeys (WebAuthn): registering them on an account, and signing in with one.

A passkey signs in on its own (it is something the user has, unlocked by something
they are or know: two factors already), with a discoverable credential and no
username, or it stands in for the code as the second step of a password login.

Every ceremony has a challenge row (``webauthn_challenge``) that is used at most
once: the finishing request takes it with a conditional UPDATE before checking
anything, so of parallel requests with one challenge exactly one goes on, and a
failed check spends it too. A challenge expires after ``CHALLENGE_SECONDS``.

A sign-in checks, besides the signature: the challenge, the origin (one of
WEBAUTHN_ORIGINS), the relying party id (WEBAUTHN_RP_ID), user presence, user
verification (first factor only), the user handle, and the signature counter: when
the authenticator counts (a non-zero counter) it must go up, else the passkey may
have been copied and the sign-in is refused (the owner is told). The counter is
raised with a conditional UPDATE, so two copies racing with one counter value
cannot both pass. Attempts are counted like password logins (per address, failures
per account), and an inactive (banned, deleted) account is refused the same way.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    base64url_to_bytes,
    bytes_to_base64url,
    options_to_json_dict,
    parse_authentication_credential_json,
    parse_registration_credential_json,
)
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticationCredential,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    RegistrationCredential,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from app.core.authentication import Auth
from app.core.brute_force import BruteForceGuard
from app.core.config import Settings
from app.core.database import rows_matched
from app.core.email import Mailer
from app.core.errors import AppError, Conflict, NotFound, Unauthorized
from app.core.metrics import LOGINS
from app.core.signing_keys import Keyring
from app.models import Passkey, User, WebAuthnChallenge, new_uuid, now_epoch
from app.schemas.auth import TokenPair
from app.schemas.passkeys import PasskeyOptions
from app.services import two_factor
from app.services.audit import AuditTarget, record_audit
from app.services.context import ClientInfo
from app.services.devices import claim_login, new_device_token
from app.services.directory import tool_target
from app.services.history import record_event
from app.services.notices import send_security_notice
from app.services.reauth import require_recent_auth
from app.services.sessions import start_session
from app.services.ways_in import LastLoginMethod, another_way_in, lock_account

#: How long a ceremony may take, from its options to its answer.
CHALLENGE_SECONDS = 300
#: Passkeys one account may hold.
MAX_PASSKEYS = 20
#: The longest credential id WebAuthn allows (level 2, "credential ID").
MAX_CREDENTIAL_ID_BYTES = 1023
#: The brute-force guard's bucket of passkey sign-ins (a second factor counts as "otp").
GUARD_ACTION = "passkey"
#: Sign-in ceremonies opened per address count in a bucket of their own.
OPTIONS_GUARD_ACTION = "passkey_options"
_TRANSPORTS = frozenset(transport.value for transport in AuthenticatorTransport)


class InvalidPasskey(Unauthorized):
    """The assertion does not sign in: unknown or deleted passkey, bad signature, wrong
    origin or relying party, a copied authenticator, or an inactive account (one answer)."""

    code = "INVALID_PASSKEY"
    detail = "This passkey could not sign you in"


class PasskeyChallengeInvalid(AppError):
    """The ceremony's challenge is unknown, expired, already used, or someone else's."""

    status_code = 400
    code = "PASSKEY_CHALLENGE_INVALID"
    detail = "This passkey request expired or was already used; start again"


class MalformedCredential(AppError):
    """The credential is not a WebAuthn answer at all."""

    status_code = 400
    code = "MALFORMED_CREDENTIAL"
    detail = "The credential is not a WebAuthn response"


class PasskeyNotAccepted(AppError):
    """A registration whose attestation does not verify."""

    status_code = 400
    code = "PASSKEY_NOT_ACCEPTED"
    detail = "The passkey was not accepted"


class PasskeyExists(Conflict):
    """The credential is registered already."""

    code = "PASSKEY_EXISTS"
    detail = "This passkey is registered already"


class PasskeyLimitReached(Conflict):
    """The account holds MAX_PASSKEYS passkeys."""

    code = "PASSKEY_LIMIT"
    detail = f"An account holds at most {MAX_PASSKEYS} passkeys; delete one first"


class NoPasskey(Conflict):
    """A passkey was asked for as second factor, but the account has none."""

    code = "NO_PASSKEY"
    detail = "This account has no passkey; use a code"


class PasskeyNotFound(NotFound):
    """No such passkey on the caller's account."""

    code = "PASSKEY_NOT_FOUND"
    detail = "No such passkey"


# Challenges ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Taken:
    """A challenge taken for its one use."""

    challenge: bytes
    user_uuid: str | None
    user_handle: str | None


def _open_challenge(
    db: AsyncSession,
    purpose: str,
    *,
    user_uuid: str | None = None,
    bound_to: str | None = None,
    user_handle: str | None = None,
) -> tuple[str, bytes]:
    """Add a new challenge row (the caller commits): its id and its random bytes."""
    raw = secrets.token_bytes(32)
    now = now_epoch()
    challenge_id = new_uuid()
    db.add(
        WebAuthnChallenge(
            id=challenge_id,
            purpose=purpose,
            user_uuid=user_uuid,
            bound_to=bound_to,
            challenge=bytes_to_base64url(raw),
            user_handle=user_handle,
            created_at=now,
            expires_at=now + CHALLENGE_SECONDS,
        )
    )
    return challenge_id, raw


async def _take_challenge(
    db: AsyncSession,
    challenge_id: str,
    purpose: str,
    *,
    user_uuid: str | None = None,
    bound_to: str | None = None,
) -> _Taken:
    """Use the challenge, once, and commit that: PasskeyChallengeInvalid when it is
    unknown, expired, used, or not this user's (or this login's)."""
    now = now_epoch()
    conditions = [
        WebAuthnChallenge.id == challenge_id,
        WebAuthnChallenge.purpose == purpose,
        WebAuthnChallenge.used_at.is_(None),
        WebAuthnChallenge.expires_at > now,
    ]
    if user_uuid is not None:
        conditions.append(WebAuthnChallenge.user_uuid == user_uuid)
    if bound_to is not None:
        conditions.append(WebAuthnChallenge.bound_to == bound_to)
    row = (
        await db.execute(
            update(WebAuthnChallenge)
            .where(*conditions)
            .values(used_at=now)
            .returning(
                WebAuthnChallenge.challenge,
                WebAuthnChallenge.user_uuid,
                WebAuthnChallenge.user_handle,
            )
            .execution_options(synchronize_session=False)
        )
    ).first()
    await db.commit()
    if row is None:
        raise PasskeyChallengeInvalid()
    return _Taken(base64url_to_bytes(row[0]), row[1], row[2])


def _options(challenge_id: str, options: Any) -> PasskeyOptions:
    return PasskeyOptions(challenge_id=challenge_id, options=options_to_json_dict(options))


def _descriptors(passkeys: list[Passkey]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(
            id=base64url_to_bytes(passkey.credential_id),
            transports=[AuthenticatorTransport(t) for t in passkey.transports if t in _TRANSPORTS],
        )
        for passkey in passkeys
    ]


async def _passkeys_of(db: AsyncSession, user_uuid: str) -> list[Passkey]:
    return list(
        await db.scalars(
            select(Passkey)
            .where(Passkey.user_uuid == user_uuid)
            .order_by(Passkey.created_at, Passkey.id)
        )
    )


# Registration --------------------------------------------------------------------------


async def begin_registration(
    db: AsyncSession,
    settings: Settings,
    guard: BruteForceGuard,
    auth: Auth,
    password: str | None,
    client: ClientInfo,
) -> PasskeyOptions:
    """Options for ``navigator.credentials.create()``, after a re-authentication.

    The passkey is discoverable (the authenticator keeps the account's user handle,
    so that signing in needs no username) and verifies its user. The account's
    passkeys are excluded, so one authenticator is not registered twice.
    """
    user = auth.user
    await require_recent_auth(
        db, settings, guard, user, auth.session, password, client, purpose="passkey_add"
    )
    existing = await _passkeys_of(db, user.uuid)
    if len(existing) >= MAX_PASSKEYS:
        raise PasskeyLimitReached()
    # One opaque handle per account: the first passkey's, or a new random one.
    handle = existing[0].user_handle if existing else bytes_to_base64url(secrets.token_bytes(32))
    challenge_id, raw = _open_challenge(
        db, "register", user_uuid=user.uuid, bound_to=auth.session.id, user_handle=handle
    )
    await db.commit()
    return _options(
        challenge_id,
        generate_registration_options(
            rp_id=settings.WEBAUTHN_RP_ID,
            rp_name=settings.WEBAUTHN_RP_NAME,
            user_name=user.username,
            user_id=base64url_to_bytes(handle),
            user_display_name=user.display_name,
            challenge=raw,
            timeout=CHALLENGE_SECONDS * 1000,
            attestation=AttestationConveyancePreference.NONE,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                require_resident_key=True,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            exclude_credentials=_descriptors(existing),
        ),
    )


def _parse_registration(credential: dict[str, Any]) -> RegistrationCredential:
    try:
        return parse_registration_credential_json(credential)
    except Exception as error:  # untrusted input: any parse failure is the client's
        raise MalformedCredential(
            f"The credential is not a WebAuthn registration: {error}"
        ) from None


async def finish_registration(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    auth: Auth,
    challenge_id: str,
    credential: dict[str, Any],
    name: str | None,
    client: ClientInfo,
) -> Passkey:
    """Check the authenticator's answer to :func:`begin_registration` and keep the
    passkey; the account's verified address is told."""
    user = auth.user
    parsed = _parse_registration(credential)
    taken = await _take_challenge(
        db, challenge_id, "register", user_uuid=user.uuid, bound_to=auth.session.id
    )
    try:
        verified = await asyncio.to_thread(
            verify_registration_response,
            credential=parsed,
            expected_challenge=taken.challenge,
            expected_rp_id=settings.WEBAUTHN_RP_ID,
            expected_origin=settings.WEBAUTHN_ORIGINS,
            require_user_verification=True,
        )
    except Exception as error:  # untrusted input: any failure refuses it
        raise PasskeyNotAccepted(f"The passkey was not accepted: {error}") from None
    if len(verified.credential_id) > MAX_CREDENTIAL_ID_BYTES:
        raise PasskeyNotAccepted(
            f"The passkey was not accepted: its id is longer than {MAX_CREDENTIAL_ID_BYTES} bytes"
        )
    # Registrations of one account take turns, so that parallel ones cannot pass the
    # count together: on PostgreSQL the user's row is locked; on SQLite the INSERT
    # below takes the database's write lock, and the count after it sees every
    # committed passkey and this one.
    await lock_account(db, user.uuid)
    transports = [t.value for t in parsed.response.transports or [] if t.value in _TRANSPORTS]
    passkey = Passkey(
        id=new_uuid(),
        user_uuid=user.uuid,
        credential_id=bytes_to_base64url(verified.credential_id),
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=transports,
        backup_eligible=verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        backed_up=verified.credential_backed_up,
        user_handle=taken.user_handle or bytes_to_base64url(secrets.token_bytes(32)),
        aaguid=verified.aaguid,
        name=name or f"Passkey added {time.strftime('%Y-%m-%d', time.gmtime())}",
        created_at=now_epoch(),
    )
    db.add(passkey)
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        raise PasskeyExists() from None
    count = await db.scalar(select(func.count()).where(Passkey.user_uuid == user.uuid))
    if (count or 0) > MAX_PASSKEYS:
        await db.rollback()
        raise PasskeyLimitReached()
    record_event(
        db,
        user.uuid,
        "passkey_added",
        by=user.uuid,
        client=client,
        details={"passkey": passkey.id, "name": passkey.name},
    )
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise PasskeyExists() from None
    send_security_notice(
        settings, mailer, user, what="A passkey was added", more=f"Passkey: {passkey.name}"
    )
    return passkey


# The passkeys of an account ------------------------------------------------------------


async def list_passkeys(db: AsyncSession, user_uuid: str) -> list[Passkey]:
    """The account's passkeys, oldest first."""
    return await _passkeys_of(db, user_uuid)


async def _own_passkey(db: AsyncSession, user_uuid: str, passkey_id: str) -> Passkey:
    passkey = await db.scalar(
        select(Passkey).where(Passkey.id == passkey_id, Passkey.user_uuid == user_uuid)
    )
    if passkey is None:
        raise PasskeyNotFound()
    return passkey


async def rename(
    db: AsyncSession, auth: Auth, passkey_id: str, name: str, client: ClientInfo
) -> Passkey:
    """Give one of the caller's passkeys another name."""
    passkey = await _own_passkey(db, auth.user.uuid, passkey_id)
    passkey.name = name
    record_event(
        db,
        auth.user.uuid,
        "passkey_renamed",
        by=auth.user.uuid,
        client=client,
        details={"passkey": passkey.id, "name": name},
    )
    await db.commit()
    return passkey


async def _delete_keeping_a_way_in(db: AsyncSession, user_uuid: str, passkey: Passkey) -> None:
    """Delete ``passkey`` unless it is the account's last way in (409
    ``LAST_LOGIN_METHOD``; see :mod:`app.services.ways_in`); the caller commits."""
    await lock_account(db, user_uuid)
    deleted = await db.execute(
        sql_delete(Passkey)
        .where(
            Passkey.id == passkey.id,
            Passkey.user_uuid == user_uuid,
            another_way_in(user_uuid, passkey_id=passkey.id),
        )
        .execution_options(synchronize_session=False)
    )
    if rows_matched(deleted) != 1:
        # Gone meanwhile (a parallel delete) or the last way in: say which.
        if await db.get(Passkey, passkey.id, populate_existing=True) is None:
            raise PasskeyNotFound()
        raise LastLoginMethod()


async def delete(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    auth: Auth,
    passkey_id: str,
    password: str | None,
    client: ClientInfo,
) -> None:
    """Delete one of the caller's passkeys, after a re-authentication; the account's
    verified address is told. It signs in no more."""
    user = auth.user
    await _own_passkey(db, user.uuid, passkey_id)  # a 404 before a password is spent
    await require_recent_auth(
        db, settings, guard, user, auth.session, password, client, purpose="passkey_remove"
    )
    passkey = await _own_passkey(db, user.uuid, passkey_id)
    await _delete_keeping_a_way_in(db, user.uuid, passkey)
    record_event(
        db,
        user.uuid,
        "passkey_removed",
        by=user.uuid,
        client=client,
        details={"passkey": passkey.id, "name": passkey.name},
    )
    await db.commit()
    send_security_notice(
        settings, mailer, user, what="A passkey was removed", more=f"Passkey: {passkey.name}"
    )


async def list_for_admin(db: AsyncSession, actor: User | None, user_uuid: str) -> list[Passkey]:
    """Another account's passkeys (``list_passkeys`` on the user: admins, or the command
    line with ``actor`` None)."""
    user = await tool_target(db, actor, user_uuid, "list_passkeys")
    return await _passkeys_of(db, user.uuid)


async def remove_by_admin(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    actor: User | None,
    user_uuid: str,
    passkey_id: str,
    client: ClientInfo,
) -> None:
    """Delete one of another account's passkeys (``remove_passkey`` on the user: admins,
    or the command line with ``actor`` None), a lost or stolen authenticator, say; the
    account's history names the admin, and its verified address is told."""
    user = await tool_target(db, actor, user_uuid, "remove_passkey")
    passkey = await _own_passkey(db, user.uuid, passkey_id)
    await _delete_keeping_a_way_in(db, user.uuid, passkey)
    details = {"passkey": passkey.id, "name": passkey.name}
    by = actor.uuid if actor is not None else None
    record_event(db, user.uuid, "passkey_removed", by=by, client=client, details=details)
    record_audit(db, actor, "user.passkey_removed", AuditTarget.of_user(user), client, details)
    await db.commit()
    send_security_notice(
        settings,
        mailer,
        user,
        what="A passkey was removed by an administrator",
        more=f"Passkey: {passkey.name}",
    )


# Signing in ----------------------------------------------------------------------------


async def begin_sign_in(
    db: AsyncSession, settings: Settings, guard: BruteForceGuard, client: ClientInfo
) -> PasskeyOptions:
    """Options for ``navigator.credentials.get()`` with no account named: the
    authenticator offers its discoverable passkeys for WEBAUTHN_RP_ID."""
    await guard.attempt(OPTIONS_GUARD_ACTION, address=client.ip)
    challenge_id, raw = _open_challenge(db, "sign_in")
    await db.commit()
    return _options(
        challenge_id,
        generate_authentication_options(
            rp_id=settings.WEBAUTHN_RP_ID,
            challenge=raw,
            timeout=CHALLENGE_SECONDS * 1000,
            allow_credentials=[],
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
    )


def _parse_assertion(credential: dict[str, Any]) -> AuthenticationCredential:
    try:
        return parse_authentication_credential_json(credential)
    except Exception as error:  # untrusted input: any parse failure is the client's
        raise MalformedCredential(f"The credential is not a WebAuthn assertion: {error}") from None


async def _refuse(
    db: AsyncSession,
    user_uuid: str,
    action: str,
    reason: str,
    passkey_id: str | None,
    client: ClientInfo,
) -> InvalidPasskey:
    """Record a refused passkey in the account's history; the error to raise.

    The transaction is rolled back first (loaded objects expire: read them before)."""
    await db.rollback()
    if await db.get(User, user_uuid) is not None:  # not deleted meanwhile
        details: dict[str, Any] = {"reason": reason, "method": "passkey"}
        if passkey_id is not None:
            details["passkey"] = passkey_id
        record_event(db, user_uuid, action, client=client, details=details)
        await db.commit()
    return InvalidPasskey()


async def _check_assertion(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    user: User,
    passkey: Passkey,
    parsed: AuthenticationCredential,
    challenge: bytes,
    client: ClientInfo,
    *,
    first_factor: bool,
) -> None:
    """Verify ``parsed`` against ``passkey`` and raise its counter, in the caller's
    transaction; InvalidPasskey (recorded) when anything is wrong."""
    failed = "login_failed" if first_factor else "otp_failed"
    passkey_id, passkey_name = passkey.id, passkey.name
    try:
        verified = await asyncio.to_thread(
            verify_authentication_response,
            credential=parsed,
            expected_challenge=challenge,
            expected_rp_id=settings.WEBAUTHN_RP_ID,
            expected_origin=settings.WEBAUTHN_ORIGINS,
            credential_public_key=passkey.public_key,
            # The counter is checked below, where a copy can be told from a bad answer.
            credential_current_sign_count=0,
            require_user_verification=first_factor,
        )
    except Exception:  # untrusted input: any failure refuses it
        raise await _refuse(db, user.uuid, failed, "invalid", passkey_id, client) from None
    # The authenticator names the account it keeps the passkey for: it must be this one
    # (a discoverable passkey, the only factor, always names it).
    handle = parsed.response.user_handle
    if (handle is None and first_factor) or (
        handle is not None and bytes_to_base64url(handle) != passkey.user_handle
    ):
        raise await _refuse(db, user.uuid, failed, "user_handle", passkey_id, client)
    if not user.is_active:
        raise await _refuse(db, user.uuid, failed, "inactive", passkey_id, client)
    new_count = verified.new_sign_count
    raised = await db.execute(
        update(Passkey)
        .where(
            Passkey.id == passkey_id,
            # Counting authenticators count up; one that never counts stays at 0.
            Passkey.sign_count < new_count if new_count else Passkey.sign_count == 0,
        )
        .values(
            sign_count=new_count,
            backed_up=verified.credential_backed_up,
            last_used_at=now_epoch(),
        )
        .execution_options(synchronize_session=False)
    )
    if rows_matched(raised) != 1:
        send_security_notice(
            settings,
            mailer,
            user,
            what="A sign-in with a copy of your passkey was refused",
            more=(
                f"The passkey {passkey_name!r} answered with a signature counter that did "
                "not go up: the passkey may have been copied. Delete it and register a new one."
            ),
        )
        raise await _refuse(db, user.uuid, failed, "sign_count", passkey_id, client)


async def _guarded_check(
    db: AsyncSession,
    settings: Settings,
    mailer: Mailer,
    guard: BruteForceGuard,
    action: str,
    user: User,
    passkey: Passkey,
    parsed: AuthenticationCredential,
    challenge: bytes,
    client: ClientInfo,
    *,
    first_factor: bool,
) -> None:
    """:func:`_check_assertion` under the account's guard: only a refusal stays counted.

    A sign-in from a device the account has signed in from (its device token, as for
    password logins) counts in that device's own allowance, so strangers sending bad
    answers for a known credential id cannot lock the owner's device out.
    """
    device_token = client.device_token if first_factor else None
    slot = await claim_login(guard, settings, user.uuid, device_token, action)
    try:
        await _check_assertion(
            db,
            settings,
            mailer,
            user,
            passkey,
            parsed,
            challenge,
            client,
            first_factor=first_factor,
        )
    except InvalidPasskey:
        raise
    except BaseException:
        await guard.forgive(slot)
        raise
    await guard.forgive(slot)


async def finish_sign_in(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    mailer: Mailer,
    guard: BruteForceGuard,
    challenge_id: str,
    credential: dict[str, Any],
    client: ClientInfo,
) -> TokenPair:
    """Sign in with the passkey's answer to :func:`begin_sign_in`: the same token pair
    (and device token) as a password login, with no second step."""
    await guard.attempt(GUARD_ACTION, address=client.ip)
    parsed = _parse_assertion(credential)
    taken = await _take_challenge(db, challenge_id, "sign_in")
    passkey = await db.scalar(
        select(Passkey).where(Passkey.credential_id == bytes_to_base64url(parsed.raw_id))
    )
    user = await db.get(User, passkey.user_uuid) if passkey is not None else None
    if passkey is None or user is None:
        LOGINS.labels("failure").inc()
        raise InvalidPasskey()
    try:
        await _guarded_check(
            db,
            settings,
            mailer,
            guard,
            GUARD_ACTION,
            user,
            passkey,
            parsed,
            taken.challenge,
            client,
            first_factor=True,
        )
    except InvalidPasskey:
        LOGINS.labels("failure").inc()
        raise
    LOGINS.labels("success").inc()
    pair = await start_session(db, settings, keyring, user, client)
    return pair.model_copy(update={"device_token": new_device_token(settings, user.uuid)})


# Second factor -------------------------------------------------------------------------


async def begin_second_factor(
    db: AsyncSession, settings: Settings, guard: BruteForceGuard, otp_token: str, client: ClientInfo
) -> PasskeyOptions:
    """Options for ``navigator.credentials.get()`` for the second step of a password
    login (the ``otp_token`` it answered with), allowing the account's passkeys.
    Ceremonies opened count per address, like those of a sign-in."""
    await guard.attempt(OPTIONS_GUARD_ACTION, address=client.ip)
    user, login_challenge = await two_factor.pending_login(db, settings, otp_token)
    passkeys = await _passkeys_of(db, user.uuid)
    if not passkeys:
        raise NoPasskey()
    challenge_id, raw = _open_challenge(
        db, "second_factor", user_uuid=user.uuid, bound_to=login_challenge.id
    )
    await db.commit()
    return _options(
        challenge_id,
        generate_authentication_options(
            rp_id=settings.WEBAUTHN_RP_ID,
            challenge=raw,
            timeout=CHALLENGE_SECONDS * 1000,
            allow_credentials=_descriptors(passkeys),
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
    )


async def finish_second_factor(
    db: AsyncSession,
    settings: Settings,
    keyring: Keyring,
    mailer: Mailer,
    guard: BruteForceGuard,
    otp_token: str,
    challenge_id: str,
    credential: dict[str, Any],
    client: ClientInfo,
) -> TokenPair:
    """Finish a two-factor login with a passkey instead of a code: the pending login
    is used up as a code would use it, and the token pair handed out."""
    await guard.attempt("otp", address=client.ip)
    parsed = _parse_assertion(credential)
    user, login_challenge = await two_factor.pending_login(db, settings, otp_token)
    login_challenge_id = login_challenge.id
    taken = await _take_challenge(
        db, challenge_id, "second_factor", user_uuid=user.uuid, bound_to=login_challenge_id
    )
    passkey = await db.scalar(
        select(Passkey).where(
            Passkey.credential_id == bytes_to_base64url(parsed.raw_id),
            Passkey.user_uuid == user.uuid,
        )
    )
    if passkey is None:
        raise await _refuse(db, user.uuid, "otp_failed", "unknown_passkey", None, client)
    await _guarded_check(
        db,
        settings,
        mailer,
        guard,
        "otp",
        user,
        passkey,
        parsed,
        taken.challenge,
        client,
        first_factor=False,
    )
    try:
        await two_factor.claim_login_challenge(db, login_challenge_id)
    except two_factor.InvalidOtpToken:
        await db.rollback()
        raise
    LOGINS.labels("success").inc()
    pair = await start_session(db, settings, keyring, user, client)
    return pair.model_copy(update={"device_token": new_device_token(settings, user.uuid)})
