"""The agent gateway and the scheduler over real WebSocket connections, on both databases."""

from __future__ import annotations

import asyncio

import pytest

from runyard.protocol import v1
from tests.integration.live import LiveServer, RawAgent, api, live_team, refused


async def test_task_runs_on_an_agent_from_dispatch_to_completion(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent = await RawAgent.connect(
            server,
            team.agent_key,
            "gpu-node-01",
            labels=["gpu", "comfyui"],
            capacity=2,
            agent_version="0.1.0",
            system_stats=v1.SystemStats(
                gpu_devices=[v1.GpuDevice(device_name="NVIDIA GeForce RTX 4090", vram_total=24)]
            ),
        )
        assert agent.welcome.gateway_id == server.engine.gateway_id
        assert agent.welcome.heartbeat_interval == 0.2

        listed = (await client.get("/r/agents", headers=team.sk_headers)).json()
        assert [a["agent_id"] for a in listed["agent_list"]] == ["gpu-node-01"]
        assert listed["agent_list"][0]["agent_status"] == "idle"

        task_id = await team.run(parameters={"prompt": "a lighthouse", "steps": 7})
        dispatch = await agent.recv(v1.Dispatch)
        assert (dispatch.task_id, dispatch.attempt) == (task_id, 1)
        assert dispatch.workflow["6"]["inputs"]["text"] == "a lighthouse"
        assert dispatch.workflow["3"]["inputs"]["steps"] == 7
        assert dispatch.timeout == 300
        queued = await team.task(task_id)
        assert queued["task_status"] == "queued"
        assert queued["agent_id"] == "gpu-node-01"

        await agent.ack(dispatch)
        running = await team.wait(task_id, "running")
        assert running["started_at"] is not None
        assert running["gpu_type"] == "NVIDIA GeForce RTX 4090"
        assert running["gateway_id"] == server.engine.gateway_id
        assert running["agent_labels"] == ["comfyui", "gpu"]
        busy = (await client.get("/agents/gpu-node-01", headers=team.owner_headers)).json()
        assert busy["agent_status"] == "busy"
        assert busy["running_tasks"] == [task_id]
        assert busy["current_task_id"] == task_id
        assert busy["running_count"] == 1

        await agent.complete(dispatch, storage_key="tasks/x/out.png")
        done = await team.wait(task_id, "completed")
        assert done["completed_at"] is not None
        assert done["retry_count"] == 0
        result = (await client.get(f"/r/tasks/{task_id}/result", headers=team.sk_headers)).json()
        assert result["task_output"] == {"storage_key": "tasks/x/out.png"}
        idle = (await client.get("/agents/gpu-node-01", headers=team.owner_headers)).json()
        assert idle["tasks_completed"] == 1
        assert idle["agent_status"] == "idle"

        await agent.close()
        async with asyncio.timeout(5):
            while (await client.get("/r/agents", headers=team.sk_headers)).json()["agent_list"]:
                await asyncio.sleep(0.02)


async def test_gateway_refuses_bad_keys_with_a_reason(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        code, reason = await refused(server, "ak-not-a-real-key")
        assert (code, reason) == (v1.CLOSE_UNAUTHORIZED, "invalid agent key")
        code, reason = await refused(server, team.sk_headers["Authorization"].split()[1])
        assert code == v1.CLOSE_FORBIDDEN
        assert "agent keys" in reason

        credentials = (
            await client.get("/credentials?kind=agent", headers=team.owner_headers)
        ).json()["credentials"]
        agent = await RawAgent.connect(server, team.agent_key)
        await client.delete(f"/credentials/{credentials[0]['id']}", headers=team.owner_headers)
        # A connected agent whose key is revoked is disconnected within a lease period.
        code, reason = await agent.closed_with(timeout=5)
        assert (code, reason) == (v1.CLOSE_UNAUTHORIZED, "agent key revoked")
        assert await refused(server, team.agent_key) == (v1.CLOSE_UNAUTHORIZED, "agent key revoked")


async def test_only_agents_with_every_required_label_of_the_team_get_the_task(
    server: LiveServer,
) -> None:
    async with api(server) as client:
        team = await live_team(server, client, required_labels=["gpu", "sdxl"])
        other = await live_team(server, client, required_labels=[])
        stranger = await RawAgent.connect(
            server, other.agent_key, "other-team", labels=["gpu", "sdxl"]
        )
        partial = await RawAgent.connect(server, team.agent_key, "partial", labels=["gpu"])
        task_id = await team.run()
        waiting = await team.wait(task_id, "waiting")
        assert waiting["agent_id"] is None
        for agent in (stranger, partial):
            with pytest.raises(TimeoutError):
                await agent.recv(v1.Dispatch, timeout=0.5)

        full = await RawAgent.connect(server, team.agent_key, "full", labels=["gpu", "sdxl", "x"])
        dispatch = await full.recv(v1.Dispatch)
        assert dispatch.task_id == task_id
        assert (await team.task(task_id))["agent_id"] == "full"


async def test_priority_then_age_decides_the_order(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        low = await team.run()
        high = await team.run(priority=10)
        also_low = await team.run()
        for task_id in (low, high, also_low):
            await team.wait(task_id, "waiting")
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"], capacity=1)
        order = []
        for _ in range(3):
            dispatch = await agent.recv(v1.Dispatch)
            order.append(dispatch.task_id)
            await agent.ack(dispatch)
            await agent.complete(dispatch)
        assert order == [high, low, also_low]
