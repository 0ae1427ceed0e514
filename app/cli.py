"""Admin commands: ``python -m app.cli --help``.

They use the same settings (environment, ``.env``) as the service.
"""

from __future__ import annotations

import asyncio

import typer

from app.core.config import ConfigError, Settings, ensure_jwt_secret, load_settings
from app.core.database import create_engine, create_session_factory, upgrade_database
from app.core.errors import AppError
from app.core.logging import setup_logging
from app.services.users import create_admin

cli = typer.Typer(help="UserManager administration.", no_args_is_help=True, add_completion=False)


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as error:
        typer.echo(f"Configuration error: {error}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings)
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    ensure_jwt_secret(settings)
    return settings


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
        engine = create_engine(settings.database_url)
        try:
            await upgrade_database(engine)
            async with create_session_factory(engine)() as db:
                user = await create_admin(
                    db, settings, username=username, email=email, password=password
                )
            return user.uuid
        finally:
            await engine.dispose()

    try:
        user_uuid = asyncio.run(run())
    except AppError as error:
        typer.echo(f"Admin not created: {error.detail}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Admin {username!r} created ({user_uuid}).")


if __name__ == "__main__":
    cli()
