"""A real server on loopback (uvicorn in this event loop) and a protocol-level test agent.

``LiveServer`` runs the whole app — API, gateway, scheduler — with short timings, on the
test's database, so WebSocket tests use real connections. ``RawAgent`` speaks protocol v1
frame by frame, so tests can do what a misbehaving or unlucky agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from runyard.agent.client import GatewayClient
from runyard.agent.comfyui import ComfyUIRunner
from runyard.app import create_app
from runyard.config import Settings
from runyard.context import ServiceContext, build_context
from runyard.engine.engine import Engine
from runyard.protocol import v1
from runyard.store.db import Database

FAST_SCHEDULER = {
    "heartbeat_interval_seconds": 0.2,
    "lease_ttl_seconds": 2.0,
    "ack_timeout_seconds": 2.0,
    "reaper_interval_seconds": 0.1,
    "sweep_interval_seconds": 0.5,
    "retry_backoff_base_seconds": 0.05,
    "retry_backoff_cap_seconds": 0.2,
    "progress_interval_seconds": 0.0,
}


def fast(settings: Settings, **overrides: float) -> Settings:
    for name, value in {**FAST_SCHEDULER, **overrides}.items():
        setattr(settings.scheduler, name, value)
    return settings


class LiveServer:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.app = create_app(ctx.settings, ctx)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=0,
                log_config=None,
                lifespan="on",
                ws="websockets-sansio",
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/api/v1/agent/ws"

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.engine
        return engine


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """A server with its own connection pool on ``settings``' database, real clock."""
    db = Database(settings.database_url(), settings.database)
    ctx = await build_context(db, settings)
    server = LiveServer(ctx)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await db.dispose()


@dataclass
class RawAgent:
    """A test agent that sends and receives protocol frames one by one."""

    ws: ClientConnection
    welcome: v1.Welcome
    agent_id: str
    inbox: list[Any] = field(default_factory=list)
    #: Attempts reported in the automatic heartbeats (tests add and remove them).
    running: set[tuple[str, int]] = field(default_factory=set)
    beating: bool = True
    _heart: asyncio.Task[None] | None = None

    def start_heartbeats(self) -> None:
        async def beat() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await asyncio.sleep(self.welcome.heartbeat_interval)
                    if self.beating:
                        refs = [v1.AttemptRef(task_id=t, attempt=a) for t, a in self.running]
                        await self.send(v1.Heartbeat(running=refs))

        self._heart = asyncio.create_task(beat())

    async def ack(self, dispatch: v1.Dispatch) -> None:
        self.running.add((dispatch.task_id, dispatch.attempt))
        await self.send(v1.Ack(task_id=dispatch.task_id, attempt=dispatch.attempt))

    async def complete(self, dispatch: v1.Dispatch, **output: Any) -> None:
        self.running.discard((dispatch.task_id, dispatch.attempt))
        await self.send(
            v1.Complete(task_id=dispatch.task_id, attempt=dispatch.attempt, output=output)
        )

    @classmethod
    async def connect(
        cls, server: LiveServer, key: str, agent_id: str = "agent-1", **hello: Any
    ) -> RawAgent:
        ws = await connect(server.ws_url, additional_headers={"Authorization": f"Bearer {key}"})
        frame = v1.Hello(agent_id=agent_id, **hello)
        await ws.send(frame.model_dump_json())
        welcome = v1.parse_gateway_frame(await asyncio.wait_for(ws.recv(), 5))
        assert isinstance(welcome, v1.Welcome), welcome
        agent = cls(ws, welcome, agent_id)
        agent.start_heartbeats()
        return agent

    async def send(self, frame: v1.Frame) -> None:
        await self.ws.send(frame.model_dump_json())

    async def recv(self, kind: type[Any] = object, timeout: float = 5.0) -> Any:
        """The next frame of this kind (earlier frames of other kinds are kept in ``inbox``)."""
        for index, frame in enumerate(self.inbox):
            if isinstance(frame, kind):
                return self.inbox.pop(index)
        async with asyncio.timeout(timeout):
            while True:
                frame = v1.parse_gateway_frame(await self.ws.recv())
                if isinstance(frame, kind):
                    return frame
                self.inbox.append(frame)

    async def heartbeat(self, *running: v1.AttemptRef) -> None:
        await self.send(v1.Heartbeat(running=list(running)))

    async def close(self) -> None:
        if self._heart is not None:
            self._heart.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def closed_with(self, timeout: float = 5.0) -> tuple[int, str]:
        """Wait until the gateway hangs up; returns (code, reason)."""
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        assert self.ws.close_code is not None
        return self.ws.close_code, self.ws.close_reason or ""


