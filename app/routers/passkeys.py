"""Passkeys (WebAuthn): registering, listing, renaming and deleting them, and signing in
with one, alone or as the second step of a password login.

Each ceremony takes two calls: ``.../begin`` answers the options for the browser's
``navigator.credentials`` call and a ``challenge_id``; ``.../finish`` takes the
browser's answer and that id. The rules are :mod:`app.services.passkeys`'s.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response, status

from app.routers.deps import (
    AuthDep,
    ClientDep,
    GuardDep,
    KeyringDep,
    MailerDep,
    ReaderAuth,
    SessionDep,
    SettingsDep,
)
from app.routers.device_cookie import remember_device
from app.schemas.auth import TokenPair
from app.schemas.common import error_responses
from app.schemas.passkeys import (
    PasskeyDelete,
    PasskeyInfo,
    PasskeyList,
    PasskeyOptions,
    PasskeyRegistrationFinish,
    PasskeyRegistrationStart,
    PasskeyRename,
    PasskeySecondFactorFinish,
    PasskeySecondFactorStart,
    PasskeySignInFinish,
)
from app.services import passkeys

router = APIRouter(prefix="/auth/passkeys", tags=["passkeys"])

PasskeyId = Annotated[str, Path(min_length=1, max_length=36, description="The passkey's id.")]


@router.post(
    "/sign-in/begin",
    response_model=PasskeyOptions,
    responses=error_responses(429),
)
async def passkeys_sign_in_begin(
    db: SessionDep, settings: SettingsDep, guard: GuardDep, client: ClientDep
) -> PasskeyOptions:
    """Start signing in with a passkey, no username needed.

    Pass ``options`` to ``navigator.credentials.get({publicKey})`` (``allowCredentials``
    is empty: the authenticator offers the passkeys it keeps for this site), then send
    the answer to /auth/passkeys/sign-in/finish.

    Returns
    -------
    PasskeyOptions
        The options and the ceremony's ``challenge_id`` (single use, 5 minutes).

    Raises
    ------
    429
        ``RATE_LIMITED``: too many sign-ins started from this address.
    """
    return await passkeys.begin_sign_in(db, settings, guard, client)


@router.post(
    "/sign-in/finish",
    response_model=TokenPair,
    responses=error_responses(400, 401, 422, 429),
)
async def passkeys_sign_in_finish(
    body: PasskeySignInFinish,
    response: Response,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
    keyring: KeyringDep,
) -> TokenPair:
    """Sign in with a passkey: the same tokens as a password login, with no second step
    (a passkey that verified its user is two factors already).

    Returns
    -------
    TokenPair
        As /auth/login.

    Raises
    ------
    400
        ``PASSKEY_CHALLENGE_INVALID`` (expired, already used: start again) or
        ``MALFORMED_CREDENTIAL``.
    401
        ``INVALID_PASSKEY``: the same answer for an unknown or deleted passkey, a bad
        signature, another site's answer, a copied authenticator, and an inactive account.
    429
        ``RATE_LIMITED``, with ``Retry-After``.
    """
    answer = await passkeys.finish_sign_in(
        db, settings, keyring, mailer, guard, body.challenge_id, body.credential, client
    )
    remember_device(response, settings, answer)
    return answer


@router.post(
    "/second-factor/begin",
    response_model=PasskeyOptions,
    responses=error_responses(401, 409, 422, 429),
)
async def passkeys_second_factor_begin(
    body: PasskeySecondFactorStart,
    db: SessionDep,
    settings: SettingsDep,
    guard: GuardDep,
    client: ClientDep,
) -> PasskeyOptions:
    """Use a passkey instead of a code for the second step of a password login.

    Send the ``otp_token`` /auth/login answered with; pass ``options`` to
    ``navigator.credentials.get({publicKey})`` and the answer to
    /auth/passkeys/second-factor/finish.

    Returns
    -------
    PasskeyOptions
        The options (allowing the account's passkeys) and the ``challenge_id``.

    Raises
    ------
    401
        ``INVALID_OTP_TOKEN``: the pending login expired or is over.
    409
        ``NO_PASSKEY``: the account has no passkey.
    429
        ``RATE_LIMITED``: too many ceremonies opened from this address.
    """
    return await passkeys.begin_second_factor(db, settings, guard, body.otp_token, client)


@router.post(
    "/second-factor/finish",
    response_model=TokenPair,
    responses=error_responses(400, 401, 422, 429),
)
async def passkeys_second_factor_finish(
    body: PasskeySecondFactorFinish,
    response: Response,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
    keyring: KeyringDep,
) -> TokenPair:
    """Finish a two-factor login with a passkey, as /auth/otp/verify does with a code.

    Returns
    -------
    TokenPair
        As /auth/login.

    Raises
    ------
    400
        ``PASSKEY_CHALLENGE_INVALID`` or ``MALFORMED_CREDENTIAL``.
    401
        ``INVALID_PASSKEY``, or ``INVALID_OTP_TOKEN`` (the pending login is over).
    429
        ``RATE_LIMITED``, with ``Retry-After``.
    """
    answer = await passkeys.finish_second_factor(
        db,
        settings,
        keyring,
        mailer,
        guard,
        body.otp_token,
        body.challenge_id,
        body.credential,
        client,
    )
    remember_device(response, settings, answer)
    return answer


@router.post(
    "/register/begin",
    response_model=PasskeyOptions,
    responses=error_responses(400, 401, 403, 409, 422, 429),
)
async def passkeys_register_begin(
    body: PasskeyRegistrationStart,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    guard: GuardDep,
    client: ClientDep,
) -> PasskeyOptions:
    """Start registering a passkey on your account (a re-authentication confirms it is you).

    Send ``password``, or leave it out when this session was re-authenticated in the
    last minutes (see /auth/reauthenticate). Pass ``options`` to
    ``navigator.credentials.create({publicKey})`` and the answer to
    /auth/passkeys/register/finish.

    Returns
    -------
    PasskeyOptions
        The options and the ceremony's ``challenge_id``.

    Raises
    ------
    400
        ``WRONG_PASSWORD``.
    403
        ``REAUTHENTICATION_REQUIRED``: no password and no recent re-authentication.
    409
        ``PASSKEY_LIMIT``: the account holds the most passkeys it may.
    429
        ``RATE_LIMITED``: too many wrong passwords for this account lately.
    """
    return await passkeys.begin_registration(db, settings, guard, auth, body.password, client)


@router.post(
    "/register/finish",
    status_code=status.HTTP_201_CREATED,
    response_model=PasskeyInfo,
    responses=error_responses(400, 401, 409, 422),
)
async def passkeys_register_finish(
    body: PasskeyRegistrationFinish,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    client: ClientDep,
) -> PasskeyInfo:
    """Keep the passkey the authenticator made; the account's verified email is told.

    Returns
    -------
    PasskeyInfo
        The new passkey.

    Raises
    ------
    400
        ``PASSKEY_NOT_ACCEPTED`` (the answer does not verify: another site's, say),
        ``PASSKEY_CHALLENGE_INVALID`` or ``MALFORMED_CREDENTIAL``.
    409
        ``PASSKEY_EXISTS`` or ``PASSKEY_LIMIT``.
    """
    passkey = await passkeys.finish_registration(
        db, settings, mailer, auth, body.challenge_id, body.credential, body.name, client
    )
    return PasskeyInfo.model_validate(passkey)


@router.get("", response_model=PasskeyList, responses=error_responses(401))
async def passkeys_list(auth: ReaderAuth, db: SessionDep) -> PasskeyList:
    """Your passkeys, oldest first.

    Returns
    -------
    PasskeyList
        Each passkey's id, name, dates and flags (never its key).
    """
    items = await passkeys.list_passkeys(db, auth.user.uuid)
    return PasskeyList(items=[PasskeyInfo.model_validate(item) for item in items])


@router.patch(
    "/{passkey_id}",
    response_model=PasskeyInfo,
    responses=error_responses(401, 404, 422),
)
async def passkeys_rename(
    passkey_id: PasskeyId, body: PasskeyRename, auth: AuthDep, db: SessionDep, client: ClientDep
) -> PasskeyInfo:
    """Rename one of your passkeys.

    Returns
    -------
    PasskeyInfo
        The passkey.

    Raises
    ------
    404
        ``PASSKEY_NOT_FOUND``.
    """
    return PasskeyInfo.model_validate(
        await passkeys.rename(db, auth, passkey_id, body.name, client)
    )


@router.delete(
    "/{passkey_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 401, 403, 404, 422, 429),
)
async def passkeys_delete(
    passkey_id: PasskeyId,
    auth: AuthDep,
    db: SessionDep,
    settings: SettingsDep,
    mailer: MailerDep,
    guard: GuardDep,
    client: ClientDep,
    body: PasskeyDelete | None = None,
) -> None:
    """Delete one of your passkeys (a re-authentication confirms it is you); it signs
    in no more, and the account's verified email is told.

    Send ``password`` in the body, or no body after a recent re-authentication.

    Raises
    ------
    400
        ``WRONG_PASSWORD``.
    403
        ``REAUTHENTICATION_REQUIRED``.
    404
        ``PASSKEY_NOT_FOUND``.
    429
        ``RATE_LIMITED``: too many wrong passwords for this account lately.
    """
    password = body.password if body is not None else None
    await passkeys.delete(db, settings, mailer, guard, auth, passkey_id, password, client)
