"""The legal pages, outside the API prefix: redirects to the front end that keeps them."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import RedirectResponse

from app.routers.deps import SettingsDep

# Tagged "pages", like every route outside the API prefix.
router = APIRouter(tags=["pages"])


@router.get(
    "/terms",
    response_class=RedirectResponse,
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    responses={307: {"description": "To FRONTEND_URL/terms"}},
)
async def terms(settings: SettingsDep) -> Response:
    """The terms of service, kept by the front end.

    Returns
    -------
    RedirectResponse
        307 to ``FRONTEND_URL/terms``.
    """
    return RedirectResponse(f"{settings.FRONTEND_URL}/terms", status.HTTP_307_TEMPORARY_REDIRECT)


@router.get(
    "/privacy",
    response_class=RedirectResponse,
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    responses={307: {"description": "To FRONTEND_URL/privacy"}},
)
async def privacy(settings: SettingsDep) -> Response:
    """The privacy policy, kept by the front end.

    Returns
    -------
    RedirectResponse
        307 to ``FRONTEND_URL/privacy``.
    """
    return RedirectResponse(f"{settings.FRONTEND_URL}/privacy", status.HTTP_307_TEMPORARY_REDIRECT)
