"""Task submission and the task API over HTTP: parameter checking, idempotency, list, cancel."""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from runyard.context import ServiceContext
from runyard.domain.tasks import TaskStatus
from runyard.store.changes import Changes
from runyard.store.db import Session
from runyard.store.tables import (
    Credential,
    IdempotencyKey,
    Task,
    TaskEvent,
    Team,
    Workflow,
    WorkflowSnapshot,
)
from runyard.store.work import WorkRepos
from tests.conftest import FakeClock
from tests.fixtures.graphs import TEXT_TO_IMAGE_PARAMETERS, text_to_image, text_to_image_workflow
from tests.integration.conftest import Account, Accounts, assert_error, bearer, ok, when
from tests.integration.uploads import move, upload_input

API = "/api/v1"
DAY = 24 * 3600

RESULT_FIELDS = {
    "id",
    "task_status",
    "task_output",
    "download_url",
    "download_urls",
    "expires_at",
    "task_error",
    "completed_at",
}


# -- helpers -----------------------------------------------------------------------------------


def full_workflow(slug: str = "text-to-image") -> dict[str, Any]:
    """Text-to-image plus a boolean (ModelSamplingDiscrete.zsnr) and a file (LoadImage.image)."""
    graph = text_to_image()
    graph["10"] = {
        "class_type": "ModelSamplingDiscrete",
        "inputs": {"sampling": "eps", "zsnr": False, "model": ["4", 0]},
    }
    graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    params = copy.deepcopy(TEXT_TO_IMAGE_PARAMETERS)
    params.append({"key": "zsnr", "type": "boolean", "node_id": "10", "field": "zsnr"})
    params.append(
        {
            "key": "init_image",
            "type": "file",
            "node_id": "11",
            "field": "image",
            "accept": ["image/png", "image/jpeg"],
        }
    )
    return text_to_image_workflow(slug, workflow_json=graph, parameters=params)


async def import_workflow(owner: Account, body: dict[str, Any] | None = None) -> str:
    response = await owner.request(
        "POST", f"{API}/workflows/import", json=body if body is not None else full_workflow()
    )
    workflow_id: str = ok(response)["id"]
    return workflow_id


