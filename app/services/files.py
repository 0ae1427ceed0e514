"""Files and profile pictures: storing, naming, access, and the generated avatar.

Bytes live in the storage backend (``app.core.storage``: DATA_DIR or an S3 bucket)
under the key ``users/{owner uuid}/{generated name}``; the ``file`` row keeps the key
(``file_path``, never shown to clients), its owner,
and a sanitised ``file_name`` derived from the upload. A file is linked to its owner
and, when someone else (an admin) uploaded it, to them too.

Names are unique per owner, never across users: another user's names can neither be
probed nor taken away. A profile picture is named ``pfp_{uuid}.{ext}`` in a namespace
of its own (``kind="picture"``), so a plain file of that name never blocks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import unicodedata
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import PurePosixPath
from urllib.parse import quote

from loguru import logger
from sqlalchemy import delete, func, insert, or_, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.core.config import Settings
from app.core.errors import AppError, Conflict, NotFound
from app.core.images import (
    INLINE_TYPES,
    InvalidImage,
    initials,
    process_picture,
    render_avatar,
    sniff_image_type,
)
from app.core.permissions import require_permission
from app.core.picture_links import PictureReplaced, picture_version
from app.core.storage import ObjectTooLarge, StoredObject, storage_for
from app.models import File, User, now_epoch, user_file
from app.services.audit import AuditTarget, record_audit, record_if_staff_action
from app.services.context import ClientInfo
from app.services.directory import UserNotFound, get_visible_user
from app.services.history import record_event

FILE_NAME_MAX_STEM = 100
#: Looks for a free name before calling it a bug: under the name lock PostgreSQL needs
#: one and SQLite at most two (see :func:`_store`).
FILE_NAME_ATTEMPTS = 3
#: First key of the PostgreSQL advisory lock held while choosing an owner's file names
#: (the second is a hash of the owner's uuid). Any constant; "FILE".
FILE_NAMES_LOCK_SPACE = 0x46494C45
FILE_EXTENSION_MAX = 16
_UNSAFE_NAME_CHARACTERS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
_EXTENSION_TYPES = {
    ".txt": "text/plain",
    ".pdf": "application/pdf",
    ".json": "application/json",
    ".csv": "text/csv",
    ".zip": "application/zip",
    ".svg": "image/svg+xml",
    ".html": "text/html",
    ".htm": "text/html",
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}


class FileNotFound(NotFound):
    """No such file, or one the caller may not see."""

    code = "FILE_NOT_FOUND"
    detail = "File not found"


class FileTooLarge(AppError):
    """The upload is over MAX_UPLOAD_SIZE_MB."""

    status_code = 413
    code = "PAYLOAD_TOO_LARGE"


class FileNameTaken(Conflict):
    """Another file of the same owner has this name."""

    code = "FILE_NAME_TAKEN"
    detail = "The owner already has a file with this name"


class InvalidPicture(AppError):
    """The upload is not an acceptable profile picture."""

    status_code = 422
    code = "INVALID_IMAGE"


# Names ---------------------------------------------------------------------------------


def safe_file_name(name: str | None) -> str:
    """A file name with no path parts, no control characters and a bounded length."""
    text = unicodedata.normalize("NFKC", name or "")
    text = text.replace("\\", "/").split("/")[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    text = _UNSAFE_NAME_CHARACTERS.sub("_", text).strip().lstrip(".").strip()
    if not text:
        text = "file"
    stem, extension = _split_extension(text)
    return stem[:FILE_NAME_MAX_STEM].rstrip() + extension


def _split_extension(name: str) -> tuple[str, str]:
    suffix = PurePosixPath(name).suffix
    if not suffix or len(suffix) > FILE_EXTENSION_MAX or suffix == name:
        return name, ""
    return name[: -len(suffix)], suffix.lower()


def extension_of(name: str | None) -> str:
    """The extension of a file name, without the dot, lower-cased ('' when none)."""
    return _split_extension(safe_file_name(name))[1].lstrip(".")


async def _lock_names(db: AsyncSession, owner_uuid: str) -> None:
    """Make this transaction the only one changing ``owner_uuid``'s file names until it ends.

    Without it, parallel uploads of one name all see the same free ``_N`` and all but
    one lose the insert, again and again. PostgreSQL: an advisory lock per owner, held
    to the commit, so the next upload looks only once the previous one is committed.
    SQLite has one writer at a time: a second look from inside the write transaction
    (see :func:`_store`) always sees every name.
    """
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(:owner))"),
            {"space": FILE_NAMES_LOCK_SPACE, "owner": owner_uuid},
        )


async def _free_name(db: AsyncSession, owner_uuid: str, wanted: str) -> str:
    """``wanted``, or ``stem_N.ext`` with the smallest N that is free among the owner's files."""
    stem, extension = _split_extension(wanted)
    taken = set(
        await db.scalars(
            select(File.file_name).where(
                File.owner_uuid == owner_uuid,
                File.kind == "file",
                or_(File.file_name == wanted, File.file_name.like(f"{stem}\\_%", escape="\\")),
            )
        )
    )
    if wanted not in taken:
        return wanted
    number = 1
    while f"{stem}_{number}{extension}" in taken:
        number += 1
    return f"{stem}_{number}{extension}"


