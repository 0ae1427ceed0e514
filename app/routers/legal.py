"""The legal pages, outside the API prefix: redirects to the front end that keeps them.

Without a front end (FRONTEND_URL empty) there is nowhere to send the browser: the
answer is a plain page saying the document is not configured (404).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from app.core.config import Settings
from app.routers.deps import SettingsDep
from app.routers.docs_pages import render_page

# Tagged "pages", like every route outside the API prefix.
router = APIRouter(tags=["pages"])

_NOT_CONFIGURED: dict[str, Any] = {
    "description": "No front end is configured (FRONTEND_URL empty): a page saying so",
    "content": {"text/html": {}},
}


def _legal(request: Request, settings: Settings, page: str, heading: str, what: str) -> Response:
    if settings.FRONTEND_URL:
        return RedirectResponse(
            f"{settings.FRONTEND_URL}/{page}", status.HTTP_307_TEMPORARY_REDIRECT
        )
    return render_page(request, "not_configured.html", settings, 404, heading=heading, what=what)


@router.get(
    "/terms",
    response_class=RedirectResponse,
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    responses={307: {"description": "To FRONTEND_URL/terms"}, 404: _NOT_CONFIGURED},
)
async def terms(request: Request, settings: SettingsDep) -> Response:
    """The terms of service, kept by the front end.

    Returns
    -------
    RedirectResponse
        307 to ``FRONTEND_URL/terms``; without a front end, a 404 page saying the
        terms are not configured.
    """
    return _legal(request, settings, "terms", "Terms of service", "terms of service")


@router.get(
    "/privacy",
    response_class=RedirectResponse,
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    responses={307: {"description": "To FRONTEND_URL/privacy"}, 404: _NOT_CONFIGURED},
)
async def privacy(request: Request, settings: SettingsDep) -> Response:
    """The privacy policy, kept by the front end.

    Returns
    -------
    RedirectResponse
        307 to ``FRONTEND_URL/privacy``; without a front end, a 404 page saying the
        privacy policy is not configured.
    """
    return _legal(request, settings, "privacy", "Privacy policy", "privacy policy")
