"""Workflow management over HTTP: CRUD, import upsert, versions, snapshots, validation, limits."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import func, select

from runyard.app import create_app
from runyard.context import ServiceContext
from runyard.domain.limits import DEFAULT_MAX_RETRIES
from runyard.store.tables import Task, Workflow, WorkflowSnapshot
from runyard.store.work import WorkRepos
from tests.conftest import FakeClock
from tests.fixtures.graphs import TEXT_TO_IMAGE_PARAMETERS, text_to_image, text_to_image_workflow
from tests.integration.conftest import Account, Accounts, assert_error, ok, when

API = "/api/v1"

#: The Workflow object of the reference (§2.8), every field.
WORKFLOW_FIELDS = {
    "id",
    "workflow_slug",
    "display_name",
    "version",
    "workflow_status",
    "created_at",
    "updated_at",
    "description",
    "workflow_json",
    "parameters",
    "required_labels",
    "task_timeout",
    "max_retries",
    "preferred_gpu",
    "default_dispatch_target",
    "min_vram_gb",
    "required_models",
    "tool_type",
}


# -- helpers -----------------------------------------------------------------------------------


async def imported(owner: Account, body: dict[str, Any] | None = None, **extra: Any) -> str:
    payload = body if body is not None else text_to_image_workflow(**extra)
    workflow_id: str = ok(await owner.request("POST", f"{API}/workflows/import", json=payload))[
        "id"
    ]
    return workflow_id


async def details(account: Account, workflow_id: str) -> dict[str, Any]:
    body: dict[str, Any] = ok(await account.request("GET", f"{API}/workflows/{workflow_id}"))
    return body


async def snapshots(account: Account, workflow_id: str, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = ok(
        await account.request("GET", f"{API}/workflows/{workflow_id}/snapshots", params=params)
    )
    return body


async def stored(ctx: ServiceContext) -> tuple[int, int]:
    """(workflows, snapshots) rows in the database, all teams."""
    async with ctx.db.read() as session:
        workflows = (await session.execute(select(func.count()).select_from(Workflow))).scalar()
        snaps = (await session.execute(select(func.count()).select_from(WorkflowSnapshot))).scalar()
    return int(workflows or 0), int(snaps or 0)


def sk_headers(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


# -- create, import, get, list ----------------------------------------------------------------


async def test_create_refuses_a_duplicate_slug_in_the_same_team_only(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    created = ok(await owner.request("POST", f"{API}/workflows", json=text_to_image_workflow()))
    assert list(created) == ["id"]
    assert str(uuid.UUID(created["id"])) == created["id"]

    again = text_to_image_workflow(display_name="Another one")
    assert_error(
        await owner.request("POST", f"{API}/workflows", json=again), 409, "'text-to-image'"
    )
    assert (await details(owner, created["id"]))["display_name"] == "Text to image"
    assert await stored(ctx) == (1, 1)

    # The same slug in another team is a different workflow.
    theirs = ok(await other.request("POST", f"{API}/workflows", json=text_to_image_workflow()))
    assert theirs["id"] != created["id"]
    assert (await details(other, theirs["id"]))["version"] == 1
    # ... and neither team sees the other's.
    assert_error(await other.request("GET", f"{API}/workflows/{created['id']}"), 404)
    assert_error(await owner.request("GET", f"{API}/r/workflows/{theirs['id']}"), 404)
    assert_error(
        await other.request("PUT", f"{API}/workflows/{created['id']}", json={"description": "x"}),
        404,
    )
    assert_error(await other.request("DELETE", f"{API}/workflows/{created['id']}"), 404)
    assert_error(
        await other.request("POST", f"{API}/r/workflows/{created['id']}/run", json={}), 404
    )
    listed = ok(await owner.request("GET", f"{API}/workflows"))
    assert [w["id"] for w in listed["workflow_list"]] == [created["id"]]


async def test_import_upserts_by_slug(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    first = text_to_image_workflow(
        preferred_gpu="RTX_4090", min_vram_gb=24, required_models=["checkpoints/a.safetensors"]
    )
    workflow_id = await imported(owner, first)
    created_at = (await details(owner, workflow_id))["created_at"]

    clock.advance(60)
    graph = text_to_image()
    graph["4"]["inputs"]["ckpt_name"] = "sdxl-base.safetensors"
    second = {
        "workflow_slug": "text-to-image",
        "display_name": "SDXL",
        "workflow_json": graph,
        "parameters": [TEXT_TO_IMAGE_PARAMETERS[0]],
        "required_labels": ["sdxl"],
        "task_timeout": 900,
    }
    assert await imported(owner, second) == workflow_id

    body = await details(owner, workflow_id)
    assert body["version"] == 2
    assert body["display_name"] == "SDXL"
    assert body["workflow_json"] == graph
    assert [p["key"] for p in body["parameters"]] == ["prompt"]
    assert body["required_labels"] == ["sdxl"]
    assert body["task_timeout"] == 900
    # "All fields are updated": what the second import left out is back to its default.
    assert body["description"] == ""
    assert body["max_retries"] == DEFAULT_MAX_RETRIES
    assert body["preferred_gpu"] is None
    assert body["min_vram_gb"] is None
    assert body["required_models"] == []
    assert body["created_at"] == created_at
    assert when(body["updated_at"]) == clock.now()
    assert await stored(ctx) == (1, 2)
    listed = await snapshots(owner, workflow_id)
    assert [s["workflow_version"] for s in listed["snapshot_list"]] == [2, 1]


async def test_get_returns_every_reference_field(accounts: Accounts, clock: FakeClock) -> None:
    owner = await accounts.signup("alice")
    params = copy.deepcopy(TEXT_TO_IMAGE_PARAMETERS)
    params[0]["node_id"] = 6  # people write node ids as numbers; they are strings in the graph
    params[0]["description"] = "What to draw"
    body = text_to_image_workflow(
        parameters=params,
        preferred_gpu="RTX_4090",
        min_vram_gb=24,
        required_models=["checkpoints/sdxl-base.safetensors", "loras/style.safetensors"],
        default_dispatch_target="agent",
        tool_type="comfyui",
    )
    workflow_id = await imported(owner, body)

    got = await details(owner, workflow_id)
    assert set(got) == WORKFLOW_FIELDS
    assert got["id"] == workflow_id
    assert got["workflow_slug"] == "text-to-image"
    assert got["display_name"] == "Text to image"
    assert got["description"] == "SD 1.5 text-to-image"
    assert got["version"] == 1
    assert got["workflow_status"] == "active"
    assert when(got["created_at"]) == when(got["updated_at"]) == clock.now()
    assert got["workflow_json"] == text_to_image()
    assert got["required_labels"] == ["gpu", "comfyui"]
    assert got["task_timeout"] == 300
    assert got["max_retries"] == 2
    assert got["preferred_gpu"] == "RTX_4090"
    assert got["min_vram_gb"] == 24
    assert got["required_models"] == [
        "checkpoints/sdxl-base.safetensors",
        "loras/style.safetensors",
    ]
    assert got["default_dispatch_target"] == "agent"
    assert got["tool_type"] == "comfyui"

    by_key = {p["key"]: p for p in got["parameters"]}
    assert list(by_key) == [p["key"] for p in TEXT_TO_IMAGE_PARAMETERS]
    prompt = by_key["prompt"]
    assert prompt["node_id"] == "6"
    assert (prompt["field"], prompt["type"], prompt["required"]) == ("text", "string", True)
    assert (prompt["label"], prompt["description"]) == ("Prompt", "What to draw")
    steps = by_key["steps"]
    assert (steps["type"], steps["min"], steps["max"], steps["default"]) == ("number", 1, 150, 20)
    assert by_key["sampler"]["options"] == ["euler", "euler_ancestral", "dpmpp_2m"]

    # Defaults of a minimal import.
    minimal = ok(
        await owner.request(
            "POST",
            f"{API}/workflows",
            json={
                "workflow_slug": "mini",
                "display_name": "Mini",
                "workflow_json": text_to_image(),
            },
        )
    )
    got = await details(owner, minimal["id"])
    assert set(got) == WORKFLOW_FIELDS
    assert (got["tool_type"], got["default_dispatch_target"]) == ("comfyui", "agent")
    # Transient failures are retried unless the workflow says otherwise.
    assert (got["task_timeout"], got["max_retries"], got["version"]) == (0, DEFAULT_MAX_RETRIES, 1)
    assert got["parameters"] == got["required_labels"] == got["required_models"] == []
    assert got["preferred_gpu"] is None and got["min_vram_gb"] is None

    assert_error(await owner.request("GET", f"{API}/workflows/{uuid.uuid4()}"), 404)


async def test_list_paginates_filters_and_leaves_out_graphs(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    ids = {slug: await imported(owner, slug=slug) for slug in ("bravo", "alpha", "charlie")}
    ok(await owner.request("POST", f"{API}/workflows/{ids['bravo']}/disable"))

    first = ok(await owner.request("GET", f"{API}/workflows", params={"per_page": 2}))
    assert first["page_meta"] == {"current_page": 1, "per_page": 2, "total_count": 3}
    second = ok(
        await owner.request("GET", f"{API}/workflows", params={"per_page": 2, "current_page": 2})
    )
    assert second["page_meta"] == {"current_page": 2, "per_page": 2, "total_count": 3}
    items = first["workflow_list"] + second["workflow_list"]
    assert [len(first["workflow_list"]), len(second["workflow_list"])] == [2, 1]
    assert sorted(w["id"] for w in items) == sorted(ids.values())
    for item in items:
        assert "workflow_json" not in item
        assert set(item) == WORKFLOW_FIELDS - {"workflow_json"}
        assert item["parameters"]  # runtime clients need the parameters to build a run

    disabled = ok(
        await owner.request("GET", f"{API}/workflows", params={"workflow_status": "disabled"})
    )
    assert [w["id"] for w in disabled["workflow_list"]] == [ids["bravo"]]
    assert disabled["page_meta"]["total_count"] == 1
    assert disabled["workflow_list"][0]["workflow_status"] == "disabled"
    active = ok(
        await owner.request("GET", f"{API}/workflows", params={"workflow_status": "active"})
    )
    assert sorted(w["id"] for w in active["workflow_list"]) == sorted(
        [ids["alpha"], ids["charlie"]]
    )
    assert_error(
        await owner.request("GET", f"{API}/workflows", params={"workflow_status": "paused"}),
        400,
        "workflow_status",
    )
    assert_error(await owner.request("GET", f"{API}/workflows", params={"per_page": 101}), 400)
    past_the_end = ok(await owner.request("GET", f"{API}/workflows", params={"current_page": 9}))
    assert past_the_end["workflow_list"] == []
    assert past_the_end["page_meta"]["total_count"] == 3

    # Another team's list is its own.
    stranger = await accounts.signup("bob")
    assert ok(await stranger.request("GET", f"{API}/workflows"))["workflow_list"] == []


# -- update ------------------------------------------------------------------------------------


async def test_put_changes_only_the_fields_sent(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await imported(owner, preferred_gpu="RTX_4090", min_vram_gb=24)
    before = await details(owner, workflow_id)

    clock.advance(30)
    response = ok(
        await owner.request(
            "PUT", f"{API}/workflows/{workflow_id}", json={"description": "Now with more fox"}
        )
    )
    assert response == {"id": workflow_id}
    after = await details(owner, workflow_id)
    assert after["description"] == "Now with more fox"
    assert after["version"] == 2
    assert when(after["updated_at"]) == clock.now()
    unchanged = WORKFLOW_FIELDS - {"description", "version", "updated_at"}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    listed = await snapshots(owner, workflow_id)
    assert [s["workflow_version"] for s in listed["snapshot_list"]] == [2, 1]

    # A graph change is a new version whose snapshot holds the new graph.
    graph = text_to_image()
    graph["5"]["inputs"]["width"] = 768
    ok(await owner.request("PUT", f"{API}/workflows/{workflow_id}", json={"workflow_json": graph}))
    after = await details(owner, workflow_id)
    assert (after["version"], after["workflow_json"]) == (3, graph)
    assert after["description"] == "Now with more fox"
    newest = (await snapshots(owner, workflow_id))["snapshot_list"][0]
    snap = ok(await owner.request("GET", f"{API}/workflows/{workflow_id}/snapshots/{newest['id']}"))
    assert (snap["workflow_version"], snap["workflow_json"]) == (3, graph)

    # Nullable fields can be cleared.
    ok(
        await owner.request(
            "PUT",
            f"{API}/workflows/{workflow_id}",
            json={"preferred_gpu": None, "min_vram_gb": None},
        )
    )
    after = await details(owner, workflow_id)
    assert (after["preferred_gpu"], after["min_vram_gb"], after["version"]) == (None, None, 4)

    # A status-only change is not a new version and writes no snapshot.
    snaps_before = await stored(ctx)
    ok(
        await owner.request(
            "PUT", f"{API}/workflows/{workflow_id}", json={"workflow_status": "disabled"}
        )
    )
    after = await details(owner, workflow_id)
    assert (after["workflow_status"], after["version"]) == ("disabled", 4)
    assert await stored(ctx) == snaps_before


async def test_put_refusals_change_nothing(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await imported(owner)
    await imported(owner, slug="taken")
    before = await details(owner, workflow_id)
    counts = await stored(ctx)

    async def put(body: Any) -> httpx.Response:
        return await owner.request("PUT", f"{API}/workflows/{workflow_id}", json=body)

    assert_error(await put({"display_name": None}), 400, "display_name")
    assert_error(await put({"workflow_json": None}), 400, "workflow_json")
    assert_error(await put({"display_name": "   "}), 400, "display_name")
    assert_error(await put({"workflow_slug": "taken"}), 409, "'taken'")
    assert_error(await put({"workflow_slug": "Not-A-Slug"}), 400, "workflow_slug")
    assert_error(await put({"task_timeout": -1}), 400, "task_timeout")
    assert_error(await put({"workflow_status": "paused"}), 400, "workflow_status")
    assert_error(await put({"workflow_json": {"nodes": [], "links": []}}), 400, "API")
    # A graph without the node a parameter points at: the parameter is named.
    graph = text_to_image()
    del graph["5"]["inputs"]["width"]
    assert_error(await put({"workflow_json": graph}), 400, "'width'")
    assert_error(
        await put({"parameters": [{"key": "x", "node_id": "77", "field": "a"}]}), 400, "'77'"
    )
    assert_error(await put([1, 2]), 400)
    assert_error(
        await owner.request("PUT", f"{API}/workflows/{uuid.uuid4()}", json={"description": "x"}),
        404,
    )

    assert await details(owner, workflow_id) == before
    assert await stored(ctx) == counts

    # Renaming to a free slug moves the runtime address with it.
    ok(await put({"workflow_slug": "txt2img"}))
    assert ok(await owner.request("GET", f"{API}/r/workflows/slug/txt2img"))["id"] == workflow_id
    assert_error(await owner.request("GET", f"{API}/r/workflows/slug/text-to-image"), 404)


# -- enable / disable / delete ----------------------------------------------------------------


async def test_disabled_workflows_refuse_runs_until_enabled(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await imported(owner)
    run = {"parameters": {"prompt": "a fox"}}

    assert ok(await owner.request("POST", f"{API}/workflows/{workflow_id}/disable")) == {
        "is_success": True
    }
    got = await details(owner, workflow_id)
    assert (got["workflow_status"], got["version"]) == ("disabled", 1)
    assert_error(
        await owner.request("POST", f"{API}/r/workflows/{workflow_id}/run", json=run),
        409,
        "disabled",
    )
    assert_error(
        await owner.request("POST", f"{API}/r/workflows/slug/text-to-image/run", json=run),
        409,
        "disabled",
    )
    # Pinning a version does not get around it.
    assert_error(
        await owner.request("POST", f"{API}/r/workflows/slug/text-to-image@1/run", json=run),
        409,
        "disabled",
    )
    assert ok(await owner.request("GET", f"{API}/r/tasks"))["page_meta"]["total_count"] == 0
    # Disabling twice is fine.
    ok(await owner.request("POST", f"{API}/workflows/{workflow_id}/disable"))

    assert ok(await owner.request("POST", f"{API}/workflows/{workflow_id}/enable")) == {
        "is_success": True
    }
    got = await details(owner, workflow_id)
    assert (got["workflow_status"], got["version"]) == ("active", 1)
    accepted = ok(
        await owner.request("POST", f"{API}/r/workflows/{workflow_id}/run", json=run), 202
    )
    assert list(accepted) == ["task_id"]
    assert_error(await owner.request("POST", f"{API}/workflows/{uuid.uuid4()}/enable"), 404)


async def test_delete_keeps_submitted_tasks(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    workflow_id = await imported(owner)
    ok(await owner.request("PUT", f"{API}/workflows/{workflow_id}", json={"description": "v2"}))
    task_id = ok(
        await owner.request(
            "POST", f"{API}/r/workflows/{workflow_id}/run", json={"parameters": {"prompt": "x"}}
        ),
        202,
    )["task_id"]

    response = await owner.request("DELETE", f"{API}/workflows/{workflow_id}")
    assert response.status_code == 204, response.text
    assert response.content == b""

    run = {"parameters": {"prompt": "x"}}
    assert_error(await owner.request("GET", f"{API}/workflows/{workflow_id}"), 404)
    assert_error(await owner.request("GET", f"{API}/r/workflows/{workflow_id}"), 404)
    assert_error(await owner.request("POST", f"{API}/r/workflows/{workflow_id}/run", json=run), 404)
    assert_error(
        await owner.request("POST", f"{API}/r/workflows/slug/text-to-image/run", json=run), 404
    )
    assert_error(
        await owner.request("POST", f"{API}/r/workflows/slug/text-to-image@1/run", json=run), 404
    )
    assert_error(await owner.request("GET", f"{API}/workflows/{workflow_id}/snapshots"), 404)
    assert_error(await owner.request("DELETE", f"{API}/workflows/{workflow_id}"), 404)
    assert await stored(ctx) == (0, 0)

    # The task submitted before is still there, with its graph.
    task = ok(await owner.request("GET", f"{API}/r/tasks/{task_id}"))
    assert (task["workflow_id"], task["task_status"]) == (workflow_id, "pending")
    async with ctx.db.read() as session:
        row = await WorkRepos(session).task(owner.team_id or "", task_id)
    assert row is not None and row.workflow_json["6"]["inputs"]["text"] == "x"
    assert ok(await owner.request("POST", f"{API}/r/tasks/{task_id}/cancel")) == {
        "is_success": True
    }

    # The slug is free again: a new workflow, starting over at version 1.
    again = await imported(owner)
    assert again != workflow_id
    assert (await details(owner, again))["version"] == 1


# -- snapshots, restore, slug@version ---------------------------------------------------------


def _graph_with_checkpoint(name: str) -> dict[str, Any]:
    graph = text_to_image()
    graph["4"]["inputs"]["ckpt_name"] = name
    return graph


async def test_snapshots_list_newest_first_and_show_each_version(
    accounts: Accounts, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    stranger = await accounts.signup("bob")
    v1_body = text_to_image_workflow()
    workflow_id = await imported(owner, v1_body)
    clock.advance(10)
    ok(await owner.request("PUT", f"{API}/workflows/{workflow_id}", json={"description": "two"}))
    clock.advance(10)
    v3_graph = _graph_with_checkpoint("sdxl.safetensors")
    await imported(owner, text_to_image_workflow(workflow_json=v3_graph, parameters=[]))

    listed = await snapshots(owner, workflow_id)
    assert listed["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 3}
    items = listed["snapshot_list"]
    assert [s["workflow_version"] for s in items] == [3, 2, 1]
    for item in items:
        assert set(item) == {"id", "workflow_id", "workflow_version", "created_at", "snapshot_note"}
        assert item["workflow_id"] == workflow_id
        assert "workflow_json" not in item
    assert [when(s["created_at"]) for s in items] == sorted(
        (when(s["created_at"]) for s in items), reverse=True
    )
    assert len({s["id"] for s in items}) == 3
    page = await snapshots(owner, workflow_id, per_page=1, current_page=2)
    assert [s["workflow_version"] for s in page["snapshot_list"]] == [2]

    first = ok(
        await owner.request("GET", f"{API}/workflows/{workflow_id}/snapshots/{items[2]['id']}")
    )
    assert first["id"] == items[2]["id"]
    assert first["workflow_id"] == workflow_id
    assert first["workflow_version"] == 1
    assert first["workflow_json"] == v1_body["workflow_json"]
    assert [p["key"] for p in first["workflow_params"]] == [p["key"] for p in v1_body["parameters"]]
    assert first["workflow_params"][0]["node_id"] == "6"
    third = ok(
        await owner.request("GET", f"{API}/workflows/{workflow_id}/snapshots/{items[0]['id']}")
    )
    assert (third["workflow_version"], third["workflow_json"]) == (3, v3_graph)
    assert third["workflow_params"] == []

    # A snapshot is only found under its own workflow.
    other_id = await imported(owner, slug="other")
    assert_error(
        await owner.request("GET", f"{API}/workflows/{other_id}/snapshots/{items[0]['id']}"), 404
    )
    assert_error(
        await owner.request("GET", f"{API}/workflows/{workflow_id}/snapshots/{uuid.uuid4()}"), 404
    )
    assert_error(await stranger.request("GET", f"{API}/workflows/{workflow_id}/snapshots"), 404)


async def test_restore_makes_a_new_version_and_keeps_the_replaced_one(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    graph_a = _graph_with_checkpoint("a.safetensors")
    graph_b = _graph_with_checkpoint("b.safetensors")
    workflow_id = await imported(
        owner, text_to_image_workflow(workflow_json=graph_a, display_name="Version A")
    )
    await imported(
        owner,
        text_to_image_workflow(
            workflow_json=graph_b,
            display_name="Version B",
            parameters=[TEXT_TO_IMAGE_PARAMETERS[0]],
        ),
    )
    ok(await owner.request("POST", f"{API}/workflows/{workflow_id}/disable"))
    by_version = {
        s["workflow_version"]: s["id"]
        for s in (await snapshots(owner, workflow_id))["snapshot_list"]
    }

    restored = ok(
        await owner.request(
            "POST", f"{API}/workflows/{workflow_id}/snapshots/{by_version[1]}/restore"
        )
    )
    assert restored == {"id": workflow_id}
    live = await details(owner, workflow_id)
    assert live["version"] == 3
    assert live["workflow_json"] == graph_a
    assert live["display_name"] == "Version A"
    assert [p["key"] for p in live["parameters"]] == [p["key"] for p in TEXT_TO_IMAGE_PARAMETERS]
    # Restoring content does not re-enable a workflow someone disabled.
    assert live["workflow_status"] == "disabled"
    ok(await owner.request("POST", f"{API}/workflows/{workflow_id}/enable"))

    listed = (await snapshots(owner, workflow_id))["snapshot_list"]
    assert [s["workflow_version"] for s in listed] == [3, 2, 1]
    assert "1" in listed[0]["snapshot_note"]
    v3 = ok(
        await owner.request("GET", f"{API}/workflows/{workflow_id}/snapshots/{listed[0]['id']}")
    )
    assert v3["workflow_json"] == graph_a

    # The replaced version is still addressable and runnable, and can itself be restored.
    pinned = ok(await owner.request("GET", f"{API}/r/workflows/slug/text-to-image@2"))
    assert (pinned["version"], pinned["workflow_json"]) == (2, graph_b)
    assert pinned["display_name"] == "Version B"
    task_id = ok(
        await owner.request(
            "POST",
            f"{API}/r/workflows/slug/text-to-image@2/run",
            json={"parameters": {"prompt": "pinned"}},
        ),
        202,
    )["task_id"]
    async with ctx.db.read() as session:
        task = await WorkRepos(session).task(owner.team_id or "", task_id)
    assert task is not None
    assert task.workflow_version == 2
    assert task.workflow_json["4"]["inputs"]["ckpt_name"] == "b.safetensors"
    assert task.workflow_json["6"]["inputs"]["text"] == "pinned"

    ok(
        await owner.request(
            "POST", f"{API}/workflows/{workflow_id}/snapshots/{by_version[2]}/restore"
        )
    )
    live = await details(owner, workflow_id)
    assert (live["version"], live["workflow_json"], live["display_name"]) == (
        4,
        graph_b,
        "Version B",
    )
    assert_error(
        await owner.request(
            "POST", f"{API}/workflows/{workflow_id}/snapshots/{uuid.uuid4()}/restore"
        ),
        404,
    )
    assert (await details(owner, workflow_id))["version"] == 4


async def test_slug_at_version_addresses_a_saved_version(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    sk = await owner.key()
    workflow_id = await imported(owner, display_name="First")
    await imported(owner, text_to_image_workflow(workflow_json=_graph_with_checkpoint("v2.ckpt")))

    v1 = ok(await owner.request("GET", f"{API}/r/workflows/slug/text-to-image@1"))
    assert set(v1) == WORKFLOW_FIELDS
    assert (v1["id"], v1["version"], v1["display_name"]) == (workflow_id, 1, "First")
    assert v1["workflow_json"] == text_to_image()
    live = ok(await owner.request("GET", f"{API}/r/workflows/slug/text-to-image"))
    assert live["version"] == 2
    assert live["workflow_json"]["4"]["inputs"]["ckpt_name"] == "v2.ckpt"
    assert ok(await owner.request("GET", f"{API}/r/workflows/slug/text-to-image@2")) == live
    # An integration key sees the pinned version too, without its graph.
    pinned = ok(
        await owner.client.get(f"{API}/r/workflows/slug/text-to-image@1", headers=sk_headers(sk))
    )
    assert "workflow_json" not in pinned and pinned["version"] == 1

    bad_refs = (
        "text-to-image@0",
        "text-to-image@x",
        "text-to-image@",
        "text-to-image@-1",
        "text-to-image@1.5",
        "text-to-image@²",  # a digit to str.isdigit(), not to int()
        "text-to-image@99999999999",  # beyond any version a database column holds
    )
    for bad in bad_refs:
        assert_error(await owner.request("GET", f"{API}/r/workflows/slug/{bad}"), 400, bad)
        assert_error(
            await owner.request(
                "POST", f"{API}/r/workflows/slug/{bad}/run", json={"parameters": {"prompt": "x"}}
            ),
            400,
        )
    assert_error(await owner.request("GET", f"{API}/r/workflows/slug/text-to-image@99"), 404, "99")
    assert_error(
        await owner.request(
            "POST", f"{API}/r/workflows/slug/text-to-image@99/run", json={"parameters": {}}
        ),
        404,
    )
    assert_error(await owner.request("GET", f"{API}/r/workflows/slug/no-such-thing@1"), 404)
    assert_error(await owner.request("GET", f"{API}/r/workflows/slug/no-such-thing"), 404)
    assert ok(await owner.request("GET", f"{API}/r/tasks"))["page_meta"]["total_count"] == 0


# -- validation --------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set_graph(graph: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["workflow_json"] = graph

    return mutate


def _graph_edit(edit: Callable[[dict[str, Any]], None]) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        edit(body["workflow_json"])

    return mutate


def _param_edit(index: int, **changes: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["parameters"][index].update(changes)

    return mutate


def _add_param(param: dict[str, Any]) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["parameters"].append(param)

    return mutate


def _set(**fields: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body.update(fields)

    return mutate


UI_FORMAT = {
    "last_node_id": 9,
    "last_link_id": 9,
    "nodes": [{"id": 3, "type": "KSampler", "inputs": [], "outputs": [], "widgets_values": []}],
    "links": [[1, 4, 0, 3, 0, "MODEL"]],
    "groups": [],
    "version": 0.4,
}

#: (what is wrong, how to break a good import body, fragments the error must contain)
INVALID_IMPORTS: list[tuple[str, Mutation, tuple[str, ...]]] = [
    ("UI format", _set_graph(UI_FORMAT), ("API",)),
    (
        "link to a missing node",
        _graph_edit(lambda g: g["3"]["inputs"].__setitem__("model", ["99", 0])),
        ("'99'", "'3'"),
    ),
    (
        "node without class_type",
        _graph_edit(lambda g: g["8"].pop("class_type")),
        ("'8'", "class_type"),
    ),
    (
        "node that is not an object",
        _graph_edit(lambda g: g.__setitem__("12", "KSampler")),
        ("'12'",),
    ),
    ("empty graph", _set_graph({}), ("workflow_json",)),
    ("graph is a list", _set_graph([{"class_type": "KSampler"}]), ("workflow_json",)),
    ("parameter on a missing node", _param_edit(0, node_id="42"), ("'prompt'", "'42'")),
    ("parameter on a missing input", _param_edit(0, field="txt"), ("'prompt'", "'txt'")),
    (
        "parameter without a target",
        _param_edit(0, node_id=None, field=None),
        ("'prompt'", "node_id"),
    ),
    (
        "duplicate parameter keys",
        _add_param({"key": "prompt", "type": "string", "node_id": "7", "field": "text"}),
        ("'prompt'", "duplicate"),
    ),
    (
        "select without options",
        _add_param({"key": "scheduler", "type": "select", "node_id": "3", "field": "scheduler"}),
        ("'scheduler'", "options"),
    ),
    ("default above max", _param_edit(2, default=500), ("'steps'", "default")),
    ("default below min", _param_edit(2, default=0), ("'steps'", "default")),
    ("default of the wrong type", _param_edit(2, default="twenty"), ("'steps'", "default")),
    ("default not among options", _param_edit(5, default="ddim"), ("'sampler'", "default")),
    ("min above max", _param_edit(2, min=200), ("'steps'", "min")),
    ("unknown parameter type", _param_edit(0, type="colour"), ("type",)),
    ("bad parameter key", _param_edit(0, key="1 prompt"), ("'1 prompt'",)),
    ("slug with uppercase", _set(workflow_slug="Text-To-Image"), ("workflow_slug",)),
    ("slug too short", _set(workflow_slug="a"), ("workflow_slug",)),
    ("slug too long", _set(workflow_slug="a" * 101), ("workflow_slug",)),
    ("slug with a trailing hyphen", _set(workflow_slug="text-to-image-"), ("workflow_slug",)),
    ("slug with a double hyphen", _set(workflow_slug="text--image"), ("workflow_slug",)),
    ("slug with a space", _set(workflow_slug="text image"), ("workflow_slug",)),
    ("empty display name", _set(display_name="  "), ("display_name",)),
    ("negative timeout", _set(task_timeout=-5), ("task_timeout",)),
    ("unknown tool type", _set(tool_type="blender"), ("tool_type",)),
    ("unknown dispatch target", _set(default_dispatch_target="moon"), ("default_dispatch_target",)),
]


async def test_invalid_imports_are_refused_naming_the_problem(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    for name, mutate, fragments in INVALID_IMPORTS:
        body = text_to_image_workflow()
        mutate(body)
        for route in ("/workflows/import", "/workflows"):
            response = await owner.request("POST", f"{API}{route}", json=body)
            try:
                assert_error(response, 400, *fragments)
            except AssertionError as exc:
                raise AssertionError(f"{name} via {route}: {exc}") from exc
    # Nothing half-stored after any refusal.
    assert await stored(ctx) == (0, 0)
    assert ok(await owner.request("GET", f"{API}/workflows"))["page_meta"]["total_count"] == 0

    # A refused re-import leaves the existing workflow as it was.
    workflow_id = await imported(owner)
    before = await details(owner, workflow_id)
    broken = text_to_image_workflow(display_name="Broken")
    broken["workflow_json"]["3"]["inputs"]["model"] = ["99", 0]
    assert_error(await owner.request("POST", f"{API}/workflows/import", json=broken), 400, "'99'")
    assert await details(owner, workflow_id) == before
    assert await stored(ctx) == (1, 1)

    # Body-level problems are JSON errors too.
    response = await owner.request(
        "POST",
        f"{API}/workflows/import",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400)
    assert_error(
        await owner.request("POST", f"{API}/workflows/import", json={}), 400, "workflow_slug"
    )


# -- roles and credentials --------------------------------------------------------------------


async def test_roles_and_credentials(
    client: httpx.AsyncClient, accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")
    viewer = await accounts.join(owner, "viewer")
    workflow_id = await imported(owner)
    snap_id = (await snapshots(owner, workflow_id))["snapshot_list"][0]["id"]
    sk = sk_headers(await owner.key())

    writes: list[tuple[str, str, Any]] = [
        ("POST", "/workflows/import", text_to_image_workflow(slug="mine")),
        ("POST", "/workflows", text_to_image_workflow(slug="mine")),
        ("PUT", f"/workflows/{workflow_id}", {"description": "changed"}),
        ("POST", f"/workflows/{workflow_id}/disable", None),
        ("POST", f"/workflows/{workflow_id}/enable", None),
        ("POST", f"/workflows/{workflow_id}/snapshots/{snap_id}/restore", None),
        ("DELETE", f"/workflows/{workflow_id}", None),
    ]
    for who in (viewer, member):
        for method, path, body in writes:
            response = await who.request(method, f"{API}{path}", json=body)
            try:
                assert_error(response, 403)
            except AssertionError as exc:
                raise AssertionError(f"{method} {path}: {exc}") from exc
        # Reading is allowed to every member of the team.
        assert (await details(who, workflow_id))["id"] == workflow_id
        assert (await snapshots(who, workflow_id))["page_meta"]["total_count"] == 1

    # Integration keys never reach the management surface.
    reads = [("GET", "/workflows", None), ("GET", f"/workflows/{workflow_id}", None)]
    for method, path, body in [*writes, *reads]:
        response = await client.request(method, f"{API}{path}", json=body, headers=sk)
        try:
            assert_error(response, 403, "sk-")
        except AssertionError as exc:
            raise AssertionError(f"{method} {path}: {exc}") from exc
    assert (await details(owner, workflow_id))["version"] == 1
    assert await stored(ctx) == (1, 1)

    # An admin may manage workflows.
    assert await imported(admin, slug="by-admin")
    ok(await admin.request("PUT", f"{API}/workflows/{workflow_id}", json={"description": "ok"}))
    assert (await details(owner, workflow_id))["version"] == 2


async def test_runtime_reads_hide_the_graph_from_integration_keys(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    viewer = await accounts.join(owner, "viewer")
    workflow_id = await imported(owner)
    sk = sk_headers(await owner.key())
    started = ok(await client.post(f"{API}/desktop/pair/start"))
    ok(
        await owner.request(
            "POST", f"{API}/desktop/pair/confirm", json={"user_code": started["user_code"]}
        )
    )
    dk_raw = ok(
        await client.post(f"{API}/desktop/pair/poll", json={"device_code": started["device_code"]})
    )["raw_key"]
    assert dk_raw.startswith("dk-")
    dk = sk_headers(dk_raw)

    paths = [f"/r/workflows/{workflow_id}", "/r/workflows/slug/text-to-image"]
    for path in paths:
        by_key = ok(await client.get(f"{API}{path}", headers=sk))
        assert "workflow_json" not in by_key, path
        assert set(by_key) == WORKFLOW_FIELDS - {"workflow_json"}
        assert [p["key"] for p in by_key["parameters"]] == [
            p["key"] for p in TEXT_TO_IMAGE_PARAMETERS
        ]
        assert by_key["required_labels"] == ["gpu", "comfyui"]
        for who in (owner, viewer):
            by_session = ok(await who.request("GET", f"{API}{path}"))
            assert by_session["workflow_json"] == text_to_image(), path
        by_device = ok(await client.get(f"{API}{path}", headers=dk))
        assert by_device["workflow_json"] == text_to_image(), path
    listed = ok(await client.get(f"{API}/r/workflows", headers=sk))
    assert [w["id"] for w in listed["workflow_list"]] == [workflow_id]
    assert "workflow_json" not in listed["workflow_list"][0]
    assert listed["page_meta"]["total_count"] == 1
    # A device key acts as its user: an owner's device may manage workflows.
    ok(await client.get(f"{API}/workflows/{workflow_id}", headers=dk))
    assert_error(await client.get(f"{API}/r/workflows"), 401)


# -- limits ------------------------------------------------------------------------------------


def _chain_graph(nodes: int, text_size: int) -> dict[str, Any]:
    """A valid API-format graph: a chain of nodes, each linked to the one before."""
    graph: dict[str, Any] = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}
    }
    filler = "x" * text_size
    for n in range(2, nodes + 1):
        graph[str(n)] = {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": filler, "clip": [str(n - 1), 0]},
        }
    return graph


async def test_large_graphs_are_accepted_up_to_the_node_limit(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    big = _chain_graph(10_000, 450)
    size = len(json.dumps(big))
    assert 4_500_000 < size < 6_000_000, size
    body = {
        "workflow_slug": "big",
        "display_name": "Big",
        "workflow_json": big,
        "parameters": [{"key": "prompt", "type": "string", "node_id": "10000", "field": "text"}],
    }
    workflow_id = await imported(owner, body)
    got = await details(owner, workflow_id)
    assert len(got["workflow_json"]) == 10_000
    assert got["workflow_json"]["10000"]["inputs"]["clip"] == ["9999", 0]
    task_id = ok(
        await owner.request(
            "POST", f"{API}/r/workflows/{workflow_id}/run", json={"parameters": {"prompt": "end"}}
        ),
        202,
    )["task_id"]
    async with ctx.db.read() as session:
        task = await WorkRepos(session).task(owner.team_id or "", task_id)
    assert task is not None and task.workflow_json["10000"]["inputs"]["text"] == "end"

    too_many = _chain_graph(25_000, 1)
    message = assert_error(
        await owner.request(
            "POST",
            f"{API}/workflows/import",
            json={"workflow_slug": "huge", "display_name": "Huge", "workflow_json": too_many},
        ),
        400,
        "25000",
    )
    assert "20000" in message.replace(",", "")
    assert await stored(ctx) == (1, 1)


@asynccontextmanager
async def _own_client(ctx: ServiceContext) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ctx.settings, ctx)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://runyard.test") as c:
        yield c


async def test_bodies_over_the_configured_limit_get_413(ctx: ServiceContext) -> None:
    ctx.settings.server.max_body_bytes = 200_000
    async with _own_client(ctx) as client:
        owner = await Accounts(client).signup("alice")
        body = {
            "workflow_slug": "too-big",
            "display_name": "Too big",
            "workflow_json": _chain_graph(1_000, 300),
        }
        assert len(json.dumps(body)) > 200_000
        message = assert_error(
            await owner.request("POST", f"{API}/workflows/import", json=body), 413, "too large"
        )
        assert "200000" in message.replace(",", ""), message

        # Without a Content-Length (chunked upload) the limit holds as well.
        raw = json.dumps(body).encode()

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(raw), 16_384):
                yield raw[start : start + 16_384]

        response = await owner.request(
            "POST",
            f"{API}/workflows/import",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert "content-length" not in {k.lower() for k in response.request.headers}
        assert_error(response, 413, "too large")
        assert await stored(ctx) == (0, 0)

        # Under the limit all is normal.
        assert await imported(owner)
        assert await stored(ctx) == (1, 1)


async def test_the_same_slug_in_two_teams_runs_each_teams_own(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    """Workflows of two teams with the same slug stay apart at run time."""
    alice = await accounts.signup("alice")
    bob = await accounts.signup("bob")
    alice_wf = await imported(alice, display_name="Alice's")
    bob_wf = await imported(
        bob, text_to_image_workflow(workflow_json=_graph_with_checkpoint("bob"))
    )
    run = {"parameters": {"prompt": "x"}}
    task_id = ok(
        await bob.request("POST", f"{API}/r/workflows/slug/text-to-image/run", json=run), 202
    )["task_id"]
    async with ctx.db.read() as session:
        task = await session.get(Task, task_id)
    assert task is not None
    assert (task.workflow_id, task.team_id) == (bob_wf, bob.team_id)
    assert task.workflow_json["4"]["inputs"]["ckpt_name"] == "bob"
    assert alice_wf != bob_wf
