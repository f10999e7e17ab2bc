"""The dispatch hot path kept correct while made cheap: frames that fail are not lost, a
submit racing an index rebuild is not lost, ACKs and completions share transactions without
one sinking the others, and cached keys still stop working within the documented bound."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from runyard.config import Settings
from runyard.context import ServiceContext
from runyard.domain.errors import Conflict
from runyard.gateway.endpoint import CLOSE_RETRY
from runyard.protocol import v1
from runyard.services.credentials import CALLER_CACHE_SECONDS
from runyard.store.agents import AgentRepos
from runyard.store.batch import GroupCommit
from runyard.store.db import Database, Session
from runyard.store.repos import Repos
from runyard.store.tables import Credential, InstanceSetting
from runyard.store.work import WorkRepos
from tests.conftest import FakeClock
from tests.integration.conftest import Accounts
from tests.integration.live import (
    LiveServer,
    LiveTeam,
    RawAgent,
    api,
    live_team,
)


async def output_of(client: httpx.AsyncClient, team: LiveTeam, task_id: str) -> Any:
    response = await client.get(f"/r/tasks/{task_id}/result", headers=team.sk_headers)
    return response.json()["task_output"]


def failing(server: LiveServer, kind: type[Any], times: int) -> list[int]:
    """Make the scheduler fail on the next ``times`` frames of ``kind``; returns a counter."""
    engine = server.engine
    original = engine.handle
    failures = [0]

    async def handle(conn: Any, frame: Any) -> None:
        if isinstance(frame, kind) and failures[0] < times:
            failures[0] += 1
            raise RuntimeError("database unreachable")
        await original(conn, frame)

    engine.handle = handle  # type: ignore[method-assign]
    return failures


async def test_a_completion_whose_handling_fails_is_retried(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"])
        task_id = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        await agent.ack(dispatch)
        failures = failing(server, v1.Complete, times=2)
        await agent.complete(dispatch, image_count=1)
        await team.wait(task_id, "completed")
        assert await output_of(client, team, task_id) == {"image_count": 1}
        assert failures[0] == 2


async def test_a_completion_that_keeps_failing_makes_the_agent_send_it_again(
    server: LiveServer,
) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent = await RawAgent.connect(server, team.agent_key, "gpu-1", labels=["gpu"])
        task_id = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        await agent.ack(dispatch)
        await team.wait(task_id, "running")
        failing(server, v1.Complete, times=1_000)
        await agent.complete(dispatch)
        # Not dropped: the gateway hangs up with a code that means "reconnect, resend".
        code, reason = await agent.closed_with(timeout=10)
        assert code == CLOSE_RETRY
        assert "complete" in reason
        assert (await team.task(task_id))["task_status"] == "running"
        # The database is back; the agent reconnects, keeps its attempt and resends.
        del server.engine.handle  # the class's again
        ref = v1.AttemptRef(task_id=task_id, attempt=dispatch.attempt)
        again = await RawAgent.connect(
            server, team.agent_key, "gpu-1", labels=["gpu"], running=[ref]
        )
        assert again.welcome.keep == [ref]
        await again.complete(dispatch, image_count=2)
        await team.wait(task_id, "completed")
        assert await output_of(client, team, task_id) == {"image_count": 2}


async def test_a_task_submitted_while_the_index_is_rebuilt_is_not_lost(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        dispatcher = server.engine.dispatcher
        page_read = asyncio.Event()
        release = asyncio.Event()
        original = AgentRepos.waiting_tasks

        async def slow_page(self: AgentRepos, limit: int, after: str = "") -> Any:
            rows = await original(self, limit, after)
            page_read.set()
            await release.wait()
            return rows

        monkeypatch.setattr(AgentRepos, "waiting_tasks", slow_page)
        rebuild = asyncio.create_task(dispatcher.reload())
        await asyncio.wait_for(page_read.wait(), 5)
        # The rebuild has read the database; this task is not in what it read.
        task_id = await team.run()
        release.set()
        await rebuild
        monkeypatch.setattr(AgentRepos, "waiting_tasks", original)
        assert task_id in dispatcher.index
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"])
        dispatch = await agent.recv(v1.Dispatch)
        assert dispatch.task_id == task_id


async def test_frames_of_many_agents_share_transactions(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agents = [
            await RawAgent.connect(server, team.agent_key, f"a{i}", labels=["gpu"])
            for i in range(8)
        ]
        tasks = [await team.run() for _ in agents]
        dispatches = [await agent.recv(v1.Dispatch) for agent in agents]
        assert sorted(d.task_id for d in dispatches) == sorted(tasks)
        commits = server.engine.store.commits  # type: ignore[attr-defined]
        before = (commits.batches, commits.jobs)
        await asyncio.gather(*(a.ack(d) for a, d in zip(agents, dispatches, strict=True)))
        for task_id in tasks:
            await team.wait(task_id, "running")
        await asyncio.gather(*(a.complete(d) for a, d in zip(agents, dispatches, strict=True)))
        for task_id in tasks:
            done = await team.wait(task_id, "completed")
            assert done["retry_count"] == 0
        batches, jobs = commits.batches - before[0], commits.jobs - before[1]
        assert jobs == 16  # every ACK and completion went through the group commit
        assert batches <= jobs


async def test_a_failing_job_does_not_sink_the_others_of_its_batch(ctx: ServiceContext) -> None:
    commits = GroupCommit(ctx.db)

    def put(key: str) -> Any:
        async def job(session: Any) -> str:
            return await Repos(session).put_setting_if_absent(key, "value")

        return job

    async def broken(session: Any) -> None:
        raise RuntimeError("bad frame")

    results = await asyncio.gather(
        commits.run(put("perf-a")),
        commits.run(broken),
        commits.run(put("perf-b")),
        return_exceptions=True,
    )
    assert results[0] == "value" and results[2] == "value"
    assert isinstance(results[1], RuntimeError)
    async with ctx.db.read() as session:
        keys = set(
            (
                await session.execute(
                    select(InstanceSetting.key).where(InstanceSetting.key.like("perf-%"))
                )
            ).scalars()
        )
    assert keys == {"perf-a", "perf-b"}


async def test_a_key_revoked_on_another_replica_stops_working_within_the_bound(
    client: httpx.AsyncClient, accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    owner = await accounts.signup("owner")
    sk = await owner.key()
    headers = {"Authorization": f"Bearer {sk}"}
    assert (await client.get("/api/v1/r/tasks", headers=headers)).status_code == 200
    # Another replica (its own connection pool, its own caches) revokes the key.
    other = Database(ctx.db.url.render_as_string(hide_password=False), ctx.settings.database)
    try:
        async with other.write() as session:
            row = (
                await session.execute(select(Credential).where(Credential.team_id == owner.team_id))
            ).scalar_one()
            await Repos(session).revoke_credentials([row.id], clock.now())
    finally:
        await other.dispose()
    clock.advance(CALLER_CACHE_SECONDS + 0.01)
    refused = await client.get("/api/v1/r/tasks", headers=headers)
    assert refused.status_code == 401
    assert refused.json() == {"error_message": "credential revoked"}


async def test_runs_follow_the_live_workflow_version_and_status(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)

        async def run_row(expect: int = 202) -> Any:
            response = await client.post(
                "/r/workflows/slug/text-to-image/run",
                headers=team.sk_headers,
                json={"parameters": {"prompt": "a fox"}},
            )
            assert response.status_code == expect, response.text
            if expect != 202:
                return response.json()
            async with server.ctx.db.read() as session:
                return await AgentRepos(session).task(response.json()["task_id"])

        async def put(body: dict[str, Any]) -> None:
            response = await client.put(
                f"/workflows/{team.workflow_id}", headers=team.owner_headers, json=body
            )
            assert response.status_code == 200, response.text

        first = await run_row()
        assert (first.workflow_version, first.task_timeout) == (1, 300)
        await put({"task_timeout": 7})  # a new version
        second = await run_row()
        assert (second.workflow_version, second.task_timeout) == (2, 7)
        await put({"workflow_status": "disabled"})  # not a new version, refused at once
        refused = await run_row(409)
        assert "disabled" in refused["error_message"]
        await put({"workflow_status": "active"})
        assert (await run_row()).workflow_version == 2


async def test_concurrent_writers_take_turns_instead_of_failing(settings: Settings) -> None:
    """SQLite has no queue for writers; the server's own writers queue in-process, so even with
    a short busy timeout none of many concurrent writes fails with 'database is locked'."""
    settings.database.sqlite_busy_timeout_ms = 20
    db = Database(settings.database_url(), settings.database)
    from runyard.store import migrate

    await migrate.upgrade(db)
    try:

        async def write(n: int) -> None:
            async with db.write() as session:
                await Repos(session).put_setting_if_absent(f"turns-{n}", "x")
                await asyncio.sleep(0.005)  # hold the write lock a while, as real work does

        await asyncio.gather(*(write(n) for n in range(40)))
        async with db.read() as session:
            stored = (
                await session.execute(
                    select(InstanceSetting.key).where(InstanceSetting.key.like("turns-%"))
                )
            ).scalars()
            assert len(list(stored)) == 40
    finally:
        await db.dispose()


async def _statuses(server: LiveServer, task_id: str) -> list[str]:
    async with server.ctx.db.read() as session:
        events = await WorkRepos(session).events(task_id)
    return [e.payload["status"] for e in events if e.event_type == "status"]


async def test_a_task_for_an_idle_agent_is_claimed_by_its_submit(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"])
        task_id = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        assert (dispatch.task_id, dispatch.attempt) == (task_id, 1)
        # Straight from pending to queued: it never waited for the dispatcher.
        assert await _statuses(server, task_id) == ["pending", "queued"]
        await agent.ack(dispatch)
        await agent.complete(dispatch)
        await team.wait(task_id, "completed")


async def test_a_submit_that_fails_after_claiming_frees_the_agent(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"], capacity=1)
        publisher = server.ctx.db.listener
        failed: list[bool] = []

        class FailingCommit:
            """The publisher, but the first transaction that claimed fails to commit."""

            async def before_commit(self, session: Session) -> None:
                await publisher.before_commit(session)
                if session.changes.claims and not failed:  # the claim was made
                    failed.append(True)
                    raise Conflict("the commit failed")

            after_commit = publisher.after_commit
            rolled_back = publisher.rolled_back

        server.ctx.db.listener = FailingCommit()
        refused = await client.post(
            "/r/workflows/slug/text-to-image/run",
            headers=team.sk_headers,
            json={"parameters": {"prompt": "a fox"}},
        )
        assert refused.status_code == 409
        # Nothing was stored, and the agent's only slot is free again for the next task.
        task_id = await team.run()
        server.ctx.db.listener = publisher
        dispatch = await agent.recv(v1.Dispatch)
        assert (dispatch.task_id, dispatch.attempt) == (task_id, 1)


async def test_a_submit_does_not_overtake_work_already_waiting_for_the_agent(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        dispatcher = server.engine.dispatcher

        async def paused() -> None:
            return None

        monkeypatch.setattr(dispatcher, "round", paused)  # the dispatcher waits
        first = await team.run()
        agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"], capacity=1)
        # The agent is idle and an older task waits for it: a new one must not jump it.
        second = await team.run()
        assert second in dispatcher.index
        monkeypatch.undo()
        dispatcher.wake()
        dispatch = await agent.recv(v1.Dispatch)
        assert dispatch.task_id == first
        await agent.ack(dispatch)
        await agent.complete(dispatch)
        assert (await agent.recv(v1.Dispatch)).task_id == second
