"""The ``s3`` backend: any S3-compatible service through boto3.

boto3 is synchronous: every call runs in a worker thread (``asyncio.to_thread``) so the event
loop never waits on the network. Links are SigV4 presigned URLs; the headers they require
(``Content-Length``, ``Content-Type``, ``If-None-Match: *``) are signed, so S3 itself refuses
a request without them (``403``), a body of another size (``403``) and an overwrite (``412``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from runyard.config import StorageSettings
from runyard.objects.keys import check_key, content_disposition
from runyard.objects.port import (
    InvalidUpload,
    ObjectExists,
    ObjectInfo,
    ObjectStoreError,
    PartSpec,
    SignedLink,
    UploadedPart,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class S3ObjectStore:
    name = "s3"

    def __init__(self, settings: StorageSettings, now: Callable[[], datetime]) -> None:
        if not settings.s3_bucket:
            raise ValueError("RUNYARD_STORAGE_S3_BUCKET must be set for the s3 backend")
        self.bucket = settings.s3_bucket
        self.now = now
        secret = settings.s3_secret_access_key.get_secret_value()
        self.client: S3Client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=secret or None,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": settings.s3_addressing_style},
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    async def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, **kwargs)

    def _expiry(self, ttl: int) -> datetime:
        return self.now().replace(microsecond=0) + timedelta(seconds=ttl)

    async def presign_put(self, key: str, *, size: int, content_type: str, ttl: int) -> SignedLink:
        check_key(key)
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentLength": size,
            "ContentType": content_type,
            "IfNoneMatch": "*",
        }
        url = await self._call(
            self.client.generate_presigned_url,
            ClientMethod="put_object",
            Params=params,
            ExpiresIn=ttl,
        )
        headers = {"Content-Length": str(size), "Content-Type": content_type, "If-None-Match": "*"}
        return SignedLink(url, "PUT", self._expiry(ttl), headers)

    async def presign_get(
        self,
        key: str,
        *,
        ttl: int,
        content_type: str | None = None,
        file_name: str | None = None,
    ) -> SignedLink:
        check_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            params["ResponseContentType"] = content_type
        if file_name:
            params["ResponseContentDisposition"] = content_disposition(file_name)
        url = await self._call(
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params=params,
            ExpiresIn=ttl,
        )
        return SignedLink(url, "GET", self._expiry(ttl))

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            found = await self._call(self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise ObjectStoreError(f"storage error: {_code(exc)}") from exc
        return ObjectInfo(
            key, int(found["ContentLength"]), found.get("LastModified"), found.get("ContentType")
        )

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._call(self.client.delete_object, Bucket=self.bucket, Key=key)

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found.append(ObjectInfo(item["Key"], int(item["Size"]), item.get("LastModified")))
        return sorted(found, key=lambda info: info.key)

    async def initiate_multipart(self, key: str, *, content_type: str) -> str:
        check_key(key)
        started = await self._call(
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            ContentType=content_type,
        )
        return str(started["UploadId"])

    async def presign_parts(
        self, key: str, upload_id: str, parts: Sequence[PartSpec], *, ttl: int
    ) -> list[SignedLink]:
        check_key(key)

        def sign_all() -> list[str]:
            return [
                self.client.generate_presigned_url(
                    ClientMethod="upload_part",
                    Params={
                        "Bucket": self.bucket,
                        "Key": key,
                        "UploadId": upload_id,
                        "PartNumber": part.number,
                        "ContentLength": part.size,
                    },
                    ExpiresIn=ttl,
                )
                for part in parts
            ]

        urls = await asyncio.to_thread(sign_all)
        expires_at = self._expiry(ttl)
        return [
            SignedLink(url, "PUT", expires_at, {"Content-Length": str(part.size)})
            for url, part in zip(urls, parts, strict=True)
        ]

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> None:
        check_key(key)
        listed = [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
        try:
            await self._call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},
                IfNoneMatch="*",
            )
        except ClientError as exc:
            code = _code(exc)
            if code == "PreconditionFailed" or _status(exc) == 412:
                raise ObjectExists(key) from exc
            if code in ("InvalidPart", "InvalidPartOrder", "NoSuchUpload", "EntityTooSmall"):
                raise InvalidUpload(f"multipart upload cannot be completed: {code}") from exc
            raise ObjectStoreError(f"storage error: {code}") from exc

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        check_key(key)
        try:
            await self._call(
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload" and _status(exc) != 404:
                raise ObjectStoreError(f"storage error: {_code(exc)}") from exc

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)