def _content_type(data: bytes, name: str) -> str:
    """Images by their content; anything else by its extension.

    The table of extensions holds no raster image type, so a renamed file is never
    served as an image.
    """
    sniffed = sniff_image_type(data[:16])
    if sniffed is not None:
        return sniffed
    return _EXTENSION_TYPES.get(_split_extension(name)[1], "application/octet-stream")


def content_disposition(kind: str, file_name: str) -> str:
    """A ``Content-Disposition`` value naming ``file_name`` (as Starlette's FileResponse)."""
    quoted = quote(file_name)
    if quoted != file_name:
        return f"{kind}; filename*=utf-8''{quoted}"
    return f'{kind}; filename="{file_name}"'


# Storing -------------------------------------------------------------------------------


async def _put(settings: Settings, key: str, chunks: AsyncIterable[bytes], file_type: str) -> None:
    """Stream the bytes into storage under ``key``, or keep nothing.

    Over MAX_UPLOAD_SIZE_MB answers 413 as soon as the limit is crossed; a full disk
    (or quota) 507 ``INSUFFICIENT_STORAGE``; an unreachable object store 503.
    """
    try:
        await storage_for(settings).put(
            key, chunks, max_bytes=_limit(settings), content_type=file_type
        )
    except ObjectTooLarge:
        raise _too_large(settings) from None


async def _remove(settings: Settings, keys: list[str]) -> None:
    """Remove stored bytes whose rows are gone; a failure is logged (the orphan cleanup
    removes them later), never raised."""
    try:
        await storage_for(settings).delete(keys)
    except Exception as error:
        logger.error("could not remove {} stored file(s): {}", len(keys), type(error).__name__)


async def _store(
    db: AsyncSession,
    settings: Settings,
    *,
    owner_uuid: str,
    actor_uuid: str,
    kind: str,
    wanted_name: str,
    chunks: AsyncIterable[bytes],
    file_type: str,
    description: str | None,
) -> File:
    """Store the bytes, then insert the row and its links (the caller holds the name lock).

    A plain file gets the first free name among its owner's files (``stem_N.ext``); a
    picture gets exactly ``wanted_name`` (the caller removed the owner's pictures).
    """
    disk_name = f"{uuid.uuid4().hex}{_split_extension(wanted_name)[1]}"
    relative = f"users/{owner_uuid}/{disk_name}"
    try:
        await _put(settings, relative, chunks, file_type)
        # Under the name lock the first look is right on PostgreSQL. SQLite has no such
        # lock, but one writer at a time: a look taken before this transaction first
        # wrote can miss a parallel upload; the next, from inside the write transaction
        # that the missed insert opened, sees every name.
        for _ in range(FILE_NAME_ATTEMPTS):
            name = (
                wanted_name if kind == "picture" else await _free_name(db, owner_uuid, wanted_name)
            )
            # ON CONFLICT DO NOTHING: a name taken meanwhile gives no row instead of an
            # error, so the session (and the objects it holds) need no rollback.
            file_id = await db.scalar(
                _insert_ignoring_conflicts(db, File)
                .values(
                    owner_uuid=owner_uuid,
                    kind=kind,
                    file_name=name,
                    file_type=file_type,
                    file_path=relative,
                    description=description,
                    created_at=now_epoch(),
                    created_by_uuid=actor_uuid,
                )
                .on_conflict_do_nothing(index_elements=["owner_uuid", "kind", "file_name"])
                .returning(File.id)
            )
            if file_id is not None:
                linked = {owner_uuid, actor_uuid}
                await db.execute(
                    insert(user_file), [{"user_uuid": u, "file_id": file_id} for u in linked]
                )
                return await db.get_one(File, file_id)
        raise RuntimeError(f"no free name for {wanted_name!r} after {FILE_NAME_ATTEMPTS} looks")
    except BaseException:
        await _remove(settings, [relative])
        raise


