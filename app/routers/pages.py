"""Pages outside the API prefix: health, sign-in, the (protected) interactive docs, legal.

With PROTECTED_INTERACTIVE_DOCS (the default) ``/docs``, ``/redoc`` and
``/openapi.json`` need a signed-in user whose roles may read ``docs`` (admins and
moderators). ``/interactive-docs`` is the way in: it sends the browser to
``/signin`` and, once signed in, sets an HttpOnly cookie and goes on to ``/docs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import fastapi_offline
from fastapi import APIRouter, Form, Request, Response, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import error_body
from app.core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.core.metrics import exposition
from app.core.permissions import check_permission
from app.core.rate_limiter import TrustedProxies
from app.core.security import bearer_token
from app.models import User, now_epoch
from app.routers.deps import EngineDep, RedisDep, SessionDep, SettingsDep
from app.schemas.common import ErrorResponse, Text
from app.schemas.health import HealthResponse, NotReadyResponse, ReadinessResponse
from app.services.health import check_readiness
from app.services.sessions import InvalidToken, authenticate

router = APIRouter(tags=["pages"])
templates = Jinja2Templates(
    directory=Path(__file__).resolve().parent.parent / "templates" / "pages"
)
DOCS_COOKIE = "user_manager_docs"
DOCS_STATIC = StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static")
_HTML = {"content": {"text/html": {}}}
_NO_STORE = {"Cache-Control": "no-store"}


# Health --------------------------------------------------------------------------------


@router.get("/health", response_model=HealthResponse, summary="Liveness", tags=["health"])
async def health() -> HealthResponse:
    """Tell that the process is up and serving.

    Cheap on purpose: it touches no database, so a load balancer may call it often.

    Returns
    -------
    HealthResponse
        Always ``{"status": "ok"}``.
    """
    return HealthResponse()


@router.get(
    "/health/ready",
    response_model=ReadinessResponse,
    summary="Readiness",
    tags=["health"],
    responses={503: {"model": NotReadyResponse, "description": "A dependency is unreachable"}},
)
async def health_ready(engine: EngineDep, redis: RedisDep) -> ReadinessResponse:
    """Tell whether the service can handle requests: database and Redis reachable.

    Returns
    -------
    ReadinessResponse
        The state of each dependency.

    Raises
    ------
    ServiceUnavailable
        503 with code ``NOT_READY`` and the failing dependency named.
    """
    return ReadinessResponse(checks=await check_readiness(engine, redis))


@router.get(
    "/metrics",
    response_class=Response,
    tags=["health"],
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        403: {"model": ErrorResponse, "description": "Not from METRICS_ALLOW_IPS"},
        404: {"model": ErrorResponse, "description": "METRICS_ENABLED is off"},
    },
)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus metrics: requests per route, latencies, login outcomes.

    Only with METRICS_ENABLED, and only for clients in METRICS_ALLOW_IPS.

    Returns
    -------
    Response
        The metrics in Prometheus' text format.
    """
    if not settings.METRICS_ENABLED:
        return JSONResponse(error_body("Not Found", "NOT_FOUND"), status_code=404)
    address = request.client.host if request.client else None
    if address not in TrustedProxies(settings.METRICS_ALLOW_IPS):
        return JSONResponse(error_body("Not allowed", "FORBIDDEN"), status_code=403)
    return Response(exposition(), media_type=METRICS_CONTENT_TYPE)


# Sign-in and the docs gate ----------------------------------------------------------------


async def _docs_user(request: Request, db: AsyncSession, settings: Settings) -> User | None:
    """The user behind the docs cookie (or a bearer token), or None."""
    token = bearer_token(request.scope["headers"]) or request.cookies.get(DOCS_COOKIE)
    if not token:
        return None
    try:
        return (await authenticate(db, settings, token)).user
    except InvalidToken:
        return None


def _page(
    request: Request, name: str, settings: Settings, code: int = 200, **context: object
) -> Response:
    return templates.TemplateResponse(
        request,
        name,
        {"project_name": settings.PROJECT_NAME, **context},
        status_code=code,
        headers=_NO_STORE,
    )


