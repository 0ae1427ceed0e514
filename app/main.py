"""The application: ``create_app()`` builds it; ``app`` is what servers import.

Start it with ``make run`` (``fastapi run app/main.py``) or ``uvicorn app.main:app``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from limits import parse
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.atproto_oauth import ClientKeys
from app.core.auth_cache import AuthCache, SQLiteProcesses, install_hooks, session_options
from app.core.authentication import AuthenticationMiddleware, Authenticator
from app.core.brute_force import BruteForceGuard, FallbackAttemptLog, MemoryAttemptLog, Window
from app.core.config import ConfigError, Settings, get_settings
from app.core.cors import Cors
from app.core.database import create_engine, create_session_factory, upgrade_database
from app.core.email import Mailer
from app.core.errors import install_error_handlers
from app.core.feature_flags import (
    FeatureFlagMiddleware,
    FlagStore,
    flagged_routes,
    protected_flags,
)
from app.core.flag_sources import FlagBroadcaster, flag_source_for, watch_flags
from app.core.logging import setup_logging
from app.core.metrics import MetricsMiddleware
from app.core.middleware import (
    BodySizeLimitMiddleware,
    HtmlSecurityHeadersMiddleware,
    OAuthSessionMiddleware,
    PasswordCheckGate,
    RequestIdMiddleware,
)
from app.core.oauth_client import create_oauth
from app.core.openapi import install_openapi, operation_id
from app.core.rate_limiter import (
    ClientAddressMiddleware,
    Limiter,
    RateLimitMiddleware,
    TrustedProxies,
    create_storage,
    window_item,
)
from app.core.redis_client import create_redis
from app.core.scheduler import JobScheduler
from app.core.security import warm_up_password_hashing
from app.core.storage import close_storage
from app.routers import (
    account_pages,
    admin,
    auth,
    bluesky_login,
    docs_pages,
    files,
    health,
    legal,
    oidc,
    oidc_clients,
    passkeys,
    provider_login,
    users,
    webhooks,
)
from app.routers import flags as caller_flags
from app.services.accounts import ensure_first_admin
from app.services.maintenance import maintenance_jobs
from app.services.webhook_delivery import WebhookWorker

#: Largest non-upload request body (JSON, forms).
JSON_BODY_LIMIT_BYTES = 1024 * 1024
#: Room for multipart boundaries and fields around an upload of MAX_UPLOAD_SIZE_MB.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

API_DESCRIPTION = """
Self-hosted user management: accounts, sessions, two-factor authentication,
third-party login, profiles, files, access control and feature flags.

