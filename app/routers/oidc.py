"""OpenID Connect provider endpoints: discovery, keys, sign-in and consent, tokens.

The browser side (``/oauth2/authorize``, ``/oauth2/signin``, ``/oauth2/logout``)
keeps a sign-in of its own in an HttpOnly cookie, :data:`SSO_COOKIE`, scoped to
``/oauth2``: the sign-in page logs in through the API exactly as ``/signin`` does
(password, then the second factor or a passkey) and hands the access token of that
session to ``POST /oauth2/session`` in a same-origin form, which keeps it in the
cookie and drops the refresh token. The session lasts as long as that token
(``JWT_EXP``); signing out (``/oauth2/logout``) ends it, and the grants client
applications got during it.

The client side (token, userinfo, introspection, revocation) answers in the
protocol's shapes; errors carry both the protocol's ``error`` fields and the
service's ``detail``/``code``.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from fastapi import APIRouter, Depends, Form, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from app.core.authentication import Auth, Authenticator, InvalidToken
from app.core.config import Settings
from app.core.signing_keys import Keyring
from app.models import OidcClient, now_epoch
from app.routers.deps import (
    AuthenticatorDep,
    ClientDep,
    KeyringDep,
    SessionDep,
    SettingsDep,
)
from app.routers.docs_pages import PAGE_POLICY, render_page, require_same_origin
from app.schemas.common import Text
from app.schemas.oidc import (
    SCOPE_TEXT,
    IntrospectionResponse,
    JsonWebKeySet,
    OAuthErrorResponse,
    ProviderMetadata,
    TokenResponse,
    UserInfoResponse,
)
from app.services import oidc
from app.services.oidc import ProtocolAnswer, Provider, ProviderRequest, run_provider
from app.services.sessions import logout

router = APIRouter(tags=["openid-connect"])
SSO_COOKIE = "user_manager_sso"
SSO_COOKIE_PATH = "/oauth2"
_HTML: dict[str, Any] = {"content": {"text/html": {}}}
_NO_STORE = {"Cache-Control": "no-store"}


_OAUTH_EXAMPLES = {
    400: ("invalid_grant", "Invalid 'code' in request."),
    401: ("invalid_client", "The client cannot authenticate with methods: ..."),
    403: ("insufficient_scope", "The access token was not given the 'openid' scope"),
}


def _oauth_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the protocol's errors (its fields and the service's)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        error, description = _OAUTH_EXAMPLES[code]
        example = {
            "error": error,
            "error_description": description,
            "detail": description,
            "code": error.upper(),
        }
        responses[code] = {
            "model": OAuthErrorResponse,
            "description": "OAuth error",
            "content": {"application/json": {"example": example}},
        }
    return responses


def _public_uri(request: Request, settings: Settings) -> str:
    """The request's URL under BASE_URL (what clients were told), not the forwarded one."""
    query = request.url.query
    return f"{settings.issuer}{request.url.path}" + (f"?{query}" if query else "")


async def _protocol_request(request: Request, settings: Settings) -> ProviderRequest | Response:
    """The request as the provider reads it, or the answer that refuses it."""
    form: list[tuple[str, str]] = []
    if request.method == "POST":
        form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
    if any("\x00" in value for _, value in [*request.query_params.multi_items(), *form]):
        # PostgreSQL can neither store nor compare text with NUL (a nonce, a client id).
        return _refused("Parameters must not contain NUL characters", "invalid_request")
    try:
        return ProviderRequest(
            request.method,
            _public_uri(request, settings),
            request.headers,
            request.query_params.multi_items(),
            form,
        )
    except OAuth2Error:  # insecure transport: BASE_URL is plain http on a public name
        return _refused(
            "OpenID Connect needs BASE_URL to be https (or localhost)", "INSECURE_TRANSPORT"
        )


def _data(protocol_request: ProviderRequest) -> dict[str, str]:
    assert protocol_request.payload is not None
    return protocol_request.payload.data


def _json_answer(answer: ProtocolAnswer) -> Response:
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status >= 400 and "error" in body:
        description = body.get("error_description") or body["error"].replace("_", " ")
        body = {**body, "detail": description, "code": str(body["error"]).upper()}
    headers = {k: v for k, v in answer.headers if k.lower() != "content-type"}
    headers.setdefault("Cache-Control", "no-store")
    return JSONResponse(body, status_code=answer.status, headers=headers)


