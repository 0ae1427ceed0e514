"""Files and profile pictures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
    status,
)
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.authentication import caller_of
from app.core.config import Settings
from app.core.openapi import OPTIONAL_BEARER
from app.core.picture_links import PictureReplaced, check_picture_link, picture_version
from app.core.storage import CHUNK_BYTES
from app.models import User
from app.routers.deps import (
    ClientDep,
    CurrentUser,
    PageDep,
    Reader,
    SessionDep,
    SettingsDep,
    UserCopiesDep,
    UserUuid,
    oauth2_scheme,
)
from app.schemas.common import Text, error_responses
from app.schemas.files import FileInfo, FilePage, FileUpdate, file_info
from app.services import files as file_service
from app.services.context import ClientInfo
from app.services.directory import UserNotFound

router = APIRouter(tags=["files"])

FileId = Annotated[int, Path(ge=1, le=2_147_483_647, description="The file's id.")]
Upload = Annotated[UploadFile, File(description="The file (multipart/form-data).")]
Description = Annotated[Text | None, Form(max_length=256)]
Version = Annotated[
    str | None, Query(max_length=64, description="Signed URLs: the picture's version.")
]
Expiry = Annotated[
    int | None,
    Query(ge=0, le=10**12, description="Signed URLs: when the URL expires (epoch seconds)."),
]
Signature = Annotated[str | None, Query(max_length=128, description="Signed URLs: the signature.")]

_NOSNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-cache"}
_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/gif": {}, "image/bmp": {}}},
    304: {"description": "Not modified (the ETag matches)"},
}


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    """The upload (spooled by the form parser) chunk by chunk, never whole in memory."""
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


async def _create(
    owner_uuid: str,
    upload: UploadFile,
    description: str | None,
    actor: User,
    db: AsyncSession,
    settings: Settings,
    client: ClientInfo,
) -> FileInfo:
    file = await file_service.upload_file(
        db,
        settings,
        actor,
        owner_uuid,
        file_name=upload.filename,
        content=_chunks(upload),
        description=description,
        client=client,
    )
    return file_info(file, settings)


@router.post(
    "/file",
    status_code=status.HTTP_201_CREATED,
    response_model=FileInfo,
    responses=error_responses(401, 413, 422, 503, 507),
)
async def upload_own_file(
    file: Upload,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
    description: Description = None,
) -> FileInfo:
    """Upload a file of one's own (multipart: ``file``, optional ``description``).

    The name is made safe (no path parts or control characters, bounded length)
    and unique among the caller's files (``name_1.ext`` when they already have
    ``name.ext``, also when uploads race); other users' names never count. Images
    are typed by their content.

    Returns
    -------
    FileInfo
        The stored file, with ``file_url`` to fetch it.

    Raises
    ------
    413
        Over MAX_UPLOAD_SIZE_MB (refused before the body is read when the size is
        declared, else as soon as the limit is crossed; nothing is kept).
    503
        ``STORAGE_UNAVAILABLE``: the object store cannot be reached; nothing is kept.
    507
        ``INSUFFICIENT_STORAGE``: the disk is full; nothing is kept.
    """
    return await _create(actor.uuid, file, description, actor, db, settings, client)


@router.post(
    "/user/{uuid}/file",
    status_code=status.HTTP_201_CREATED,
    response_model=FileInfo,
    responses=error_responses(401, 403, 404, 413, 422, 503, 507),
)
async def upload_user_file(
    user_uuid: UserUuid,
    file: Upload,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
    description: Description = None,
) -> FileInfo:
    """Upload a file for a user: oneself, or anyone as an admin (who is linked to it too).

    The file belongs to that user: its name is made unique among their files. An
    admin's upload for someone else is an entry of the audit log
    (``user.file_uploaded``).

    Returns
    -------
    FileInfo
        The stored file.

    Raises
    ------
    403
        Not oneself and not an admin.
    404
        ``USER_NOT_FOUND``.
    413
        Over MAX_UPLOAD_SIZE_MB.
    503
        ``STORAGE_UNAVAILABLE``: the object store cannot be reached; nothing is kept.
    507
        ``INSUFFICIENT_STORAGE``: the disk is full; nothing is kept.
    """
    return await _create(user_uuid, file, description, actor, db, settings, client)


@router.get("/file/{file_id}", response_model=FileInfo, responses=error_responses(401, 404, 422))
async def read_file(
    file_id: FileId, actor: Reader, db: SessionDep, settings: SettingsDep
) -> FileInfo:
    """A file's metadata (linked users and staff).

    Returns
    -------
    FileInfo
        Name, type, description, creation, and ``file_url``.

    Raises
    ------
    404
        ``FILE_NOT_FOUND``: no such file, or not one the caller may see.
    """
    return file_info(await file_service.get_file(db, actor, file_id), settings)


@router.get(
    "/file/{file_id}/content",
    response_class=Response,
    responses={
        200: {"description": "The bytes, with the file's type", "content": {"*/*": {}}},
        307: {
            "description": "S3_PRESIGNED_DOWNLOADS: ``Location`` is a short-lived URL of "
            "the object store that serves the bytes"
        },
        **error_responses(401, 404, 422, 503),
    },
)
async def read_file_content(
    file_id: FileId, actor: Reader, db: SessionDep, settings: SettingsDep
) -> Response:
    """The file's bytes, streamed from storage.

    Images are shown inline; anything else is an attachment. ``nosniff`` keeps
    browsers from second-guessing the type. With ``S3_PRESIGNED_DOWNLOADS`` (S3
    storage) the answer, once access is checked, is a 307 to a presigned URL of the
    bucket, valid ``S3_PRESIGNED_SECONDS``, that serves the same type and disposition.

    Raises
    ------
    404
        ``FILE_NOT_FOUND``.
    503
        ``STORAGE_UNAVAILABLE``: the object store cannot be reached.
    """
    content = await file_service.get_file_content(db, settings, actor, file_id)
    if content.redirect_url is not None:
        return RedirectResponse(
            content.redirect_url,
            status_code=status.HTTP_307_TEMPORARY_REDIRECT,
            headers={"Cache-Control": "no-store"},
        )
    stored = content.stored
    assert stored is not None
    headers = {**_NOSNIFF, "Content-Disposition": content.disposition}
    if stored.path is not None:  # a local file: sent as a file (sendfile, ranges)
        await stored.aclose()
        return FileResponse(stored.path, media_type=content.media_type, headers=headers)
    return StreamingResponse(
        stored.chunks,
        media_type=content.media_type,
        headers={**headers, "Content-Length": str(stored.size)},
    )


@router.patch(
    "/file/{file_id}", response_model=FileInfo, responses=error_responses(401, 403, 404, 409, 422)
)
async def update_file(
    file_id: FileId,
    body: FileUpdate,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> FileInfo:
    """Rename a file or change its description (linked users and admins).

    The name is made safe as on upload. It must be free among the owner's files of
    the same kind; other users' names never count. A change to someone else's file is
    an entry of the audit log (``user.file_updated``).

    Returns
    -------
    FileInfo
        The updated file.

    Raises
    ------
    403
        Readable but not changeable by the caller.
    404
        ``FILE_NOT_FOUND``.
    409
        ``FILE_NAME_TAKEN``: another of the owner's files has this name.
    """
    changes = body.model_dump(exclude_unset=True)
    return file_info(await file_service.update_file(db, actor, file_id, changes, client), settings)


@router.delete(
    "/file/{file_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
)
async def delete_file(
    file_id: FileId, actor: CurrentUser, db: SessionDep, settings: SettingsDep, client: ClientDep
) -> None:
    """Delete a file and its bytes (linked users and admins).

    Deleting someone else's file is an entry of the audit log (``user.file_deleted``).

    Raises
    ------
    403
        Readable but not deletable by the caller.
    404
        ``FILE_NOT_FOUND``.
    """
    await file_service.delete_file(db, settings, actor, file_id, client)


@router.get(
    "/user/{uuid}/files", response_model=FilePage, responses=error_responses(401, 403, 404, 422)
)
async def list_user_files(
    user_uuid: UserUuid, actor: Reader, db: SessionDep, settings: SettingsDep, page: PageDep
) -> FilePage:
    """The files linked to a user, newest first (the user and staff).

    Returns
    -------
    FilePage
        ``items``, ``total``, ``offset``, ``limit``.

    Raises
    ------
    403
        Neither the user nor staff.
    404
        ``USER_NOT_FOUND`` (also when the user blocked the caller).
    """
    files, total = await file_service.list_user_files(
        db, actor, user_uuid, offset=page.offset, limit=page.limit
    )
    return FilePage(
        items=[file_info(file, settings) for file in files],
        total=total,
        offset=page.offset,
        limit=page.limit,
    )


@router.put(
    "/user/{uuid}/pfp",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 413, 422, 503, 507),
)
async def set_profile_picture(
    user_uuid: UserUuid,
    file: Upload,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> None:
    """Upload a profile picture (oneself, or as an admin).

    A .png, .jpg, .jpeg, .gif or .bmp file whose content is that kind of image. It is
    decoded with a pixel limit, re-encoded (anything hidden in it is dropped) and
    shrunk to fit 512x512, keeping its aspect. It replaces any earlier picture and
    is listed among the user's files as ``pfp_{uuid}.{ext}`` with kind ``picture``;
    a plain file of that name does not stand in its way. An admin's picture for
    someone else is an entry of the audit log (``user.picture_changed``).

    Raises
    ------
    403
        Not oneself and not an admin.
    404
        ``USER_NOT_FOUND``.
    413
        Over MAX_UPLOAD_SIZE_MB.
    422
        ``INVALID_IMAGE``, with the reason.
    503
        ``STORAGE_UNAVAILABLE``: the object store cannot be reached; the earlier
        picture stays.
    507
        ``INSUFFICIENT_STORAGE``: the disk is full; the earlier picture stays.
    """
    await file_service.set_profile_picture(
        db,
        settings,
        actor,
        user_uuid,
        file_name=file.filename,
        content=_chunks(file),
        client=client,
    )


@router.delete(
    "/user/{uuid}/pfp",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
)
async def delete_profile_picture(
    user_uuid: UserUuid,
    actor: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    client: ClientDep,
) -> None:
    """Remove the uploaded picture: the generated one is shown again.

    An admin removing someone else's picture is an entry of the audit log
    (``user.picture_removed``).

    Raises
    ------
    403
        Not oneself and not an admin.
    404
        ``USER_NOT_FOUND``.
    """
    await file_service.delete_profile_picture(db, settings, actor, user_uuid, client)


@router.get(
    "/user/{uuid}/pfp",
    response_class=Response,
    responses={**_IMAGE_RESPONSES, **error_responses(401, 403, 404, 422)},
    openapi_extra=OPTIONAL_BEARER,  # a signed URL needs no token
)
async def read_profile_picture(
    request: Request,
    user_uuid: UserUuid,
    db: SessionDep,
    settings: SettingsDep,
    users: UserCopiesDep,
    _token: Annotated[str | None, Depends(oauth2_scheme)],
    v: Version = None,
    exp: Expiry = None,
    sig: Signature = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The profile picture: the uploaded one, or a gray square with the initials.

    Two ways in. A user's ``picture_url`` (in their profile) is this path signed with
    ``v``, ``exp`` and ``sig``: it needs no Authorization header, so it goes in an
    ``<img>``, and answers with ``Cache-Control: public, max-age=...`` up to its
    expiry and the version as ``ETag``. Without those parameters a bearer token is
    needed (API clients; ``Cache-Control: private, no-cache``). Both answer 304 when
    ``If-None-Match`` carries the current ``ETag``.

    Raises
    ------
    401
        No signature and no valid bearer token.
    403
        ``PICTURE_LINK_INVALID``: a signature that does not match the UUID, ``v`` and
        ``exp`` (or one of them is missing); ``PICTURE_LINK_EXPIRED``: a signed URL
        past its expiry. Read the profile again for a fresh ``picture_url``.
    404
        ``USER_NOT_FOUND`` (also when the user blocked the caller);
        ``PICTURE_REPLACED``: a signed URL of a picture that has changed since.
    """
    if v is None and exp is None and sig is None:
        actor = (await caller_of(request.scope).reader()).user
        picture = await file_service.get_profile_picture(db, settings, actor, user_uuid)
        return _picture_response(picture, _NOSNIFF, if_none_match)
    link = check_picture_link(settings, user_uuid, v, exp, sig)
    etag = f'"{link.version}"'
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": f"public, max-age={link.seconds_left}, immutable",
    }
    if _matches(etag, if_none_match):
        # Revalidation needs only the version: a copy of the user, usually cached.
        user = await users(user_uuid)
        if user is None:
            raise UserNotFound()
        if picture_version(user) != link.version:
            raise PictureReplaced()
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={**headers, "ETag": etag})
    picture = await file_service.get_signed_picture(db, settings, user_uuid, link.version)
    if picture.stand_in:
        # Not the picture the version names (its file is gone): serve it, cache nothing.
        headers["Cache-Control"] = "no-store"
    return _picture_response(picture, headers, None)


def _matches(etag: str, if_none_match: str | None) -> bool:
    if not if_none_match:
        return False
    return etag in [tag.strip() for tag in if_none_match.split(",")]


def _picture_response(
    picture: file_service.PictureResponse, headers: dict[str, str], if_none_match: str | None
) -> Response:
    headers = {**headers, "ETag": picture.etag}
    if _matches(picture.etag, if_none_match):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(picture.data, media_type=picture.media_type, headers=headers)
