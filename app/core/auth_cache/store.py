"""The in-memory store: copies of open sessions and their users, until they may be stale.

What is kept: per session id, a copy of the open session; per user UUID, a copy of the
user without secrets, history and picture id. Copies are detached ORM objects that
refuse writes (:class:`SnapshotWrite`, once
:func:`~app.core.auth_cache.hooks.install_hooks` has run), so a reader route that
starts writing fails loudly instead of losing the change.

An entry goes when its user is forgotten (:meth:`AuthStore.forget`: a commit changed
that user or one of their sessions), after the store's lifetime, never later than the
session's expiry, and when room is needed (the oldest user first, with their sessions).

Tickets: a copy read from the database while its user was forgotten is not stored, so
a slow reader cannot put back what a writer has just removed. A reader takes a
:meth:`~AuthStore.ticket` before its query and hands it back with the rows; the rows
are kept only if their user has not been forgotten since. Forgetting one user
discards only the fills of that user in flight (a login elsewhere does not make every
other reader's work useless); forgetting :data:`ALL` discards every fill in flight.

Trust: the store answers only while it is sure that no invalidation was missed. The
fan-out over Redis (:mod:`app.core.auth_cache.fanout`) extends that time as its probes
come back; without Redis the store is trusted for ever, unless a one-byte flag (the
SQLite owner's, :mod:`app.core.auth_cache.sqlite`) says another process has joined.
"""

from __future__ import annotations

import math
import mmap
import time
from collections.abc import Callable, Iterable
from typing import NewType, TypeVar

from loguru import logger
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from app.models import Session, User, now_epoch

#: The mark that empties the whole cache.
ALL = "*"
#: Columns a copy does not carry: secrets, the picture id (the database clears it when
#: the file goes, which no hook sees).
USER_OMITTED = frozenset(
    {"hashed_password", "otp_secret", "otp_last_timestep", "profile_picture_id"}
)
SESSION_OMITTED = frozenset({"refresh_token_hash"})
#: Key in a copy's ``InstanceState.info`` that marks it read-only.
SNAPSHOT_KEY = "auth_cache_snapshot"

#: What a reader holds between starting its query and storing the result: the store's
#: invalidation count when it started (see :meth:`AuthStore.ticket`).
Ticket = NewType("Ticket", int)

_Model = TypeVar("_Model", User, Session)


class SnapshotWrite(RuntimeError):
    """A cached copy was written to: that route must authenticate with the database."""


def snapshot(instance: _Model, omitted: frozenset[str]) -> _Model:
    """A detached, read-only copy of ``instance`` without the ``omitted`` columns.

    Reading an omitted column raises (the copy has no session to load it from).
    """
    mapper = sa_inspect(instance).mapper
    copy = mapper.class_manager.new_instance()
    for attribute in mapper.column_attrs:
        key = attribute.key
        if key not in omitted:
            value = getattr(instance, key)
            set_committed_value(copy, key, list(value) if isinstance(value, list) else value)
    make_transient_to_detached(copy)
    sa_inspect(copy).info[SNAPSHOT_KEY] = True
    return copy


