"""The routes that serve the ``local`` backend's signed links: ``PUT``, ``GET`` and ``HEAD`` on
``/api/v1/objects/<key>?…&expires=…&sig=…``.

No credentials: the link is the permission. Checks, in order: the key is a plain relative
path (``400``); the signature matches the method, key and every query parameter, compared in
constant time, and the link has not expired (``403``); every signed header is present with its
signed value — ``Content-Length``, ``Content-Type``, ``If-None-Match: *`` (``403``); the key does
not exist yet (``412``). Bodies stream to disk in 1 MiB writes done off the event loop and
downloads stream from disk (with ``Range``); where the server allows, large bodies are
spliced into the file and whole files go out with ``sendfile(2)``
(:mod:`runyard.objects.zerocopy`), so memory stays flat whatever the file size. ``HEAD`` on
a download link takes the ``GET`` signature and answers the headers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.requests import ClientDisconnect

from runyard.domain.errors import BadRequest, Forbidden, NotFound, PreconditionFailed
from runyard.objects.keys import BadName, check_key, content_disposition
from runyard.objects.local import LocalObjectStore
from runyard.objects.port import InvalidUpload, ObjectExists
from runyard.objects.signing import EXPIRES_PARAM
from runyard.objects.zerocopy import SPLICE
from runyard.security.filemodes import open_private, write_private

router = APIRouter(prefix="/objects", tags=["objects"])

WRITE_BUFFER = 1024 * 1024
#: Chunks per vectored write (well under any system's IOV_MAX).
MAX_IOVECS = 512
#: Bodies this large or larger are spliced into the file where the server allows it.
SPLICE_MIN = 4 * 1024 * 1024


class _Download(FileResponse):
    chunk_size = WRITE_BUFFER


def _store(request: Request) -> LocalObjectStore:
    store = getattr(request.app.state.ctx, "objects", None)
    if not isinstance(store, LocalObjectStore):
        raise NotFound("not found")  # the s3 backend's links point at S3, not here
    return store


def _checked(request: Request, method: str, key: str) -> tuple[LocalObjectStore, dict[str, str]]:
    store = _store(request)
    try:
        check_key(key)
    except BadName as exc:
        raise BadRequest(str(exc)) from exc
    query = request.query_params
    if len(query.keys()) != len(set(query.keys())):
        raise Forbidden("invalid signature")
    params = dict(query.items())
    if not store.signer.verify(method, key, params):
        raise Forbidden("invalid signature")
    try:
        expires = int(params[EXPIRES_PARAM])
    except (KeyError, ValueError) as exc:
        raise Forbidden("invalid signature") from exc
    if store.now().timestamp() > expires:
        raise Forbidden("link expired")
    return store, params


def _require_header(request: Request, name: str, value: str) -> None:
    sent = request.headers.get(name)
    if sent is None:
        raise Forbidden(f"missing signed header {name}")
    if sent.strip() != value:
        raise Forbidden(f"header {name} does not match the signed value {value!r}")


def _pwrite_all(fd: int, chunks: list[bytes], offset: int) -> None:
    """Write the chunks at ``offset`` in one vectored call (no joining copy), finishing any
    short write."""
    total = sum(len(c) for c in chunks)
    written = os.pwritev(fd, chunks, offset)
    if written < total:
        rest = memoryview(b"".join(chunks))[written:]
        offset += written
        while rest:
            done = os.pwrite(fd, rest, offset)
            rest = rest[done:]
            offset += done


async def _receive(request: Request, fd: int, size: int, offset: int) -> None:
    """Stream the body into ``fd`` at ``offset``: with ``splice(2)`` where the server allows
    it (:mod:`runyard.objects.zerocopy`), else vectored 1 MiB writes in a thread while the
    next MiB arrives (at most two in memory). The body must be exactly ``size`` bytes."""
    splice = (request.scope.get("extensions") or {}).get(SPLICE)
    if splice is not None and size >= SPLICE_MIN:
        received = await splice["receive_into"](fd, offset, size)
        if received != size:
            raise BadRequest(f"body has {received} bytes; the link is for {size}")
        await asyncio.to_thread(os.fsync, fd)
        return
    received = 0
    chunks: list[bytes] = []
    buffered = 0
    pending: asyncio.Future[None] | None = None
    position = offset
    async for chunk in request.stream():
        if not chunk:
            continue
        received += len(chunk)
        if received > size:
            raise BadRequest(f"body is longer than the signed size of {size} bytes")
        chunks.append(chunk)
        buffered += len(chunk)
        if buffered >= WRITE_BUFFER or len(chunks) >= MAX_IOVECS:
            batch, chunks = chunks, []
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(asyncio.to_thread(_pwrite_all, fd, batch, position))
            position += buffered
            buffered = 0
    if pending is not None:
        await pending
    if chunks:
        await asyncio.to_thread(_pwrite_all, fd, chunks, position)
    if received != size:
        raise BadRequest(f"body has {received} bytes; the link is for {size}")
    await asyncio.to_thread(os.fsync, fd)


@router.put("/{key:path}", summary="Upload through a signed link (local storage)")
async def put_object(request: Request, key: str) -> Response:
    store, params = _checked(request, "PUT", key)
    try:
        size = int(params["size"])
    except (KeyError, ValueError) as exc:
        raise Forbidden("invalid signature") from exc
    _require_header(request, "Content-Length", str(size))
    if "type" in params:
        _require_header(request, "Content-Type", params["type"])
    if params.get("nomatch") == "1":
        _require_header(request, "If-None-Match", "*")
    if "upload" in params:
        return await _put_part(request, store, key, params, size)
    if await store.exists(key):
        raise PreconditionFailed("an object already exists at this key (no overwrite)")
    temp = store.new_temp_path()
    fd = open_private(temp, os.O_WRONLY)  # 0600: the object keeps this inode once linked
    try:
        try:
            await _receive(request, fd, size, 0)
        finally:
            os.close(fd)
        await asyncio.to_thread(store.publish, temp, key)
    except ObjectExists as exc:
        raise PreconditionFailed("an object already exists at this key (no overwrite)") from exc
    except (ClientDisconnect, Exception):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    return Response(status_code=200, headers={"ETag": f'"{secrets.token_hex(16)}"'})


async def _put_part(
    request: Request, store: LocalObjectStore, key: str, params: dict[str, str], size: int
) -> Response:
    try:
        folder = store.upload_dir(params["upload"])
        number = int(params["part"])
        offset = int(params["offset"])
        info = store.upload_info(params["upload"])
    except (InvalidUpload, KeyError, ValueError) as exc:
        raise NotFound("no such multipart upload") from exc
    if info.get("key") != key:
        raise NotFound("no such multipart upload")
    marker = folder / "parts" / str(number)
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    try:
        fd = os.open(folder / "data", os.O_WRONLY)
    except FileNotFoundError as exc:
        raise NotFound("no such multipart upload") from exc
    try:
        await _receive(request, fd, size, offset)
    finally:
        os.close(fd)
    etag = secrets.token_hex(16)
    await asyncio.to_thread(_write_marker, marker, etag)
    return Response(status_code=200, headers={"ETag": f'"{etag}"'})


def _write_marker(marker: Path, etag: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # aborted meanwhile
        write_private(marker, etag.encode())


@router.get("/{key:path}", summary="Download through a signed link (local storage)")
@router.head("/{key:path}", summary="Headers of a signed download link (local storage)")
async def get_object(request: Request, key: str) -> Any:
    """The file, with ``Range`` support; ``HEAD`` on the same link answers the headers only
    (``Content-Length``, ``Content-Type``, ``Accept-Ranges``). Whole-file answers on uvicorn
    go out with ``sendfile(2)`` (:mod:`runyard.objects.zerocopy`)."""
    store, params = _checked(request, "GET", key)
    path = store.path_of(key)
    if not await asyncio.to_thread(path.is_file):
        raise NotFound("no such object")
    headers = {"Cache-Control": "private, no-store"}
    if params.get("name"):
        headers["Content-Disposition"] = content_disposition(params["name"])
    return _Download(
        path, media_type=params.get("type") or "application/octet-stream", headers=headers
    )