Every error answers `{"detail": str, "code": "UPPER_SNAKE"}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Prepare the data directory, migrate the schema, connect Redis; undo on shutdown."""
    settings: Settings = app.state.settings
    # `fastapi run` configures std logging after importing the app: take it back.
    setup_logging(settings)
    for warning in settings.warnings:
        logger.warning(warning)
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)

    engine = create_engine(settings.database_url)
    app.state.engine = engine
    cache = app.state.auth_cache = await _create_auth_cache(app, settings, engine)
    app.state.session_factory = create_session_factory(engine, **session_options(cache))
    app.state.authenticator.attach(app.state.session_factory, cache)
    app.state.mailer = Mailer(settings)
    tasks: list[asyncio.Task[None]] = []
    try:
        await upgrade_database(engine)
        await warm_up_password_hashing(settings.PASSWORD_BCRYPT_ROUNDS)
        await ensure_first_admin(app.state.session_factory, settings)
        keyring = app.state.authenticator.keyring
        await keyring.start(app.state.session_factory)
        tasks = await _start_feature_flags(app, settings)
        tasks.append(asyncio.create_task(keyring.watch()))
        if cache.redis is not None:
            tasks.append(asyncio.create_task(cache.listen()))
        scheduler = JobScheduler(
            app.state.session_factory, maintenance_jobs(app.state.session_factory, settings)
        )
        app.state.scheduler = scheduler
        await scheduler.start()
        # Webhooks leave from here, off every request's path.
        worker = WebhookWorker(app.state.session_factory, settings, app.state.mailer)
        app.state.webhook_worker = worker
        tasks.append(asyncio.create_task(worker.run()))
        logger.info(
            "{} ready (environment={}, database={}, redis={})",
            settings.PROJECT_NAME,
            settings.ENVIRONMENT,
            engine.dialect.name,
            "on" if app.state.redis is not None else "off",
        )
        yield
    finally:
        if getattr(app.state, "scheduler", None) is not None:
            app.state.scheduler.stop()
        if app.state.webhook_worker is not None:
            await app.state.webhook_worker.stop()
        await stop_background_tasks(tasks)
        await cache.aclose()
        await app.state.mailer.drain()
        await close_storage(settings)
        if app.state.redis is not None:
            await app.state.redis.aclose()
        await engine.dispose()


async def stop_background_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel background tasks and wait for them to end.

    A cancel can be lost: redis-py swallows one that lands during a pub/sub
    subscription handshake (seen with redis 8.1), so it is repeated until it takes.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    await asyncio.gather(*tasks, return_exceptions=True)


async def _create_auth_cache(app: FastAPI, settings: Settings, engine: AsyncEngine) -> AuthCache:
    """The session cache, kept only where every process hears every invalidation:
    with Redis, or in the one process of a SQLite database."""
    redis = app.state.redis
    ttl = settings.AUTH_CACHE_SECONDS
    if not ttl or redis is not None:
        return AuthCache(ttl, redis=redis)
    if engine.dialect.name != "sqlite" or settings.WORKERS > 1:
        logger.info(
            "auth cache off: without REDIS_URL, {} could not tell each other about logouts",
            "replicas" if engine.dialect.name != "sqlite" else "workers",
        )
        return AuthCache(0)
    database = engine.url.database
    if database in (None, "", ":memory:"):  # a database of this process's own
        return AuthCache(ttl)
    try:
        processes = await asyncio.to_thread(SQLiteProcesses.join, database)
    except OSError as error:
        logger.warning(
            "auth cache off: cannot tell whether other processes use {}: {}", database, error
        )
        return AuthCache(0)
    if not processes.alone:
        logger.info(
            "auth cache off: another process uses {}, and without REDIS_URL "
            "it could not tell this one about logouts",
            database,
        )
    return AuthCache(ttl if processes.alone else 0, processes=processes)


async def _start_feature_flags(app: FastAPI, settings: Settings) -> list[asyncio.Task[None]]:
    """Load the flags from their source (file or database); when flags are on, register
    every endpoint's flags; keep this replica in step with the others."""
    store: FlagStore = app.state.flag_store
    source = app.state.flag_source = flag_source_for(settings, store, app.state.session_factory)
    if app.state.redis is not None:
        app.state.flag_broadcaster = FlagBroadcaster(app.state.redis, source)
    await source.load()
    tasks = []
    if app.state.flag_broadcaster is not None:
        tasks.append(asyncio.create_task(app.state.flag_broadcaster.listen()))
    if settings.FEATURE_FLAGS_ENABLED:
        names = [name for _, flags in flagged_routes(app.routes) for name in flags]
        added = await source.register(names)
        if added:
            logger.info("feature flags added to {}: {}", source.where, ", ".join(added))
        tasks.append(asyncio.create_task(watch_flags(source)))
    return tasks


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (the environment's when None)."""
    settings = settings or get_settings()
    setup_logging(settings)
    install_hooks()  # the auth cache's: commits drop what they changed

    app = FastAPI(
        title=settings.PROJECT_NAME,
        description=API_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        # Served by app.routers.docs_pages, protected by PROTECTED_INTERACTIVE_DOCS.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.scheduler = None
    app.state.webhook_worker = None
    # Clients connect lazily: creating them here starts no connection.
    app.state.redis = create_redis(settings.REDIS_URL) if settings.REDIS_URL else None
    limiter = Limiter(create_storage(settings.REDIS_URL))
    app.state.limiter = limiter
    app.state.guard = BruteForceGuard(
        FallbackAttemptLog(app.state.redis) if app.state.redis is not None else MemoryAttemptLog(),
        account=Window.of(parse(settings.AUTH_RATE_LIMIT_ACCOUNT)),
        address=Window.of(parse(settings.AUTH_RATE_LIMIT_ADDRESS)),
    )
    app.state.oauth = create_oauth(settings)
    app.state.bluesky_keys = ClientKeys(settings)
    authenticator = app.state.authenticator = Authenticator(settings)
    store = FlagStore(settings.DATA_DIR / settings.FEATURE_FLAGS_FILE)
    app.state.flag_store = store
    # Both need the database: made when the app starts (_start_feature_flags).
    app.state.flag_source = None
    app.state.flag_broadcaster = None
    install_error_handlers(app)
    # Routing tries routes in order, one by one: the busiest routers go first.
    app.include_router(users.router, prefix=settings.API_STR)
    app.include_router(auth.router, prefix=settings.API_STR)
    app.include_router(passkeys.router, prefix=settings.API_STR)
    app.include_router(files.router, prefix=settings.API_STR)
    # Before the other providers' routes: /oauth/{provider}/callback would take its own.
    app.include_router(bluesky_login.router, prefix=settings.API_STR)
    app.include_router(provider_login.router, prefix=settings.API_STR)
    app.include_router(admin.router, prefix=settings.API_STR)
    app.include_router(webhooks.router, prefix=settings.API_STR)
    app.include_router(oidc_clients.router, prefix=settings.API_STR)
    app.include_router(caller_flags.router, prefix=settings.API_STR)
    app.include_router(health.router)
    app.include_router(oidc.router)
    # Pages for browsers, not operations for API clients: the README lists them.
    app.include_router(docs_pages.router, include_in_schema=False)
    app.include_router(legal.router, include_in_schema=False)
    app.include_router(account_pages.router, include_in_schema=False)
    store.protected = protected_flags(app.routes, settings.API_STR)
    app.mount("/docs-static", docs_pages.DOCS_STATIC, name="docs-static")
    app.mount("/static", docs_pages.PAGE_STATIC, name="static")
    install_openapi(
        app,
        settings.API_STR,
        reading_order=[
            health.router,
            auth.router,
            passkeys.router,
            users.router,
            files.router,
            provider_login.router,
            bluesky_login.router,
            caller_flags.router,
            oidc.router,
        ],
    )

    # Middleware, innermost first: each add_middleware wraps what is already there.
    if settings.FEATURE_FLAGS_ENABLED:
        app.add_middleware(
            FeatureFlagMiddleware,
            store=store,
            routes=app.routes,
        )
    app.add_middleware(OAuthSessionMiddleware, settings=settings)
    app.add_middleware(
        BodySizeLimitMiddleware,
        limit_bytes=JSON_BODY_LIMIT_BYTES,
        upload_limit_bytes=settings.MAX_UPLOAD_SIZE_MB * 1024 * 1024 + MULTIPART_OVERHEAD_BYTES,
    )
    if settings.RATE_LIMITER_ENABLED:
        app.add_middleware(
            RateLimitMiddleware,
            limiter=limiter,
            item=window_item(
                settings.RATE_LIMITER_MAX_REQUESTS, settings.RATE_LIMITER_WINDOW_SECONDS
            ),
        )
    # Outside the rate limit and the flags, which read the caller it hands out.
    app.add_middleware(AuthenticationMiddleware, authenticator=authenticator)
    if settings.METRICS_ENABLED:
        app.add_middleware(MetricsMiddleware)
    app.add_middleware(
        ClientAddressMiddleware, proxies=TrustedProxies(settings.FORWARDED_ALLOW_IPS)
    )
    app.add_middleware(
        PasswordCheckGate,
        paths=frozenset(
            f"{settings.API_STR}/auth/{path}"
            for path in (
                "login",
                "signup",
                "reauthenticate",
                "password/change",
                "password/reset",
                "otp/setup",
                "otp/disable",
                "otp/recovery-codes",
            )
        ),
    )
    app.add_middleware(HtmlSecurityHeadersMiddleware, policy=docs_pages.PAGE_POLICY)
    app.add_middleware(RequestIdMiddleware, api_prefix=settings.API_STR)
    if settings.CORS_ORIGINS:
        # Outermost: preflights cost nothing, and every answer (the 500 too) is readable.
        app.add_middleware(Cors, origins=settings.CORS_ORIGINS)
    return app


def _create_default_app() -> FastAPI:
    try:
        return create_app()
    except ConfigError as error:
        sys.stderr.write(f"UserManager cannot start: {error}\n")
        raise SystemExit(2) from None


app = _create_default_app()