def _insert_ignoring_conflicts(db: AsyncSession, table: type[File]):
    """The dialect's INSERT, which knows ON CONFLICT (PostgreSQL and SQLite alike)."""
    if db.get_bind().dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)


def _limit(settings: Settings) -> int:
    return settings.MAX_UPLOAD_SIZE_MB * 1024 * 1024


def _too_large(settings: Settings) -> FileTooLarge:
    return FileTooLarge(f"The file is over the {settings.MAX_UPLOAD_SIZE_MB} MB limit")


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def read_capped(settings: Settings, content: AsyncIterable[bytes]) -> bytes:
    """The whole upload, refused (413) as soon as it is over MAX_UPLOAD_SIZE_MB: for
    pictures, which are decoded in memory anyway."""
    limit = _limit(settings)
    parts: list[bytes] = []
    size = 0
    async for chunk in content:
        size += len(chunk)
        if size > limit:
            raise _too_large(settings)
        parts.append(chunk)
    return b"".join(parts)


async def upload_file(
    db: AsyncSession,
    settings: Settings,
    actor: User,
    owner_uuid: str,
    *,
    file_name: str | None,
    content: AsyncIterable[bytes],
    description: str | None,
    client: ClientInfo,
) -> File:
    """Store an upload for ``owner_uuid`` (oneself, or anyone as an admin).

    ``content`` is streamed into storage and counted on the way: over
    MAX_UPLOAD_SIZE_MB, 413 as soon as the limit is crossed, and nothing is kept.
    """
    owner, _ = await get_visible_user(db, actor, owner_uuid)
    require_permission(actor, "user_files", "create", owner)
    chunks = aiter(content)
    first = await anext(chunks, b"")  # enough to type an image by its content
    await _lock_names(db, owner.uuid)
    file = await _store(
        db,
        settings,
        owner_uuid=owner.uuid,
        actor_uuid=actor.uuid,
        kind="file",
        wanted_name=(name := safe_file_name(file_name)),
        chunks=_then(first, chunks),
        file_type=_content_type(first, name),
        description=description,
    )
    record_event(
        db, owner.uuid, "file_uploaded", by=actor.uuid, client=client, details={"file": file.id}
    )
    details = {"file": file.id, "file_name": file.file_name}
    record_if_staff_action(db, actor, "user.file_uploaded", owner, client, details)
    await db.commit()
    logger.info("file {} stored for user {}", file.id, owner.uuid)
    return file


# Reading and changing ------------------------------------------------------------------


async def _audit_target(db: AsyncSession, actor: User, file: File) -> AuditTarget | None:
    """What a change to ``file`` is recorded against in the audit log: its owner, when
    that is someone else (an admin's change); None for one's own file. Looked up before
    the change, so that no query flushes it early."""
    if actor.uuid == file.owner_uuid:
        return None
    owner = await db.get(User, file.owner_uuid)
    return AuditTarget.of_user(owner) if owner is not None else AuditTarget("user", file.owner_uuid)


async def get_file(db: AsyncSession, actor: User, file_id: int, action: str = "read") -> File:
    """A file the actor may ``action``; 404 when they may not even read it."""
    file = await db.scalar(select(File).options(selectinload(File.users)).where(File.id == file_id))
    if file is None:
        raise FileNotFound()
    require_permission(actor, "file", "read", file, hide_as=FileNotFound)
    if action != "read":
        require_permission(actor, "file", action, file)
    return file


@dataclass(frozen=True)
class FileContent:
    """How to serve a file: its bytes opened for streaming, or (S3_PRESIGNED_DOWNLOADS)
    a short-lived URL of the object store to send the client to."""

    media_type: str
    disposition: str
    stored: StoredObject | None = None
    redirect_url: str | None = None


async def get_file_content(
    db: AsyncSession, settings: Settings, actor: User, file_id: int
) -> FileContent:
    """The bytes of a readable file: images inline, anything else as an attachment.

    The access check comes first, whichever way the bytes are served.
    """
    file = await get_file(db, actor, file_id)
    kind = "inline" if file.file_type in INLINE_TYPES else "attachment"
    disposition = content_disposition(kind, file.file_name)
    storage = storage_for(settings)
    if settings.S3_PRESIGNED_DOWNLOADS:
        url = await storage.presigned_url(
            file.file_path,
            seconds=settings.S3_PRESIGNED_SECONDS,
            content_type=file.file_type,
            disposition=disposition,
        )
        if url is not None:
            return FileContent(media_type=file.file_type, disposition=disposition, redirect_url=url)
    stored = await storage.open(file.file_path)
    if stored is None:
        logger.error("file {} has no bytes in storage", file.id)
        raise FileNotFound()
    return FileContent(media_type=file.file_type, disposition=disposition, stored=stored)


