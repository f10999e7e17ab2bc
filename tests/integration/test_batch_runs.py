"""Batch submission (POST …/runs): ids in order, all or nothing, limits, tenancy, dispatch."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runyard.config import Settings
from runyard.context import ServiceContext
from runyard.protocol import v1
from runyard.store.tables import Task, TaskEvent
from runyard.store.work import WorkRepos
from tests.integration.conftest import Account, Accounts, assert_error, ok
from tests.integration.live import LiveServer, RawAgent, api, fast, live_server, live_team
from tests.integration.test_tasks_api import API, count, import_workflow, task_row
from tests.integration.uploads import upload_input

BY_SLUG = f"{API}/r/workflows/slug/text-to-image/runs"


def by_id(workflow_id: str) -> str:
    return f"{API}/r/workflows/{workflow_id}/runs"


async def submit_runs(
    account: Account, path: str, runs: list[dict[str, Any]], **kwargs: Any
) -> httpx.Response:
    return await account.request("POST", path, json={"runs": runs}, **kwargs)


async def team_total(account: Account) -> int:
    total: int = ok(await account.request("GET", f"{API}/r/tasks"))["page_meta"]["total_count"]
    return total


async def test_a_batch_answers_its_ids_in_order_each_task_with_its_parameters(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)
    photo = await upload_input(owner.client, owner.headers())
    runs = [
        {"parameters": {"prompt": "a red fox", "steps": 12}},
        {"parameters": {"prompt": "a lighthouse", "sampler": "dpmpp_2m", "zsnr": True}},
        {"parameters": {"prompt": "an owl", "init_image": photo}, "priority": 5},
    ]
    response = await submit_runs(owner, BY_SLUG, runs)
    body = ok(response, 202)
    assert list(body) == ["task_ids"]
    ids = body["task_ids"]
    assert len(ids) == 3 and len(set(ids)) == 3

    for task_id in ids:
        task = ok(await owner.request("GET", f"{API}/r/tasks/{task_id}"))
        assert task["id"] == task_id
        assert task["workflow_id"] == workflow_id
        assert task["task_status"] == "pending"
        assert task["task_source"] == "jwt"
    # Each task got its own run's values, in the order of ``runs`` (the API does not return
    # parameters, so read the rendered graph, as the single-run tests do).
    graphs = [(await task_row(ctx, owner.team_id, i)).workflow_json for i in ids]
    assert [g["6"]["inputs"]["text"] for g in graphs] == ["a red fox", "a lighthouse", "an owl"]
    assert [g["3"]["inputs"]["steps"] for g in graphs] == [12, 20, 20]
    assert [g["3"]["inputs"]["sampler_name"] for g in graphs] == ["euler", "dpmpp_2m", "euler"]
    assert [g["10"]["inputs"]["zsnr"] for g in graphs] == [False, True, False]
    assert graphs[2]["11"]["inputs"]["image"] == photo
    assert [(await task_row(ctx, owner.team_id, i)).priority for i in ids] == [0, 0, 5]

    # Each task has its own first event: ``pending``, sequence number 1.
    for task_id in ids:
        async with ctx.db.read() as session:
            events = await WorkRepos(session).events(task_id)
        assert [(e.seq, e.event_type, e.payload["status"]) for e in events] == [
            (1, "status", "pending")
        ]
        assert events[0].payload["task_id"] == task_id
    assert await count(ctx, Task) == 3
    assert await count(ctx, TaskEvent) == 3

    # The list shows them like single runs (newest first).
    listed = ok(await owner.request("GET", f"{API}/r/tasks"))["task_list"]
    assert [t["id"] for t in listed] == ids[::-1]


async def test_by_id_form_with_an_sk_key(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)
    sk = await owner.key()
    response = await owner.client.post(
        by_id(workflow_id),
        headers={"Authorization": f"Bearer {sk}"},
        json={"runs": [{"parameters": {"prompt": "one"}}, {"parameters": {"prompt": "two"}}]},
    )
    ids = ok(response, 202)["task_ids"]
    assert len(set(ids)) == 2
    for task_id, prompt in zip(ids, ["one", "two"], strict=True):
        task = await task_row(ctx, owner.team_id, task_id)
        assert task.workflow_json["6"]["inputs"]["text"] == prompt
        assert task.task_source == "api_key"


async def test_one_invalid_run_refuses_the_whole_batch(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)
    ok(await submit_runs(owner, BY_SLUG, [{"parameters": {"prompt": "before"}}]), 202)
    before = await team_total(owner)
    good = {"parameters": {"prompt": "fine"}}

    message = assert_error(
        await submit_runs(
            owner, BY_SLUG, [good, {"parameters": {"prompt": "x", "steps": "20"}}, good]
        ),
        400,
        "'steps'",
    )
    assert message.startswith("runs[1]: "), message
    # The first invalid run is named, whatever follows it.
    message = assert_error(
        await submit_runs(
            owner,
            by_id(workflow_id),
            [good, good, {"parameters": {"prompt": "x", "colour": "red"}}, {"parameters": {}}],
        ),
        400,
        "'colour'",
    )
    assert message.startswith("runs[2]: "), message

    # Nothing of either batch was stored: no task, no event.
    assert await team_total(owner) == before
    assert await count(ctx, Task) == before
    assert await count(ctx, TaskEvent) == before


async def test_batch_limits_and_refusals(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)
    run = {"parameters": {"prompt": "x"}}

    assert_error(await submit_runs(owner, BY_SLUG, []), 400, "runs", "at least 1")
    assert_error(await submit_runs(owner, BY_SLUG, [run] * 101), 400, "runs", "at most 100")
    assert_error(await owner.request("POST", BY_SLUG, json={}), 400, "runs")
    # A run that is malformed as JSON (not a parameter problem) names its position too.
    assert_error(
        await submit_runs(owner, BY_SLUG, [run, {**run, "priority": 5000}]), 400, "runs[1].priority"
    )
    assert_error(await submit_runs(owner, f"{API}/r/workflows/slug/no-such-flow/runs", [run]), 404)
    assert_error(await submit_runs(owner, by_id(str(uuid.uuid4())), [run]), 404)
    # Not supported on batches: refused rather than ignored, so no retry is assumed safe.
    assert_error(
        await submit_runs(owner, BY_SLUG, [run], headers={"Idempotency-Key": "batch-1"}),
        400,
        "Idempotency-Key",
    )
    assert await count(ctx, Task) == 0

    # Exactly the limit goes through.
    ids = ok(await submit_runs(owner, by_id(workflow_id), [run] * 100), 202)["task_ids"]
    assert len(set(ids)) == 100
    assert await team_total(owner) == 100

    ok(await owner.request("POST", f"{API}/workflows/{workflow_id}/disable"))
    assert_error(await submit_runs(owner, BY_SLUG, [run]), 409, "disabled")
    assert_error(await submit_runs(owner, by_id(workflow_id), [run]), 409, "disabled")
    assert await team_total(owner) == 100


async def test_another_teams_workflow_is_not_found(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    workflow_id = await import_workflow(owner)
    run = {"parameters": {"prompt": "x"}}
    assert_error(await submit_runs(other, by_id(workflow_id), [run]), 404)
    sk = await other.key()
    refused = await other.client.post(
        by_id(workflow_id), headers={"Authorization": f"Bearer {sk}"}, json={"runs": [run]}
    )
    assert_error(refused, 404)
    # A viewer of the owner's team may read but not run.
    viewer = await accounts.join(owner, "viewer")
    assert_error(await submit_runs(viewer, by_id(workflow_id), [run]), 403)
    assert await count(ctx, Task) == 0


# -- dispatch ---------------------------------------------------------------------------------


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    # Generous ACK and lease periods: a loaded machine must not re-queue a dispatch here.
    async with live_server(
        fast(settings, ack_timeout_seconds=60.0, lease_ttl_seconds=60.0)
    ) as live:
        yield live


async def test_a_batch_fills_idle_agents_and_the_rest_waits(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agents = [
            await RawAgent.connect(server, team.agent_key, f"gpu-{i}", labels=["gpu"], capacity=1)
            for i in range(2)
        ]
        response = await client.post(
            "/r/workflows/slug/text-to-image/runs",
            headers=team.sk_headers,
            json={"runs": [{"parameters": {"prompt": f"fox {i}"}} for i in range(3)]},
        )
        assert response.status_code == 202, response.text
        ids = response.json()["task_ids"]

        # One dispatch per agent, for the first two runs; the third waits for a free slot.
        dispatches = [await agent.recv(v1.Dispatch, timeout=30) for agent in agents]
        assert {d.task_id for d in dispatches} == set(ids[:2])
        for agent, dispatch in zip(agents, dispatches, strict=True):
            await agent.ack(dispatch)
        third = await team.wait(ids[2], "waiting", timeout=30)
        assert third["agent_id"] is None
        for task_id in ids[:2]:
            await team.wait(task_id, "running", timeout=30)
        assert (await team.task(ids[2]))["task_status"] == "waiting"

        # The first agent finishes: the third run goes to it (the other is still busy).
        await agents[0].complete(dispatches[0])
        await team.wait(dispatches[0].task_id, "completed", timeout=30)
        last = await agents[0].recv(v1.Dispatch, timeout=30)
        assert last.task_id == ids[2]
        await agents[0].ack(last)
        await agents[0].complete(last)
        await agents[1].complete(dispatches[1])
        for task_id in ids:
            done = await team.wait(task_id, "completed", timeout=30)
            assert done["retry_count"] == 0
        assert not any(isinstance(f, v1.Dispatch) for a in agents for f in a.inbox)
        for agent in agents:
            await agent.close()