async def run(
    account: Account,
    workflow_id: str,
    parameters: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    **body: Any,
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await account.request(
        "POST",
        f"{API}/r/workflows/{workflow_id}/run",
        json={"parameters": parameters if parameters is not None else {"prompt": "x"}, **body},
        headers=headers,
    )


async def submit(account: Account, workflow_id: str, **parameters: Any) -> str:
    task_id: str = ok(await run(account, workflow_id, {"prompt": "x", **parameters}), 202)[
        "task_id"
    ]
    return task_id


async def task_row(ctx: ServiceContext, team_id: str | None, task_id: str) -> Task:
    async with ctx.db.read() as session:
        task = await WorkRepos(session).task(team_id or "", task_id)
    assert task is not None
    return task


async def count(ctx: ServiceContext, table: Any, *where: Any) -> int:
    async with ctx.db.read() as session:
        query = select(func.count()).select_from(table)
        if where:
            query = query.where(*where)
        return int((await session.execute(query)).scalar() or 0)


async def get_task(account: Account, task_id: str) -> dict[str, Any]:
    body: dict[str, Any] = ok(await account.request("GET", f"{API}/r/tasks/{task_id}"))
    return body


class RecordingListener:
    """Stands in for the engine's publisher: records what committed transactions announce."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[tuple[str, str, str | None]] = []

    async def before_commit(self, session: Session) -> None:
        return None

    async def after_commit(self, changes: Changes) -> None:
        self.submitted.extend(t for t, entry in changes.waiting.items() if entry.pending)
        self.cancelled.extend((s.task_id, s.team_id, s.agent_id) for s in changes.stops)

    def rolled_back(self, changes: Changes) -> None:
        return None


# -- parameter checking ------------------------------------------------------------------------


async def test_parameter_errors_name_the_key_and_store_nothing(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    workflow_id = await import_workflow(owner)
    mine = f"inputs/{owner.team_id}/"
    theirs = f"inputs/{other.team_id}/"

    cases: list[tuple[dict[str, Any], str]] = [
        ({"prompt": "x", "colour": "red"}, "'colour'"),
        ({"steps": 20}, "'prompt'"),
        ({"prompt": None}, "'prompt'"),
        ({"prompt": 5}, "'prompt'"),
        ({"prompt": ["a"]}, "'prompt'"),
        ({"prompt": "x", "steps": "20"}, "'steps'"),
        ({"prompt": "x", "steps": True}, "'steps'"),
        ({"prompt": "x", "zsnr": "true"}, "'zsnr'"),
        ({"prompt": "x", "zsnr": 1}, "'zsnr'"),
        ({"prompt": "x", "steps": 0}, "'steps'"),
        ({"prompt": "x", "steps": 151}, "'steps'"),
        ({"prompt": "x", "cfg": -0.5}, "'cfg'"),
        ({"prompt": "x", "width": 4096}, "'width'"),
        ({"prompt": "x", "sampler": "ddim"}, "'sampler'"),
        ({"prompt": "x", "sampler": 1}, "'sampler'"),
        ({"prompt": "x", "init_image": f"{theirs}x.png"}, "'init_image'"),
        ({"prompt": "x", "init_image": "x.png"}, "'init_image'"),
        ({"prompt": "x", "init_image": f"/{mine}x.png"}, "'init_image'"),
        ({"prompt": "x", "init_image": f"{mine}../{other.team_id}/x.png"}, "'init_image'"),
        ({"prompt": "x", "init_image": f"{mine}..\\{other.team_id}\\x.png"}, "'init_image'"),
        ({"prompt": "x", "init_image": f"{mine}./x.png"}, "'init_image'"),
        ({"prompt": "x", "init_image": mine}, "'init_image'"),
        ({"prompt": "x", "init_image": 7}, "'init_image'"),
        ({"prompt": "x", "steps": 12.5}, "'steps'"),
    ]
    for parameters, fragment in cases:
        try:
            assert_error(await run(owner, workflow_id, parameters), 400, fragment)
            # The same check applies by slug.
            response = await owner.request(
                "POST",
                f"{API}/r/workflows/slug/text-to-image/run",
                json={"parameters": parameters},
            )
            assert_error(response, 400, fragment)
        except AssertionError as exc:
            raise AssertionError(f"{parameters}: {exc}") from exc
    assert_error(
        await owner.request(
            "POST", f"{API}/r/workflows/{workflow_id}/run", json={"parameters": ["prompt"]}
        ),
        400,
        "parameters",
    )
    assert await count(ctx, Task) == 0
    assert await count(ctx, TaskEvent) == 0
    assert ok(await owner.request("GET", f"{API}/r/tasks"))["page_meta"]["total_count"] == 0

    # Valid values of every type go through, and land in the rendered graph.
    photo = await upload_input(owner.client, owner.headers())
    task_id = await submit(
        owner,
        workflow_id,
        steps=30,
        cfg=7.5,
        zsnr=True,
        sampler="dpmpp_2m",
        init_image=photo,
        width=None,  # null means "not given": the graph keeps its value
    )
    graph = (await task_row(ctx, owner.team_id, task_id)).workflow_json
    assert graph["3"]["inputs"]["steps"] == 30
    assert graph["3"]["inputs"]["cfg"] == 7.5
    assert graph["10"]["inputs"]["zsnr"] is True
    assert graph["3"]["inputs"]["sampler_name"] == "dpmpp_2m"
    assert graph["11"]["inputs"]["image"] == photo
    assert graph["5"]["inputs"]["width"] == 512
    assert await count(ctx, Task) == 1


async def test_whole_numbers_for_integer_inputs(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)

    assert_error(await run(owner, workflow_id, {"prompt": "x", "steps": 12.5}), 400, "'steps'")
    assert await count(ctx, Task) == 0

    task_id = await submit(owner, workflow_id, steps=12.0, seed=7.0, cfg=6)
    graph = (await task_row(ctx, owner.team_id, task_id)).workflow_json
    # ComfyUI refuses 12.0 for an INT input: stored as the integer 12.
    assert graph["3"]["inputs"]["steps"] == 12
    assert type(graph["3"]["inputs"]["steps"]) is int
    assert type(graph["3"]["inputs"]["seed"]) is int
    # A FLOAT input keeps what was sent.
    assert graph["3"]["inputs"]["cfg"] == 6


async def test_tool_type_and_run_options(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)

    assert_error(await run(owner, workflow_id, tool_type="nerfstudio"), 400, "tool_type")
    assert_error(await run(owner, workflow_id, tool_type="blender"), 400, "tool_type")
    assert_error(await run(owner, workflow_id, dispatch_target="moon"), 400, "dispatch_target")
    assert_error(await run(owner, workflow_id, target_pool="everyone"), 400, "target_pool")
    assert_error(await run(owner, workflow_id, submitter_region="r" * 101), 400, "submitter_region")
    assert await count(ctx, Task) == 0

    task_id = ok(
        await run(
            owner,
            workflow_id,
            tool_type="comfyui",
            dispatch_target="comfy_cloud",
            target_pool="team",
            submitter_region="us-east",
        ),
        202,
    )["task_id"]
    task = await get_task(owner, task_id)
    assert (task["tool_type"], task["dispatch_target"], task["target_pool"]) == (
        "comfyui",
        "comfy_cloud",
        "team",
    )
    assert (await task_row(ctx, owner.team_id, task_id)).submitter_region == "us-east"


async def test_nerfstudio_specs_take_target_paths(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    spec = {"method": "splatfacto", "train": {"max_num_iterations": 30000, "data": "x"}}
    body: dict[str, Any] = {
        "workflow_slug": "splat",
        "display_name": "Gaussian splat",
        "tool_type": "nerfstudio",
        "workflow_json": spec,
        "parameters": [
            {
                "key": "iterations",
                "type": "number",
                "target_path": "train.max_num_iterations",
                "min": 1000,
                "max": 100000,
            },
            {"key": "scene", "type": "file", "target_path": "train.data", "required": True},
        ],
    }
    bad = copy.deepcopy(body)
    bad["parameters"][0]["target_path"] = "train.missing.steps"
    assert_error(
        await owner.request("POST", f"{API}/workflows/import", json=bad), 400, "'iterations'"
    )
    bad["parameters"][0]["target_path"] = None
    assert_error(
        await owner.request("POST", f"{API}/workflows/import", json=bad), 400, "target_path"
    )
    workflow_id = await import_workflow(owner, body)

    scene = await upload_input(
        owner.client, owner.headers(), b"PK\x05\x06", "scene.zip", "application/zip"
    )
    assert_error(
        await run(owner, workflow_id, {"scene": scene}, tool_type="comfyui"), 400, "tool_type"
    )
    assert_error(await run(owner, workflow_id, {"iterations": 5000}), 400, "'scene'")
    task_id = ok(
        await run(owner, workflow_id, {"scene": scene, "iterations": 5000}, tool_type="nerfstudio"),
        202,
    )["task_id"]
    task = await task_row(ctx, owner.team_id, task_id)
    assert task.tool_type == "nerfstudio"
    assert task.workflow_json["train"] == {"max_num_iterations": 5000, "data": scene}
    assert task.workflow_json["method"] == "splatfacto"


async def test_priority_range(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)
    for bad in (1001, -1001, "high", 1.5):
        assert_error(await run(owner, workflow_id, priority=bad), 400, "priority")
    assert await count(ctx, Task) == 0
    for good in (1000, -1000):
        task_id = ok(await run(owner, workflow_id, priority=good), 202)["task_id"]
        assert (await task_row(ctx, owner.team_id, task_id)).priority == good
    default = ok(await run(owner, workflow_id), 202)["task_id"]
    assert (await task_row(ctx, owner.team_id, default)).priority == 0


# -- idempotency -------------------------------------------------------------------------------


async def test_idempotency_key(accounts: Accounts, ctx: ServiceContext, clock: FakeClock) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    workflow_id = await import_workflow(owner)
    other_workflow = await import_workflow(other)
    sk = await owner.key()
    body = {"prompt": "a fox", "steps": 10}

    first = await run(owner, workflow_id, body, key="order-1")
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]
    again = await run(owner, workflow_id, body, key="order-1")
    assert again.status_code == 202, again.text
    assert again.json() == {"task_id": task_id}
    # The key belongs to the team, whoever sends it.
    by_key = await owner.client.post(
        f"{API}/r/workflows/{workflow_id}/run",
        json={"parameters": body},
        headers={**bearer(sk), "Idempotency-Key": "order-1"},
    )
    assert (by_key.status_code, by_key.json()) == (202, {"task_id": task_id})
    assert await count(ctx, Task) == 1

    # The same key with another body is a conflict, and changes nothing.
    assert_error(
        await run(owner, workflow_id, {**body, "steps": 11}, key="order-1"), 409, "Idempotency-Key"
    )
    assert_error(await run(owner, workflow_id, body, key="order-1", priority=3), 409)
    assert await count(ctx, Task) == 1

    # A refused submission does not use up its key.
    assert_error(await run(owner, workflow_id, {"steps": 10}, key="order-2"), 400, "'prompt'")
    second = ok(await run(owner, workflow_id, body, key="order-2"), 202)["task_id"]
    assert second != task_id
    assert await count(ctx, Task) == 2

    # Keys are per team.
    theirs = ok(await run(other, other_workflow, body, key="order-1"), 202)["task_id"]
    assert theirs != task_id
    assert ok(await run(owner, workflow_id, body, key="order-1"), 202)["task_id"] == task_id
    assert await count(ctx, Task, Task.team_id == other.team_id) == 1

    assert_error(await run(owner, workflow_id, body, key="   "), 400, "Idempotency-Key")

    # Within 24 hours the key still answers; after, the same key makes a new task.
    # (The sk- key, because the session's access token expires long before a day passes.)
    async def run_by_key(parameters: dict[str, Any]) -> httpx.Response:
        return await owner.client.post(
            f"{API}/r/workflows/{workflow_id}/run",
            json={"parameters": parameters},
            headers={**bearer(sk), "Idempotency-Key": "order-1"},
        )

    clock.advance(DAY - 1)
    assert ok(await run_by_key(body), 202)["task_id"] == task_id
    clock.advance(2)
    fresh = ok(await run_by_key(body), 202)["task_id"]
    assert fresh not in (task_id, second)
    assert ok(await run_by_key(body), 202)["task_id"] == fresh
    assert await count(ctx, Task, Task.team_id == owner.team_id) == 3
    # ... and a different body under the renewed key is again a conflict.
    assert_error(await run_by_key({"prompt": "other"}), 409)


async def test_concurrent_submissions_with_one_key_make_one_task(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)
    responses = await asyncio.gather(
        *(run(owner, workflow_id, {"prompt": "same"}, key="burst") for _ in range(6))
    )
    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    assert len({r.json()["task_id"] for r in responses}) == 1
    assert await count(ctx, Task) == 1
    assert await count(ctx, IdempotencyKey) == 1


# -- listing and reading -----------------------------------------------------------------------


async def test_list_filters_orders_and_paginates(accounts: Accounts, clock: FakeClock) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    sk = bearer(await owner.key())
    wf_a = await import_workflow(owner, full_workflow("wf-a"))
    wf_b = await import_workflow(owner, full_workflow("wf-b"))
    submitted: list[tuple[str, str]] = []
    for workflow_id in (wf_a, wf_b, wf_a, wf_b, wf_a):
        clock.advance(1)
        submitted.append((await submit(owner, workflow_id), workflow_id))
    cancelled = submitted[1][0]
    ok(await owner.request("POST", f"{API}/r/tasks/{cancelled}/cancel"))
    newest_first = [task_id for task_id, _ in reversed(submitted)]

    everything = ok(await owner.client.get(f"{API}/r/tasks", headers=sk))
    assert [t["id"] for t in everything["task_list"]] == newest_first
    assert everything["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 5}
    created = [when(t["created_at"]) for t in everything["task_list"]]
    assert created == sorted(created, reverse=True)

    pages = []
    for page in (1, 2, 3):
        body = ok(
            await owner.request(
                "GET", f"{API}/r/tasks", params={"per_page": 2, "current_page": page}
            )
        )
        assert body["page_meta"] == {"current_page": page, "per_page": 2, "total_count": 5}
        pages.append([t["id"] for t in body["task_list"]])
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]

    async def ids(**params: Any) -> list[str]:
        body = ok(await owner.request("GET", f"{API}/r/tasks", params=params))
        assert body["page_meta"]["total_count"] == len(body["task_list"])
        return [t["id"] for t in body["task_list"]]

    assert await ids(status="cancelled") == [cancelled]
    assert await ids(status="pending") == [t for t in newest_first if t != cancelled]
    assert await ids(status="running") == []
    assert await ids(workflow_id=wf_b) == [t for t, w in reversed(submitted) if w == wf_b]
    assert await ids(workflow_id=wf_b, status="pending") == [submitted[3][0]]
    assert await ids(workflow_id=str(uuid.uuid4())) == []
    assert_error(await owner.request("GET", f"{API}/r/tasks", params={"status": "done"}), 400)
    assert_error(await owner.request("GET", f"{API}/r/tasks", params={"workflow_id": "wf-a"}), 400)
    assert_error(await owner.request("GET", f"{API}/r/tasks", params={"per_page": 0}), 400)

    # Another team sees none of it, and a task id of this team is a 404 there (never 403).
    assert ok(await other.request("GET", f"{API}/r/tasks"))["task_list"] == []
    some_task = submitted[0][0]
    assert_error(await other.request("GET", f"{API}/r/tasks/{some_task}"), 404)
    assert_error(await other.request("GET", f"{API}/r/tasks/{some_task}/result"), 404)
    assert_error(await other.request("POST", f"{API}/r/tasks/{some_task}/cancel"), 404)
    assert (await get_task(owner, some_task))["task_status"] == "pending"
    assert_error(await owner.request("GET", f"{API}/r/tasks/{uuid.uuid4()}"), 404)
    malformed = await owner.request("GET", f"{API}/r/tasks/not-a-uuid")
    assert malformed.status_code in (400, 404)
    assert_error(malformed, malformed.status_code)


# -- cancel and result -------------------------------------------------------------------------


async def test_cancel_a_pending_task(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    member = await accounts.join(owner, "member")
    viewer = await accounts.join(owner, "viewer")
    sk = bearer(await owner.key())
    workflow_id = await import_workflow(owner)
    task_id = await submit(owner, workflow_id)
    created_at = clock.now()

    pending = ok(await owner.request("GET", f"{API}/r/tasks/{task_id}/result"))
    assert set(pending) == RESULT_FIELDS
    assert pending["id"] == task_id
    assert pending["task_status"] == "pending"
    for name in ("task_output", "download_url", "download_urls", "expires_at", "completed_at"):
        assert pending[name] is None, name

    # A viewer may read but not cancel.
    assert (await get_task(viewer, task_id))["task_status"] == "pending"
    assert_error(await viewer.request("POST", f"{API}/r/tasks/{task_id}/cancel"), 403)
    assert (await get_task(owner, task_id))["task_status"] == "pending"

    clock.advance(5)
    assert ok(await owner.request("POST", f"{API}/r/tasks/{task_id}/cancel")) == {
        "is_success": True
    }
    task = await get_task(owner, task_id)
    assert task["task_status"] == "cancelled"
    assert when(task["completed_at"]) == clock.now()
    assert when(task["created_at"]) == created_at
    assert task["started_at"] is None

    # Cancelling an ended task succeeds and changes nothing.
    clock.advance(5)
    assert ok(await owner.request("POST", f"{API}/r/tasks/{task_id}/cancel")) == {
        "is_success": True
    }
    assert ok(await owner.client.post(f"{API}/r/tasks/{task_id}/cancel", headers=sk)) == {
        "is_success": True
    }
    assert await get_task(owner, task_id) == task

    async with ctx.db.read() as session:
        events = list(await WorkRepos(session).events(task_id))
    assert [(e.seq, e.event_type) for e in events] == [(1, "status"), (2, "cancelled")]
    assert events[0].payload["status"] == "pending"
    assert events[1].payload["status"] == "cancelled"
    assert all(e.payload["task_id"] == task_id for e in events)

    result = ok(await owner.request("GET", f"{API}/r/tasks/{task_id}/result"))
    assert result["task_status"] == "cancelled"
    for name in ("task_output", "download_url", "download_urls", "expires_at"):
        assert result[name] is None, name
    assert when(result["completed_at"]) == when(task["completed_at"])

    # Members and integration keys may cancel.
    by_member = await submit(owner, workflow_id)
    ok(await member.request("POST", f"{API}/r/tasks/{by_member}/cancel"))
    by_key = await submit(owner, workflow_id)
    ok(await owner.client.post(f"{API}/r/tasks/{by_key}/cancel", headers=sk))
    for cancelled in (by_member, by_key):
        assert (await get_task(owner, cancelled))["task_status"] == "cancelled"
    assert_error(await owner.request("POST", f"{API}/r/tasks/{uuid.uuid4()}/cancel"), 404)


async def test_cancelling_a_queued_task_tells_its_agent(
    accounts: Accounts, ctx: ServiceContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await import_workflow(owner)
    notifier = RecordingListener()
    monkeypatch.setattr(ctx.db, "listener", notifier)
    queued, pending = await submit(owner, workflow_id), await submit(owner, workflow_id)
    # The scheduler hears of each accepted submission (after it is committed).
    assert notifier.submitted == [queued, pending]
    assert_error(await run(owner, workflow_id, {}), 400, "'prompt'")
    assert notifier.submitted == [queued, pending]
    await move(ctx, queued, TaskStatus.QUEUED, agent_id="gpu-01")

    ok(await owner.request("POST", f"{API}/r/tasks/{pending}/cancel"))
    # A pending task is on no agent: nobody is to be told to abort it.
    assert all(agent is None for task_id, _, agent in notifier.cancelled if task_id == pending)
    ok(await owner.request("POST", f"{API}/r/tasks/{queued}/cancel"))
    assert (queued, owner.team_id, "gpu-01") in notifier.cancelled
    before = list(notifier.cancelled)
    ok(await owner.request("POST", f"{API}/r/tasks/{queued}/cancel"))
    assert notifier.cancelled == before  # an ended task: nothing more to tell

    task_body = await get_task(owner, queued)
    assert (task_body["task_status"], task_body["agent_id"]) == ("cancelled", "gpu-01")
    async with ctx.db.read() as session:
        events = list(await WorkRepos(session).events(queued))
    assert [e.event_type for e in events] == ["status", "status", "cancelled"]
    assert [e.payload["status"] for e in events] == ["pending", "queued", "cancelled"]


async def test_deleting_the_team_cancels_its_tasks_and_removes_everything(
    client: httpx.AsyncClient,
    accounts: Accounts,
    ctx: ServiceContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    sk = bearer(await owner.key())
    workflow_id = await import_workflow(owner)
    other_workflow = await import_workflow(other)
    running = await submit(owner, workflow_id)
    waiting = ok(await run(owner, workflow_id, key="k-1"), 202)["task_id"]
    done = await submit(owner, workflow_id)
    ok(await owner.request("POST", f"{API}/r/tasks/{done}/cancel"))
    await move(ctx, running, TaskStatus.QUEUED, agent_id="gpu-01")
    await move(ctx, running, TaskStatus.RUNNING)
    await move(ctx, waiting, TaskStatus.WAITING)
    theirs = await submit(other, other_workflow)

    notifier = RecordingListener()
    monkeypatch.setattr(ctx.db, "listener", notifier)
    response = await owner.request("DELETE", f"{API}/teams/current")
    assert response.status_code == 204, response.text

    # The unfinished tasks were cancelled, and the running one's agent told to abort.
    assert (running, owner.team_id, "gpu-01") in notifier.cancelled
    assert {task_id for task_id, _, _ in notifier.cancelled} <= {running, waiting}
    team_id = owner.team_id
    assert await count(ctx, Team, Team.id == team_id) == 0
    assert await count(ctx, Task, Task.team_id == team_id) == 0
    assert await count(ctx, TaskEvent, TaskEvent.task_id.in_([running, waiting, done])) == 0
    assert await count(ctx, Workflow, Workflow.team_id == team_id) == 0
    assert await count(ctx, WorkflowSnapshot, WorkflowSnapshot.workflow_id == workflow_id) == 0
    assert await count(ctx, IdempotencyKey, IdempotencyKey.team_id == team_id) == 0
    assert await count(ctx, Credential, Credential.team_id == team_id) == 0
    assert_error(await client.get(f"{API}/r/tasks", headers=sk), 401)
    assert_error(await client.get(f"{API}/r/tasks/{running}", headers=sk), 401)

    # The other team is untouched.
    assert (await get_task(other, theirs))["task_status"] == "pending"
    assert await count(ctx, Workflow, Workflow.id == other_workflow) == 1
