"""The ObjectStore contract, run against both backends over real HTTP.

``local``: the store's link routes in a small app served by uvicorn on loopback. ``s3``: moto's
S3 server on loopback with S3's presigned-URL checks in front of it (``s3server.py``), real
boto3 presigned URLs. Every request is a real httpx PUT or GET; the rules each backend must
enforce are the same test.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from runyard.objects import (
    InvalidUpload,
    ObjectExists,
    ObjectStore,
    PartSpec,
    UploadedPart,
)
from runyard.objects.keys import BadName
from runyard.objects.local import LocalObjectStore
from runyard.objects.s3 import S3ObjectStore
from tests.integration.s3server import CheckedMotoServer, make_bucket, s3_settings
from tests.integration.uploads import objects_app, serve

MIB = 1024 * 1024
TTL = 600


class Clock:
    """Real time plus an offset the test moves; both the store and the S3 check read it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float) -> None:
        self.offset += seconds


CLOCK = Clock()


@pytest.fixture(autouse=True)
def _reset_clock() -> Iterator[None]:
    CLOCK.offset = 0.0
    yield
    CLOCK.offset = 0.0


@pytest.fixture(scope="session")
def s3_server() -> Iterator[CheckedMotoServer]:
    server = CheckedMotoServer(CLOCK.timestamp)
    server.start()
    yield server
    server.stop()


@dataclass
class Env:
    store: ObjectStore
    http: httpx.AsyncClient


async def _local(tmp_path: Path) -> AsyncIterator[Env]:
    base = {"url": ""}
    store = LocalObjectStore(tmp_path / "objects", "secret-" * 8, lambda: base["url"], CLOCK.now)
    async with serve(objects_app(store)) as url, httpx.AsyncClient(timeout=10) as http:
        base["url"] = url
        yield Env(store, http)


