"""Uploads and downloads through the ``local`` backend's signed links, over real uvicorn.

With uvicorn's ``httptools`` protocol (what ``runyard server`` runs) whole files go out with
``sendfile(2)`` and large bodies come in with ``splice(2)``; with ``h11`` both stream through
Python. Both must give the same answers: the exact bytes, ranges, ``HEAD`` with the headers
only, refusals for bad links, clients that stop half-way, and connections that stay usable
(or, after a spliced upload, close cleanly).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from runyard.app import create_app
from runyard.config import Settings
from runyard.objects import PartSpec, UploadedPart, zerocopy
from runyard.objects.local import OBJECTS_PATH, LocalObjectStore
from runyard.objects.zerocopy import ZeroCopyMiddleware
from tests.integration.uploads import objects_app, serve

TTL = 600
MIB = 1024 * 1024


@dataclass
class Server:
    store: LocalObjectStore
    http: httpx.AsyncClient
    impl: str
    offset: list[float]
    sendfiles: list[int]
    splices: list[int]

    async def stored(self, key: str, data: bytes) -> None:
        link = await self.store.presign_put(key, size=len(data), content_type="image/png", ttl=TTL)
        response = await self.http.put(link.url, content=data, headers=link.headers)
        assert response.status_code == 200, response.text


@pytest.fixture(params=["httptools", "h11"])
async def server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Server]:
    impl: str = request.param
    base = {"url": ""}
    offset = [0.0]
    store = LocalObjectStore(
        tmp_path / "objects",
        "secret-" * 8,
        lambda: base["url"],
        lambda: datetime.now(UTC) + timedelta(seconds=offset[0]),
    )
    sendfiles: list[int] = []
    real = zerocopy._sendfile_all

    def counted(sock_fd: int, file_fd: int, count: int) -> None:
        sendfiles.append(count)
        real(sock_fd, file_fd, count)

    monkeypatch.setattr(zerocopy, "_sendfile_all", counted)
    splices: list[int] = []
    real_splice = zerocopy._splice_all

    def counted_splice(sock_fd: int, file_fd: int, offset: int, count: int) -> int:
        splices.append(count)
        return real_splice(sock_fd, file_fd, offset, count)

    monkeypatch.setattr(zerocopy, "_splice_all", counted_splice)
    app = ZeroCopyMiddleware(objects_app(store), OBJECTS_PATH)
    async with serve(app, http=impl) as url, httpx.AsyncClient(timeout=30) as http:
        base["url"] = url
        yield Server(store, http, impl, offset, sendfiles, splices)


async def test_whole_files_and_ranges_arrive_intact(server: Server) -> None:
    # Larger than any socket buffer, so the transfer waits for the client many times.
    data = secrets.token_bytes(9 * MIB + 12345)
    key = "tasks/t/1/big.bin"
    await server.stored(key, data)
    link = await server.store.presign_get(key, ttl=TTL, content_type="image/png", file_name="b.bin")
    for _ in range(3):  # one keep-alive connection: each answer must end where it should
        response = await server.http.get(link.url)
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(data))
        assert response.headers["content-type"] == "image/png"
        assert response.headers["accept-ranges"] == "bytes"
        assert response.content == data
        partial = await server.http.get(link.url, headers={"Range": "bytes=100-199"})
        assert partial.status_code == 206 and partial.content == data[100:200]
    empty_key = "tasks/t/1/empty.txt"
    await server.stored(empty_key, b"")
    empty = await server.http.get((await server.store.presign_get(empty_key, ttl=TTL)).url)
    assert empty.status_code == 200 and empty.content == b""
    # httptools: every whole-file answer went through sendfile(2); h11: none did.
    expected = [len(data)] * 3 if server.impl == "httptools" else []
    assert server.sendfiles == expected


async def test_head_answers_the_headers_of_a_get_link(server: Server) -> None:
    data = b"\x89PNG" + secrets.token_bytes(2000)
    key = "inputs/team/abc/photo.png"
    await server.stored(key, data)
    link = await server.store.presign_get(key, ttl=60, content_type="image/png", file_name="p.png")
    head = await server.http.head(link.url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["content-type"] == "image/png"
    assert head.headers["accept-ranges"] == "bytes"
    assert "p.png" in head.headers["content-disposition"]
    # The connection is still in step: a GET right after gets the whole file.
    assert (await server.http.get(link.url)).content == data

    def refused(response: httpx.Response) -> bool:
        return response.status_code == 403 and response.content == b""

    signature_at = link.url.index("sig=") + 4
    flipped = "0" if link.url[signature_at] != "0" else "1"
    tampered = link.url[:signature_at] + flipped + link.url[signature_at + 1 :]
    assert refused(await server.http.head(tampered))
    upload = await server.store.presign_put(key, size=4, content_type="image/png", ttl=60)
    assert refused(await server.http.head(upload.url))  # a PUT link is not a GET link
    missing = await server.store.presign_get("inputs/team/abc/none.png", ttl=60)
    assert (await server.http.head(missing.url)).status_code == 404
    server.offset[0] = 61
    assert refused(await server.http.head(link.url))


async def test_a_client_leaving_mid_download_leaves_the_server_serving(server: Server) -> None:
    data = secrets.token_bytes(32 * MIB)
    key = "tasks/t/1/huge.bin"
    await server.stored(key, data)
    link = await server.store.presign_get(key, ttl=TTL)
    async with (
        httpx.AsyncClient(timeout=30) as leaving,
        leaving.stream("GET", link.url) as response,
    ):
        assert response.status_code == 200
        async for _chunk in response.aiter_bytes(64 * 1024):
            break
    small = b"still here"
    await server.stored("tasks/t/1/small.txt", small)
    again = await server.store.presign_get("tasks/t/1/small.txt", ttl=TTL)
    responses: list[Any] = await asyncio.gather(
        server.http.get(again.url), server.http.get(link.url)
    )
    assert responses[0].content == small
    assert responses[1].content == data


async def test_the_chunked_fallback_sends_the_whole_file(tmp_path: Path) -> None:
    """When the connection has bytes queued already, the file goes out in chunks instead."""
    data = secrets.token_bytes(2 * MIB + 3)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(message)

    await zerocopy._send_chunks(send, str(path), len(data))
    assert b"".join(m["body"] for m in messages) == data
    assert [m["more_body"] for m in messages] == [True, True, False]
    with pytest.raises(EOFError):
        await zerocopy._send_chunks(send, str(path), len(data) + 1)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_server_setting_turns_zero_copy_on_and_off(tmp_path: Path, enabled: bool) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.storage.local_zero_copy = enabled
    stack = create_app(settings).build_middleware_stack()
    assert isinstance(stack, ZeroCopyMiddleware) is enabled


async def test_large_uploads_arrive_intact(server: Server) -> None:
    data = secrets.token_bytes(9 * MIB + 4321)
    key = "inputs/team/abc/big.bin"
    link = await server.store.presign_put(key, size=len(data), content_type="image/png", ttl=TTL)
    response = await server.http.put(link.url, content=data, headers=link.headers)
    assert response.status_code == 200, response.text
    path = server.store.path_of(key)
    assert path.read_bytes() == data
    if server.impl == "httptools":
        # Spliced: most of the body bypassed Python and uvicorn's parser, so the connection
        # ends with the answer; the client simply opens another.
        assert len(server.splices) == 1 and 0 < server.splices[0] <= len(data)
        assert response.headers["connection"] == "close"
    else:
        assert server.splices == []
    again = await server.http.put(link.url, content=data, headers=link.headers)
    assert again.status_code == 412  # the next request on a new connection, as usual

    # A multipart part takes the same path, at its offset.
    part = 5 * MIB
    whole = secrets.token_bytes(part + 1000)
    target = "inputs/team/abc/parts.bin"
    upload_id = await server.store.initiate_multipart(target, content_type="image/png")
    specs = [PartSpec(1, part, 0), PartSpec(2, 1000, part)]
    links = await server.store.presign_parts(target, upload_id, specs, ttl=TTL)
    etags = []
    for spec, part_link in zip(specs, links, strict=True):
        chunk = whole[spec.offset : spec.offset + spec.size]
        put = await server.http.put(part_link.url, content=chunk, headers=part_link.headers)
        assert put.status_code == 200, put.text
        etags.append(UploadedPart(spec.number, put.headers["etag"]))
    await server.store.complete_multipart(target, upload_id, etags)
    assert server.store.path_of(target).read_bytes() == whole

    # Small bodies never splice, and keep the connection.
    small = await server.store.presign_put(
        "inputs/team/abc/s.png", size=5, content_type="image/png", ttl=TTL
    )
    kept = await server.http.put(small.url, content=b"hello", headers=small.headers)
    assert kept.status_code == 200 and kept.headers.get("connection") != "close"


async def _raw_put(server: Server, url: str, headers: dict[str, str]) -> tuple[Any, Any]:
    parsed = httpx.URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    target = parsed.raw_path.decode()
    lines = [f"PUT {target} HTTP/1.1", f"Host: {parsed.host}:{parsed.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def test_expect_100_continue_and_a_client_leaving_half_way(server: Server) -> None:
    data = secrets.token_bytes(6 * MIB)
    key = "inputs/team/abc/expect.bin"
    link = await server.store.presign_put(key, size=len(data), content_type="image/png", ttl=TTL)
    reader, writer = await _raw_put(server, link.url, {**link.headers, "Expect": "100-continue"})
    assert (await reader.readline()).startswith(b"HTTP/1.1 100")
    assert await reader.readline() == b"\r\n"
    writer.write(data)
    await writer.drain()
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    writer.close()
    assert server.store.path_of(key).read_bytes() == data

    # Half a body, then the client goes: nothing is stored, no partial file stays behind.
    key = "inputs/team/abc/half.bin"
    link = await server.store.presign_put(key, size=len(data), content_type="image/png", ttl=TTL)
    reader, writer = await _raw_put(server, link.url, link.headers)
    writer.write(data[: 3 * MIB])
    await writer.drain()
    writer.close()
    for _ in range(200):
        leftovers = list((server.store.tmp_dir).iterdir()) if server.store.tmp_dir.exists() else []
        if not leftovers:
            break
        await asyncio.sleep(0.05)
    assert leftovers == []
    assert not await server.store.exists(key)
    # The server goes on serving.
    await server.stored("inputs/team/abc/after.png", b"fine")
