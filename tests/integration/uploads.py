"""Helpers for tests that upload inputs through the API and signed links."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from runyard.api.errors import install_error_handlers
from runyard.context import ServiceContext
from runyard.domain.tasks import TaskStatus
from runyard.engine.outputs import Transfers
from runyard.objects.http import router as objects_router
from runyard.objects.local import LocalObjectStore
from runyard.protocol import v1
from runyard.store.engine_store import SqlEngineStore
from runyard.store.files import FileRepos
from runyard.store.work import WorkRepos

API = "/api/v1"


async def presign(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    name: str = "photo.png",
    size: int = 5,
    content_type: str = "image/png",
    *,
    api: str = API,
) -> dict[str, Any]:
    response = await client.post(
        f"{api}/r/files/presign",
        headers=headers,
        json={"file_name": name, "file_size": size, "content_type": content_type},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def upload_input(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    data: bytes = b"hello",
    name: str = "photo.png",
    content_type: str = "image/png",
    *,
    api: str = API,
) -> str:
    """Presign, PUT the bytes with the signed headers; returns the ``file_key``."""
    body = await presign(client, headers, name, len(data), content_type, api=api)
    put = await client.put(body["upload_url"], content=data, headers=body["upload_headers"])
    assert put.status_code == 200, put.text
    file_key: str = body["file_key"]
    return file_key


def image_workflow(slug: str = "img2img", **extra: Any) -> dict[str, Any]:
    """Text-to-image plus a ``file`` parameter ``init_image`` (LoadImage.image)."""
    import copy

    from tests.fixtures.graphs import (
        TEXT_TO_IMAGE_PARAMETERS,
        text_to_image,
        text_to_image_workflow,
    )

    graph = text_to_image()
    graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    params = copy.deepcopy(TEXT_TO_IMAGE_PARAMETERS)
    params.append({"key": "init_image", "type": "file", "node_id": "11", "field": "image"})
    return text_to_image_workflow(slug, workflow_json=graph, parameters=params, **extra)


# -- what the gateway and an agent do with outputs (for tests without a live agent) ----------


def transfers(ctx: ServiceContext) -> Transfers:
    """The engine's file handling for attempts, on ``ctx``'s database and object store."""
    link_ttl = ctx.settings.storage.link_ttl_seconds
    return Transfers(SqlEngineStore(ctx.db), ctx.objects, link_ttl, ctx.now)


async def move(ctx: ServiceContext, task_id: str, status: TaskStatus, **fields: Any) -> None:
    """Change a task's state as the scheduler would (through the transition table)."""
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        task = await repos.task_for_update(task_id)
        assert task is not None
        await repos.change_status(task, status, ctx.now(), **fields)


async def attempt_uploads(
    ctx: ServiceContext, client: httpx.AsyncClient, task_id: str, attempt: int, **outputs: bytes
) -> list[dict[str, Any]]:
    """What an agent does: ask for links (as the gateway answers), PUT each output."""
    request = v1.UploadRequest(
        task_id=task_id,
        attempt=attempt,
        files=[
            v1.UploadFile(name=name, content_type="image/png", size=len(data))
            for name, data in outputs.items()
        ],
    )
    reply = await transfers(ctx).upload_links(request)
    assert reply.error is None, reply.error
    entries = []
    for link, data in zip(reply.links, outputs.values(), strict=True):
        assert link.key == f"tasks/{task_id}/{attempt}/{link.name}"
        put = await client.put(link.url, content=data, headers=link.headers)
        assert put.status_code == 200, put.text
        entries.append(
            {"node_id": "9", "kind": "images", "file_name": link.name, "storage_key": link.key}
        )
    return entries


async def complete(
    ctx: ServiceContext, task_id: str, attempt: int, manifest: dict[str, Any]
) -> None:
    """What the scheduler does with a ``complete`` from the task's current attempt."""
    frame = v1.Complete(task_id=task_id, attempt=attempt, output=manifest)
    prepared = await transfers(ctx).prepare(frame)
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        task = await repos.task_for_update(task_id)
        assert task is not None and task.attempt == attempt
        await repos.change_status(
            task, TaskStatus.COMPLETED, ctx.now(), task_output=prepared.task_output
        )
        await FileRepos(session).attach(task_id, attempt, prepared.attached)


async def start_attempt(ctx: ServiceContext, task_id: str, attempt: int) -> None:
    await move(ctx, task_id, TaskStatus.QUEUED, attempt=attempt, agent_id="gpu-1")
    await move(ctx, task_id, TaskStatus.RUNNING, started_at=ctx.now())


# -- the local backend's link routes on a real server ------------------------------------------


def objects_app(store: LocalObjectStore) -> FastAPI:
    """Just the signed-link routes of ``store``, as the server mounts them."""
    app = FastAPI()
    app.state.ctx = SimpleNamespace(objects=store)
    install_error_handlers(app)
    app.include_router(objects_router, prefix=API)
    return app


@asynccontextmanager
async def serve(app: ASGIApp, **config: Any) -> AsyncIterator[str]:
    """``app`` on uvicorn on a free loopback port; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off", **config)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
