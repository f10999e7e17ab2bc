"""Request and response bodies for input uploads (Cyberun field names where it has them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, Strict, StringConstraints

from runyard.domain import limits

FileKey = Annotated[str, StringConstraints(min_length=1, max_length=limits.FILE_KEY_MAX)]
UploadId = Annotated[str, StringConstraints(min_length=1, max_length=limits.FILE_KEY_MAX)]
FileName = Annotated[str, StringConstraints(min_length=1, max_length=limits.FILE_NAME_MAX)]
ContentType = Annotated[
    str,
    StringConstraints(min_length=limits.CONTENT_TYPE_MIN, max_length=limits.CONTENT_TYPE_MAX),
]
PartNumber = Annotated[int, Strict(), Field(ge=1)]
Size = Annotated[int, Strict(), Field(ge=0, le=limits.MAX_FILE_SIZE)]


class PresignIn(BaseModel):
    file_name: FileName
    file_size: Size
    content_type: ContentType


class PresignOut(BaseModel):
    #: Pass this as the value of a ``file`` parameter.
    file_key: str
    upload_url: str
    #: Send every one of these with the PUT, as given (they are signed).
    upload_headers: dict[str, str]
    expires_at: datetime


class MultipartInitiateIn(BaseModel):
    #: A ``file_key`` from ``POST /r/files/presign`` (the reference's way) …
    storage_key: FileKey | None = None
    file_size: Annotated[int, Strict(), Field(ge=1, le=limits.MAX_FILE_SIZE)]
    #: … or a new upload: its name and type.
    file_name: FileName | None = None
    content_type: ContentType | None = None


class MultipartOut(BaseModel):
    upload_id: str
    storage_key: str
    file_size: int
    part_size: int
    part_count: int


class PartLinksIn(BaseModel):
    storage_key: FileKey
    upload_id: UploadId
    #: Which parts to sign (default: all of them).
    part_numbers: Annotated[list[PartNumber], Field(max_length=limits.MAX_PARTS)] | None = None


class PartLink(BaseModel):
    part_number: int
    upload_url: str
    upload_headers: dict[str, str]


class PartLinksOut(BaseModel):
    upload_id: str
    storage_key: str
    part_size: int
    part_count: int
    parts: list[PartLink]
    expires_at: datetime


class UploadedPartIn(BaseModel):
    part_number: PartNumber
    #: The ``ETag`` header the store answered the part's PUT with.
    etag: Annotated[str, StringConstraints(min_length=1, max_length=limits.ETAG_MAX)]


class MultipartCompleteIn(BaseModel):
    storage_key: FileKey
    upload_id: UploadId
    parts: Annotated[list[UploadedPartIn], Field(min_length=1, max_length=limits.MAX_PARTS)]


class MultipartCompleteOut(BaseModel):
    file_key: str


class MultipartAbortIn(BaseModel):
    storage_key: FileKey
    upload_id: UploadId
