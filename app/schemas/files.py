"""Request and response models of the files router."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.core.config import Settings
from app.models import File
from app.schemas.common import RequestModel


class FileInfo(BaseModel):
    """A file's metadata; its bytes are at ``file_url``."""

    id: int
    kind: Literal["file", "picture"] = Field(
        description="``picture`` for a profile picture, ``file`` for anything else. Names "
        "are unique per owner and kind, so a file and a picture may share one."
    )
    file_name: str
    file_type: str = Field(description="MIME type; for images, sniffed from the content.")
    description: str | None
    created_at: int
    created_by_uuid: str | None
    file_url: str


def file_info(file: File, settings: Settings) -> FileInfo:
    """The client's view of a file (never its path on disk)."""
    return FileInfo(
        id=file.id,
        kind=file.kind,
        file_name=file.file_name,
        file_type=file.file_type,
        description=file.description,
        created_at=file.created_at,
        created_by_uuid=file.created_by_uuid,
        file_url=f"{settings.BASE_URL}{settings.API_STR}/file/{file.id}/content",
    )


class FileUpdate(RequestModel):
    """Rename a file or change its description."""

    file_name: str | None = Field(default=None, min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=256)


class FilePage(BaseModel):
    """A page of a user's files, newest first."""

    items: list[FileInfo]
    total: int
    offset: int
    limit: int