def _refused(description: str, code: str) -> JSONResponse:
    """A 400 ``invalid_request`` with ``code`` (in the protocol's shape and the service's)."""
    return JSONResponse(
        {
            "error": "invalid_request",
            "error_description": description,
            "detail": description,
            "code": code.upper(),
        },
        status_code=400,
        headers=_NO_STORE,
    )


async def _sso_auth(request: Request, authenticator: Authenticator) -> Auth | None:
    token = request.cookies.get(SSO_COOKIE)
    return await authenticator.caller(token or None).optional_reader() if token else None


def _policy_allowing(redirect_uri: str) -> str:
    """The pages' policy, with forms also allowed to end at ``redirect_uri``'s origin.

    Browsers hold a form's whole redirect chain to ``form-action``: the consent form
    (and the sign-in form, when the consent is already given) ends at the client, so
    the client's registered address must be allowed, and only that one.
    """
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        source = f"{parts.scheme}://{parts.netloc}"
    else:
        source = f"{parts.scheme}:"
    return PAGE_POLICY.replace("form-action 'self'", f"form-action 'self' {source}")


def _message(
    request: Request,
    settings: Settings,
    title: str,
    message: str,
    code: int = 200,
    confirm_params: list[tuple[str, str]] | None = None,
) -> Response:
    return render_page(
        request,
        "oidc_message.html",
        settings,
        code,
        title=title,
        message=message,
        confirm_params=confirm_params,
    )


# Discovery and keys ------------------------------------------------------------------------


@router.get(
    "/.well-known/openid-configuration",
    response_model=ProviderMetadata,
    response_model_exclude_none=True,
)
async def openid_configuration(settings: SettingsDep, keyring: KeyringDep) -> JSONResponse:
    """OpenID Connect discovery: where the endpoints are and what they support.

    Returns
    -------
    ProviderMetadata
        The provider's metadata; ``issuer`` is BASE_URL.
    """
    return JSONResponse(
        oidc.discovery_document(settings, keyring),
        headers={"Cache-Control": "public, max-age=300"},
    )


@router.get("/.well-known/jwks.json", response_model=JsonWebKeySet)
async def json_web_key_set(keyring: KeyringDep) -> JSONResponse:
    """The public keys that verify access and ID tokens (a JSON Web Key Set).

    Every key that signed a token still valid is here; a key that will sign soon is
    here before it does. Cached for a minute.

    Returns
    -------
    JsonWebKeySet
        ``keys``: one JWK per key, with its ``kid``, ``alg`` and ``use``.
    """
    return JSONResponse(keyring.jwks(), headers={"Cache-Control": "public, max-age=60"})


# Sign-in, consent and sign-out (browser pages) ---------------------------------------------


@router.get(
    "/oauth2/authorize",
    include_in_schema=False,
    response_class=HTMLResponse,
    responses={
        200: {"description": "The consent page", **_HTML},
        302: {"description": "Back to the client with a code or an error"},
        303: {"description": "To the sign-in page"},
        400: {"description": "A request that cannot go back to a client (an HTML page)"},
    },
)
async def authorize(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    keyring: KeyringDep,
    authenticator: AuthenticatorDep,
) -> Response:
    """The authorization endpoint (code flow): sign in if needed, consent, then back to
    the client with a code.

    An unknown client or a redirect URI that is not one of the client's exactly is
    answered here (a page), never sent anywhere. Other errors go back to the client
    as ``error`` parameters. ``prompt=none`` never shows a page (``login_required``,
    ``consent_required``); ``prompt=login`` and ``max_age`` ask for a fresh sign-in;
    ``prompt=consent`` asks again. A user is asked once per client for each scope.

    Returns
    -------
    Response
        A redirect to the client, to the sign-in page, or the consent page.
    """
    return await _authorize(request, db, settings, keyring, authenticator, decision=None)


