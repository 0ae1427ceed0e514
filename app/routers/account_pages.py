"""The service's own pages for the links in its mails, used when no front end is set.

Without FRONTEND_URL a mail links here (see :mod:`app.services.mail_links`) with its
token in the URL fragment, which the browser keeps to itself: the request for the
page carries no token, so no access log, proxy or ``Referer`` sees one. The page's
script (``/static/account.js``) reads the fragment and sends the token to the API in
the body of a POST, then shows the outcome. The pages look like ``/signin`` and get
the same Content-Security-Policy from the app's middleware. They are pages, not API
operations: out of the OpenAPI document.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.core.config import Settings
from app.routers.deps import SettingsDep
from app.routers.docs_pages import render_page

router = APIRouter(tags=["pages"], include_in_schema=False)


def _account_page(
    request: Request, settings: Settings, action: str, heading: str, intro: str, button: str = ""
) -> Response:
    return render_page(
        request,
        "account.html",
        settings,
        api_prefix=settings.API_STR,
        action=action,
        heading=heading,
        intro=intro,
        button=button,
    )


@router.get("/account/verify")
async def verify_page(request: Request, settings: SettingsDep) -> Response:
    """Verify the email the link was mailed to (at once: the link was the request)."""
    return _account_page(
        request, settings, "verify", "Verify your email", "Verifying your email..."
    )


@router.get("/account/reset")
async def reset_page(request: Request, settings: SettingsDep) -> Response:
    """Choose a new password (and unlink provider accounts the owner does not know)."""
    return _account_page(
        request,
        settings,
        "reset",
        "Choose a new password",
        "Every session of the account ends when the new password is set.",
    )


@router.get("/account/confirm-email-change")
async def confirm_email_change_page(request: Request, settings: SettingsDep) -> Response:
    """Confirm a new email, on a click (a mail scanner opening the link confirms nothing)."""
    return _account_page(
        request,
        settings,
        "confirm-email-change",
        "Confirm your new email",
        "Make this address your account's email.",
        button="Confirm my new email",
    )


@router.get("/account/undo-email-change")
async def undo_email_change_page(request: Request, settings: SettingsDep) -> Response:
    """Refuse an email change, on a click."""
    return _account_page(
        request,
        settings,
        "undo-email-change",
        "Keep your email",
        "Cancel the change of your account's email: every session ends, the password "
        "is cleared and a link to choose a new one is mailed to this address.",
        button="Keep this address and sign out everywhere",
    )


@router.get("/account/forgot-password")
async def forgot_password_page(request: Request, settings: SettingsDep) -> Response:
    """Ask for a password-reset link (where the security notices send the owner)."""
    return _account_page(
        request,
        settings,
        "forgot-password",
        "Reset your password",
        "Enter your account's email: if it is verified, a reset link is mailed to it.",
    )
