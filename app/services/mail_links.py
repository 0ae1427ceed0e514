"""The links that mails carry: to the front end's pages, or else to the service's own.

With FRONTEND_URL set, a link opens ``FRONTEND_URL`` + the page's FRONTEND_*_PATH with
the token as the ``token`` query parameter; the front end's page sends it to the API.
Without a front end, a link opens the service's own page (``/account/...``) with the
token in the fragment (``#token=...``): a browser never sends a fragment to a server,
so the token reaches no access log, proxy or ``Referer``; the page's script reads it
and sends it to the API in a POST body.
"""

from __future__ import annotations

from enum import Enum
from urllib.parse import quote

from app.core.config import Settings


class LinkPage(Enum):
    """A page a mailed link opens: (setting naming the front end's path, own page)."""

    VERIFY_EMAIL = ("FRONTEND_VERIFY_PATH", "/account/verify")
    RESET_PASSWORD = ("FRONTEND_RESET_PATH", "/account/reset")
    CONFIRM_EMAIL_CHANGE = ("FRONTEND_CONFIRM_EMAIL_CHANGE_PATH", "/account/confirm-email-change")
    UNDO_EMAIL_CHANGE = ("FRONTEND_UNDO_EMAIL_CHANGE_PATH", "/account/undo-email-change")
    FORGOT_PASSWORD = ("FRONTEND_FORGOT_PASSWORD_PATH", "/account/forgot-password")

    @property
    def setting(self) -> str:
        """Name of the setting that holds the front end's path."""
        return self.value[0]

    @property
    def own_path(self) -> str:
        """The service's own page, used when no front end is configured."""
        return self.value[1]


def mail_link(settings: Settings, page: LinkPage, token: str | None = None) -> str:
    """The absolute URL a mail links to for ``page``, carrying ``token`` if given.

    Parameters
    ----------
    settings
        FRONTEND_URL and the FRONTEND_*_PATH settings choose the target; BASE_URL is
        the service's own address.
    page
        Which page.
    token
        The one-time token the page sends to the API, if the page needs one.

    Returns
    -------
    str
        ``FRONTEND_URL/path?token=...`` with a front end, else
        ``BASE_URL/account/...#token=...``.
    """
    carried = quote(token, safe="") if token is not None else None
    if settings.FRONTEND_URL:
        url = settings.FRONTEND_URL + getattr(settings, page.setting)
        return f"{url}?token={carried}" if carried is not None else url
    url = settings.BASE_URL + page.own_path
    return f"{url}#token={carried}" if carried is not None else url
