"""Admin commands: ``python -m app.cli --help``.

They use the same settings (environment, ``.env``) as the service.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import typer
from limits import parse as parse_rate
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.auth_cache import AuthCache, install_hooks, session_options
from app.core.brute_force import BruteForceGuard, MemoryAttemptLog, RedisAttemptLog, Window
from app.core.config import ConfigError, Settings, load_settings
from app.core.database import create_engine, create_session_factory, upgrade_database
from app.core.email import Mailer
from app.core.errors import AppError
from app.core.feature_flags import FlagStore, FlagValue, InvalidFlags, dump_flags, parse_flags
from app.core.flag_sources import FlagBroadcaster, FlagSource, flag_source_for
from app.core.logging import setup_logging
from app.core.redis_client import create_redis
from app.core.scheduler import JobScheduler
from app.core.signing_keys import (
    ACTIVATION_DELAY_SECONDS,
    KEY_ALGORITHMS,
    ensure_signing_key,
    published_keys,
    rotate_keys,
)
from app.core.storage import close_storage
from app.models import OidcClient, SigningKey, WebhookEndpoint, now_epoch
from app.schemas.audit import AuditEntry
from app.schemas.oidc import ClientCreate, ClientInfo
from app.services import account_tools, oidc_clients, passkeys, webhooks
from app.services.accounts import create_admin, find_user_by_login
from app.services.audit import read_audit_log
from app.services.context import SYSTEM
from app.services.flags import apply_flags
from app.services.maintenance import maintenance_jobs
from app.services.seeding import seed_users
from app.services.webhook_events import EVENT_TYPES

#: A seed prefix leaves room for "_" and seven digits in a 31-character username.
USERNAME_PREFIX = re.compile(r"[a-z0-9_]{1,23}")

T = TypeVar("T")

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


@asynccontextmanager
async def _flags(
    settings: Settings,
) -> AsyncIterator[tuple[FlagSource, FlagBroadcaster | None, AsyncSession]]:
    """The flags where the service keeps them (file or database), loaded; what
    announces a change to running replicas (with Redis); a database session (for the
    audit log)."""
    async with _database(settings) as factory, factory() as db:
        store = FlagStore(settings.DATA_DIR / settings.FEATURE_FLAGS_FILE)
        source = flag_source_for(settings, store, factory)
        await source.load()
        redis = create_redis(settings.REDIS_URL) if settings.REDIS_URL else None
        try:
            yield source, FlagBroadcaster(redis, source) if redis is not None else None, db
        finally:
            if redis is not None:
                await redis.aclose()


def _set_flags(settings: Settings, flags: dict[str, FlagValue]) -> None:
    """Set ``flags`` where the service keeps them (each one in the audit log, as the
    command line's) and announce them to running replicas."""

    async def run() -> None:
        async with _flags(settings) as (source, broadcaster, db):
            await apply_flags(db, source, broadcaster, None, flags, [], SYSTEM)

    try:
        asyncio.run(run())
    except AppError as error:  # a flag file that cannot be saved (a full disk)
        typer.echo(f"Flags not set: {error.detail} ({error.code})", err=True)
        raise typer.Exit(1) from None


@flags_cli.command("list")
def flags_list() -> None:
    """Print every flag as JSON (the flag file's format)."""
    settings = _settings()

    async def run() -> dict:
        async with _flags(settings) as (source, _, _db):
            return dump_flags(source.store.flags)

    typer.echo(json.dumps(asyncio.run(run()), indent=2))


@flags_cli.command("set")
def flags_set(
    name: str,
    value: str = typer.Argument(..., help="true, false, or a JSON list of rules"),
) -> None:
    """Set one flag (running replicas pick it up within seconds).

    This sets any flag, the ones the API refuses too (LOGIN, VERIFY_OTP, REFRESH,
    HEALTH, HEALTH_READY, READ_FEATURE_FLAGS, UPDATE_FEATURE_FLAGS): it is the way back
    in when a flag keeps admins out.
    """
    settings = _settings()
    try:
        parsed = parse_flags({name: json.loads(value)})
    except (json.JSONDecodeError, InvalidFlags) as error:
        typer.echo(f"Invalid flag value: {error}", err=True)
        raise typer.Exit(1) from None

    _set_flags(settings, parsed)
    typer.echo(f"{name} = {json.dumps(dump_flags(parsed)[name])}")


@flags_cli.command("export")
def flags_export(
    path: Path = typer.Argument(..., help="File to write (the flag file's JSON format)."),
) -> None:
    """Write every flag to a file in the flag file's format (a backup, or to move the
    flags from the database back to a file)."""
    settings = _settings()

    async def run() -> dict:
        async with _flags(settings) as (source, _, _db):
            return dump_flags(source.store.flags)

    flags = asyncio.run(run())
    path.write_text(json.dumps(flags, indent=2) + "\n", encoding="utf-8")
    typer.echo(f"{len(flags)} flags written to {path}.")


@flags_cli.command("import")
def flags_import(
    path: Path = typer.Argument(..., help="A file in the flag file's JSON format."),
) -> None:
    """Set every flag of a file (flags it does not name keep their value)."""
    settings = _settings()
    try:
        parsed = parse_flags(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, InvalidFlags) as error:
        typer.echo(f"Cannot import {path}: {error}", err=True)
        raise typer.Exit(1) from None

    _set_flags(settings, parsed)
    typer.echo(f"{len(parsed)} flags imported from {path}.")


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


@cli.command("seed-users")
def seed_users_command(
    count: int = typer.Option(..., min=1, max=10_000_000, help="How many users to add."),
    start: int = typer.Option(0, min=0, help="Number of the first one (to add more later)."),
    password: str = typer.Option(
        ..., prompt=True, hide_input=True, help="Every seeded user's password."
    ),
    prefix: str = typer.Option("seed", help="Usernames are PREFIX_0000000, PREFIX_0000001..."),
) -> None:
    """Add COUNT users quickly, for benchmarks and trials (refused in production).

    Usernames are PREFIX_ and a 7-digit number, emails USERNAME@example.test
    (verified), all with one password hashed once.
    """
    settings = _settings()
    if settings.is_production:
        typer.echo(
            "seed-users adds throwaway accounts: refused when ENVIRONMENT=production", err=True
        )
        raise typer.Exit(2)
    if not USERNAME_PREFIX.fullmatch(prefix):
        typer.echo("--prefix: 1-23 characters of a-z, 0-9, _", err=True)
        raise typer.Exit(2)

    async def run() -> int:
        async with _database(settings) as factory:
            return await seed_users(
                factory,
                count=count,
                start=start,
                password=password,
                rounds=settings.PASSWORD_BCRYPT_ROUNDS,
                prefix=prefix,
            )

    try:
        inserted = asyncio.run(run())
    except IntegrityError:
        typer.echo(
            "Some of these users exist already: choose another --start or --prefix", err=True
        )
        raise typer.Exit(1) from None
    typer.echo(f"Added {inserted} users.")


keys_cli = typer.Typer(
    help="Signing keys: the keys that sign access and ID tokens, published at "
    "/.well-known/jwks.json.",
    no_args_is_help=True,
)
cli.add_typer(keys_cli, name="keys")


def _key_state(key: SigningKey, now: int) -> str:
    if key.active_from > now:
        return f"signs from {key.active_from - now} s from now"
    if key.publish_until is None:
        return "signing"
    return f"retired, published for {max(0, key.publish_until - now)} s more"


@keys_cli.command("list")
def keys_list() -> None:
    """The published keys, newest first (JSON lines: kid, algorithm, state)."""
    settings = _settings()

    async def run() -> list[SigningKey]:
        async with _database(settings) as factory, factory() as db:
            await ensure_signing_key(db, settings)
            return await published_keys(db)

    now = now_epoch()
    for key in asyncio.run(run()):
        line = {
            "kid": key.kid,
            "algorithm": key.algorithm,
            "generation": key.generation,
            "state": _key_state(key, now),
        }
        typer.echo(json.dumps(line))


@keys_cli.command("rotate")
def keys_rotate(
    activate_in: int = typer.Option(
        ACTIVATION_DELAY_SECONDS,
        min=0,
        help="Seconds before the new key signs: every replica and relying party has "
        "time to learn it first.",
    ),
    algorithm: str = typer.Option(
        "", help="ES256 or EdDSA (default: JWT_ALGORITHM's, ES256 with HS256)."
    ),
) -> None:
    """Add a new signing key. The key it replaces stays published, and keeps
    verifying, until every token it signed has expired."""
    settings = _settings()
    if algorithm and algorithm not in KEY_ALGORITHMS:
        typer.echo(f"Unknown algorithm {algorithm!r}: use ES256 or EdDSA.", err=True)
        raise typer.Exit(2)

    async def run() -> SigningKey:
        async with _database(settings) as factory, factory() as db:
            return await rotate_keys(
                db, settings, activate_in_seconds=activate_in, algorithm=algorithm or None
            )

    key = asyncio.run(run())
    typer.echo(
        f"New {key.algorithm} key {key.kid} signs in {activate_in} s; "
        "the previous one stays published until its tokens expire."
    )


clients_cli = typer.Typer(
    help="Client applications that sign their users in with this service (OpenID Connect).",
    no_args_is_help=True,
)
cli.add_typer(clients_cli, name="clients")


def _client_line(row: OidcClient, secret: str | None = None) -> str:
    line = ClientInfo.of(row).model_dump()
    if secret is not None:
        line["client_secret"] = secret
    return json.dumps(line)


def _run_client_tool(settings: Settings, tool: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def run() -> T:
        async with _database(settings) as factory, factory() as db:
            return await tool(db)

    try:
        return asyncio.run(run())
    except AppError as error:
        typer.echo(f"Refused: {error.detail} ({error.code})", err=True)
        raise typer.Exit(1) from None


@clients_cli.command("add")
def clients_add(
    name: str = typer.Option(..., help="Shown on the consent page."),
    redirect_uri: list[str] = typer.Option(..., help="An exact redirect URI (repeatable)."),
    post_logout_redirect_uri: list[str] = typer.Option(
        [], help="An exact URI logout may return to (repeatable)."
    ),
    scope: list[str] = typer.Option(
        ["openid", "profile", "email"], help="A scope the client may ask for (repeatable)."
    ),
    public: bool = typer.Option(False, help="No secret; the client must use PKCE."),
) -> None:
    """Register a client application; its secret is printed once (JSON)."""
    settings = _settings()
    try:
        body = ClientCreate(
            name=name,
            redirect_uris=redirect_uri,
            post_logout_redirect_uris=post_logout_redirect_uri,
            scopes=scope,
            public=public,
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        typer.echo(f"Refused: {problems}", err=True)
        raise typer.Exit(2) from None
    row, secret = _run_client_tool(settings, lambda db: oidc_clients.create_client(db, None, body))
    typer.echo(_client_line(row, secret))


@clients_cli.command("list")
def clients_list() -> None:
    """The registered client applications (JSON lines, never their secrets)."""
    settings = _settings()
    for row in _run_client_tool(settings, lambda db: oidc_clients.list_clients(db, None)):
        typer.echo(_client_line(row))


@clients_cli.command("rotate-secret")
def clients_rotate_secret(client_id: str) -> None:
    """A new secret for a confidential client (printed once); the old one stops working."""
    settings = _settings()
    secret = _run_client_tool(settings, lambda db: oidc_clients.rotate_secret(db, None, client_id))
    typer.echo(json.dumps({"client_id": client_id, "client_secret": secret}))


@clients_cli.command("remove")
def clients_remove(client_id: str) -> None:
    """Remove a client application; every token it holds stops working."""
    settings = _settings()
    _run_client_tool(settings, lambda db: oidc_clients.delete_client(db, None, client_id))
    typer.echo(f"Client {client_id} removed.")


@cli.command("audit")
def audit_command(
    actor: str | None = typer.Option(None, help="A UUID, or a name (alice, cli:root)."),
    action: str | None = typer.Option(None, help="user.banned, or a prefix: 'user.*'."),
    target: str | None = typer.Option(None, help="A target's id: a user's UUID, a flag."),
    target_type: str | None = typer.Option(None, help="user, flag, ..."),
    since: int | None = typer.Option(None, min=0, help="From this epoch second on."),
    until: int | None = typer.Option(None, min=0, help="Up to this epoch second."),
    limit: int = typer.Option(50, min=1, max=1000, help="Entries to print."),
    cursor: str | None = typer.Option(None, help="next_cursor of the previous page."),
) -> None:
    """Print the admin audit log as JSON, newest first: {"items": [...], "next_cursor"}."""
    settings = _settings()

    async def run() -> dict:
        async with _database(settings) as factory, factory() as db:
            events, next_cursor = await read_audit_log(
                db,
                None,
                limit=limit,
                cursor=cursor,
                by=actor,
                action=action,
                target=target,
                target_type=target_type,
                since=since,
                until=until,
            )
        items = [AuditEntry.model_validate(event).model_dump() for event in events]
        return {"items": items, "next_cursor": next_cursor}

    try:
        page = asyncio.run(run())
    except AppError as error:
        typer.echo(f"Refused: {error.detail} ({error.code})", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(page, indent=2))


users_cli = typer.Typer(
    help="Account tools: help a user back in, or shut someone out. USER is a UUID, a "
    "username or an email. With REDIS_URL the running service sees a change at once; "
    "without it, within AUTH_CACHE_SECONDS.",
    no_args_is_help=True,
)
cli.add_typer(users_cli, name="users")


def _run_tool(
    settings: Settings,
    identifier: str,
    tool: Callable[[AsyncSession, Mailer, BruteForceGuard, str], Awaitable[T]],
) -> T:
    """Run ``tool`` (a session, the mailer, the brute-force guard, the user's UUID) on
    the user named ``identifier``, and wait for its mail; a refusal exits 1.

    The guard counts in Redis, with the service, when REDIS_URL is set; otherwise in
    this process only (the service's counts are in its own memory)."""

    async def run() -> T:
        mailer = Mailer(settings)
        async with _database(settings) as factory, factory() as db:
            user_uuid = identifier
            try:
                user_uuid = str(uuid.UUID(identifier))
            except ValueError:
                user = await find_user_by_login(db, identifier)
                user_uuid = user.uuid if user is not None else ""
            redis = create_redis(settings.REDIS_URL) if settings.REDIS_URL else None
            guard = BruteForceGuard(
                RedisAttemptLog(redis) if redis is not None else MemoryAttemptLog(),
                account=Window.of(parse_rate(settings.AUTH_RATE_LIMIT_ACCOUNT)),
                address=Window.of(parse_rate(settings.AUTH_RATE_LIMIT_ADDRESS)),
            )
            try:
                return await tool(db, mailer, guard, user_uuid)
            finally:
                await mailer.drain()
                if redis is not None:
                    await redis.aclose()

    try:
        return asyncio.run(run())
    except AppError as error:
        typer.echo(f"Refused: {error.detail} ({error.code})", err=True)
        raise typer.Exit(1) from None
    except RedisError as error:
        typer.echo(f"Redis (REDIS_URL) did not answer: {type(error).__name__}", err=True)
        raise typer.Exit(1) from None


USER_ARGUMENT = typer.Argument(..., metavar="USER", help="UUID, username or email.")


@users_cli.command("reset-2fa")
def users_reset_two_factor(user: str = USER_ARGUMENT) -> None:
    """Turn off a user's two-factor authentication (they lost their second factor);
    their sessions end and their verified email is told."""
    settings = _settings()

    async def tool(db: AsyncSession, mailer: Mailer, _guard: object, user_uuid: str) -> str:
        done = await account_tools.reset_two_factor(db, settings, mailer, None, user_uuid, SYSTEM)
        return done.username

    typer.echo(f"Two-factor authentication of {_run_tool(settings, user, tool)!r} is off.")


@users_cli.command("unlock")
def users_unlock(user: str = USER_ARGUMENT) -> None:
    """Clear the lock that failed sign-ins put on an account (needs REDIS_URL, where
    the service keeps its counts)."""
    settings = _settings()
    if not settings.REDIS_URL:
        typer.echo(
            "Without REDIS_URL the sign-in counts live in the service's memory: restart "
            "it to clear them.",
            err=True,
        )
        raise typer.Exit(1)

    async def tool(
        db: AsyncSession, mailer: Mailer, guard: BruteForceGuard, user_uuid: str
    ) -> None:
        await account_tools.clear_login_lock(db, settings, mailer, guard, None, user_uuid, SYSTEM)

    _run_tool(settings, user, tool)
    typer.echo("Sign-in lock cleared.")


@users_cli.command("sessions")
def users_sessions(user: str = USER_ARGUMENT) -> None:
    """Print the user's open sessions as JSON, newest first."""
    settings = _settings()

    async def tool(db: AsyncSession, _mailer: Mailer, _guard: object, user_uuid: str) -> list:
        sessions = await account_tools.list_sessions(db, None, user_uuid)
        return [
            {
                "id": session.id,
                "created_at": session.created_at,
                "last_used_at": session.last_used_at,
                "expires_at": session.expires_at,
                "user_agent": session.user_agent,
                "ip": session.ip,
            }
            for session in sessions
        ]

    typer.echo(json.dumps(_run_tool(settings, user, tool), indent=2))


@users_cli.command("revoke-sessions")
def users_revoke_sessions(
    user: str = USER_ARGUMENT,
    session: str | None = typer.Option(None, help="Only this session (its id)."),
) -> None:
    """End every session of the user (or one, with --session); their tokens are refused."""
    settings = _settings()

    async def tool(db: AsyncSession, mailer: Mailer, _guard: object, user_uuid: str) -> int:
        return await account_tools.revoke_user_sessions(
            db, settings, mailer, None, user_uuid, SYSTEM, session_id=session
        )

    typer.echo(f"{_run_tool(settings, user, tool)} session(s) ended.")


@users_cli.command("send-reset")
def users_send_reset(user: str = USER_ARGUMENT) -> None:
    """Mail the user a password-reset link (to a verified email only)."""
    settings = _settings()

    async def tool(
        db: AsyncSession, mailer: Mailer, guard: BruteForceGuard, user_uuid: str
    ) -> None:
        await account_tools.send_password_reset(
            db, settings, mailer, guard, None, user_uuid, SYSTEM
        )

    _run_tool(settings, user, tool)
    typer.echo("Password-reset link sent.")


@users_cli.command("providers")
def users_providers(user: str = USER_ARGUMENT) -> None:
    """Print the provider accounts linked to the user as JSON."""
    settings = _settings()

    async def tool(db: AsyncSession, _mailer: Mailer, _guard: object, user_uuid: str) -> list:
        accounts = await account_tools.list_external_accounts(db, None, user_uuid)
        return [
            {
                "provider": account.provider,
                "username": account.username,
                "display_name": account.display_name,
                "email": account.email,
                "created_at": account.created_at,
            }
            for account in accounts
        ]

    typer.echo(json.dumps(_run_tool(settings, user, tool), indent=2))


@users_cli.command("unlink")
def users_unlink(user: str = USER_ARGUMENT, provider: str = typer.Argument(...)) -> None:
    """Unlink the user's account of PROVIDER, unless it is their only way to sign in."""
    settings = _settings()

    async def tool(db: AsyncSession, mailer: Mailer, _guard: object, user_uuid: str) -> None:
        await account_tools.unlink_external_account(
            db, settings, mailer, None, user_uuid, provider, SYSTEM
        )

    _run_tool(settings, user, tool)
    typer.echo(f"{provider} account unlinked.")


@users_cli.command("passkeys")
def users_passkeys(user: str = USER_ARGUMENT) -> None:
    """Print the user's passkeys as JSON (never their keys), oldest first."""
    settings = _settings()

    async def tool(db: AsyncSession, _mailer: Mailer, _guard: object, user_uuid: str) -> list:
        return [
            {
                "id": passkey.id,
                "name": passkey.name,
                "created_at": passkey.created_at,
                "last_used_at": passkey.last_used_at,
                "backed_up": passkey.backed_up,
            }
            for passkey in await passkeys.list_for_admin(db, None, user_uuid)
        ]

    typer.echo(json.dumps(_run_tool(settings, user, tool), indent=2))


@users_cli.command("remove-passkey")
def users_remove_passkey(
    user: str = USER_ARGUMENT,
    passkey_id: str = typer.Argument(..., help="The passkey's id (see `users passkeys`)."),
) -> None:
    """Delete one of the user's passkeys (a lost or stolen device), unless it is their
    only way to sign in; their verified email is told."""
    settings = _settings()

    async def tool(db: AsyncSession, mailer: Mailer, _guard: object, user_uuid: str) -> None:
        await passkeys.remove_by_admin(db, settings, mailer, None, user_uuid, passkey_id, SYSTEM)

    _run_tool(settings, user, tool)
    typer.echo("Passkey removed.")


webhooks_cli = typer.Typer(
    help="Webhook endpoints: receivers of signed events (see the README's Webhooks). "
    "ENDPOINT is an endpoint's id (see `webhooks list`).",
    no_args_is_help=True,
)
cli.add_typer(webhooks_cli, name="webhooks")


def _endpoint_json(endpoint: WebhookEndpoint) -> dict:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since,
        "created_at": endpoint.created_at,
    }


def _run_webhooks(settings: Settings, action: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``action`` in a session on the migrated database; a refusal exits 1."""

    async def run() -> T:
        async with _database(settings) as factory, factory() as db:
            return await action(db)

    try:
        return asyncio.run(run())
    except AppError as error:
        typer.echo(f"Refused: {error.detail} ({error.code})", err=True)
        raise typer.Exit(1) from None


ENDPOINT_ARGUMENT = typer.Argument(..., metavar="ENDPOINT", help="The endpoint's id.")


@webhooks_cli.command("add")
def webhooks_add(
    url: str = typer.Argument(..., help="http(s) URL that receives the events."),
    event: list[str] = typer.Option(
        ..., "--event", "-e", help=f"An event type, repeatable: {', '.join(EVENT_TYPES)}."
    ),
    description: str = typer.Option("", help="What receives them (for the list)."),
) -> None:
    """Register a receiver; prints its id and signing secret (shown only now)."""
    settings = _settings()
    unknown = [name for name in event if name not in EVENT_TYPES]
    if unknown:
        typer.echo(f"Unknown event type(s): {', '.join(unknown)}", err=True)
        raise typer.Exit(2)

    async def action(db: AsyncSession) -> tuple[WebhookEndpoint, str]:
        return await webhooks.create_endpoint(
            db, settings, None, url=url, event_types=event, description=description[:200]
        )

    endpoint, secret = _run_webhooks(settings, action)
    typer.echo(f"Endpoint {endpoint.id} added.")
    typer.echo(f"Signing secret (shown only now): {secret}")


@webhooks_cli.command("list")
def webhooks_list() -> None:
    """Print every endpoint as JSON (never their secrets)."""
    settings = _settings()

    async def action(db: AsyncSession) -> list[dict]:
        return [_endpoint_json(item) for item in await webhooks.list_endpoints(db, None)]

    typer.echo(json.dumps(_run_webhooks(settings, action), indent=2))


@webhooks_cli.command("remove")
def webhooks_remove(endpoint_id: str = ENDPOINT_ARGUMENT) -> None:
    """Remove an endpoint and its delivery log."""
    settings = _settings()

    async def action(db: AsyncSession) -> None:
        await webhooks.delete_endpoint(db, None, endpoint_id)

    _run_webhooks(settings, action)
    typer.echo("Endpoint removed.")


@webhooks_cli.command("enable")
def webhooks_enable(endpoint_id: str = ENDPOINT_ARGUMENT) -> None:
    """Send to an endpoint again (its pending deliveries first)."""
    settings = _settings()

    async def action(db: AsyncSession) -> None:
        await webhooks.update_endpoint(db, settings, None, endpoint_id, enabled=True)

    _run_webhooks(settings, action)
    typer.echo("Endpoint enabled.")


@webhooks_cli.command("disable")
def webhooks_disable(endpoint_id: str = ENDPOINT_ARGUMENT) -> None:
    """Stop sending to an endpoint."""
    settings = _settings()

    async def action(db: AsyncSession) -> None:
        await webhooks.update_endpoint(db, settings, None, endpoint_id, enabled=False)

    _run_webhooks(settings, action)
    typer.echo("Endpoint disabled.")


@webhooks_cli.command("rotate-secret")
def webhooks_rotate_secret(endpoint_id: str = ENDPOINT_ARGUMENT) -> None:
    """Give an endpoint a new signing secret; prints it (shown only now)."""
    settings = _settings()

    async def action(db: AsyncSession) -> str:
        _, secret = await webhooks.rotate_secret(db, settings, None, endpoint_id)
        return secret

    secret = _run_webhooks(settings, action)
    typer.echo(f"New signing secret (shown only now): {secret}")


@webhooks_cli.command("deliveries")
def webhooks_deliveries(
    endpoint_id: str = ENDPOINT_ARGUMENT,
    status: str | None = typer.Option(None, help="pending, delivered or failed."),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """Print an endpoint's newest deliveries as JSON."""
    settings = _settings()
    if status not in (None, "pending", "delivered", "failed"):
        typer.echo("--status: pending, delivered or failed", err=True)
        raise typer.Exit(2)

    async def action(db: AsyncSession) -> list[dict]:
        rows, _ = await webhooks.list_deliveries(
            db, None, endpoint_id, status=status, offset=0, limit=limit
        )
        return [
            {
                "id": delivery.id,
                "message_id": event.message_id,
                "event_type": event.type,
                "user_id": event.user_uuid,
                "status": delivery.status,
                "attempts": delivery.attempts,
                "last_status_code": delivery.last_status_code,
                "last_response": delivery.last_response,
            }
            for delivery, event in rows
        ]

    typer.echo(json.dumps(_run_webhooks(settings, action), indent=2))


@webhooks_cli.command("retry")
def webhooks_retry(
    endpoint_id: str = ENDPOINT_ARGUMENT,
    delivery_id: int = typer.Argument(..., help="The delivery's id (see `deliveries`)."),
) -> None:
    """Send a failed delivery again."""
    settings = _settings()

    async def action(db: AsyncSession) -> None:
        await webhooks.retry_delivery(db, None, endpoint_id, delivery_id)

    _run_webhooks(settings, action)
    typer.echo("Delivery queued again.")


if __name__ == "__main__":
    cli()