@pytest.fixture(params=["local", "s3"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    if request.param == "local":
        async for made in _local(tmp_path):
            yield made
        return
    server: CheckedMotoServer = request.getfixturevalue("s3_server")
    store = S3ObjectStore(s3_settings(server, make_bucket(server)), CLOCK.now)
    async with httpx.AsyncClient(timeout=10) as http:
        yield Env(store, http)
    await store.close()


async def put(env: Env, key: str, data: bytes, content_type: str = "image/png") -> httpx.Response:
    link = await env.store.presign_put(key, size=len(data), content_type=content_type, ttl=TTL)
    return await env.http.put(link.url, content=data, headers=link.headers)


async def test_upload_and_download_round_trip(env: Env) -> None:
    key = "inputs/team/abc/a photo+1.png"
    data = secrets.token_bytes(3000)
    link = await env.store.presign_put(key, size=len(data), content_type="image/png", ttl=TTL)
    assert link.method == "PUT"
    assert link.headers == {
        "Content-Length": "3000",
        "Content-Type": "image/png",
        "If-None-Match": "*",
    }
    assert link.expires_at - CLOCK.now() <= timedelta(seconds=TTL)
    assert not await env.store.exists(key)
    response = await env.http.put(link.url, content=data, headers=link.headers)
    assert response.status_code == 200, response.text
    assert response.headers.get("etag")

    info = await env.store.head(key)
    assert info is not None and info.size == 3000
    assert await env.store.exists(key)

    get = await env.store.presign_get(key, ttl=TTL, content_type="image/png", file_name="é.png")
    response = await env.http.get(get.url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "image/png"
    assert "attachment" in response.headers["content-disposition"]
    assert "%C3%A9.png" in response.headers["content-disposition"]

    partial = await env.http.get(get.url, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206
    assert partial.content == data[10:20]
    assert partial.headers["content-range"] == "bytes 10-19/3000"


async def test_an_existing_key_is_never_overwritten(env: Env) -> None:
    key = "tasks/t1/1/out.png"
    link = await env.store.presign_put(key, size=5, content_type="image/png", ttl=TTL)
    assert (await env.http.put(link.url, content=b"first", headers=link.headers)).status_code == 200
    again = await env.http.put(link.url, content=b"other", headers=link.headers)
    assert again.status_code == 412
    fresh = await put(env, key, b"third")
    assert fresh.status_code == 412
    get = await env.store.presign_get(key, ttl=TTL)
    assert (await env.http.get(get.url)).content == b"first"


@pytest.mark.parametrize("dropped", ["Content-Type", "If-None-Match"])
async def test_a_missing_signed_header_is_refused(env: Env, dropped: str) -> None:
    key = f"inputs/team/x/{dropped}.bin"
    link = await env.store.presign_put(key, size=4, content_type="image/png", ttl=TTL)
    headers = {k: v for k, v in link.headers.items() if k != dropped}
    response = await env.http.put(link.url, content=b"data", headers=headers)
    assert response.status_code == 403
    assert not await env.store.exists(key)


async def test_wrong_size_or_type_is_refused(env: Env) -> None:
    key = "inputs/team/x/sized.bin"
    link = await env.store.presign_put(key, size=10, content_type="image/png", ttl=TTL)
    short = await env.http.put(
        link.url, content=b"12345", headers={**link.headers, "Content-Length": "5"}
    )
    assert short.status_code == 403
    other_type = await env.http.put(
        link.url, content=b"0123456789", headers={**link.headers, "Content-Type": "text/html"}
    )
    assert other_type.status_code == 403
    assert not await env.store.exists(key)


async def test_tampered_and_expired_links_are_refused(env: Env) -> None:
    key = "inputs/team/x/t.bin"
    link = await env.store.presign_put(key, size=4, content_type="image/png", ttl=60)
    signature_param = "sig=" if env.store.name == "local" else "X-Amz-Signature="
    head, tail = link.url.split(signature_param)
    flipped = ("0" if tail[0] != "0" else "1") + tail[1:]
    tampered = await env.http.put(
        head + signature_param + flipped, content=b"data", headers=link.headers
    )
    assert tampered.status_code == 403
    other_key = link.url.replace("/t.bin", "/u.bin")
    assert (await env.http.put(other_key, content=b"data", headers=link.headers)).status_code == 403

    CLOCK.advance(61)
    expired = await env.http.put(link.url, content=b"data", headers=link.headers)
    assert expired.status_code == 403
    assert not await env.store.exists(key)

    CLOCK.offset = 0
    assert (await put(env, key, b"data")).status_code == 200
    get = await env.store.presign_get(key, ttl=60)
    assert (await env.http.get(get.url)).status_code == 200
    CLOCK.advance(61)
    assert (await env.http.get(get.url)).status_code == 403


async def test_list_and_delete(env: Env) -> None:
    for key in ("tasks/t1/1/b.png", "tasks/t1/1/a.png", "tasks/t1/2/a.png", "tasks/t10/1/x"):
        assert (await put(env, key, b"xyz")).status_code == 200
    found = await env.store.list_prefix("tasks/t1/1/")
    assert [o.key for o in found] == ["tasks/t1/1/a.png", "tasks/t1/1/b.png"]
    assert all(o.size == 3 for o in found)
    assert [o.key for o in await env.store.list_prefix("tasks/t1/")] == [
        "tasks/t1/1/a.png",
        "tasks/t1/1/b.png",
        "tasks/t1/2/a.png",
    ]
    await env.store.delete("tasks/t1/1/a.png")
    await env.store.delete("tasks/t1/1/a.png")  # twice is fine
    await env.store.delete("tasks/none/1/never")
    assert [o.key for o in await env.store.list_prefix("tasks/t1/1/")] == ["tasks/t1/1/b.png"]
    assert await env.store.list_prefix("nothing/") == []


async def test_keys_that_could_escape_are_refused(env: Env) -> None:
    for key in ("../x", "inputs/../../x", "/abs", "a\\b", "a//b", ".tmp/x", "a/./b"):
        with pytest.raises(BadName):
            await env.store.presign_put(key, size=1, content_type="image/png", ttl=TTL)


async def test_multipart_upload(env: Env) -> None:
    key = "inputs/team/big/archive.zip"
    part = 5 * MIB  # S3's smallest part but the last
    data = secrets.token_bytes(part + 1000)
    upload_id = await env.store.initiate_multipart(key, content_type="application/zip")
    specs = [PartSpec(1, part, 0), PartSpec(2, 1000, part)]
    links = await env.store.presign_parts(key, upload_id, specs, ttl=TTL)
    assert [link.headers for link in links] == [
        {"Content-Length": str(part)},
        {"Content-Length": "1000"},
    ]
    # A part of the wrong size is refused.
    wrong = await env.http.put(links[1].url, content=b"x" * 999, headers={"Content-Length": "999"})
    assert wrong.status_code == 403
    etags = []
    for spec, link in zip(specs, links, strict=True):
        chunk = data[spec.offset : spec.offset + spec.size]
        response = await env.http.put(link.url, content=chunk, headers=link.headers)
        assert response.status_code == 200, response.text
        etags.append(response.headers["etag"])
    parts = [UploadedPart(n, etag) for n, etag in enumerate(etags, start=1)]
    with pytest.raises(InvalidUpload):  # a part that was never uploaded
        await env.store.complete_multipart(key, upload_id, [*parts, UploadedPart(3, etags[0])])
    with pytest.raises(InvalidUpload):  # a wrong ETag
        await env.store.complete_multipart(key, upload_id, [parts[0], UploadedPart(2, '"0"')])
    await env.store.complete_multipart(key, upload_id, parts)
    info = await env.store.head(key)
    assert info is not None and info.size == len(data)
    get = await env.store.presign_get(key, ttl=TTL)
    assert (await env.http.get(get.url)).content == data

    # A second multipart upload to the same key cannot overwrite it.
    again = await env.store.initiate_multipart(key, content_type="application/zip")
    (only,) = await env.store.presign_parts(key, again, [PartSpec(1, 3, 0)], ttl=TTL)
    response = await env.http.put(only.url, content=b"abc", headers=only.headers)
    assert response.status_code == 200
    with pytest.raises(ObjectExists):
        await env.store.complete_multipart(key, again, [UploadedPart(1, response.headers["etag"])])
    await env.store.abort_multipart(key, again)


async def test_aborted_multipart_upload_leaves_nothing(env: Env) -> None:
    key = "inputs/team/big/dropped.bin"
    upload_id = await env.store.initiate_multipart(key, content_type="application/octet-stream")
    (link,) = await env.store.presign_parts(key, upload_id, [PartSpec(1, 3, 0)], ttl=TTL)
    assert (await env.http.put(link.url, content=b"abc", headers=link.headers)).status_code == 200
    await env.store.abort_multipart(key, upload_id)
    await env.store.abort_multipart(key, upload_id)  # twice is fine
    assert not await env.store.exists(key)
    assert await env.store.list_prefix("inputs/team/big/") == []
