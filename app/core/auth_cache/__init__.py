"""Sessions and users kept in memory: the token check of a read without a database trip.

Every authenticated request checks its session: an ended session's access token is
refused at once. Reading the session and its user costs a database
round trip that dwarfs the rest of a read, so routes that only read ask this cache
first (``ReaderAuth`` / ``Reader`` in ``app.routers.deps``); routes that change
something always authenticate against the database and get live ORM objects.

What is kept: per session id, a copy of the open session; per user UUID, a copy of the
user without secrets, history and picture id. Copies are detached ORM objects that
refuse writes (:class:`SnapshotWrite`), so a reader route that starts writing fails
loudly instead of losing the change.

When an entry goes:

- a commit that wrote a ``user`` or ``session`` row drops that user and their
  sessions: in this process before ``commit()`` returns, and with Redis in every
  replica (announced on :data:`CHANNEL`; see below for a Redis that does not answer).
  ORM writes are seen on flush; a bulk UPDATE/DELETE runs through :func:`bulk_write`,
  which names its users (one that does not and writes a cached column empties the
  whole cache, or raises in the test suite);
- after ``AUTH_CACHE_SECONDS``, and never later than the session's expiry (bounds
  what no hook sees: a CLI command without Redis, hand-written SQL);
- whenever this process may have missed an invalidation, the cache empties and is not
  used until it is sure again (below).

A copy read from the database while its user was invalidated is not stored (a reader
takes a :meth:`~AuthCache.ticket` first), so a slow reader cannot put back what a
writer has just removed; invalidating one user discards only that user's fills in
flight.

Knowing that nothing was missed:

- Without Redis a process hears only its own commits, so the cache is used only by
  the one process of a SQLite database (:class:`SQLiteProcesses`).
- With Redis, a replica answers from memory only for :data:`LEASE_SECONDS` after a
  probe it sent itself through Redis came back, and a commit waits (briefly) for its
  announcement to be taken; :mod:`app.core.auth_cache.fanout` explains why that is
  enough.

The cost of a cached lookup is one monotonic clock read and comparison (plus, on
SQLite without Redis, one byte read from shared memory): no Redis round trip.

The parts:

- :mod:`~app.core.auth_cache.store`: entries, lifetimes, eviction, tickets, copies;
- :mod:`~app.core.auth_cache.fanout`: announcing and hearing invalidations over Redis,
  probes and leases;
- :mod:`~app.core.auth_cache.sqlite`: which processes share a SQLite database;
- :mod:`~app.core.auth_cache.hooks`: the ORM hooks (installed by :func:`install_hooks`,
  never at import) and the sessions that announce their commits;
- :mod:`~app.core.auth_cache.writes`: the contract of bulk writes to ``user`` and
  ``session``.
"""

from app.core.auth_cache.cache import AuthCache
from app.core.auth_cache.fanout import ANNOUNCE_WAIT_SECONDS, CHANNEL, LEASE_SECONDS
from app.core.auth_cache.hooks import (
    CachingSession,
    enforce_declarations,
    install_hooks,
    session_options,
)
from app.core.auth_cache.sqlite import SQLiteProcesses
from app.core.auth_cache.store import (
    ALL,
    SESSION_OMITTED,
    USER_OMITTED,
    SnapshotWrite,
    Ticket,
    snapshot,
)
from app.core.auth_cache.writes import UndeclaredBulkWrite, bulk_write

__all__ = [
    "ALL",
    "ANNOUNCE_WAIT_SECONDS",
    "CHANNEL",
    "LEASE_SECONDS",
    "SESSION_OMITTED",
    "USER_OMITTED",
    "AuthCache",
    "CachingSession",
    "SQLiteProcesses",
    "SnapshotWrite",
    "Ticket",
    "UndeclaredBulkWrite",
    "bulk_write",
    "enforce_declarations",
    "install_hooks",
    "session_options",
    "snapshot",
]
