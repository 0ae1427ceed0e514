"""The application: ``create_app()`` builds it; ``app`` is what servers import.

Start it with ``make run`` (``fastapi run app/main.py``) or ``uvicorn app.main:app``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from loguru import logger

from app.core.config import ConfigError, Settings, ensure_jwt_secret, get_settings
from app.core.database import create_engine, create_session_factory, upgrade_database
from app.core.email import Mailer
from app.core.errors import install_error_handlers
from app.core.logging import setup_logging
from app.core.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from app.core.openapi import install_openapi
from app.core.redis_client import create_redis
from app.routers import admin, auth, files, pages, users
from app.services.users import ensure_first_admin

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
    ensure_jwt_secret(settings)

    engine = create_engine(settings.database_url)
    app.state.engine = engine
    app.state.session_factory = create_session_factory(engine)
    app.state.redis = create_redis(settings.REDIS_URL) if settings.REDIS_URL else None
    app.state.mailer = Mailer(settings)
    try:
        await upgrade_database(engine)
        await ensure_first_admin(app.state.session_factory, settings)
        logger.info(
            "{} ready (environment={}, database={}, redis={})",
            settings.PROJECT_NAME,
            settings.ENVIRONMENT,
            engine.dialect.name,
            "on" if app.state.redis is not None else "off",
        )
        yield
    finally:
        await app.state.mailer.drain()
        if app.state.redis is not None:
            await app.state.redis.aclose()
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (the environment's when None)."""
    settings = settings or get_settings()
    setup_logging(settings)

    app = FastAPI(
        title=settings.PROJECT_NAME,
        description=API_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
    )
    app.state.settings = settings
    app.state.redis = None
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware,
        limit_bytes=JSON_BODY_LIMIT_BYTES,
        upload_limit_bytes=settings.MAX_UPLOAD_SIZE_MB * 1024 * 1024 + MULTIPART_OVERHEAD_BYTES,
    )
    app.add_middleware(RequestIdMiddleware)  # added last: the outermost
    app.include_router(pages.router)
    app.include_router(auth.router, prefix=settings.API_STR)
    app.include_router(users.router, prefix=settings.API_STR)
    app.include_router(files.router, prefix=settings.API_STR)
    app.include_router(admin.router, prefix=settings.API_STR)
    install_openapi(app, settings.API_STR)
    return app


def _create_default_app() -> FastAPI:
    try:
        return create_app()
    except ConfigError as error:
        sys.stderr.write(f"UserManager cannot start: {error}\n")
        raise SystemExit(2) from None


app = _create_default_app()
