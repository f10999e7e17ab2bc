"""Deleting a team deletes what it stored: inputs, unfinished multipart uploads, every task's
files — on local storage and on S3 (moto's server with S3's presign checks), on both databases.

The deletion only records purges (in its own transaction); the retention sweeper deletes the
objects. A sweep that dies part-way is simply run again. A link signed before the deletion may
still upload afterwards, so each purge is swept once more after such links have expired.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from runyard.config import Settings
from runyard.context import ServiceContext, build_context
from runyard.domain.tasks import TaskStatus
from runyard.objects import ObjectStore
from runyard.services.files import objects
from runyard.services.retention import PURGE_GRACE, sweep
from runyard.store.db import Database
from runyard.store.tables import StoragePurge
from tests.conftest import FakeClock
from tests.integration.conftest import Account, Accounts
from tests.integration.s3server import CheckedMotoServer, make_bucket, s3_settings
from tests.integration.uploads import (
    attempt_uploads,
    complete,
    image_workflow,
    move,
    presign,
    start_attempt,
)

API = "/api/v1"


@pytest.fixture(scope="module")
def moto() -> Iterator[CheckedMotoServer]:
    server = CheckedMotoServer(time.time)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, settings: Settings) -> str:
    kind: str = request.param
    if kind == "s3":
        server: CheckedMotoServer = request.getfixturevalue("moto")
        settings.storage = s3_settings(server, make_bucket(server))
    settings.storage.multipart_part_mb = 5
    return kind


@pytest.fixture
async def ctx(settings: Settings, clock: FakeClock, storage: str) -> AsyncIterator[ServiceContext]:
    db = Database(settings.database_url(), settings.database)
    try:
        context = await build_context(db, settings, now=clock.now)
        yield context
        if context.objects is not None:
            await context.objects.close()
    finally:
        await db.dispose()


@pytest.fixture
async def links() -> AsyncIterator[httpx.AsyncClient]:
    """For signed links that point at S3 (the app's client only reaches the app)."""
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


class Uploader:
    def __init__(self, app: httpx.AsyncClient, links: httpx.AsyncClient) -> None:
        self.app = app
        self.links = links

    async def put(self, url: str, data: bytes, headers: dict[str, str]) -> httpx.Response:
        client = self.app if url.startswith("http://runyard.test/") else self.links
        return await client.put(url, content=data, headers=headers)

    async def input(self, owner: Account, data: bytes = b"hello") -> str:
        body = await presign(owner.client, owner.headers(), "photo.png", len(data))
        put = await self.put(body["upload_url"], data, body["upload_headers"])
        assert put.status_code == 200, put.text
        key: str = body["file_key"]
        return key


async def keys(store: ObjectStore, prefix: str) -> list[str]:
    return [info.key for info in await store.list_prefix(prefix)]


async def purge_rows(ctx: ServiceContext) -> int:
    async with ctx.db.read() as session:
        query = select(func.count()).select_from(StoragePurge)
        return int((await session.execute(query)).scalar_one())


async def stored_task(
    ctx: ServiceContext, owner: Account, uploader: Uploader, workflow_id: str
) -> tuple[str, str]:
    """A task that ran with an uploaded input and completed with one output; plus an orphan
    output of an earlier attempt. Returns ``(task_id, input key)``."""
    file_key = await uploader.input(owner)
    response = await owner.request(
        "POST",
        f"{API}/r/workflows/{workflow_id}/run",
        json={"parameters": {"prompt": "a fox", "init_image": file_key}},
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    await start_attempt(ctx, task_id, 1)
    await attempt_uploads_any(ctx, uploader, task_id, 1, **{"stale.png": b"old"})
    await move(ctx, task_id, TaskStatus.WAITING)
    await start_attempt(ctx, task_id, 2)
    entries = await attempt_uploads_any(ctx, uploader, task_id, 2, **{"out.png": b"png!"})
    await complete(ctx, task_id, 2, {"outputs": entries})
    return task_id, file_key


async def attempt_uploads_any(
    ctx: ServiceContext, uploader: Uploader, task_id: str, attempt: int, **outputs: bytes
) -> list[dict[str, Any]]:
    if ctx.settings.storage.backend == "local":
        return await attempt_uploads(ctx, uploader.app, task_id, attempt, **outputs)
    return await attempt_uploads(ctx, uploader.links, task_id, attempt, **outputs)


async def test_deleting_a_team_deletes_its_stored_files(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock, links: httpx.AsyncClient
) -> None:
    store = objects(ctx)
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    uploader = Uploader(owner.client, links)
    imported = await owner.request("POST", f"{API}/workflows/import", json=image_workflow())
    workflow_id = imported.json()["id"]
    theirs = await other.request("POST", f"{API}/workflows/import", json=image_workflow())
    task_id, _ = await stored_task(ctx, owner, uploader, workflow_id)
    other_task, other_input = await stored_task(ctx, other, uploader, theirs.json()["id"])
    await uploader.input(owner, b"another input")

    # A multipart upload left half done (one part of two uploaded).
    size = 6 * 1024 * 1024
    started = await owner.request(
        "POST",
        f"{API}/uploads/multipart/initiate",
        json={
            "file_name": "big.bin",
            "content_type": "application/octet-stream",
            "file_size": size,
        },
    )
    assert started.status_code == 200, started.text
    multipart = started.json()
    parts = await owner.request(
        "POST",
        f"{API}/uploads/multipart/parts",
        json={"storage_key": multipart["storage_key"], "upload_id": multipart["upload_id"]},
    )
    first = parts.json()["parts"][0]
    put = await uploader.put(
        first["upload_url"], b"x" * multipart["part_size"], first["upload_headers"]
    )
    assert put.status_code == 200, put.text
    # A link signed before the deletion and used after it.
    late = await presign(owner.client, owner.headers(), "late.png", 4)

    team_inputs = f"inputs/{owner.team_id}/"
    assert len(await keys(store, team_inputs)) == 2
    assert len(await keys(store, f"tasks/{task_id}/")) == 2  # the output and the orphan

    response = await owner.request("DELETE", f"{API}/teams/current")
    assert response.status_code == 204, response.text
    assert await purge_rows(ctx) == 3  # inputs, the multipart upload, the task

    # The first sweep dies after one deletion (a crash, the store going away).
    real_delete = store.delete
    calls = 0

    async def failing_delete(key: str) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("storage went away")
        await real_delete(key)

    store.delete = failing_delete  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await sweep(ctx)
    store.delete = real_delete  # type: ignore[method-assign]
    left = await keys(store, team_inputs) + await keys(store, f"tasks/{task_id}/")
    assert len(left) == 3

    # The next pass finishes the job; the other team's files are untouched.
    report = await sweep(ctx)
    assert report.purged == 3
    assert await keys(store, team_inputs) == []
    assert await keys(store, f"tasks/{task_id}/") == []
    assert await keys(store, f"inputs/{other.team_id}/") == [other_input]
    assert len(await keys(store, f"tasks/{other_task}/")) == 2
    if ctx.settings.storage.backend == "local":
        root = ctx.settings.storage.local_root(ctx.settings.data_dir)
        assert not (root / ".multipart").exists() or not any((root / ".multipart").iterdir())
        assert not (root / "inputs" / str(owner.team_id)).exists()

    # Until the links signed before the deletion expire, the purges stay...
    put = await uploader.put(late["upload_url"], b"late", late["upload_headers"])
    assert put.status_code == 200, put.text
    assert await keys(store, team_inputs) == [late["file_key"]]
    assert (await sweep(ctx)).purged == 0  # swept once already, not settled yet
    assert await purge_rows(ctx) == 3

    # ...then one last sweep catches what landed meanwhile, and the rows go.
    clock.advance(ctx.settings.storage.link_ttl_seconds + PURGE_GRACE.total_seconds() + 1)
    assert (await sweep(ctx)).purged == 1
    assert await keys(store, team_inputs) == []
    assert await purge_rows(ctx) == 0
    assert (await sweep(ctx)).purged == 0
    assert await keys(store, f"inputs/{other.team_id}/") == [other_input]
