"""The sign-in page and the (protected) interactive docs, outside the API prefix.

With PROTECTED_INTERACTIVE_DOCS (the default) ``/docs``, ``/redoc`` and
``/openapi.json`` need a signed-in user whose roles may read ``docs`` (admins and
moderators). ``/interactive-docs`` is the way in: it sends the browser to
``/signin`` and, once signed in, sets an HttpOnly cookie and goes on to ``/docs``.

How Swagger's "Try it out" gets a credential. The sign-in page logs in through the
API, which opens a session of its own: the docs session. The page sends its access
token once, by a form POST, to ``/interactive-docs``, which keeps it in the HttpOnly
cookie, and drops the refresh token, so the session cannot outlive that token. No
page ever carries the token: ``/docs`` asks for it with ``POST /docs/token``, which
answers only with the cookie (a bearer token alone is not enough), only to a request
whose ``Origin`` is this service's own (see :func:`require_same_origin`), only while
the user may read the docs, and never to be cached. A POST, because browsers always
send ``Origin`` on one, and another site can neither read the answer nor load it
through a ``<script>`` tag. The script keeps the token in memory and sends it to
this origin only.

A separately scoped credential (a token good for "Try it out" only) was the other
way. It would not be narrower in practice: "Try it out" must be able to call every
endpoint the user may call, and the docs session can already be ended on its own
without touching the user's other sessions. It would also add a second kind of
token that every check of a token has to know about.

``/signout`` ends the docs session on the server (its token is refused by the API at
once, and the cookie replayed opens nothing) and clears the cookie.

Every HTML page carries a Content-Security-Policy (scripts from this origin only, no
inline script, no plugins, no ``<base>``, forms to this origin, no framing by
anyone) and ``X-Frame-Options: DENY``: the app's middleware adds :data:`PAGE_POLICY`
to any HTML response, and the docs pages send :data:`DOCS_POLICY`, which also lets
Swagger UI and ReDoc set inline styles, use ``data:`` images and fonts, and let ReDoc
run its search worker from a ``blob:`` URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import fastapi_offline
from fastapi import APIRouter, Depends, Form, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.core.authentication import Auth, Authenticator, InvalidToken, caller_of
from app.core.config import Settings
from app.core.errors import PermissionDenied, Unauthorized, error_body
from app.core.origins import Origin, url_origin
from app.core.permissions import check_permission
from app.models import User, now_epoch
from app.routers.deps import AuthenticatorDep, ClientDep, SessionDep, SettingsDep
from app.schemas.common import ErrorResponse, Text, error_responses
from app.schemas.docs import DocsToken
from app.services.sessions import logout

router = APIRouter(tags=["pages"])
templates = Jinja2Templates(
    directory=Path(__file__).resolve().parent.parent / "templates" / "pages"
)
DOCS_COOKIE = "user_manager_docs"
#: Swagger UI and ReDoc, from the fastapi-offline package (no CDN).
DOCS_STATIC = StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static")
#: The pages' own scripts and styles (no page has an inline one).
PAGE_STATIC = StaticFiles(directory=Path(__file__).resolve().parent.parent / "static")
_HTML: dict[str, Any] = {"content": {"text/html": {}}}
_NO_STORE = {"Cache-Control": "no-store"}

_LOCKED_DOWN = (
    "base-uri 'none'",
    "object-src 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
#: Content-Security-Policy of every HTML page unless it sends its own.
PAGE_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        *_LOCKED_DOWN,
    )
)
#: Swagger UI and ReDoc set inline styles, use data: images and fonts, and ReDoc runs
#: its search index in a worker made from a blob: URL. Scripts stay this origin's only.
DOCS_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src blob:",
        *_LOCKED_DOWN,
    )
)
_DOCS_HEADERS = {**_NO_STORE, "Content-Security-Policy": DOCS_POLICY}


# Sign-in and the docs gate ----------------------------------------------------------------


class CrossOriginRequest(PermissionDenied):
    """A browser request that does not come from this service's own pages."""

    code = "CROSS_ORIGIN_REQUEST"
    detail = "This request must come from this service's own pages"


