"""Many users at once, for benchmarks and trials: ``python -m app.cli seed-users``.

Rows go in by batches of plain INSERTs (no per-user service logic, history or mail),
all with one password hashed once, so a million users take about a minute rather than
the days a million bcrypt hashes would.
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.security import hash_password
from app.models import User, new_uuid, now_epoch

#: Rows per INSERT batch (one transaction each).
BATCH_SIZE = 10_000


def seed_username(prefix: str, number: int) -> str:
    """The username of seeded user ``number``: zero-padded, so a full name is also a
    prefix of no other seeded name (``seed_0000042``)."""
    return f"{prefix}_{number:07d}"


async def seed_users(
    session_factory: async_sessionmaker[AsyncSession],
    *,
    count: int,
    start: int = 0,
    password: str,
    rounds: int,
    prefix: str = "seed",
) -> int:
    """Insert users ``start`` .. ``start + count - 1`` named by :func:`seed_username`,
    with verified emails ``{username}@example.test``, creation times one second apart
    per ten users, and ``password``; return how many were inserted."""
    hashed = await hash_password(password, rounds)
    created = now_epoch() - (start + count) // 10
    inserted = 0
    for first in range(start, start + count, BATCH_SIZE):
        rows = [
            {
                "uuid": new_uuid(),
                "username": seed_username(prefix, number),
                "display_name": f"{prefix.capitalize()} {number}",
                "email": f"{seed_username(prefix, number)}@example.test",
                "email_verified": True,
                "hashed_password": hashed,
                "otp_method": "none",
                "roles": ["user"],
                "created_at": created + number // 10,
                "updated_at": created + number // 10,
                "is_external_only": False,
                "is_active": True,
                "blocked_uuids": [],
            }
            for number in range(first, min(first + BATCH_SIZE, start + count))
        ]
        async with session_factory() as session:
            await session.execute(insert(User), rows)
            await session.commit()
        inserted += len(rows)
    return inserted
