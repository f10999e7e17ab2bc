"""The object-store port: what Runyard needs from storage, whatever the backend.

Files never pass through the API: uploads and downloads go straight to the store through
signed links. Every backend enforces the same rules on an upload link:

* the body must be exactly the signed size (``Content-Length``);
* every header in ``SignedLink.headers`` must be sent as given, else ``403``;
* with ``If-None-Match: *`` (every object upload) an existing key is never overwritten: ``412``;
* an expired or altered link is refused with ``403``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class ObjectStoreError(Exception):
    """A storage operation failed (the message is safe to show)."""


class ObjectExists(ObjectStoreError):
    """The key already holds an object and overwriting was not allowed."""


class InvalidUpload(ObjectStoreError):
    """A multipart upload cannot be completed (missing parts, wrong sizes, unknown id)."""


@dataclass(frozen=True)
class SignedLink:
    """A URL that allows one method on one key until ``expires_at``."""

    url: str
    method: str
    expires_at: datetime
    #: Headers the request must carry exactly as given (they are part of the signature).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified_at: datetime | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class PartSpec:
    """One part of a multipart upload: its number (from 1), exact size and byte offset."""

    number: int
    size: int
    offset: int


@dataclass(frozen=True)
class UploadedPart:
    """A part as the uploader reports it back: its number and the ETag the store answered."""

    number: int
    etag: str


class ObjectStore(Protocol):
    """Async port over a bucket-like store. Keys are ``/``-separated relative paths."""

    #: ``local`` or ``s3``.
    name: str

    async def presign_put(self, key: str, *, size: int, content_type: str, ttl: int) -> SignedLink:
        """A link to upload exactly ``size`` bytes to a key that must not exist yet."""
        ...

    async def presign_get(
        self,
        key: str,
        *,
        ttl: int,
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> SignedLink:
        """A download link; ``content_type``/``file_name`` set the response's headers."""
        ...

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size (and type, where the backend keeps it), or None."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error."""
        ...

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    async def initiate_multipart(self, key: str, *, content_type: str) -> str:
        """Start a multipart upload to ``key``; returns the backend's upload id."""
        ...

    async def presign_parts(
        self, key: str, upload_id: str, parts: Sequence[PartSpec], *, ttl: int
    ) -> list[SignedLink]:
        """One upload link per part, each bound to its exact size."""
        ...

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        """Assemble the parts into the object. Raises :class:`ObjectExists` if the key was
        taken meanwhile, :class:`InvalidUpload` for missing or mismatched parts."""
        ...

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload and its parts (idempotent)."""
        ...

    async def close(self) -> None: ...