@router.post(
    "/oauth2/authorize",
    include_in_schema=False,
    response_class=HTMLResponse,
    dependencies=[Depends(require_same_origin)],
    responses={
        302: {"description": "Back to the client with a code, or access_denied"},
        303: {"description": "To the sign-in page (the sign-in ended meanwhile)"},
        400: {"description": "A request that cannot go back to a client (an HTML page)"},
        403: {"description": "Not sent by this service's consent page (JSON)"},
    },
)
async def authorize_decision(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    keyring: KeyringDep,
    authenticator: AuthenticatorDep,
    decision: Annotated[str, Form(pattern="^(allow|deny)$")],
) -> Response:
    """The consent page's answer: ``allow`` remembers the consent and sends a code,
    ``deny`` sends ``access_denied``.

    Returns
    -------
    Response
        A redirect to the client.

    Raises
    ------
    403
        ``CROSS_ORIGIN_REQUEST``: not from this service's own page.
    """
    return await _authorize(request, db, settings, keyring, authenticator, decision=decision)


def _needs_fresh_sign_in(data: dict[str, str], auth: Auth) -> bool:
    if "login" in (data.get("prompt") or "").split():
        return True
    max_age = data.get("max_age")
    if max_age is not None and max_age.isdigit():
        return now_epoch() - auth.session.created_at > int(max_age)
    return False


def _signin_redirect(params: list[tuple[str, str]]) -> Response:
    # Continue without prompt=login once signed in, or it would ask forever.
    kept = [
        (key, value if key != "prompt" else " ".join(p for p in value.split() if p != "login"))
        for key, value in params
        if key not in ("decision",)
    ]
    kept = [(key, value) for key, value in kept if not (key == "prompt" and not value)]
    target = "/oauth2/authorize?" + urlencode(kept)
    return RedirectResponse(
        "/oauth2/signin?" + urlencode({"next": target}),
        status.HTTP_303_SEE_OTHER,
        headers=_NO_STORE,
    )


async def _authorize(
    request: Request,
    db: SessionDep,
    settings: Settings,
    keyring: Keyring,
    authenticator: Authenticator,
    *,
    decision: str | None,
) -> Response:
    protocol_request = await _protocol_request(request, settings)
    if not isinstance(protocol_request, ProviderRequest):
        return protocol_request
    auth = await _sso_auth(request, authenticator)
    user = auth.user if auth is not None else None
    data = _data(protocol_request)
    prompts = set((data.get("prompt") or "").split())

    def step(provider: Provider) -> ProtocolAnswer | str | tuple[OidcClient, str]:
        try:
            grant = provider.get_consent_grant(protocol_request, end_user=user)
        except OAuth2Error as error:
            return oidc.error_answer(error)
        redirect_uri = grant.redirect_uri
        state = data.get("state")
        if auth is None or _needs_fresh_sign_in(data, auth):
            if "none" in prompts:
                return oidc.error_answer(LoginRequiredError(redirect_uri=redirect_uri, state=state))
            return "login"
        client = grant.client.row
        scope = protocol_request.scope or ""
        if decision is None:
            if "consent" in prompts or not oidc.has_consent(
                provider.db, auth.user.uuid, client.client_id, scope
            ):
                if "none" in prompts:
                    return oidc.error_answer(
                        ConsentRequiredError(redirect_uri=redirect_uri, state=state)
                    )
                return client, scope
        elif decision == "allow":
            oidc.remember_consent(provider.db, auth.user.uuid, client.client_id, scope)
        answer = provider.create_authorization_response(
            protocol_request, grant_user=auth.user if decision != "deny" else None, grant=grant
        )
        assert isinstance(answer, ProtocolAnswer)
        return answer

    answer = await run_provider(
        db,
        settings,
        keyring,
        step,
        auth_time=auth.session.created_at if auth is not None else None,
        sso_session_id=auth.session.id if auth is not None else None,
    )
    params = list(_data(protocol_request).items())
    if answer == "login":
        return _signin_redirect(params)
    if isinstance(answer, tuple):
        client, scope = answer
        assert auth is not None
        page = render_page(
            request,
            "consent.html",
            settings,
            client_name=client.name,
            username=auth.user.username,
            scopes=[
                {"name": name, "text": SCOPE_TEXT[name]}
                for name in scope.split()
                if name in SCOPE_TEXT
            ],
            params=[(key, value) for key, value in params if key != "decision"],
        )
        page.headers["Content-Security-Policy"] = _policy_allowing(
            _data(protocol_request)["redirect_uri"]
        )
        return page
    assert isinstance(answer, ProtocolAnswer)
    if answer.location is not None:
        return RedirectResponse(answer.location, status.HTTP_302_FOUND, headers=_NO_STORE)
    body = answer.body if isinstance(answer.body, dict) else {}
    return _message(
        request,
        settings,
        "This sign-in request is not valid",
        str(body.get("error_description") or body.get("error") or "invalid request"),
        400,
    )