class AuthStore:
    """Copies of open sessions and their users, dropped when told their user changed.

    Parameters
    ----------
    ttl_seconds
        Longest life of an entry; 0 keeps nothing.
    trusted
        Whether lookups are answered from the start (and for ever, unless
        ``joined_flag`` says otherwise); when False, only once :meth:`trust_until`
        is called, and until the time it gives.
    joined_flag
        A one-byte buffer whose first byte turns non-zero when another process opens
        the same SQLite database: then the store turns off for good.
    max_users
        Entries kept; the oldest user (and their sessions) goes first.
    clock
        Monotonic seconds.
    """

    def __init__(
        self,
        ttl_seconds: float,
        *,
        trusted: bool,
        joined_flag: mmap.mmap | bytearray | None = None,
        max_users: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl_seconds
        self.max_users = max_users
        self.max_sessions = 4 * max_users
        self.clock = clock
        #: Lookups are answered until this time (:attr:`clock`).
        self._sure_until = math.inf if trusted and ttl_seconds > 0 else -math.inf
        #: The "another process joined" byte, while it is watched.
        self._joined_flag = joined_flag
        # Tickets: a count of invalidations; per user, the count at their last one
        # (oldest first, at most ``max_users`` of them); tickets older than the floor
        # are refused (everything was forgotten since, or that user's record is gone).
        self._generation = 0
        self._forgotten_at: dict[str, int] = {}
        self._floor = 0
        self._users: dict[str, tuple[float, User]] = {}
        self._sessions: dict[str, tuple[float, Session]] = {}
        self._sessions_of: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._sessions) + len(self._users)

    @property
    def available(self) -> bool:
        """Whether lookups may be answered now."""
        return self.clock() < self._sure_until and not self._joined_by_another()

    def _joined_by_another(self) -> bool:
        """Whether another process opened the SQLite database since this one (then the
        store goes off for good)."""
        if self._joined_flag is None or not self._joined_flag[0]:
            return False
        logger.warning(
            "auth cache off: another process uses this SQLite database, "
            "and without REDIS_URL it could not tell this one about logouts"
        )
        self.turn_off()
        return True

    # Lookups ----------------------------------------------------------------------------

    def session(self, session_id: str) -> tuple[Session, User] | None:
        """The cached session and its user, or None (then ask the database)."""
        now = self.clock()
        if now >= self._sure_until or (self._joined_flag is not None and self._joined_flag[0]):
            self._joined_by_another()
            return None
        entry = self._sessions.get(session_id)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop_session(session_id)
            return None
        session = entry[1]
        user = self._user(session.user_uuid, now)
        return None if user is None else (session, user)

    def user(self, user_uuid: str) -> User | None:
        """The cached copy of a user, or None (then ask the database)."""
        now = self.clock()
        if now >= self._sure_until or (self._joined_flag is not None and self._joined_flag[0]):
            self._joined_by_another()
            return None
        return self._user(user_uuid, now)

    def _user(self, user_uuid: str, now: float) -> User | None:
        entry = self._users.get(user_uuid)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop_user(user_uuid)
            return None
        return entry[1]

    # Fills ------------------------------------------------------------------------------

    def ticket(self) -> Ticket:
        """Take before reading rows to store: :meth:`store_user` and
        :meth:`store_session` keep them only if their user was not forgotten since."""
        return Ticket(self._generation)

    def _valid(self, ticket: Ticket, user_uuid: str) -> bool:
        return ticket >= self._floor and self._forgotten_at.get(user_uuid, 0) <= ticket

    def store_user(self, ticket: Ticket, user: User) -> User | None:
        """Keep a copy of ``user``, read after taking ``ticket``; return it (None if not
        kept)."""
        if not self.available or not self._valid(ticket, user.uuid):
            return None
        if user.uuid not in self._users and len(self._users) >= self.max_users:
            self._drop_user(next(iter(self._users)))
        copy = snapshot(user, USER_OMITTED)
        self._users[user.uuid] = (self.clock() + self.ttl, copy)
        return copy

    def store_session(
        self, ticket: Ticket, session: Session, user: User
    ) -> tuple[Session, User] | None:
        """Keep copies of an open session and its user, read after taking ``ticket``;
        return them (None if not kept)."""
        remaining = session.expires_at - now_epoch()
        if remaining <= 0 or session.user_uuid != user.uuid:
            return None
        user_copy = self.store_user(ticket, user)
        if user_copy is None:
            return None
        if session.id not in self._sessions and len(self._sessions) >= self.max_sessions:
            self._drop_session(next(iter(self._sessions)))
        until = self.clock() + min(self.ttl, remaining)
        session_copy = snapshot(session, SESSION_OMITTED)
        self._sessions[session.id] = (until, session_copy)
        self._sessions_of.setdefault(session.user_uuid, set()).add(session.id)
        return session_copy, user_copy

    # Invalidation -----------------------------------------------------------------------

    def forget(self, marks: Iterable[str]) -> None:
        """Drop the users named by ``marks`` and their sessions (:data:`ALL`:
        everything), and refuse the fills of those users that are in flight."""
        marks = set(marks)
        self._generation += 1
        if ALL in marks:
            self._floor = self._generation
            self._forgotten_at.clear()
            self._users.clear()
            self._sessions.clear()
            self._sessions_of.clear()
            return
        for user_uuid in marks:
            self._forgotten_at.pop(user_uuid, None)  # re-inserted last: oldest stay first
            self._forgotten_at[user_uuid] = self._generation
            self._drop_user(user_uuid)
        while len(self._forgotten_at) > self.max_users:
            # The record goes, its count stays as the floor: a ticket older than it
            # might be that user's, and is refused (a fill is that old only under
            # thousands of invalidations in its flight time).
            oldest = next(iter(self._forgotten_at))
            self._floor = max(self._floor, self._forgotten_at.pop(oldest))

    def _drop_user(self, user_uuid: str) -> None:
        self._users.pop(user_uuid, None)
        for session_id in self._sessions_of.pop(user_uuid, ()):
            self._sessions.pop(session_id, None)

    def _drop_session(self, session_id: str) -> None:
        entry = self._sessions.pop(session_id, None)
        if entry is not None:
            remaining = self._sessions_of.get(entry[1].user_uuid)
            if remaining is not None:
                remaining.discard(session_id)

    # Trust ------------------------------------------------------------------------------

    @property
    def trusted_until(self) -> float:
        """Lookups are answered until this time (:attr:`clock`)."""
        return self._sure_until

    def trust_until(self, until: float) -> bool:
        """Answer lookups until ``until`` at least. Returns True when the store was
        unsure until now: it then starts empty, and fills in flight are refused (an
        invalidation may have been missed meanwhile)."""
        if self.ttl <= 0 or until <= self.clock():
            return False
        restarted = self.clock() >= self._sure_until
        if restarted:
            self.forget([ALL])
        self._sure_until = max(self._sure_until, until)
        return restarted

    def lapse(self, *, from_now: bool = False) -> None:
        """Stop answering from now on (until :meth:`trust_until`), and drop everything.

        ``from_now``: count the unsure time from now, not from when trust ran out (a
        replica that starts listening has not been unsure before).
        """
        now = self.clock()
        self._sure_until = now if from_now else min(self._sure_until, now)
        self.forget([ALL])

    def turn_off(self) -> None:
        """Stop answering for good, and drop everything."""
        self._joined_flag = None
        self._sure_until = -math.inf
        self.forget([ALL])
