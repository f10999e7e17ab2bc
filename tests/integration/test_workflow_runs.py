"""Import a real text-to-image graph, run it by id, slug and slug@version, read tasks back."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runyard.context import ServiceContext
from runyard.store.work import WorkRepos
from tests.fixtures.graphs import text_to_image_workflow
from tests.integration.conftest import Account, Accounts

TASK_FIELDS = {
    "id",
    "workflow_id",
    "task_source",
    "task_status",
    "created_at",
    "task_error",
    "retry_count",
    "started_at",
    "completed_at",
    "agent_id",
    "agent_labels",
    "gateway_id",
    "gpu_type",
    "dispatch_target",
    "target_pool",
    "tool_type",
}


async def _import(owner: Account, **extra: Any) -> str:
    response = await owner.request(
        "POST", "/api/v1/workflows/import", json=text_to_image_workflow(**extra)
    )
    assert response.status_code == 200, response.text
    workflow_id: str = response.json()["id"]
    return workflow_id


async def _rendered_graph(ctx: ServiceContext, team_id: str, task_id: str) -> dict[str, Any]:
    async with ctx.db.read() as session:
        task = await WorkRepos(session).task(team_id, task_id)
    assert task is not None
    return task.workflow_json


async def test_run_by_id_slug_and_version_and_read_back(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("owner")
    workflow_id = await _import(owner)
    sk = await owner.key()
    sk_headers = {"Authorization": f"Bearer {sk}"}
    client = owner.client

    # Version 2 changes the default steps; version 1 stays addressable as text-to-image@1.
    v2 = text_to_image_workflow()
    v2["parameters"][2]["default"] = 30
    assert (await owner.request("POST", "/api/v1/workflows/import", json=v2)).json()[
        "id"
    ] == workflow_id

    by_id = await client.post(
        f"/api/v1/r/workflows/{workflow_id}/run",
        headers=sk_headers,
        json={"parameters": {"prompt": "a red fox", "seed": 42}},
    )
    assert by_id.status_code == 202, by_id.text
    by_slug = await owner.request(
        "POST",
        "/api/v1/r/workflows/slug/text-to-image/run",
        json={"parameters": {"prompt": "a lighthouse", "steps": 12, "sampler": "dpmpp_2m"}},
    )
    assert by_slug.status_code == 202, by_slug.text
    pinned = await client.post(
        "/api/v1/r/workflows/slug/text-to-image@1/run",
        headers=sk_headers,
        json={"parameters": {"prompt": "an owl"}, "priority": 5},
    )
    assert pinned.status_code == 202, pinned.text

    task = await client.get(f"/api/v1/r/tasks/{by_id.json()['task_id']}", headers=sk_headers)
    assert task.status_code == 200
    body = task.json()
    assert set(body) == TASK_FIELDS
    assert body["id"] == by_id.json()["task_id"]
    assert body["workflow_id"] == workflow_id
    assert body["task_source"] == "api_key"
    assert body["task_status"] == "pending"
    assert datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert body["retry_count"] == 0
    for unassigned in (
        "task_error",
        "started_at",
        "completed_at",
        "agent_id",
        "agent_labels",
        "gateway_id",
        "gpu_type",
    ):
        assert body[unassigned] is None, unassigned
    assert (body["dispatch_target"], body["target_pool"], body["tool_type"]) == (
        "agent",
        "team",
        "comfyui",
    )
    by_slug_task = await owner.request("GET", f"/api/v1/r/tasks/{by_slug.json()['task_id']}")
    assert by_slug_task.json()["task_source"] == "jwt"

    # The rendered graph carries the values (and each version's defaults).
    graph = await _rendered_graph(ctx, owner.team_id or "", by_id.json()["task_id"])
    assert graph["6"]["inputs"]["text"] == "a red fox"
    assert graph["3"]["inputs"]["seed"] == 42
    assert graph["3"]["inputs"]["steps"] == 30  # v2 default
    assert graph["7"]["inputs"]["text"] == "text, watermark"
    assert graph["3"]["inputs"]["model"] == ["4", 0]  # links untouched
    graph = await _rendered_graph(ctx, owner.team_id or "", by_slug.json()["task_id"])
    assert graph["3"]["inputs"]["steps"] == 12
    assert graph["3"]["inputs"]["sampler_name"] == "dpmpp_2m"
    graph = await _rendered_graph(ctx, owner.team_id or "", pinned.json()["task_id"])
    assert graph["3"]["inputs"]["steps"] == 20  # v1 default

    listed = await client.get("/api/v1/r/tasks", headers=sk_headers)
    ids = [t["id"] for t in listed.json()["task_list"]]
    assert ids == [pinned.json()["task_id"], by_slug.json()["task_id"], by_id.json()["task_id"]]
    assert listed.json()["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 3}


async def test_editing_the_workflow_never_changes_a_submitted_task(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("owner")
    workflow_id = await _import(owner)
    run = await owner.request(
        "POST", f"/api/v1/r/workflows/{workflow_id}/run", json={"parameters": {"prompt": "x"}}
    )
    task_id = run.json()["task_id"]
    changed = text_to_image_workflow()
    changed["workflow_json"]["4"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    assert (
        await owner.request("PUT", f"/api/v1/workflows/{workflow_id}", json=changed)
    ).status_code == 200
    graph = await _rendered_graph(ctx, owner.team_id or "", task_id)
    assert graph["4"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