async def update_file(
    db: AsyncSession,
    actor: User,
    file_id: int,
    changes: dict[str, object],
    client: ClientInfo,
) -> File:
    """Rename a file or change its description (linked users and admins).

    The new name must be free among the owner's files of the same kind; other users'
    names do not matter.
    """
    file = await get_file(db, actor, file_id, "update")
    audit_target = await _audit_target(db, actor, file)
    if "description" in changes:
        file.description = changes["description"]  # type: ignore[assignment]
    new_name = changes.get("file_name")
    if new_name:
        name = safe_file_name(str(new_name))
        if name != file.file_name:
            await _lock_names(db, file.owner_uuid)
            taken = await db.scalar(
                select(File.id).where(
                    File.owner_uuid == file.owner_uuid,
                    File.kind == file.kind,
                    File.file_name == name,
                )
            )
            if taken is not None:
                raise FileNameTaken()
            file.file_name = name
    record_event(
        db, file.owner_uuid, "file_updated", by=actor.uuid, client=client, details={"file": file_id}
    )
    if audit_target is not None:
        details = {"file": file_id, "file_name": file.file_name}
        record_audit(db, actor, "user.file_updated", audit_target, client, details)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise FileNameTaken() from None
    return file


async def delete_file(
    db: AsyncSession, settings: Settings, actor: User, file_id: int, client: ClientInfo
) -> None:
    """Delete a file's row and bytes (linked users and admins)."""
    file = await get_file(db, actor, file_id, "delete")
    audit_target = await _audit_target(db, actor, file)
    key = file.file_path
    owner_uuid = file.owner_uuid
    if file.kind == "picture":
        # The database clears the owner's picture id; their URLs must change with it.
        owner = await db.get(User, owner_uuid)
        if owner is not None:
            _new_picture_version(owner)
    if audit_target is not None:
        details = {"file": file_id, "file_name": file.file_name}
        record_audit(db, actor, "user.file_deleted", audit_target, client, details)
    await db.delete(file)
    record_event(
        db, owner_uuid, "file_deleted", by=actor.uuid, client=client, details={"file": file_id}
    )
    await db.commit()
    await _remove(settings, [key])


async def list_user_files(
    db: AsyncSession, actor: User, user_uuid: str, *, offset: int, limit: int
) -> tuple[list[File], int]:
    """A page of the files linked to a user, newest first (the user and staff)."""
    owner, _ = await get_visible_user(db, actor, user_uuid)
    require_permission(actor, "user_files", "list", owner)
    linked = select(user_file.c.file_id).where(user_file.c.user_uuid == owner.uuid)
    total = await db.scalar(select(func.count()).select_from(File).where(File.id.in_(linked)))
    files = await db.scalars(
        select(File).where(File.id.in_(linked)).order_by(File.id.desc()).offset(offset).limit(limit)
    )
    return list(files), total or 0


# Profile pictures ----------------------------------------------------------------------


async def set_profile_picture(
    db: AsyncSession,
    settings: Settings,
    actor: User,
    user_uuid: str,
    *,
    file_name: str | None,
    content: AsyncIterable[bytes],
    client: ClientInfo,
) -> User:
    """Validate, re-encode and store a picture as ``pfp_{uuid}.{ext}``, replacing any other."""
    user, _ = await get_visible_user(db, actor, user_uuid)
    require_permission(actor, "user", "update", user)
    data = await read_capped(settings, content)
    try:
        picture = await asyncio.to_thread(process_picture, data, extension_of(file_name))
    except InvalidImage as error:
        raise InvalidPicture(f"Not an acceptable picture: {error}") from None
    # Committed by store_picture with the picture, or dropped with it.
    record_if_staff_action(db, actor, "user.picture_changed", user, client)
    return await store_picture(
        db, settings, user, actor.uuid, picture.data, picture.extension, picture.mime, client
    )


async def store_picture(
    db: AsyncSession,
    settings: Settings,
    user: User,
    actor_uuid: str,
    data: bytes,
    extension: str,
    mime: str,
    client: ClientInfo,
) -> User:
    """Make already-validated picture bytes the user's profile picture (OAuth adoption too).

    Pictures are named apart from plain files (``kind="picture"``): a plain file called
    ``pfp_{uuid}.png``, whoever uploaded it, cannot stop this. Under the name lock the
    owner's pictures are removed first, so parallel uploads replace each other (the
    last one stays) instead of failing on the name.
    """
    await _lock_names(db, user.uuid)
    replaced = await _remove_pictures(db, user)
    file = await _store(
        db,
        settings,
        owner_uuid=user.uuid,
        actor_uuid=actor_uuid,
        kind="picture",
        wanted_name=f"pfp_{user.uuid}.{extension}",
        chunks=_one(data),
        file_type=mime,
        description="Profile picture",
    )
    user.profile_picture_id = file.id
    _new_picture_version(user)
    record_event(db, user.uuid, "picture_changed", by=actor_uuid, client=client)
    await db.commit()
    await _remove(settings, replaced)
    return user


