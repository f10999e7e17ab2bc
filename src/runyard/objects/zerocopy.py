"""Zero-copy transfers for the ``local`` backend's signed links.

**Downloads.** Starlette's ``FileResponse`` sends the ASGI ``http.response.pathsend`` message
(the file's path) instead of reading the file, when the server says it supports that
extension. uvicorn does not, so :class:`ZeroCopyMiddleware`, wrapped around the whole app,
says so itself for signed-link downloads (``GET /api/v1/objects/…``) and answers the message
with ``sendfile(2)``: the kernel moves the bytes from the page cache into the socket.

**Uploads.** For signed-link uploads (``PUT``) it offers the ``runyard.splice`` extension: a
``receive_into(fd, offset, size)`` that takes what uvicorn has already read (answering
``Expect: 100-continue`` as usual), then stops uvicorn reading and moves the rest of the body
from the socket into the file with ``splice(2)`` through a pipe. uvicorn's parser never sees
those bytes, so the connection closes after the answer (``Connection: close``).

Both only on uvicorn's ``httptools`` connections over plain TCP (``runyard server``,
``runyard up``); anything else — TLS terminated by uvicorn, its ``h11`` implementation, another
ASGI server, the in-process test transport, ``Range`` requests, ``HEAD`` — keeps the streaming
path. The transfers run on a small thread pool of their own (a slow client ties up one of its
threads, never the event loop nor the default pool), on a duplicate of the socket's
descriptor, so the connection closing meanwhile cannot send the bytes elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runyard.logging import get_logger

log = get_logger("runyard.objects")

PATHSEND = "http.response.pathsend"
#: Extension offered to signed-link uploads: ``{"receive_into": ReceiveInto}``.
SPLICE = "runyard.splice"
#: ``await receive_into(fd, offset, size)``: write up to ``size`` body bytes at ``offset``;
#: returns how many arrived (fewer: the client stopped sending).
ReceiveInto = Callable[[int, int, int], Awaitable[int]]

_HTTPTOOLS_CYCLE = "uvicorn.protocols.http.httptools_impl"
#: A transfer whose client sends or takes nothing for this long is abandoned.
STALL_SECONDS = 60.0
#: Concurrent zero-copy transfers; more wait for a free thread.
MAX_TRANSFERS = 32
_CHUNK = 1 << 30
_FALLBACK_CHUNK = 1024 * 1024
_PIPE_SIZE = 1024 * 1024

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(MAX_TRANSFERS, thread_name_prefix="runyard-zerocopy")
    return _pool


def _connection(send: Send) -> tuple[Any, asyncio.Transport] | None:
    """uvicorn's request/response cycle and its transport, when ``send`` is its own method
    on a plain TCP (or Unix) socket; else ``None``."""
    cycle = getattr(send, "__self__", None)
    if cycle is None or type(cycle).__module__ != _HTTPTOOLS_CYCLE:
        return None
    transport = getattr(cycle, "transport", None)
    if transport is None or not isinstance(getattr(cycle, "expected_content_length", None), int):
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return None
    return cycle, transport


class ZeroCopyMiddleware:
    """Offer ``http.response.pathsend`` on signed-link downloads and ``runyard.splice`` on
    signed-link uploads (see the module's text). Must wrap the whole app: it needs uvicorn's
    own ``send``."""

    def __init__(self, app: ASGIApp, path_prefix: str) -> None:
        self.app = app
        self.path_prefix = path_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method")
        connection = None
        if (
            scope["type"] == "http"
            and scope["path"].startswith(self.path_prefix)
            and (
                (method == "GET" and hasattr(os, "sendfile"))
                or (method == "PUT" and hasattr(os, "splice"))
            )
        ):
            connection = _connection(send)
        if connection is None:
            await self.app(scope, receive, send)
            return
        cycle, transport = connection
        extensions = dict(scope.get("extensions") or {})
        if method == "PUT":

            async def receive_into(fd: int, offset: int, size: int) -> int:
                return await _receive_into(cycle, transport, receive, fd, offset, size)

            extensions[SPLICE] = {"receive_into": receive_into}
            await self.app({**scope, "extensions": extensions}, receive, send)
            return
        if PATHSEND in extensions:  # the server does it itself
            await self.app(scope, receive, send)
            return
        extensions[PATHSEND] = {}

        async def send_or_sendfile(message: Message) -> None:
            if message["type"] == PATHSEND:
                await _send_path(cycle, transport, send, str(message["path"]))
            else:
                await send(message)

        await self.app({**scope, "extensions": extensions}, receive, send_or_sendfile)


# -- downloads ---------------------------------------------------------------------------------


async def _send_path(cycle: Any, transport: asyncio.Transport, send: Send, path: str) -> None:
    """The body after ``http.response.start`` (whose ``Content-Length`` uvicorn recorded):
    the whole file, zero-copy when the transport has nothing buffered, else in chunks."""
    count: int = cycle.expected_content_length
    if count == 0:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if transport.is_closing() or transport.get_write_buffer_size() > 0:
        await _send_chunks(send, path, count)
        return
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    try:
        file_fd = os.open(path, os.O_RDONLY)
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(_executor(), _sendfile_all, sock_fd, file_fd, count)
        finally:
            os.close(file_fd)
    except (OSError, EOFError) as exc:
        # The client went away (or stalled): nothing more can be said on this connection.
        log.info("download_aborted", error=type(exc).__name__)
        transport.close()
    finally:
        os.close(sock_fd)
    cycle.expected_content_length = 0  # the bytes went around uvicorn; the body is complete
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _wait(poller: select.poll, stalled: float) -> float:
    """Wait up to a second for the socket; the time stalled so far (raises past the limit)."""
    if poller.poll(1000):
        return 0.0
    stalled += 1.0
    if stalled >= STALL_SECONDS:
        raise TimeoutError("the client sent or took nothing for a minute")
    return stalled


def _sendfile_all(sock_fd: int, file_fd: int, count: int) -> None:
    """Blocking (in a pool thread): ``count`` bytes of the file from offset 0 into the
    non-blocking socket, waiting with ``poll`` whenever the socket's buffer is full."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    offset = 0
    stalled = 0.0
    while count > 0:
        try:
            sent = os.sendfile(sock_fd, file_fd, offset, min(count, _CHUNK))
        except BlockingIOError:
            stalled = _wait(poller, stalled)
            continue
        if sent == 0:
            raise EOFError("the file is shorter than its announced length")
        stalled = 0.0
        offset += sent
        count -= sent


async def _send_chunks(send: Send, path: str, count: int) -> None:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        offset = 0
        while offset < count:
            size = min(_FALLBACK_CHUNK, count - offset)
            chunk = await asyncio.to_thread(os.pread, fd, size, offset)
            if not chunk:
                raise EOFError("the file is shorter than its announced length")
            offset += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": offset < count})
    finally:
        os.close(fd)


# -- uploads -----------------------------------------------------------------------------------


async def _receive_into(
    cycle: Any, transport: asyncio.Transport, receive: Receive, fd: int, offset: int, size: int
) -> int:
    # What uvicorn has read already (its first receive answers "Expect: 100-continue").
    message = await receive()
    if message["type"] != "http.request":
        return 0
    body: bytes = message.get("body", b"")[:size]
    if body:
        await asyncio.to_thread(_pwrite_all, fd, body, offset)
    received = len(body)
    if not message.get("more_body", False) or received >= size:
        return received
    # From here the body bypasses uvicorn's parser: the connection ends with the answer.
    cycle.keep_alive = False
    cycle.flow.pause_reading()
    if cycle.body:  # read between the message and the pause
        rest = bytes(cycle.body[: size - received])
        cycle.body.clear()
        await asyncio.to_thread(_pwrite_all, fd, rest, offset + received)
        received += len(rest)
    if received >= size or transport.is_closing():
        return received
    sock_fd = os.dup(transport.get_extra_info("socket").fileno())
    try:
        loop = asyncio.get_running_loop()
        received += await loop.run_in_executor(
            _executor(), _splice_all, sock_fd, fd, offset + received, size - received
        )
    finally:
        os.close(sock_fd)
    return received


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _splice_all(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
    """Blocking (in a pool thread): up to ``count`` bytes from the non-blocking socket into
    the file at ``offset``, through a pipe; returns how many came (fewer: end of stream)."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    pipe_r, pipe_w = os.pipe()
    try:
        with contextlib.suppress(OSError):  # the default pipe size works, in more calls
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        done = 0
        stalled = 0.0
        while done < count:
            try:
                moved = os.splice(sock_fd, pipe_w, min(count - done, _PIPE_SIZE))
            except BlockingIOError:
                stalled = _wait(poller, stalled)
                continue
            if moved == 0:
                break  # the client closed the connection
            stalled = 0.0
            while moved > 0:
                written = os.splice(pipe_r, file_fd, moved, offset_dst=offset + done)
                moved -= written
                done += written
        return done
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