async def _gate(
    request: Request, db: AsyncSession, settings: Settings, *, html: bool
) -> Response | User | None:
    """None when the docs are public; the user when allowed; else the refusal to send."""
    if not settings.PROTECTED_INTERACTIVE_DOCS:
        return None
    user = await _docs_user(request, db, settings)
    if user is None:
        if html:
            target = quote(request.url.path, safe="/")
            return RedirectResponse(f"/signin?next={target}", status.HTTP_307_TEMPORARY_REDIRECT)
        return JSONResponse(
            error_body("Sign in to read the API description", "UNAUTHORIZED"), status_code=401
        )
    if not check_permission(user, "docs", "read"):
        if html:
            return _page(request, "forbidden.html", settings, 403, username=user.username)
        return JSONResponse(
            error_body("Not allowed to read the API description", "FORBIDDEN"), status_code=403
        )
    return user


@router.get("/signin", response_class=HTMLResponse, responses={200: _HTML})
async def signin_page(request: Request, settings: SettingsDep) -> Response:
    """The sign-in page: username or email, password, and the 2FA step when needed.

    Returns
    -------
    HTMLResponse
        The page; once signed in it continues to ``/interactive-docs``.
    """
    return _page(
        request,
        "signin.html",
        settings,
        api_prefix=settings.API_STR,
        finish_url="/interactive-docs",
    )


@router.get(
    "/interactive-docs",
    response_class=RedirectResponse,
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    responses={307: {"description": "To /docs when signed in, else to /signin"}},
)
async def interactive_docs(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    """The way into the interactive docs: to ``/docs`` when signed in, else to ``/signin``.

    Returns
    -------
    RedirectResponse
        307 to ``/docs`` or ``/signin``.
    """
    if settings.PROTECTED_INTERACTIVE_DOCS and await _docs_user(request, db, settings) is None:
        return RedirectResponse(
            "/signin?next=/interactive-docs", status.HTTP_307_TEMPORARY_REDIRECT
        )
    return RedirectResponse("/docs", status.HTTP_307_TEMPORARY_REDIRECT)


@router.post(
    "/interactive-docs",
    response_class=RedirectResponse,
    status_code=status.HTTP_303_SEE_OTHER,
    responses={303: {"description": "To /docs, with the docs cookie set"}, 403: _HTML},
)
async def interactive_docs_sign_in(
    request: Request,
    token: Annotated[Text, Form(max_length=4096)],
    db: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Finish signing in to the docs: keep the access token in an HttpOnly cookie.

    The cookie is SameSite=Lax, Secure in production, and lasts as long as the token.

    Returns
    -------
    RedirectResponse
        303 to ``/docs``, or back to ``/signin`` when the token is not valid.
    """
    try:
        auth = await authenticate(db, settings, token)
    except InvalidToken:
        return RedirectResponse("/signin?next=/interactive-docs", status.HTTP_303_SEE_OTHER)
    if not check_permission(auth.user, "docs", "read"):
        return _page(request, "forbidden.html", settings, 403, username=auth.user.username)
    response = RedirectResponse("/docs", status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        DOCS_COOKIE,
        token,
        max_age=max(1, auth.claims.expires_at - now_epoch()),
        httponly=True,
        samesite="lax",
        secure=settings.is_production,
        path="/",
    )
    return response


@router.get(
    "/signout",
    response_class=RedirectResponse,
    status_code=status.HTTP_303_SEE_OTHER,
    responses={303: {"description": "To /signin, without the docs cookie"}},
)
async def sign_out() -> Response:
    """Forget the docs cookie.

    Returns
    -------
    RedirectResponse
        303 to ``/signin``.
    """
    response = RedirectResponse("/signin", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(DOCS_COOKIE, path="/")
    return response


# The docs themselves (out of the schema, like FastAPI's own) -------------------------------


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    """The OpenAPI description (protected like the docs)."""
    refusal = await _gate(request, db, settings, html=False)
    if isinstance(refusal, Response):
        return refusal
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    """Swagger UI, served from local assets; "Try it out" sends the signed-in user's token."""
    gate = await _gate(request, db, settings, html=True)
    if isinstance(gate, Response):
        return gate
    token = request.cookies.get(DOCS_COOKIE) if gate is not None else None
    return templates.TemplateResponse(
        request,
        "swagger.html",
        {"title": settings.PROJECT_NAME, "token": token},
        headers=_NO_STORE,
    )


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> Response:
    """Swagger UI's OAuth2 redirect helper."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request, db: SessionDep, settings: SettingsDep) -> Response:
    """ReDoc, served from local assets."""
    gate = await _gate(request, db, settings, html=True)
    if isinstance(gate, Response):
        return gate
    return get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{settings.PROJECT_NAME} - ReDoc",
        redoc_js_url="/docs-static/redoc.standalone.js",
        with_google_fonts=False,
    )


# Legal pages ---------------------------------------------------------------------------


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
