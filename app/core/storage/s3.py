"""The ``s3`` backend: objects in a bucket of any S3-compatible service (aiobotocore).

A key ``users/{uuid}/{name}`` is the object ``S3_PREFIX + key`` in ``S3_BUCKET``.
Uploads stream: up to :data:`PART_BYTES` are held in memory, one ``PutObject`` for
small objects, a multipart upload (parts of :data:`PART_BYTES`) for larger ones, which
is aborted when the upload goes over its limit or fails, so nothing is kept. Reads
stream the object's body chunk by chunk.

The client (one connection pool) is made on first use in the running event loop and
closed by :meth:`S3Storage.aclose`. Credentials never reach the logs: errors are
logged by their S3 code only. A store that cannot be reached, or refuses the request,
answers 503 ``STORAGE_UNAVAILABLE`` (:class:`~app.core.storage.StorageUnavailable`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from loguru import logger

from app.core.storage import (
    CHUNK_BYTES,
    ObjectTooLarge,
    StorageUnavailable,
    StoredKey,
    StoredObject,
)

if TYPE_CHECKING:
    from app.core.config import Settings

#: Size of the parts of a multipart upload (S3 wants 5 MiB at least, but for the last),
#: and so the most of an upload held in memory at once.
PART_BYTES = 8 * 1024 * 1024
#: Most keys one DeleteObjects request may name.
DELETE_BATCH = 1000
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Storage:
    """Objects in ``S3_BUCKET`` under ``S3_PREFIX``."""

    name = "s3"

    def __init__(self, settings: Settings) -> None:
        assert settings.S3_BUCKET, "checked by the settings"
        self.bucket = settings.S3_BUCKET
        self.prefix = settings.S3_PREFIX
        self._client_options: dict[str, Any] = {
            "region_name": settings.S3_REGION,
            "endpoint_url": settings.S3_ENDPOINT_URL,
            "aws_access_key_id": settings.S3_ACCESS_KEY_ID,
            "aws_secret_access_key": settings.S3_SECRET_ACCESS_KEY,
            "config": AioConfig(
                signature_version="s3v4",
                # Custom endpoints (MinIO, Ceph, rclone, moto) seldom have a DNS name
                # per bucket; AWS itself takes either.
                s3={"addressing_style": "path" if settings.S3_ENDPOINT_URL else "auto"},
                # Checksums only where S3 requires them: not every compatible
                # service knows the newer ones botocore sends by default.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        }
        self._session = get_session()
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def _object(self, key: str) -> str:
        return self.prefix + key

    async def client(self) -> Any:
        """The client of the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        if self._loop is not loop:  # a new loop (tests): the old client died with its own
            self._client, self._stack, self._loop = None, None, loop
            self._lock = asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            if self._client is None:
                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(
                    self._session.create_client("s3", **self._client_options)
                )
                self._stack = stack
        return self._client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None and self._loop is asyncio.get_running_loop():
            await stack.aclose()

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int, content_type: str
    ) -> int:
        client = await self.client()
        target = {"Bucket": self.bucket, "Key": self._object(key)}
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def send_part(data: bytes) -> None:
            nonlocal upload_id
            if upload_id is None:
                started = await client.create_multipart_upload(**target, ContentType=content_type)
                upload_id = started["UploadId"]
            number = len(parts) + 1
            answer = await client.upload_part(
                **target, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ObjectTooLarge(max_bytes)
                buffer += chunk
                while len(buffer) >= PART_BYTES:
                    await send_part(bytes(buffer[:PART_BYTES]))
                    del buffer[:PART_BYTES]
            if upload_id is None:
                await client.put_object(**target, Body=bytes(buffer), ContentType=content_type)
            else:
                if buffer:
                    await send_part(bytes(buffer))
                await client.complete_multipart_upload(
                    **target, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            return size
        except BaseException as error:
            if upload_id is not None:
                try:
                    await client.abort_multipart_upload(**target, UploadId=upload_id)
                except (BotoCoreError, ClientError) as abort_error:
                    _log("abort the upload of", key, abort_error)
            if isinstance(error, (BotoCoreError, ClientError)):
                _log("store", key, error)
                raise StorageUnavailable() from None
            raise

    async def open(self, key: str) -> StoredObject | None:
        client = await self.client()
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            _log("read", key, error)
            raise StorageUnavailable() from None
        except BotoCoreError as error:
            _log("read", key, error)
            raise StorageUnavailable() from None
        body = answer["Body"]
        return StoredObject(size=int(answer["ContentLength"]), chunks=_chunks_of(body))

    async def read(self, key: str) -> bytes | None:
        stored = await self.open(key)
        if stored is None:
            return None
        try:
            return await stored.read()
        except BotoCoreError as error:
            _log("read", key, error)
            raise StorageUnavailable() from None
        finally:
            await stored.aclose()

    async def delete(self, keys: Iterable[str]) -> None:
        names = [self._object(key) for key in keys]
        if names:
            await self._delete_objects(names)

    async def delete_prefix(self, prefix: str) -> None:
        names = [self.prefix + found.key async for found in self.list_keys(prefix)]
        if names:
            await self._delete_objects(names)

    async def _delete_objects(self, names: list[str]) -> None:
        client = await self.client()
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start : start + DELETE_BATCH]
            try:
                answer = await client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
                )
            except (BotoCoreError, ClientError) as error:
                _log("delete", batch[0], error)
                raise StorageUnavailable() from None
            for failure in answer.get("Errors", []):
                _log("delete", str(failure.get("Key")), None, str(failure.get("Code")))

    async def list_keys(self, prefix: str) -> AsyncIterator[StoredKey]:
        client = await self.client()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._object(prefix)
        )
        try:
            async for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    yield StoredKey(key, item["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as error:
            _log("list", prefix, error)
            raise StorageUnavailable() from None

    async def remove_empty_folders(self, prefix: str, keep: set[str]) -> int:
        del prefix, keep
        return 0  # a bucket has no folders: a "folder" is gone with its last object

    async def presigned_url(
        self, key: str, *, seconds: int, content_type: str, disposition: str
    ) -> str | None:
        client = await self.client()
        url: str = await client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._object(key),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
                "ResponseCacheControl": "private, no-store",
            },
            ExpiresIn=seconds,
        )
        return url


async def _chunks_of(body: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in body.iter_chunks(CHUNK_BYTES):
            yield chunk
    finally:
        body.close()


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _log(action: str, key: str, error: BaseException | None, reason: str = "") -> None:
    if isinstance(error, ClientError):
        reason = _code(error)
    elif error is not None:
        reason = type(error).__name__
    logger.error("object storage: could not {} {}: {}", action, key, reason)
