"""Whether an account keeps a way to sign in: a password, a linked provider, a passkey.

Unlinking a provider and deleting a passkey each remove one way; neither may remove
the last (the account could then only be recovered by a password reset mail). The
check and the delete are one statement, so that two removals at once (the user's and
an admin's, or two tabs) of an account's last two ways cannot both pass. On SQLite the
statement runs under the database's single write lock; on PostgreSQL a statement sees
what was committed when it starts, so :func:`lock_account` first locks the user's row
(held until commit), and a second removal looks only after the first has committed.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.core.errors import Conflict
from app.models import ExternalAccount, Passkey, User


class LastLoginMethod(Conflict):
    """The removal would leave the user no way to sign in."""

    code = "LAST_LOGIN_METHOD"
    detail = (
        "This is the account's only way to sign in: set a password, link a provider or "
        "add a passkey first"
    )


async def lock_account(db: AsyncSession, user_uuid: str) -> None:
    """Hold the user's row until commit (PostgreSQL), so that removals of the account's
    ways in take turns."""
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(select(User.uuid).where(User.uuid == user_uuid).with_for_update())


def another_way_in(
    user_uuid: str, *, provider: str | None = None, passkey_id: str | None = None
) -> ColumnElement[bool]:
    """SQL: the user can still sign in without the ``provider`` link or the passkey
    ``passkey_id`` (whichever is named)."""
    account = aliased(ExternalAccount)
    passkey = aliased(Passkey)
    other_account = account.user_uuid == user_uuid
    if provider is not None:
        other_account = other_account & (account.provider != provider)
    other_passkey = passkey.user_uuid == user_uuid
    if passkey_id is not None:
        other_passkey = other_passkey & (passkey.id != passkey_id)
    return or_(
        exists().where(User.uuid == user_uuid, User.hashed_password.is_not(None)),
        exists().where(other_account),
        exists().where(other_passkey),
    )