@contextlib.asynccontextmanager
async def comfyui_agent_on(
    server: LiveServer,
    agent_key: str,
    comfyui_url: str,
    *,
    agent_id: str,
    health_interval: float,
    health_timeout: float,
    **gateway: Any,
) -> AsyncIterator[tuple[ComfyUIRunner, GatewayClient]]:
    """A real agent (``GatewayClient`` + ``ComfyUIRunner``) in this event loop, connected to
    ``server`` and driving the ComfyUI at ``comfyui_url``, with short timings."""
    runner = ComfyUIRunner(
        comfyui_url,
        client_id=f"runyard-{agent_id}",
        progress_interval=0.0,
        poll_interval=0.05,
        watchdog_interval=0.5,
        health_interval=health_interval,
        health_timeout=health_timeout,
    )
    detected = await runner.detect()
    client = GatewayClient(
        server.url,
        agent_key,
        runner,
        agent_id=agent_id,
        labels=detected.labels(),
        system_stats=detected.system_stats(),
        comfyui_version=detected.comfyui_version,
        backoff_base=0.05,
        backoff_max=0.2,
        **gateway,
    )
    run = asyncio.create_task(client.run())
    watch = asyncio.create_task(runner.watch(client))
    try:
        await asyncio.wait_for(client.wait_connected(), 10)
        yield runner, client
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await client.stop(0)
        await run
        await runner.aclose()


async def refused(server: LiveServer, key: str) -> tuple[int, str]:
    """Connect with ``key`` and return the close code and reason the gateway answers with."""
    ws = await connect(server.ws_url, additional_headers={"Authorization": f"Bearer {key}"})
    with contextlib.suppress(ConnectionClosed):
        await ws.send(v1.Hello(agent_id="x").model_dump_json())
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


def api(server: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url + "/api/v1", timeout=10)


async def wait_for_status(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    task_id: str,
    *statuses: str,
    timeout: float = 10.0,
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            body: dict[str, Any] = (await client.get(f"/r/tasks/{task_id}", headers=headers)).json()
            if body["task_status"] in statuses:
                return body
            await asyncio.sleep(0.02)


def dumps(value: Any) -> str:
    return json.dumps(value)


@dataclass
class LiveTeam:
    """A team on a live server: its owner's session, an sk- key, an ak- key, one workflow."""

    client: httpx.AsyncClient
    team_id: str
    owner_headers: dict[str, str]
    sk_headers: dict[str, str]
    agent_key: str
    workflow_id: str

    async def run(self, slug: str = "text-to-image", **body: Any) -> str:
        body.setdefault("parameters", {"prompt": "a red fox"})
        response = await self.client.post(
            f"/r/workflows/slug/{slug}/run", headers=self.sk_headers, json=body
        )
        assert response.status_code == 202, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/r/tasks/{task_id}", headers=self.sk_headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait(self, task_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        return await wait_for_status(
            self.client, self.sk_headers, task_id, *statuses, timeout=timeout
        )

    async def workflow(self, **fields: Any) -> str:
        from tests.fixtures.graphs import text_to_image_workflow

        response = await self.client.post(
            "/workflows/import", headers=self.owner_headers, json=text_to_image_workflow(**fields)
        )
        assert response.status_code == 200, response.text
        workflow_id: str = response.json()["id"]
        return workflow_id


_team_counter = 0


async def live_team(server: LiveServer, client: httpx.AsyncClient, **workflow: Any) -> LiveTeam:
    global _team_counter
    _team_counter += 1
    email = f"owner{_team_counter}@example.com"
    password = "correct-horse-1"
    assert (
        await client.post(
            "/auth/register", json={"email_address": email, "user_password": password}
        )
    ).status_code == 200
    tokens = (
        await client.post("/auth/login", json={"email_address": email, "user_password": password})
    ).json()
    jwt = {"Authorization": f"Bearer {tokens['access_token']}"}
    team_id = (await client.get("/users/me", headers=jwt)).json()["team_list"][0]["id"]
    owner = {**jwt, "X-Team-ID": team_id}

    async def key(kind: str) -> str:
        response = await client.post(
            "/credentials", headers=owner, json={"kind": kind, "display_name": kind}
        )
        assert response.status_code == 200, response.text
        raw: str = response.json()["raw_key"]
        return raw

    sk = await key("integration")
    ak = await key("agent")
    team = LiveTeam(client, team_id, owner, {"Authorization": f"Bearer {sk}"}, ak, "")
    workflow.setdefault("required_labels", ["gpu"])
    team.workflow_id = await team.workflow(**workflow)
    return team
