"""Scheduler guarantees over real connections: ACK and task timeouts, leases, retries,
fencing of stale attempts, cancel, reconnects, exclusive claims and community fairness."""

from __future__ import annotations

import asyncio
from collections import Counter

from sqlalchemy import select

from runyard.config import Settings
from runyard.protocol import v1
from runyard.store.tables import TaskAttempt, TaskEvent
from tests.integration.live import (
    LiveServer,
    LiveTeam,
    RawAgent,
    api,
    fast,
    live_server,
    live_team,
)


async def attempts_of(server: LiveServer, task_id: str) -> list[TaskAttempt]:
    async with server.ctx.db.read() as session:
        rows = await session.execute(
            select(TaskAttempt).where(TaskAttempt.task_id == task_id).order_by(TaskAttempt.attempt)
        )
        return list(rows.scalars())


async def statuses_of(server: LiveServer, task_id: str) -> list[str]:
    async with server.ctx.db.read() as session:
        rows = await session.execute(
            select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.seq)
        )
        return [e.payload["status"] for e in rows.scalars() if "status" in e.payload]


async def test_unacknowledged_dispatch_goes_back_to_waiting(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"])
        task_id = await team.run()
        first = await agent.recv(v1.Dispatch)
        # No ACK: after the ACK timeout (2 s here) the attempt is abandoned and retried,
        # without counting as a retry, and the agent is told to drop attempt 1.
        cancel = await agent.recv(v1.Cancel, timeout=5)
        assert (cancel.task_id, cancel.attempt) == (task_id, first.attempt)
        second = await agent.recv(v1.Dispatch, timeout=5)
        assert (second.task_id, second.attempt) == (task_id, 2)
        task = await team.task(task_id)
        assert task["retry_count"] == 0
        assert (await attempts_of(server, task_id))[0].outcome == "abandoned"
        assert await statuses_of(server, task_id) == [
            "pending",
            "queued",
            "waiting",
            "queued",
        ]


async def test_task_timeout_aborts_the_attempt_and_fails(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client, task_timeout=1, max_retries=0)
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"])
        task_id = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        assert dispatch.timeout == 1
        await agent.ack(dispatch)
        cancel = await agent.recv(v1.Cancel, timeout=5)
        assert cancel.reason == "timed out"
        failed = await team.wait(task_id, "failed")
        assert failed["task_error"] == "timed out after 1 s"
        # The late completion of the timed-out attempt changes nothing.
        await agent.complete(dispatch)
        await asyncio.sleep(0.3)
        assert (await team.task(task_id))["task_status"] == "failed"


async def test_lost_agent_is_retried_then_fails_after_max_retries(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client, max_retries=1)
        task_id = await team.run()
        for attempt in (1, 2):
            agent = await RawAgent.connect(server, team.agent_key, f"a{attempt}", labels=["gpu"])
            dispatch = await agent.recv(v1.Dispatch)
            assert dispatch.attempt == attempt
            await agent.ack(dispatch)
            await team.wait(task_id, "running")
            await agent.close()  # vanishes; the lease (2 s) runs out
            if attempt == 1:
                retried = await team.wait(task_id, "waiting", "queued")
                assert retried["retry_count"] == 1
        failed = await team.wait(task_id, "failed")
        assert failed["retry_count"] == 1
        assert failed["task_error"] == "agent a2 disconnected (lease expired) (attempt 2)"
        assert [a.outcome for a in await attempts_of(server, task_id)] == ["lost", "lost"]


async def test_failure_reports_retry_unless_not_retryable(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client, max_retries=3)
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"])
        task_id = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        await agent.ack(dispatch)
        await agent.send(v1.Fail(task_id=task_id, attempt=1, error="CUDA out of memory"))
        again = await agent.recv(v1.Dispatch, timeout=5)
        assert again.attempt == 2
        await agent.ack(again)
        await agent.send(
            v1.Fail(
                task_id=task_id,
                attempt=2,
                error="node 4: checkpoint sdxl.safetensors not found",
                retryable=False,
            )
        )
        failed = await team.wait(task_id, "failed")
        assert failed["retry_count"] == 1
        assert failed["task_error"] == "node 4: checkpoint sdxl.safetensors not found (attempt 2)"


async def test_stale_attempt_is_fenced(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client, max_retries=2)
        task_id = await team.run()
        old = await RawAgent.connect(server, team.agent_key, "old", labels=["gpu"])
        first = await old.recv(v1.Dispatch)
        await old.ack(first)
        old.beating = False  # frozen: the gateway hangs up, the lease lapses, the task moves on
        assert (await old.closed_with())[0] == v1.CLOSE_LEASE
        new = await RawAgent.connect(server, team.agent_key, "new", labels=["gpu"])
        second = await new.recv(v1.Dispatch, timeout=5)
        assert second.attempt == 2
        await new.ack(second)

        # The old agent thaws, reconnects and reports its attempt: told to abort it.
        ref = v1.AttemptRef(task_id=task_id, attempt=1)
        old = await RawAgent.connect(server, team.agent_key, "old", labels=["gpu"], running=[ref])
        assert old.welcome.abort == [ref]
        # If it reports anyway, it is refused and told again.
        await old.send(v1.Progress(task_id=task_id, attempt=1, progress=0.9))
        await old.send(v1.Complete(task_id=task_id, attempt=1, output={"from": "old"}))
        cancel = await old.recv(v1.Cancel, timeout=5)
        assert (cancel.attempt, cancel.reason) == (1, "stale attempt")
        await asyncio.sleep(0.2)
        assert (await team.task(task_id))["task_status"] == "running"

        await new.complete(second, **{"from": "new"})
        await team.wait(task_id, "completed")
        result = (await client.get(f"/r/tasks/{task_id}/result", headers=team.sk_headers)).json()
        assert result["task_output"] == {"from": "new"}


async def test_cancel_while_waiting_queued_and_running(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)

        async def cancel(task_id: str) -> None:
            response = await client.post(f"/r/tasks/{task_id}/cancel", headers=team.sk_headers)
            assert response.json() == {"is_success": True}

        waiting = await team.run()
        await team.wait(waiting, "waiting")
        await cancel(waiting)
        assert (await team.task(waiting))["task_status"] == "cancelled"

        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"], capacity=1)
        queued = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        await cancel(queued)
        stop = await agent.recv(v1.Cancel, timeout=1)  # reaches the agent within a second
        assert (stop.task_id, stop.reason) == (queued, "cancelled")
        await agent.send(v1.Cancelled(task_id=queued, attempt=dispatch.attempt))

        running = await team.run()
        dispatch = await agent.recv(v1.Dispatch, timeout=5)
        assert dispatch.task_id == running
        await agent.ack(dispatch)
        await team.wait(running, "running")
        await cancel(running)
        stop = await agent.recv(v1.Cancel, timeout=1)
        assert stop.task_id == running
        # Late messages after the cancel are ignored; the task stays cancelled.
        await agent.complete(dispatch, late=True)
        await asyncio.sleep(0.3)
        body = await team.task(running)
        assert body["task_status"] == "cancelled"
        result = (await client.get(f"/r/tasks/{running}/result", headers=team.sk_headers)).json()
        assert result["task_output"] is None
        # The slot is free again: the next task is dispatched.
        follow = await team.run()
        assert (await agent.recv(v1.Dispatch, timeout=5)).task_id == follow


async def test_agent_that_reconnects_within_its_lease_keeps_its_task(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent = await RawAgent.connect(server, team.agent_key, "steady", labels=["gpu"])
        task_id = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        await agent.ack(dispatch)
        await team.wait(task_id, "running")
        await agent.close()

        ref = v1.AttemptRef(task_id=task_id, attempt=dispatch.attempt)
        back = await RawAgent.connect(
            server, team.agent_key, "steady", labels=["gpu"], running=[ref]
        )
        assert back.welcome.keep == [ref]
        assert back.welcome.abort == []
        back.running.add((task_id, dispatch.attempt))
        await asyncio.sleep(2.5)  # longer than the lease: renewed by the new connection
        assert (await team.task(task_id))["task_status"] == "running"
        await back.complete(dispatch)
        done = await team.wait(task_id, "completed")
        assert done["retry_count"] == 0

        # An attempt the server no longer knows is aborted at once.
        ghost = v1.AttemptRef(task_id=task_id, attempt=7)
        other = await RawAgent.connect(
            server, team.agent_key, "ghost", labels=["gpu"], running=[ghost]
        )
        assert other.welcome.abort == [ghost]


async def test_two_gateways_never_claim_the_same_task(settings: Settings) -> None:
    """Two servers on one database (replicas), each with agents: every task runs once."""
    # Leases long enough that a loaded machine (two servers and the test in one process)
    # cannot drop the agents mid-test: this test is about claims, not liveness.
    fast(settings, sweep_interval_seconds=0.2, ack_timeout_seconds=5.0, lease_ttl_seconds=15.0)
    async with live_server(settings) as one, live_server(settings) as two, api(one) as client:
        team = await live_team(one, client, required_labels=[])
        agents = [
            await RawAgent.connect(server, team.agent_key, f"{name}-{i}", capacity=4)
            for server, name in ((one, "one"), (two, "two"))
            for i in range(2)
        ]
        # Submit through both servers, as a load balancer would.
        async with api(two) as second:
            via_two = LiveTeam(
                second,
                *[
                    getattr(team, f)
                    for f in ("team_id", "owner_headers", "sk_headers", "agent_key", "workflow_id")
                ],
            )
            task_ids = [await (team if i % 2 else via_two).run() for i in range(40)]
        seen: Counter[str] = Counter()

        async def serve(agent: RawAgent) -> None:
            while True:
                dispatch = await agent.recv(v1.Dispatch, timeout=30)
                seen[f"{dispatch.task_id}/{dispatch.attempt}"] += 1
                await agent.ack(dispatch)
                await agent.complete(dispatch)

        workers = [asyncio.create_task(serve(a)) for a in agents]
        try:
            for task_id in task_ids:
                await team.wait(task_id, "completed", timeout=30)
        finally:
            for worker in workers:
                worker.cancel()
        # No attempt was ever handed to two agents, and every task completed exactly once.
        assert max(seen.values()) == 1
        assert {key.split("/")[0] for key in seen} == set(task_ids)
        for task_id in task_ids:
            outcomes = [a.outcome for a in await attempts_of(one, task_id)]
            assert outcomes.count("completed") == 1, outcomes
        gateways = {(await team.task(t))["gateway_id"] for t in task_ids}
        assert gateways == {one.engine.gateway_id, two.engine.gateway_id}


async def test_community_pool_serves_teams_in_turn(server: LiveServer) -> None:
    async with api(server) as client:
        busy: LiveTeam = await live_team(server, client, required_labels=[])
        quiet: LiveTeam = await live_team(server, client, required_labels=[])
        host: LiveTeam = await live_team(server, client, required_labels=[])
        heavy = [await busy.run(target_pool="community") for _ in range(6)]
        light = [await quiet.run(target_pool="community") for _ in range(2)]
        own = await busy.run()  # a team task never leaves its team's agents
        for task_id in [*heavy, *light, own]:
            await busy.wait(task_id, "waiting") if task_id in heavy or task_id == own else None

        donor = await RawAgent.connect(
            server, host.agent_key, "donor", pools=["team", "community"], capacity=1
        )
        order = []
        for _ in range(8):
            dispatch = await donor.recv(v1.Dispatch, timeout=5)
            order.append("busy" if dispatch.task_id in heavy else "quiet")
            await donor.ack(dispatch)
            await donor.complete(dispatch)
        assert order[:4] in (["busy", "quiet", "busy", "quiet"], ["quiet", "busy", "quiet", "busy"])
        assert order.count("quiet") == 2
        assert (await busy.task(own))["task_status"] == "waiting"
        done = await quiet.task(light[0])
        assert done["task_status"] == "completed"
        assert done["agent_id"] == "donor"


async def test_handed_back_attempt_waits_again_without_a_retry(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client, max_retries=0)
        leaving = await RawAgent.connect(server, team.agent_key, "leaving", labels=["gpu"])
        task_id = await team.run()
        dispatch = await leaving.recv(v1.Dispatch)
        await leaving.ack(dispatch)
        await leaving.send(
            v1.Fail(task_id=task_id, attempt=1, error="agent shutting down", handback=True)
        )
        await leaving.close()
        waiting = await team.wait(task_id, "waiting")
        assert waiting["retry_count"] == 0
        staying = await RawAgent.connect(server, team.agent_key, "staying", labels=["gpu"])
        again = await staying.recv(v1.Dispatch)
        assert again.attempt == 2
        await staying.ack(again)
        await staying.complete(again)
        assert (await team.wait(task_id, "completed"))["retry_count"] == 0
