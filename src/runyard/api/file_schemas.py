"""Request and response bodies for input uploads (Cyberun field names where it has them)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

FileKey = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
UploadId = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
FileName = Annotated[str, StringConstraints(min_length=1, max_length=255)]
ContentType = Annotated[str, StringConstraints(min_length=3, max_length=255)]
Size = Annotated[int, Field(ge=0, le=2**62)]


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
    file_size: Annotated[int, Field(ge=1, le=2**62)]
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
    part_numbers: Annotated[list[Annotated[int, Field(ge=1)]], Field(max_length=10_000)] | None = (
        None
    )


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
    part_number: Annotated[int, Field(ge=1)]
    #: The ``ETag`` header the store answered the part's PUT with.
    etag: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class MultipartCompleteIn(BaseModel):
    storage_key: FileKey
    upload_id: UploadId
    parts: Annotated[list[UploadedPartIn], Field(min_length=1, max_length=10_000)]


class MultipartCompleteOut(BaseModel):
    file_key: str


class MultipartAbortIn(BaseModel):
    storage_key: FileKey
    upload_id: UploadId