def _sent_origin(value: str) -> Origin | None:
    """An ``Origin`` header as (scheme, host, port): exactly ``scheme://host[:port]``."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    return url_origin(value)


async def require_same_origin(request: Request, settings: SettingsDep) -> None:
    """Refuse (403) a browser request sent by a page of another origin, or by none.

    ``Origin`` must be present and be BASE_URL's origin or the request's own (its
    scheme and Host header). The latter is safe to accept: a browser sets both
    headers itself, and a page elsewhere cannot make them agree, since its requests
    carry its own origin and the Host of the service they go to. (A site that points
    its own name at this service's address does make them agree, but the browser
    then sends it none of this service's cookies: it gets nothing it did not bring.)
    Accepting it lets the docs work under every name the service answers to
    (``localhost`` and ``127.0.0.1``, an internal and a public name) even where
    BASE_URL names only one. Behind a proxy that ends TLS the service sees ``http``:
    set BASE_URL to the public URL. ``Sec-Fetch-Site``, which browsers send to
    secure origins, must agree too when it is sent.
    """
    sent = request.headers.get("origin")
    origin = _sent_origin(sent) if sent else None
    fetch_site = request.headers.get("sec-fetch-site")
    if (
        origin is None
        or origin not in (url_origin(settings.BASE_URL), url_origin(str(request.base_url)))
        or fetch_site not in (None, "same-origin")
    ):
        raise CrossOriginRequest()


async def _docs_auth(
    request: Request, authenticator: Authenticator, *, cookie_only: bool = False
) -> Auth | None:
    """The session behind the docs cookie (or, unless ``cookie_only``, a bearer token)."""
    caller = caller_of(request.scope)
    if cookie_only or caller.token is None:
        caller = authenticator.caller(request.cookies.get(DOCS_COOKIE) or None)
    return await caller.optional_reader()


async def _docs_user(request: Request, authenticator: Authenticator) -> User | None:
    """The user behind the docs cookie (or a bearer token), or None."""
    auth = await _docs_auth(request, authenticator)
    return auth.user if auth else None


def render_page(
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
    request: Request, authenticator: Authenticator, settings: Settings, *, html: bool
) -> Response | User | None:
    """None when the docs are public; the user when allowed; else the refusal to send."""
    if not settings.PROTECTED_INTERACTIVE_DOCS:
        return None
    user = await _docs_user(request, authenticator)
    if user is None:
        if html:
            target = quote(request.url.path, safe="/")
            return RedirectResponse(f"/signin?next={target}", status.HTTP_307_TEMPORARY_REDIRECT)
        return JSONResponse(
            error_body("Sign in to read the API description", "UNAUTHORIZED"), status_code=401
        )
    if not check_permission(user, "docs", "read"):
        if html:
            return render_page(request, "forbidden.html", settings, 403, username=user.username)
        return JSONResponse(
            error_body("Not allowed to read the API description", "FORBIDDEN"), status_code=403
        )
    return user


@router.get("/signin", response_class=HTMLResponse, responses={200: _HTML})
async def signin_page(request: Request, settings: SettingsDep) -> Response:
    """The sign-in page: username or email, password, and the 2FA step when needed; or a
    passkey alone ("Sign in with a passkey"), or a passkey instead of the code.

    Returns
    -------
    HTMLResponse
        The page; once signed in it continues to ``/interactive-docs``.
    """
    return render_page(
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
async def interactive_docs(
    request: Request, authenticator: AuthenticatorDep, settings: SettingsDep
) -> Response:
    """The way into the interactive docs: to ``/docs`` when signed in, else to ``/signin``.

    Returns
    -------
    RedirectResponse
        307 to ``/docs`` or ``/signin``.
    """
    if settings.PROTECTED_INTERACTIVE_DOCS and await _docs_user(request, authenticator) is None:
        return RedirectResponse(
            "/signin?next=/interactive-docs", status.HTTP_307_TEMPORARY_REDIRECT
        )
    return RedirectResponse("/docs", status.HTTP_307_TEMPORARY_REDIRECT)


@router.post(
    "/interactive-docs",
    response_class=RedirectResponse,
    status_code=status.HTTP_303_SEE_OTHER,
    dependencies=[Depends(require_same_origin)],
    responses={
        303: {"description": "To /docs, with the docs cookie set"},
        403: {
            "model": ErrorResponse,
            "description": "Not from this service's own pages (JSON, ``CROSS_ORIGIN_REQUEST``), "
            "or a user who may not read the docs (an HTML page)",
            **_HTML,
        },
    },
)
async def interactive_docs_sign_in(
    request: Request,
    token: Annotated[Text, Form(max_length=4096)],
    authenticator: AuthenticatorDep,
    settings: SettingsDep,
) -> Response:
    """Finish signing in to the docs: keep the access token in an HttpOnly cookie.

    Only the sign-in page may send this form: the request's ``Origin`` must be this
    service's (BASE_URL's, or the one the request was sent to). The cookie is
    SameSite=Lax, Secure in production, and lasts as long as the token.

    Returns
    -------
    RedirectResponse
        303 to ``/docs``, or back to ``/signin`` when the token is not valid.

    Raises
    ------
    403
        ``CROSS_ORIGIN_REQUEST``: no ``Origin``, or another one.
    """
    auth = await authenticator.caller(token).optional_reader()
    if auth is None:
        return RedirectResponse("/signin?next=/interactive-docs", status.HTTP_303_SEE_OTHER)
    if not check_permission(auth.user, "docs", "read"):
        return render_page(request, "forbidden.html", settings, 403, username=auth.user.username)
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


@router.post(
    "/docs/token",
    response_model=DocsToken,
    dependencies=[Depends(require_same_origin)],
    responses=error_responses(401, 403),
)
async def docs_token(
    request: Request, response: Response, authenticator: AuthenticatorDep
) -> DocsToken:
    """The docs session's access token, for the ``/docs`` page's "Try it out".

    Authenticated by the docs cookie alone, and answered only to this service's own
    pages (``Origin``), never to be cached: the page asks for the token this way
    instead of carrying it in its HTML.

    Returns
    -------
    DocsToken
        The token and the seconds it has left.

    Raises
    ------
    401
        ``UNAUTHORIZED``: no docs cookie, or its session has ended.
    403
        ``CROSS_ORIGIN_REQUEST``: not from this service's own pages; ``FORBIDDEN``:
        the user may no longer read the docs.
    """
    auth = await _docs_auth(request, authenticator, cookie_only=True)
    if auth is None:
        raise Unauthorized("Not signed in to the docs")
    if not check_permission(auth.user, "docs", "read"):
        raise PermissionDenied("Not allowed to read the API description")
    response.headers.update(_NO_STORE)
    return DocsToken(
        access_token=request.cookies[DOCS_COOKIE],
        expires_in=max(0, auth.claims.expires_at - now_epoch()),
    )


@router.get(
    "/signout",
    response_class=RedirectResponse,
    status_code=status.HTTP_303_SEE_OTHER,
    responses={303: {"description": "To /signin; the docs session ended, its cookie cleared"}},
)
async def sign_out(
    request: Request,
    db: SessionDep,
    authenticator: AuthenticatorDep,
    settings: SettingsDep,
    client: ClientDep,
) -> Response:
    """Sign out of the docs: end the docs session and clear its cookie.

    The session's access token is refused everywhere from then on. Without a
    cookie, or with one whose session already ended, only the cookie is cleared.

    Returns
    -------
    RedirectResponse
        303 to ``/signin``.
    """
    # A write: the session is checked against the database, not a cached copy.
    try:
        auth = await authenticator.caller(request.cookies.get(DOCS_COOKIE) or None).live(db)
    except InvalidToken:
        auth = None
    if auth is not None:
        await logout(db, auth, client)
    response = RedirectResponse("/signin", status.HTTP_303_SEE_OTHER, headers=_NO_STORE)
    response.delete_cookie(
        DOCS_COOKIE, path="/", httponly=True, samesite="lax", secure=settings.is_production
    )
    return response


# The docs themselves (out of the schema, like FastAPI's own) -------------------------------


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(
    request: Request, authenticator: AuthenticatorDep, settings: SettingsDep
) -> Response:
    """The OpenAPI description (protected like the docs)."""
    refusal = await _gate(request, authenticator, settings, html=False)
    if isinstance(refusal, Response):
        return refusal
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def swagger_ui(
    request: Request, authenticator: AuthenticatorDep, settings: SettingsDep
) -> Response:
    """Swagger UI, served from local assets; "Try it out" sends the docs session's token,
    which the page fetches from ``/docs/token`` (see the module's docstring)."""
    gate = await _gate(request, authenticator, settings, html=True)
    if isinstance(gate, Response):
        return gate
    # The name is shown only to a session signed in through the docs (its cookie).
    username = gate.username if gate is not None and DOCS_COOKIE in request.cookies else None
    return templates.TemplateResponse(
        request,
        "swagger.html",
        {"title": settings.PROJECT_NAME, "username": username},
        headers=_DOCS_HEADERS,
    )


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect(request: Request) -> Response:
    """Swagger UI's OAuth2 redirect helper."""
    return templates.TemplateResponse(request, "oauth2-redirect.html", {}, headers=_NO_STORE)


@router.get("/redoc", include_in_schema=False)
async def redoc(
    request: Request, authenticator: AuthenticatorDep, settings: SettingsDep
) -> Response:
    """ReDoc, served from local assets."""
    gate = await _gate(request, authenticator, settings, html=True)
    if isinstance(gate, Response):
        return gate
    return templates.TemplateResponse(
        request, "redoc.html", {"title": settings.PROJECT_NAME}, headers=_DOCS_HEADERS
    )
