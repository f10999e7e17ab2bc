"""Inputs and outputs end to end on a live server: real HTTP, real WebSocket, both databases.

The simulated agent downloads the task's input through the dispatch's signed link and uploads
its output through a link it asks the gateway for; the result and the redirect then serve
those bytes. A protocol-level agent checks the fencing of upload links.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runyard.agent import GatewayClient, SimulatedRunner
from runyard.agent.simulate import simulated_output
from runyard.config import Settings
from runyard.protocol import v1
from tests.integration.live import LiveServer, LiveTeam, RawAgent, api, fast, live_server, live_team
from tests.integration.uploads import image_workflow, upload_input


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    async with live_server(fast(settings)) as live:
        # Links of the local backend point at this server.
        live.ctx.settings.server.public_url = live.url
        yield live


async def image_team(server: LiveServer, client: httpx.AsyncClient) -> tuple[LiveTeam, str]:
    team = await live_team(server, client)
    response = await client.post(
        "/workflows/import",
        headers=team.owner_headers,
        json=image_workflow(required_labels=["gpu"], max_retries=3),
    )
    assert response.status_code == 200, response.text
    photo = await upload_input(client, team.sk_headers, b"\x89PNG fake", "in.png", api="")
    return team, photo


async def run_with(team: LiveTeam, photo: str) -> str:
    return await team.run("img2img", parameters={"prompt": "a fox", "init_image": photo})


async def test_simulated_agent_downloads_the_input_and_uploads_its_output(
    server: LiveServer,
) -> None:
    async with api(server) as client:
        team, photo = await image_team(server, client)
        task_id = await run_with(team, photo)
        agent = GatewayClient(
            server.url, team.agent_key, SimulatedRunner(), agent_id="sim-1", labels=["gpu"]
        )
        running = asyncio.create_task(agent.run())
        try:
            done = await team.wait(task_id, "completed", "failed", timeout=15)
            assert done["task_status"] == "completed", done
        finally:
            await agent.stop(0)
            with contextlib.suppress(Exception):
                await running

        result = (await client.get(f"/r/tasks/{task_id}/result", headers=team.sk_headers)).json()
        name, data = simulated_output(task_id, 1)
        output = result["task_output"]
        assert output["simulated"] is True
        assert output["storage_key"] == f"tasks/{task_id}/1/{name}"
        assert output["outputs"] == [
            {
                "node_id": "simulated",
                "kind": "text",
                "file_name": name,
                "content_type": "text/plain",
                "size": len(data),
                "storage_key": f"tasks/{task_id}/1/{name}",
            }
        ]
        assert list(result["download_urls"]) == ["simulated.text.0"]
        assert result["download_url"].startswith(server.url + "/api/v1/objects/tasks/")
        async with httpx.AsyncClient() as raw:
            fetched = await raw.get(result["download_url"])
            assert fetched.status_code == 200
            assert fetched.content == data
            assert fetched.headers["content-type"].startswith("text/plain")
            assert name in fetched.headers["content-disposition"]

        redirect = await client.get(f"/r/tasks/{task_id}/outputs/0", headers=team.sk_headers)
        assert redirect.status_code == 302
        followed = await client.get(
            f"/r/tasks/{task_id}/outputs/0", headers=team.sk_headers, follow_redirects=True
        )
        assert followed.content == data

        # The agent fetched its input: it logged its size.
        async with server.ctx.db.read() as session:
            from sqlalchemy import select

            from runyard.store.tables import TaskEvent

            rows = await session.execute(
                select(TaskEvent.payload).where(
                    TaskEvent.task_id == task_id, TaskEvent.event_type == "log"
                )
            )
            lines = [line for payload in rows.scalars() for line in payload["lines"]]
        assert "input init_image: 9 bytes" in lines


async def put_all(links: list[v1.UploadLink], data: bytes) -> None:
    async with httpx.AsyncClient() as raw:
        for link in links:
            response = await raw.put(link.url, content=data, headers=link.headers)
            assert response.status_code == 200, response.text


def manifest(links: list[v1.UploadLink], size: int) -> dict[str, Any]:
    return {
        "outputs": [
            {
                "node_id": "9",
                "kind": "images",
                "file_name": link.name,
                "content_type": "image/png",
                "size": size,
                "storage_key": link.key,
            }
            for link in links
        ]
    }


async def test_only_the_current_attempt_gets_links_and_is_attached(server: LiveServer) -> None:
    async with api(server) as client:
        team, photo = await image_team(server, client)
        task_id = await run_with(team, photo)
        first = await RawAgent.connect(server, team.agent_key, "gpu-a", labels=["gpu"])
        dispatch = await first.recv(v1.Dispatch)
        assert set(dispatch.inputs) == {"init_image"}
        async with httpx.AsyncClient() as raw:
            assert (await raw.get(dispatch.inputs["init_image"])).content == b"\x89PNG fake"
        await first.ack(dispatch)
        png = v1.UploadFile(name="a.png", content_type="image/png", size=3)

        # A bad name: an error and no links; nothing recorded.
        await first.send(
            v1.UploadRequest(
                task_id=task_id,
                attempt=1,
                request_id="bad",
                files=[v1.UploadFile(name="../escape.png", size=1)],
            )
        )
        refused = await first.recv(v1.UploadLinks)
        assert refused.request_id == "bad" and refused.links == [] and refused.error

        await first.send(v1.UploadRequest(task_id=task_id, attempt=1, request_id="r1", files=[png]))
        links1 = (await first.recv(v1.UploadLinks)).links
        assert [link.key for link in links1] == [f"tasks/{task_id}/1/a.png"]
        await put_all(links1, b"one")

        # Attempt 1's agent vanishes; once its lease lapses, attempt 2 goes to another agent.
        await first.close()
        second = await RawAgent.connect(server, team.agent_key, "gpu-b", labels=["gpu"])
        dispatch2 = await second.recv(v1.Dispatch, timeout=10)
        assert dispatch2.attempt == 2
        await second.ack(dispatch2)

        # The stale attempt asks again on a new connection: it is told to stop, gets no links.
        stale = await RawAgent.connect(server, team.agent_key, "gpu-a", labels=["gpu"])
        await stale.send(
            v1.UploadRequest(task_id=task_id, attempt=1, request_id="late", files=[png])
        )
        cancel = await stale.recv(v1.Cancel)
        assert (cancel.task_id, cancel.attempt) == (task_id, 1)
        with pytest.raises(TimeoutError):
            await stale.recv(v1.UploadLinks, timeout=0.3)

        await second.send(
            v1.UploadRequest(task_id=task_id, attempt=2, request_id="r2", files=[png])
        )
        links2 = (await second.recv(v1.UploadLinks)).links
        assert [link.key for link in links2] == [f"tasks/{task_id}/2/a.png"]
        await put_all(links2, b"two")
        # Listing attempt 1's file in attempt 2's manifest does not attach it.
        await second.complete(dispatch2, **manifest(links2 + links1, 3))
        await team.wait(task_id, "completed")
        # The stale attempt's own complete is refused.
        await stale.send(v1.Complete(task_id=task_id, attempt=1, output=manifest(links1, 3)))
        await stale.recv(v1.Cancel)

        result = (await client.get(f"/r/tasks/{task_id}/result", headers=team.sk_headers)).json()
        keys = [o["storage_key"] for o in result["task_output"]["outputs"]]
        assert keys == [f"tasks/{task_id}/2/a.png"]
        assert result["task_output"]["image_count"] == 1
        async with httpx.AsyncClient() as raw:
            assert (await raw.get(result["download_url"])).content == b"two"
        for agent in (second, stale):
            await agent.close()