@router.get(
    "/oauth2/signin", include_in_schema=False, response_class=HTMLResponse, responses={200: _HTML}
)
async def oidc_signin_page(
    request: Request, settings: SettingsDep, db: SessionDep, next: Text = ""
) -> Response:
    """The sign-in page on the way to a client application (password, second factor or
    passkey, as ``/signin``); it continues to ``next``, an authorization request.

    Returns
    -------
    HTMLResponse
        The page.
    """
    client_name = redirect_uri = None
    if next.startswith("/oauth2/authorize?"):
        query = parse_qs(urlsplit(next).query)
        client_id = query.get("client_id", [""])[0]
        client = await db.get(OidcClient, client_id) if oidc.is_client_id(client_id) else None
        if client is not None:
            client_name = client.name
            asked = query.get("redirect_uri", [""])[0]
            redirect_uri = asked if asked in client.redirect_uris else None
    page = render_page(
        request,
        "signin.html",
        settings,
        api_prefix=settings.API_STR,
        finish_url="/oauth2/session",
        next=next if next.startswith("/oauth2/authorize?") else "",
        client_name=client_name,
    )
    if redirect_uri is not None:
        # Signing in may end at the client at once (consent already given).
        page.headers["Content-Security-Policy"] = _policy_allowing(redirect_uri)
    return page


@router.post(
    "/oauth2/session",
    include_in_schema=False,
    response_class=RedirectResponse,
    status_code=status.HTTP_303_SEE_OTHER,
    dependencies=[Depends(require_same_origin)],
    responses={
        303: {"description": "Back to the authorization request, signed in"},
        400: {"description": "Nothing to continue to (an HTML page)", **_HTML},
        403: {"description": "Not from this service's own pages (CROSS_ORIGIN_REQUEST)"},
    },
)
async def oidc_session(
    request: Request,
    token: Annotated[Text, Form(max_length=4096)],
    authenticator: AuthenticatorDep,
    settings: SettingsDep,
    next: Annotated[Text, Form(max_length=8192)] = "",
) -> Response:
    """Finish the sign-in page: keep its session's access token in the sign-in cookie
    (HttpOnly, SameSite=Lax, path ``/oauth2``) and continue to the authorization request.

    Returns
    -------
    RedirectResponse
        303 to ``next`` (an authorization request), or back to the sign-in page when
        the token is not valid.

    Raises
    ------
    403
        ``CROSS_ORIGIN_REQUEST``: no ``Origin``, or another one.
    """
    if not next.startswith("/oauth2/authorize?"):
        return _message(request, settings, "Signed in", "There is no request to go on with.", 400)
    auth = await authenticator.caller(token).optional_reader()
    if auth is None:
        return RedirectResponse(
            "/oauth2/signin?" + urlencode({"next": next}), status.HTTP_303_SEE_OTHER
        )
    response = RedirectResponse(next, status.HTTP_303_SEE_OTHER, headers=_NO_STORE)
    response.set_cookie(
        SSO_COOKIE,
        token,
        max_age=max(1, auth.claims.expires_at - now_epoch()),
        httponly=True,
        samesite="lax",
        secure=settings.is_production,
        path=SSO_COOKIE_PATH,
    )
    return response


@router.get(
    "/oauth2/logout",
    include_in_schema=False,
    response_class=HTMLResponse,
    responses={
        200: {"description": "Signed out, or the confirmation page", **_HTML},
        302: {"description": "To the client's registered post-logout URI"},
        400: {"description": "An invalid logout request (an HTML page)", **_HTML},
    },
)
async def end_session(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    keyring: KeyringDep,
    authenticator: AuthenticatorDep,
    client: ClientDep,
) -> Response:
    """RP-initiated logout: end the sign-in at this service and the grants client
    applications got during it, then return to the client.

    With an ``id_token_hint`` this service issued to the signed-in user, it happens at
    once; otherwise the user confirms first (another site cannot sign them out).
    The return goes only to one of the client's registered
    ``post_logout_redirect_uris``, with ``state``.

    Returns
    -------
    Response
        A redirect to the client, the confirmation page, or a "signed out" page.
    """
    return await _end_session(
        request, db, settings, keyring, authenticator, client, confirmed=False
    )


