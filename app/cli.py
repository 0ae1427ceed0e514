"""Admin commands: ``python -m app.cli --help``.

They use the same settings (environment, ``.env``) as the service.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.auth_cache import AuthCache, install_hooks, session_options
from app.core.config import ConfigError, Settings, load_settings
from app.core.database import create_engine, create_session_factory, upgrade_database
from app.core.errors import AppError
from app.core.feature_flags import FlagStore, InvalidFlags, dump_flags, parse_flags
from app.core.logging import setup_logging
from app.core.redis_client import create_redis
from app.core.scheduler import JobScheduler
from app.core.storage import close_storage
from app.services.accounts import create_admin
from app.services.maintenance import maintenance_jobs

cli = typer.Typer(help="UserManager administration.", no_args_is_help=True, add_completion=False)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as error:
        typer.echo(f"Configuration error: {error}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings)
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    return settings


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the migrated database; with Redis, their commits are announced to
    the running replicas' auth caches (a command's changes are seen at once)."""
    install_hooks()
    engine = create_engine(settings.database_url)
    redis = create_redis(settings.REDIS_URL) if settings.REDIS_URL else None
    cache = AuthCache(0, redis=redis)
    try:
        await upgrade_database(engine)
        yield create_session_factory(engine, **session_options(cache))
    finally:
        await cache.aclose(drain_seconds=5)  # announcements Redis has not taken yet
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


@cli.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    settings = _settings()

    async def run() -> None:
        engine = create_engine(settings.database_url)
        try:
            await upgrade_database(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    typer.echo("Database schema is up to date.")


@cli.command("create-admin")
def create_admin_command(
    username: str = typer.Option(..., prompt=True, help="1-31 characters of a-z, 0-9, _"),
    email: str = typer.Option(..., prompt=True),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, confirmation_prompt=True, help="Prompted when omitted."
    ),
) -> None:
    """Create an account with the admin role (the schema is migrated first)."""
    settings = _settings()

    async def run() -> str:
        async with _database(settings) as factory, factory() as db:
            user = await create_admin(
                db, settings, username=username, email=email, password=password
            )
        return user.uuid

    try:
        user_uuid = asyncio.run(run())
    except AppError as error:
        typer.echo(f"Admin not created: {error.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Admin {username!r} created ({user_uuid}).")


flags_cli = typer.Typer(help="Feature flags.", no_args_is_help=True)
cli.add_typer(flags_cli, name="flags")


@flags_cli.command("list")
def flags_list() -> None:
    """Print every flag of the flag file as JSON."""
    settings = _settings()
    store = FlagStore(settings.DATA_DIR / settings.FEATURE_FLAGS_FILE)
    store.load()
    typer.echo(json.dumps(dump_flags(store.flags), indent=2))


@flags_cli.command("set")
def flags_set(
    name: str,
    value: str = typer.Argument(..., help="true, false, or a JSON list of rules"),
) -> None:
    """Set one flag in the flag file (running replicas pick it up within seconds).

    This sets any flag, the ones the API refuses too (LOGIN, VERIFY_OTP, REFRESH,
    HEALTH, HEALTH_READY, READ_FEATURE_FLAGS, UPDATE_FEATURE_FLAGS): it is the way back
    in when a flag keeps admins out.
    """
    settings = _settings()
    store = FlagStore(settings.DATA_DIR / settings.FEATURE_FLAGS_FILE)
    store.load()
    try:
        parsed = parse_flags({name: json.loads(value)})
    except (json.JSONDecodeError, InvalidFlags) as error:
        typer.echo(f"Invalid flag value: {error}", err=True)
        raise typer.Exit(1) from None
    store.replace({**store.flags, **parsed})
    typer.echo(f"{name} = {json.dumps(dump_flags(parsed)[name])}")


@cli.command()
def purge() -> None:
    """Run every maintenance job now (expired data, pending deletions, orphaned files)."""
    settings = _settings()

    async def run() -> dict[str, dict[str, int] | None]:
        async with _database(settings) as factory:
            scheduler = JobScheduler(factory, maintenance_jobs(factory, settings))
            try:
                return {name: await scheduler.run(name, force=True) for name in scheduler.jobs}
            finally:
                await close_storage(settings)

    for name, result in asyncio.run(run()).items():
        typer.echo(f"{name}: {json.dumps(result)}")


if __name__ == "__main__":
    cli()