def _new_picture_version(user: User) -> None:
    """Name the user's new picture: signed URLs of the earlier one stop serving.

    Random rather than counted: parallel uploads must not both write the same next value.
    """
    user.picture_version = secrets.token_urlsafe(12)


async def _remove_pictures(db: AsyncSession, user: User) -> list[str]:
    """Delete the user's picture rows (the caller commits); return their paths."""
    user.profile_picture_id = None
    paths = await db.scalars(
        delete(File)
        .where(File.owner_uuid == user.uuid, File.kind == "picture")
        .returning(File.file_path)
    )
    return list(paths)


async def delete_profile_picture(
    db: AsyncSession, settings: Settings, actor: User, user_uuid: str, client: ClientInfo
) -> None:
    """Go back to the generated picture."""
    user, _ = await get_visible_user(db, actor, user_uuid)
    require_permission(actor, "user", "update", user)
    removed = await _remove_pictures(db, user)
    if not removed:
        return
    _new_picture_version(user)
    record_event(db, user.uuid, "picture_removed", by=actor.uuid, client=client)
    record_if_staff_action(db, actor, "user.picture_removed", user, client)
    await db.commit()
    await _remove(settings, removed)


@dataclass(frozen=True)
class PictureResponse:
    """Picture bytes (uploaded or generated), with a validator for caching."""

    etag: str
    media_type: str
    data: bytes
    #: The generated picture standing in for an uploaded one that is gone (missing in
    #: storage, or removed while this request read it): not what a signed URL names.
    stand_in: bool = False


@lru_cache(maxsize=1024)
def _avatar(text: str) -> bytes:
    return render_avatar(text)


async def get_profile_picture(
    db: AsyncSession, settings: Settings, actor: User, user_uuid: str
) -> PictureResponse:
    """The uploaded picture, or a gray square with the display name's initials."""
    user, _ = await get_visible_user(db, actor, user_uuid)
    picture_id = user.profile_picture_id
    file = None if picture_id is None else await db.get(File, picture_id)
    return await _picture_of(settings, user, file)


async def get_signed_picture(
    db: AsyncSession, settings: Settings, user_uuid: str, version: str
) -> PictureResponse:
    """The picture a signed URL names, tagged with its version (the URL was checked).

    404: ``USER_NOT_FOUND`` when the user is gone, ``PICTURE_REPLACED`` when their
    picture has changed since the URL was made.
    """
    # One statement, so the version and the file are read as of the same moment: a
    # picture uploaded meanwhile can never be served under the version of the one before.
    query = (
        select(User, File)
        .outerjoin(File, File.id == User.profile_picture_id)
        .where(User.uuid == user_uuid)
    )
    row = (await db.execute(query)).first()
    if row is None:
        raise UserNotFound()
    user, file = row
    if picture_version(user) != version:
        raise PictureReplaced()
    picture = await _picture_of(settings, user, file)
    return picture if picture.stand_in else replace(picture, etag=f'"{version}"')


async def _picture_of(settings: Settings, user: User, file: File | None) -> PictureResponse:
    """``file`` (the user's uploaded picture, None if the row is gone) or the generated one."""
    stand_in = user.profile_picture_id is not None
    if stand_in and file is not None:
        # Pictures are small (re-encoded to fit 512x512): read at once.
        data = await storage_for(settings).read(file.file_path)
        if data is not None:
            # Every stored picture has a fresh generated name, whereas ids can come
            # back (SQLite) within the same second: tag by the (hidden) name.
            stored = hashlib.sha256(file.file_path.encode()).hexdigest()[:20]
            return PictureResponse(etag=f'"pfp-{stored}"', media_type=file.file_type, data=data)
        logger.error("profile picture {} of user {} is missing in storage", file.id, user.uuid)
    text = initials(user.display_name)
    data = await asyncio.to_thread(_avatar, text)
    digest = hashlib.sha256(data).hexdigest()[:20]
    return PictureResponse(
        etag=f'"avatar-{digest}"', media_type="image/png", data=data, stand_in=stand_in
    )
