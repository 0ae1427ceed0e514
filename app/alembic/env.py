"""Alembic environment.

Two ways in: the service passes an open connection in ``config.attributes`` when it
upgrades on start (see ``app.core.database.upgrade_database``); the ``alembic`` command
line builds its own async engine from the service's settings.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from app.core.config import get_settings
from app.core.database import check_sqlite_foreign_keys, create_engine, sqlite_foreign_keys_off
from app.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run the migrations on ``connection`` (batch mode so SQLite can alter tables).

    On SQLite, foreign keys are not enforced while migrating (rebuilding a table would
    otherwise cascade deletes into the tables that refer to it) and are checked as a
    whole before the commit instead. The caller turns enforcement back on after the
    commit when it keeps the connection (``upgrade_database`` does).
    """
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        sqlite_foreign_keys_off(connection)
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            check_sqlite_foreign_keys(connection)


async def run_async_migrations() -> None:
    """Command-line use: connect with the service's own engine settings."""
    engine = create_engine(get_settings().database_url)
    async with engine.begin() as connection:
        await connection.run_sync(run_migrations)
    await engine.dispose()


def run_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=get_settings().database_url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
elif context.is_offline_mode():
    run_offline()
else:
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    asyncio.run(run_async_migrations())