@router.post(
    "/oauth2/logout",
    include_in_schema=False,
    response_class=HTMLResponse,
    dependencies=[Depends(require_same_origin)],
    responses={
        200: {"description": "Signed out", **_HTML},
        302: {"description": "To the client's registered post-logout URI"},
        400: {"description": "An invalid logout request (an HTML page)", **_HTML},
        403: {"description": "Not from this service's own page (CROSS_ORIGIN_REQUEST)"},
    },
)
async def end_session_confirmed(
    request: Request,
    db: SessionDep,
    settings: SettingsDep,
    keyring: KeyringDep,
    authenticator: AuthenticatorDep,
    client: ClientDep,
) -> Response:
    """The confirmation page's answer: sign out as ``GET /oauth2/logout`` does.

    Returns
    -------
    Response
        A redirect to the client, or a "signed out" page.

    Raises
    ------
    403
        ``CROSS_ORIGIN_REQUEST``: not from this service's own page.
    """
    return await _end_session(request, db, settings, keyring, authenticator, client, confirmed=True)


async def _end_session(
    request: Request,
    db: SessionDep,
    settings: Settings,
    keyring: Keyring,
    authenticator: Authenticator,
    client: ClientDep,
    *,
    confirmed: bool,
) -> Response:
    protocol_request = await _protocol_request(request, settings)
    if not isinstance(protocol_request, ProviderRequest):
        return protocol_request
    try:
        validated = await run_provider(
            db, settings, keyring, lambda provider: provider.validate_end_session(protocol_request)
        )
    except OAuth2Error as error:
        return _message(
            request,
            settings,
            "This sign-out request is not valid",
            str(error.description or error.error),
            400,
        )
    try:
        auth = await authenticator.caller(request.cookies.get(SSO_COOKIE) or None).live(db)
    except InvalidToken:
        auth = None
    hint_subject = (validated.id_token_claims or {}).get("sub")
    if not confirmed and auth is not None and hint_subject != auth.user.uuid:
        params = [(k, v) for k, v in _data(protocol_request).items()]
        return _message(
            request,
            settings,
            "Sign out?",
            f"Sign out {auth.user.username} from {settings.PROJECT_NAME}?",
            confirm_params=params,
        )
    if auth is not None:
        await oidc.end_sso_session_grants(db, auth.session.id)
        await logout(db, auth, client)  # commits
    if validated.redirect_uri:
        response: Response = RedirectResponse(
            validated.redirect_uri, status.HTTP_302_FOUND, headers=_NO_STORE
        )
    else:
        response = _message(request, settings, "Signed out", "You are signed out.")
    response.delete_cookie(
        SSO_COOKIE,
        path=SSO_COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=settings.is_production,
    )
    return response


# Client endpoints ---------------------------------------------------------------------------


@router.post(
    "/oauth2/token",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    responses=_oauth_errors(400, 401),
)
async def token(
    request: Request, db: SessionDep, settings: SettingsDep, keyring: KeyringDep
) -> Response:
    """The token endpoint: a code (with its PKCE verifier) or a refresh token for
    tokens.

    Confidential clients authenticate with HTTP Basic or ``client_secret`` in the
    form; public clients send ``client_id`` and the PKCE ``code_verifier``. A code
    works once, for a minute; a code or refresh token presented a second time ends
    everything it gave. Refresh tokens rotate.

    Returns
    -------
    TokenResponse
        ``access_token`` (a JWT for the client), ``refresh_token``, and with the
        ``openid`` scope an ``id_token``.

    Raises
    ------
    400
        ``invalid_grant`` (a wrong, used, expired or foreign code; a wrong PKCE
        verifier or redirect URI; a banned user), ``invalid_request``,
        ``unsupported_grant_type``, ``invalid_scope``.
    401
        ``invalid_client``.
    """
    protocol_request = await _protocol_request(request, settings)
    if not isinstance(protocol_request, ProviderRequest):
        return protocol_request
    answer = await run_provider(
        db, settings, keyring, lambda provider: provider.create_token_response(protocol_request)
    )
    assert isinstance(answer, ProtocolAnswer)
    return _json_answer(answer)


