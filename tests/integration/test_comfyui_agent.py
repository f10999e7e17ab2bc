"""A live server, a real ``GatewayClient`` + ``ComfyUIRunner`` and ``FakeComfyUI`` on loopback:
tasks run end to end through ComfyUI's real protocol (both databases)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from runyard.agent.client import GatewayClient
from runyard.agent.comfyui import ComfyUIRunner, attempt_prompt_id
from runyard.agent.comfyui.main import comfyui_agent
from runyard.agent.config import AgentSettings
from runyard.config import Settings
from runyard.store.work import WorkRepos
from tests.fakes.comfyui import FakeComfyUI
from tests.integration.live import (
    LiveServer,
    LiveTeam,
    api,
    comfyui_agent_on,
    fast,
    live_server,
    live_team,
)


@dataclass
class Rig:
    server: LiveServer
    team: LiveTeam
    comfy: FakeComfyUI
    runner: ComfyUIRunner
    client: GatewayClient

    async def events(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        async with self.server.ctx.db.read() as session:
            stored = await WorkRepos(session).events(task_id)
        return [(e.event_type, e.payload) for e in stored]

    async def result(self, task_id: str) -> dict[str, Any]:
        response = await self.team.client.get(
            f"/r/tasks/{task_id}/result", headers=self.team.sk_headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_step(self, task_id: str, step: int = 1) -> None:
        async with asyncio.timeout(10):
            while True:
                if any(
                    kind == "progress" and (data.get("step_current") or 0) >= step
                    for kind, data in await self.events(task_id)
                ):
                    return
                await asyncio.sleep(0.02)


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    async with live_server(fast(settings)) as server:
        # Local object storage links point at this server, whose port is known only now.
        server.ctx.settings.server.public_url = server.url
        async with api(server) as client, FakeComfyUI(step_delay=0.03, steps_override=6) as comfy:
            team = await live_team(server, client, required_labels=["gpu", "comfyui"])
            async with comfyui_agent_on(
                server,
                team.agent_key,
                comfy.url,
                agent_id="agent-1",
                health_interval=0.2,
                health_timeout=0.5,
                capacity=3,
            ) as (runner, gateway):
                yield Rig(server, team, comfy, runner, gateway)


async def test_text_to_image_completes_with_step_progress_and_outputs(rig: Rig) -> None:
    task_id = await rig.team.run(parameters={"prompt": "a red fox", "steps": 6})
    await rig.team.wait(task_id, "completed")

    events = await rig.events(task_id)
    steps = [
        d.get("step_current") for k, d in events if k == "progress" and d.get("current_node") == "3"
    ]
    assert [s for s in steps if s] == [1, 2, 3, 4, 5, 6]
    progress = [d["progress"] for k, d in events if k == "progress" and d.get("progress")]
    assert progress == sorted(progress) and progress[-1] == 1.0
    result = await rig.result(task_id)
    (out,) = result["task_output"]["outputs"]
    assert (out["node_id"], out["kind"], out["content_type"]) == ("9", "images", "image/png")
    assert result["task_output"]["prompt_id"] == attempt_prompt_id(task_id, 1)
    async with httpx.AsyncClient() as http:
        downloaded = (await http.get(result["download_url"])).content
    assert downloaded == (rig.comfy.output_dir / out["file_name"]).read_bytes()


async def test_cancel_interrupts_exactly_that_prompt(rig: Rig) -> None:
    rig.comfy.steps_override = 200
    task_id = await rig.team.run()
    await rig.wait_step(task_id)
    prompt_id = attempt_prompt_id(task_id, 1)
    response = await rig.team.client.post(f"/r/tasks/{task_id}/cancel", headers=rig.team.sk_headers)
    assert response.status_code == 200, response.text
    await rig.team.wait(task_id, "cancelled")
    entry = await rig.comfy.wait_history(prompt_id)
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert rig.comfy.running_prompt_id is None


async def test_node_error_fails_without_retry(rig: Rig) -> None:
    rig.comfy.fail_node("VAEDecode", "tensor shapes do not match")
    task_id = await rig.team.run()
    body = await rig.team.wait(task_id, "failed")
    assert body["retry_count"] == 0
    assert "node 8 (VAEDecode)" in body["task_error"]
    assert "tensor shapes do not match" in body["task_error"]


async def test_comfyui_restart_mid_run_is_retried(rig: Rig) -> None:
    rig.comfy.steps_override = 30
    task_id = await rig.team.run()
    await rig.wait_step(task_id)
    await rig.comfy.restart(down_for=0.2)
    body = await rig.team.wait(task_id, "completed", timeout=20)
    assert body["retry_count"] == 1
    assert rig.comfy.history == {} or attempt_prompt_id(task_id, 2) not in rig.comfy.history


async def test_socket_drop_mid_run_still_completes_through_history(rig: Rig) -> None:
    rig.comfy.drop_ws_at_step = 2
    task_id = await rig.team.run()
    body = await rig.team.wait(task_id, "completed")
    assert body["retry_count"] == 0
    # The outcome, not how many polls a timing produced (under load one poll may be all).
    assert rig.comfy.count("GET", "/history/{prompt_id}") >= 1
    # The task may finish through /history before the socket is back (reconnects back off):
    # the runner must still open it again.
    async with asyncio.timeout(10):
        while rig.runner.socket.connections < 2:
            await asyncio.sleep(0.05)
    assert len((await rig.result(task_id))["task_output"]["outputs"]) == 1


async def test_capacity_three_queues_in_comfyui_and_cancel_spares_the_others(rig: Rig) -> None:
    rig.comfy.steps_override = 25
    task_ids = [
        await rig.team.run(parameters={"prompt": f"a fox number {i}", "steps": 6}) for i in range(3)
    ]
    prompt_ids = [attempt_prompt_id(t, 1) for t in task_ids]
    async with asyncio.timeout(10):  # all three handed to ComfyUI at once: one runs, two wait
        while rig.comfy.running_prompt_id is None or len(rig.comfy.pending_prompt_ids) < 2:
            await asyncio.sleep(0.02)
    queued = [rig.comfy.running_prompt_id, *rig.comfy.pending_prompt_ids]
    assert sorted(queued) == sorted(prompt_ids)
    victim = task_ids[prompt_ids.index(rig.comfy.pending_prompt_ids[0])]
    response = await rig.team.client.post(f"/r/tasks/{victim}/cancel", headers=rig.team.sk_headers)
    assert response.status_code == 200, response.text
    await rig.team.wait(victim, "cancelled")

    downloads = []
    for task_id in task_ids:
        if task_id == victim:
            continue
        body = await rig.team.wait(task_id, "completed", timeout=20)
        assert body["retry_count"] == 0
        result = await rig.result(task_id)
        assert result["task_output"]["prompt_id"] == attempt_prompt_id(task_id, 1)
        (out,) = result["task_output"]["outputs"]
        async with httpx.AsyncClient() as http:
            downloads.append((await http.get(result["download_url"])).content)
        assert downloads[-1] == (rig.comfy.output_dir / out["file_name"]).read_bytes()
        steps = {d.get("step_total") for k, d in await rig.events(task_id) if k == "progress"}
        assert steps - {None} == {25}
    assert downloads[0] != downloads[1]
    assert attempt_prompt_id(victim, 1) not in rig.comfy.history  # removed before it ran


async def test_an_agent_started_before_comfyui_announces_what_it_detects_once_it_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``runyard agent``'s wiring: labels and version follow ComfyUI once it answers."""
    monkeypatch.setattr("runyard.agent.comfyui.main.nvidia_smi_present", lambda: False)
    async with live_server(fast(settings)) as server:
        server.ctx.settings.server.public_url = server.url
        async with api(server) as client, FakeComfyUI(step_delay=0.01, steps_override=2) as comfy:
            team = await live_team(server, client, required_labels=["gpu", "comfyui"])
            await comfy.stop()  # not started yet; its port is known

            async def agent_where(condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
                async with asyncio.timeout(10):
                    while True:
                        listed = await client.get("/r/agents", headers=team.sk_headers)
                        for agent in listed.json()["agent_list"]:
                            if agent["agent_id"] == "late" and condition(agent):
                                return agent
                        await asyncio.sleep(0.02)

            agent_settings = AgentSettings(
                gateway=server.url,
                agent_id="late",
                labels=["special"],
                comfyui_url=comfy.url,
                health_interval_seconds=0.1,
            )
            async with comfyui_agent(agent_settings, team.agent_key) as gateway:
                run = asyncio.create_task(gateway.run())
                try:
                    down = await agent_where(lambda a: a["agent_status"] == "unhealthy")
                    # No GPU seen yet (no nvidia-smi, no ComfyUI): a gpu task must wait.
                    assert sorted(down["agent_labels"]) == ["comfyui", "special"]
                    assert down["comfyui_version"] is None
                    task_id = await team.run()
                    assert (await team.task(task_id))["task_status"] in ("pending", "waiting")

                    await comfy.start()
                    up = await agent_where(lambda a: a["agent_status"] == "idle")
                    assert sorted(up["agent_labels"]) == ["comfyui", "gpu", "special"]
                    assert up["comfyui_version"] == up["tool_version"] == comfy.comfyui_version
                    body = await team.wait(task_id, "completed")
                    assert body["agent_id"] == "late" and body["retry_count"] == 0
                    # Unchanged detections (a probe every 0.1 s) cause no further reconnect.
                    connects = comfy.count("GET", "/system_stats")
                    async with asyncio.timeout(5):
                        while comfy.count("GET", "/system_stats") < connects + 3:
                            await asyncio.sleep(0.05)
                    assert (await agent_where(lambda a: True))["connected_at"] == up["connected_at"]
                finally:
                    await gateway.stop(0)
                    await run
