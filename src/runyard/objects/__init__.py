"""Object storage: one async port (:class:`ObjectStore`) and two backends.

``local`` keeps files under ``<data_dir>/objects`` and serves HMAC-signed links itself
(:mod:`runyard.objects.http`); ``s3`` presigns links on any S3-compatible service. Keys are
built in :mod:`runyard.objects.keys`; the rest of Runyard only sees the port.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from runyard.config import Settings
from runyard.objects.port import (
    InvalidUpload,
    ObjectExists,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    PartSpec,
    SignedLink,
    UploadedPart,
)

__all__ = [
    "InvalidUpload",
    "ObjectExists",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreError",
    "PartSpec",
    "SignedLink",
    "UploadedPart",
    "make_object_store",
]


def make_object_store(settings: Settings, secret: str, now: Callable[[], datetime]) -> ObjectStore:
    """The backend ``RUNYARD_STORAGE_BACKEND`` names (links of ``local`` use the public URL,
    read at signing time, so it may be set after start)."""
    storage = settings.storage
    if storage.backend == "s3":
        from runyard.objects.s3 import S3ObjectStore

        return S3ObjectStore(storage, now)
    from runyard.objects.local import LocalObjectStore

    root = storage.local_root(settings.data_dir)
    return LocalObjectStore(root, secret, settings.public_url, now)