@router.get(
    "/oauth2/userinfo",
    response_model=UserInfoResponse,
    response_model_exclude_none=True,
    responses=_oauth_errors(401, 403),
)
async def userinfo(
    request: Request, db: SessionDep, settings: SettingsDep, keyring: KeyringDep
) -> Response:
    """The user's claims, for a client's access token (``Authorization: Bearer``).

    What is answered depends on the token's scopes: ``profile`` (name, username,
    picture), ``email`` (email, verified), ``roles``.

    Returns
    -------
    UserInfoResponse
        ``sub`` and the claims the scopes allow.

    Raises
    ------
    401
        ``INVALID_TOKEN``: missing, expired or revoked, or the user was banned.
    403
        ``INSUFFICIENT_SCOPE``: the token has no ``openid`` scope.
    """
    return await _userinfo(request, db, settings, keyring)


@router.post(
    "/oauth2/userinfo",
    response_model=UserInfoResponse,
    response_model_exclude_none=True,
    responses=_oauth_errors(401, 403),
)
async def userinfo_by_post(
    request: Request, db: SessionDep, settings: SettingsDep, keyring: KeyringDep
) -> Response:
    """As ``GET /oauth2/userinfo`` (OpenID Connect allows both).

    Returns
    -------
    UserInfoResponse
        ``sub`` and the claims the scopes allow.

    Raises
    ------
    401
        ``INVALID_TOKEN``.
    403
        ``INSUFFICIENT_SCOPE``.
    """
    return await _userinfo(request, db, settings, keyring)


async def _userinfo(
    request: Request, db: SessionDep, settings: Settings, keyring: Keyring
) -> Response:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    presented = value.strip() if scheme.lower() == "bearer" else None
    try:
        claims = await oidc.userinfo(db, settings, keyring, presented)
    except (oidc.InvalidClientToken, oidc.InsufficientScope) as error:
        error_code = "invalid_token" if error.status_code == 401 else "insufficient_scope"
        return JSONResponse(
            {
                "error": error_code,
                "error_description": error.detail,
                "detail": error.detail,
                "code": error.code,
            },
            status_code=error.status_code,
            headers={"WWW-Authenticate": f'Bearer error="{error_code}"', **_NO_STORE},
        )
    return JSONResponse(claims, headers=_NO_STORE)


@router.post(
    "/oauth2/introspect",
    response_model=IntrospectionResponse,
    response_model_exclude_none=True,
    responses=_oauth_errors(400, 401),
)
async def introspect(
    request: Request, db: SessionDep, settings: SettingsDep, keyring: KeyringDep
) -> Response:
    """Token introspection (RFC 7662), for confidential clients about their own tokens.

    Returns
    -------
    IntrospectionResponse
        ``active`` true with the token's facts; false for a token that is not live
        or not the calling client's.

    Raises
    ------
    401
        ``invalid_client``.
    """
    protocol_request = await _protocol_request(request, settings)
    if not isinstance(protocol_request, ProviderRequest):
        return protocol_request
    answer = await run_provider(
        db,
        settings,
        keyring,
        lambda provider: provider.create_endpoint_response("introspection", protocol_request),
    )
    assert isinstance(answer, ProtocolAnswer)
    return _json_answer(answer)


@router.post(
    "/oauth2/revoke",
    response_model=dict[str, Any],
    responses=_oauth_errors(400, 401),
)
async def revoke(
    request: Request, db: SessionDep, settings: SettingsDep, keyring: KeyringDep
) -> Response:
    """Token revocation (RFC 7009): an access or refresh token ends its whole grant.

    An unknown token is answered 200 as well (the spec's rule).

    Returns
    -------
    dict
        Empty.

    Raises
    ------
    400
        ``invalid_grant``: the token belongs to another client.
    401
        ``invalid_client``.
    """
    protocol_request = await _protocol_request(request, settings)
    if not isinstance(protocol_request, ProviderRequest):
        return protocol_request
    answer = await run_provider(
        db,
        settings,
        keyring,
        lambda provider: provider.create_endpoint_response("revocation", protocol_request),
    )
    assert isinstance(answer, ProtocolAnswer)
    return _json_answer(answer)
