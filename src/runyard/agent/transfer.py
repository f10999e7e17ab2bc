"""Moving files through signed links: output uploads and input downloads (httpx).

Bytes never pass through the gateway's WebSocket: the agent asks for links
(``upload_request`` → ``upload_links``) and talks to object storage directly. Files stream in
1 MiB chunks both ways, so memory stays flat whatever their size.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from runyard.protocol import v1

CHUNK = 1024 * 1024


class TransferError(Exception):
    """An upload or download through a signed link failed (the message says why)."""


_SSL_CONTEXT: ssl.SSLContext | None = None


def _timeout() -> httpx.Timeout:
    return httpx.Timeout(60.0, connect=10.0)


def ssl_context() -> ssl.SSLContext:
    """One TLS context for every transfer (as ``verify=True`` builds it, honouring
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``). Loading the CA bundle takes tens of milliseconds:
    built once, a client per transfer costs well under a millisecond."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = httpx.create_ssl_context(trust_env=True)
    return _SSL_CONTEXT


async def warm_up() -> None:
    """Build the TLS context off the event loop, before the first transfer needs it."""
    await asyncio.to_thread(ssl_context)


def _client(*, follow_redirects: bool = False) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=_timeout(), verify=ssl_context(), follow_redirects=follow_redirects
    )


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


async def put(link: v1.UploadLink, source: bytes | Path) -> None:
    """PUT ``source`` to ``link`` with its signed headers; raises :class:`TransferError`."""
    content = source if isinstance(source, bytes) else _file_chunks(source)
    try:
        async with _client() as http:
            response = await http.put(link.url, content=content, headers=link.headers)
    except httpx.HTTPError as exc:
        raise TransferError(f"upload of {link.name!r} failed: {type(exc).__name__}") from exc
    if response.status_code >= 300:
        raise TransferError(
            f"upload of {link.name!r} refused: HTTP {response.status_code} {response.text[:200]}"
        )


async def download(url: str, target: Path | None = None) -> int:
    """GET ``url`` (following redirects), into ``target`` if given; returns the byte count."""
    received = 0
    try:
        async with (
            _client(follow_redirects=True) as http,
            http.stream("GET", url) as response,
        ):
            if response.status_code >= 300:
                raise TransferError(f"download refused: HTTP {response.status_code}")
            handle = await asyncio.to_thread(target.open, "wb") if target else None
            try:
                async for chunk in response.aiter_bytes(CHUNK):
                    received += len(chunk)
                    if handle is not None:
                        await asyncio.to_thread(handle.write, chunk)
            finally:
                if handle is not None:
                    await asyncio.to_thread(handle.close)
    except httpx.HTTPError as exc:
        raise TransferError(f"download failed: {type(exc).__name__}") from exc
    return received
