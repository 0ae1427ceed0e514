"""Notices: the account's verified address hears of every sensitive change; admins
hear of what happens to the service itself.

Someone holding a stolen token or password should not be able to change an account
quietly: a password change or reset, two-factor settings, a linked provider and an
email change are each told to the address that is known to be the owner's.
"""

from __future__ import annotations

from app.core.config import Settings
from app.core.email import Mailer
from app.models import User
from app.services.mail_links import LinkPage, mail_link


def send_security_notice(
    settings: Settings,
    mailer: Mailer,
    user: User,
    *,
    what: str,
    more: str | None = None,
    action_link: str | None = None,
    action_label: str | None = None,
    valid_days: int | None = None,
) -> None:
    """Mail ``what`` happened to the account's email, when it is verified.

    ``action_link`` is what to do if it was not the owner (else: reset the password).
    Only a verified address is told: an unverified one may not be the owner's.
    """
    if not mailer.enabled or not user.email_verified:
        return
    mailer.send_later(
        mailer.render(
            "security_notice",
            to=user.email,
            subject=f"Security notice: {what}",
            display_name=user.display_name,
            what=what,
            more=more,
            action_link=action_link,
            action_label=action_label,
            valid_days=valid_days,
            reset_link=mail_link(settings, LinkPage.FORGOT_PASSWORD),
        )
    )


def send_admin_notice(mailer: Mailer, admins: list[User], *, what: str, more: str) -> None:
    """Mail ``what`` happened to the service (not to one account) to each admin whose
    email is verified."""
    if not mailer.enabled:
        return
    for admin in admins:
        if admin.email_verified:
            mailer.send_later(
                mailer.render(
                    "admin_notice",
                    to=admin.email,
                    subject=f"Service notice: {what}",
                    display_name=admin.display_name,
                    what=what,
                    more=more,
                )
            )
