"""Which server processes use one SQLite database file (the cache's condition without Redis).

Without Redis a process hears only its own commits, so the auth cache is used only by
the one process of a SQLite database: :class:`SQLiteProcesses` tells whether this
process is alone on its database, and, for the one that was, whether another has come
since (the store reads that flag on every lookup, which costs one byte read from
shared memory).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path


class SQLiteProcesses:
    """The server processes that use one SQLite database file, told apart by file locks.

    Without Redis a process hears only its own commits, so it may keep the cache only
    while no other process uses the database: not a second server on the same file,
    not a sibling worker however it was started (spawned, forked). Two files beside
    the database say who is there; the kernel drops their locks when a process ends,
    however it ends:

    - ``<database>.cache-owner-lock``, held exclusively for life by the process that
      found no other (the owner). Its first byte, mapped into every process's memory,
      is set by each process that comes later: the owner reads it on every lookup.
    - ``<database>.cache-members-lock``, held shared for life by every other process,
      so that an owner started while they run knows they are there.

    An owner writes "alone" while it holds the members lock exclusively, and a later
    process writes "shared" only once it holds that lock, so the last word is always
    right. Once shared, the owner stays uncached until it restarts alone.
    """

    def __init__(self, owner_fd: int, members_fd: int, flag: mmap.mmap, alone: bool) -> None:
        self._owner_fd = owner_fd
        self._members_fd = members_fd
        #: First byte non-zero: another process has joined since the owner started.
        self.flag = flag
        #: Whether this process found no other on the database when it joined.
        self.alone = alone

    @classmethod
    def join(cls, database: str | Path) -> SQLiteProcesses:
        """Register this process as a user of the SQLite file ``database`` (blocks
        briefly: run it in a thread). Raises OSError when the lock files cannot be made."""
        database = Path(database).resolve()  # one file, however it is named
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        owner_fd = os.open(f"{database}.cache-owner-lock", flags, 0o600)
        try:
            members_fd = os.open(f"{database}.cache-members-lock", flags, 0o600)
        except OSError:
            os.close(owner_fd)
            raise
        flag = None
        try:
            if os.fstat(owner_fd).st_size < 1:
                os.ftruncate(owner_fd, 1)  # room for the flag; a racing twin does the same
            flag = mmap.mmap(owner_fd, 1)
            try:
                fcntl.flock(owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # an owner is running: this process comes later
                fcntl.flock(members_fd, fcntl.LOCK_SH)  # waits out an owner's check only
                flag[0] = 1
                return cls(owner_fd, members_fd, flag, alone=False)
            try:
                fcntl.flock(members_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # others outlived the previous owner
                flag[0] = 1
                return cls(owner_fd, members_fd, flag, alone=False)
            flag[0] = 0
            fcntl.flock(members_fd, fcntl.LOCK_UN)
            return cls(owner_fd, members_fd, flag, alone=True)
        except BaseException:
            if flag is not None:
                flag.close()
            os.close(owner_fd)
            os.close(members_fd)
            raise

    def leave(self) -> None:
        """Release both locks (exiting does the same)."""
        self.flag.close()
        os.close(self._members_fd)
        os.close(self._owner_fd)
