"""Where uploads and profile pictures keep their bytes: one interface, two backends.

Services name objects by *key*, a relative POSIX path that they generate
(``users/{owner uuid}/{random hex}.{ext}``); the ``file`` row keeps the key. The
backend (``STORAGE_BACKEND``) decides where the bytes go:

- ``local`` (:class:`~app.core.storage.local.LocalStorage`, the default): the file
  ``DATA_DIR/{key}``, written in worker threads and fsynced before the row that names
  it is committed. One machine, or replicas sharing one ``DATA_DIR`` volume.
- ``s3`` (:class:`~app.core.storage.s3.S3Storage`): the object ``S3_PREFIX + key`` in
  ``S3_BUCKET`` of any S3-compatible service, through aiobotocore. Replicas on
  different machines share it.

Both stream: :meth:`Storage.put` takes the bytes as an async iterable and counts them
as they come, refusing the object (:class:`ObjectTooLarge`, nothing kept) as soon as
it is over ``max_bytes``; :meth:`Storage.open` gives the bytes back as an async
iterator of chunks. Services get the backend of their settings with
:func:`storage_for`; the app closes it on shutdown (:func:`close_storage`).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from app.core.errors import AppError

if TYPE_CHECKING:
    from app.core.config import Settings

#: Size of the chunks read from an upload and served from a backend.
CHUNK_BYTES = 256 * 1024


class ObjectTooLarge(Exception):
    """The bytes given to :meth:`Storage.put` went over its ``max_bytes``; nothing was kept."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"over {max_bytes} bytes")
        self.max_bytes = max_bytes


class StorageUnavailable(AppError):
    """The object store did not answer, or refused the service's request (503)."""

    status_code = 503
    code = "STORAGE_UNAVAILABLE"
    detail = "File storage is unavailable; try again shortly"


@dataclass
class StoredObject:
    """An object opened for reading: its size and its bytes, chunk by chunk.

    ``path`` is set by the local backend (the file itself, which a response can send
    with ``sendfile``). Whoever opened it iterates ``chunks`` to the end or calls
    :meth:`aclose`.
    """

    size: int
    chunks: AsyncIterator[bytes]
    path: Path | None = None

    async def aclose(self) -> None:
        """Release the object without reading the rest (a connection, for S3)."""
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()

    async def read(self) -> bytes:
        """Every remaining byte (for small objects: pictures)."""
        parts = [chunk async for chunk in self.chunks]
        return b"".join(parts)


@dataclass(frozen=True)
class StoredKey:
    """A key found by :meth:`Storage.list_keys` and when it was last written (epoch seconds)."""

    key: str
    modified_at: float


class Storage(Protocol):
    """What the services need from a place that keeps bytes under keys."""

    name: str

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int, content_type: str
    ) -> int:
        """Store the bytes under ``key`` and return their size, or keep nothing.

        Raises :class:`ObjectTooLarge` as soon as more than ``max_bytes`` came,
        :class:`~app.core.errors.InsufficientStorage` when there is no room, and
        :class:`StorageUnavailable` when the store cannot be reached.
        """
        ...

    async def open(self, key: str) -> StoredObject | None:
        """The object for reading, or None when there is none under ``key``."""
        ...

    async def read(self, key: str) -> bytes | None:
        """A small object's bytes at once, or None when there is none."""
        ...

    async def delete(self, keys: Iterable[str]) -> None:
        """Remove the objects (missing ones are no error)."""
        ...

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with ``prefix`` (a folder, ``.../``)."""
        ...

    def list_keys(self, prefix: str) -> AsyncIterator[StoredKey]:
        """Every object whose key starts with ``prefix``, for the orphan cleanup."""
        ...

    async def remove_empty_folders(self, prefix: str, keep: set[str]) -> int:
        """Remove the empty folders right under ``prefix`` whose names are not in
        ``keep``; return how many. Backends without folders return 0."""
        ...

    async def presigned_url(
        self, key: str, *, seconds: int, content_type: str, disposition: str
    ) -> str | None:
        """A URL that serves the object to anyone for ``seconds`` with these headers,
        or None when the backend cannot make one (local)."""
        ...

    async def aclose(self) -> None:
        """Release connections (on shutdown)."""
        ...


_BACKENDS: dict[int, Storage] = {}


def create_storage(settings: Settings) -> Storage:
    """A new backend for ``settings`` (``STORAGE_BACKEND``)."""
    if settings.STORAGE_BACKEND == "s3":
        from app.core.storage.s3 import S3Storage

        return S3Storage(settings)
    from app.core.storage.local import LocalStorage

    return LocalStorage(settings.DATA_DIR)


def storage_for(settings: Settings) -> Storage:
    """The backend of ``settings``: one per settings object, made on first use."""
    key = id(settings)
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = _BACKENDS[key] = create_storage(settings)
        weakref.finalize(settings, _BACKENDS.pop, key, None)
    return backend


async def close_storage(settings: Settings) -> None:
    """Close the backend of ``settings``, if one was made (the app's shutdown)."""
    backend = _BACKENDS.get(id(settings))
    if backend is not None:
        await backend.aclose()
