"""Input uploads, results and retention through the API (local storage), on both databases.

The app runs in-process; signed links point at the same app (``http://runyard.test``), so the
PUTs and GETs here go through the real link routes. The fake clock moves links and files past
their expiry.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from runyard.context import ServiceContext
from runyard.domain.tasks import TaskStatus
from runyard.protocol import v1
from runyard.services.retention import sweep
from runyard.store.tables import StoredFile, TaskOutput
from tests.conftest import FakeClock
from tests.integration.conftest import Account, Accounts
from tests.integration.uploads import (
    attempt_uploads,
    complete,
    image_workflow,
    move,
    presign,
    start_attempt,
    transfers,
    upload_input,
)

API = "/api/v1"
DAY = 24 * 3600


def error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error_message"], body
    for fragment in fragments:
        assert fragment in body["error_message"], body
    message: str = body["error_message"]
    return message


async def count(ctx: ServiceContext, table: Any) -> int:
    async with ctx.db.read() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


async def workflow(owner: Account) -> str:
    response = await owner.request("POST", f"{API}/workflows/import", json=image_workflow())
    assert response.status_code == 200, response.text
    workflow_id: str = response.json()["id"]
    return workflow_id


async def run(owner: Account, workflow_id: str, image: Any) -> httpx.Response:
    return await owner.request(
        "POST",
        f"{API}/r/workflows/{workflow_id}/run",
        json={"parameters": {"prompt": "a fox", "init_image": image}},
    )


def objects_root(ctx: ServiceContext) -> Any:
    return ctx.settings.storage.local_root(ctx.settings.data_dir)


# -- presign and upload ------------------------------------------------------------------------


async def test_presign_upload_and_run_with_the_file(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    body = await presign(owner.client, owner.headers(), "my photo.png", 5, "image/png")
    assert set(body) == {"file_key", "upload_url", "upload_headers", "expires_at"}
    assert body["file_key"].startswith(f"inputs/{owner.team_id}/")
    assert body["file_key"].endswith("/my photo.png")
    assert body["upload_headers"] == {
        "Content-Length": "5",
        "Content-Type": "image/png",
        "If-None-Match": "*",
    }
    assert body["upload_url"].startswith("http://runyard.test/api/v1/objects/inputs/")

    workflow_id = await workflow(owner)
    # Not uploaded yet: the key is the team's, but there is no file behind it.
    error(await run(owner, workflow_id, body["file_key"]), 400, "not been uploaded")

    put = await owner.client.put(
        body["upload_url"], content=b"hello", headers=body["upload_headers"]
    )
    assert put.status_code == 200, put.text
    assert (objects_root(ctx) / body["file_key"]).read_bytes() == b"hello"
    response = await run(owner, workflow_id, body["file_key"])
    assert response.status_code == 202, response.text

    # The same upload link again: never overwritten.
    again = await owner.client.put(
        body["upload_url"], content=b"HELLO", headers=body["upload_headers"]
    )
    error(again, 412, "already exists")
    assert (objects_root(ctx) / body["file_key"]).read_bytes() == b"hello"


async def test_bad_uploads_are_refused_and_write_nothing(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    body = await presign(owner.client, owner.headers(), "a.png", 5, "image/png")
    url, headers = body["upload_url"], body["upload_headers"]
    key = body["file_key"]

    cases: list[tuple[str, dict[str, str], bytes, str]] = [
        (url, {**headers, "Content-Length": "4"}, b"hell", "Content-Length"),
        (
            url,
            {k: v for k, v in headers.items() if k != "If-None-Match"},
            b"hello",
            "If-None-Match",
        ),
        (url, {k: v for k, v in headers.items() if k != "Content-Type"}, b"hello", "Content-Type"),
        (url, {**headers, "Content-Type": "text/html"}, b"hello", "Content-Type"),
        (url.replace("size=5", "size=6"), headers, b"hello", "signature"),
        (url.replace("sig=", "sig=0"), headers, b"hello", "signature"),
        (url.replace("/a.png", "/b.png"), headers, b"hello", "signature"),
    ]
    for target, sent, data, fragment in cases:
        response = await owner.client.put(target, content=data, headers=sent)
        error(response, 403, fragment)
    assert not (objects_root(ctx) / key).exists()

    clock.advance(ctx.settings.storage.link_ttl_seconds + 1)
    error(await owner.client.put(url, content=b"hello", headers=headers), 403, "expired")
    assert not (objects_root(ctx) / key).exists()
    # A traversal in the path of a link is a 400 before anything else.
    error(await owner.client.put(f"{API}/objects/inputs/%2e%2e/x", content=b"x"), 400)


async def test_presign_checks_its_input(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    limit = ctx.settings.storage.max_upload_mb * 1024 * 1024

    async def attempt(**body: Any) -> httpx.Response:
        payload = {"file_name": "a.png", "file_size": 5, "content_type": "image/png", **body}
        return await owner.request("POST", f"{API}/r/files/presign", json=payload)

    message = error(await attempt(file_size=limit + 1), 413, "500 MB", "multipart")
    assert "/uploads/multipart/initiate" in message
    for name in ("../x.png", "/etc/passwd", "a/b.png", "a\\b.png", "..", ".", "a\x00.png"):
        error(await attempt(file_name=name), 400, "file_name")
    for content_type in ("png", "image/png; charset=x", "ima ge/png", ""):
        error(await attempt(content_type=content_type), 400)
    error(await attempt(file_size=-1), 400)
    error(await attempt(file_size="big"), 400)
    assert await count(ctx, StoredFile) == 0
    assert (await attempt(file_size=limit)).status_code == 200


async def test_file_parameters_take_only_the_teams_uploaded_inputs(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    workflow_id = await workflow(owner)
    theirs = await upload_input(other.client, other.headers())
    mine = await upload_input(owner.client, owner.headers())

    error(await run(owner, workflow_id, theirs), 400, "not an input file of this team")
    forged = theirs.replace(str(other.team_id), str(owner.team_id))
    error(await run(owner, workflow_id, forged), 400, "not an input file of this team")
    error(await run(owner, workflow_id, mine + "/../x"), 400, "not an input file")
    error(await run(owner, workflow_id, mine.replace("/photo.png", "/../photo.png")), 400)
    assert (await run(owner, workflow_id, mine)).status_code == 202

    clock.advance(DAY + 1)
    await owner.relogin()
    error(await run(owner, workflow_id, mine), 400, "expired")


async def test_a_viewer_cannot_upload(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    viewer = await accounts.join(owner, "viewer")
    response = await viewer.request(
        "POST",
        f"{API}/r/files/presign",
        json={"file_name": "a.png", "file_size": 1, "content_type": "image/png"},
    )
    error(response, 403)


# -- multipart ---------------------------------------------------------------------------------


async def test_multipart_upload_through_the_api(accounts: Accounts, ctx: ServiceContext) -> None:
    ctx.settings.storage.multipart_part_mb = 5
    owner = await accounts.signup("alice")
    data = bytes(range(256)) * (5 * 4096) + b"tail"  # 5 MiB + 4 bytes: two parts
    started = await owner.request(
        "POST",
        f"{API}/uploads/multipart/initiate",
        json={"file_name": "scene.zip", "file_size": len(data), "content_type": "application/zip"},
    )
    assert started.status_code == 200, started.text
    upload = started.json()
    assert upload["part_size"] == 5 * 1024 * 1024 and upload["part_count"] == 2
    ref = {"storage_key": upload["storage_key"], "upload_id": upload["upload_id"]}

    links = await owner.request("POST", f"{API}/uploads/multipart/parts", json=ref)
    assert links.status_code == 200, links.text
    parts = links.json()["parts"]
    assert [p["part_number"] for p in parts] == [1, 2]
    assert parts[1]["upload_headers"] == {"Content-Length": "4"}
    error(
        await owner.request(
            "POST", f"{API}/uploads/multipart/parts", json={**ref, "part_numbers": [3]}
        ),
        400,
        "1 to 2",
    )
    etags = []
    for part in parts:
        start = (part["part_number"] - 1) * upload["part_size"]
        chunk = data[start : start + int(part["upload_headers"]["Content-Length"])]
        put = await owner.client.put(
            part["upload_url"], content=chunk, headers=part["upload_headers"]
        )
        assert put.status_code == 200, put.text
        etags.append(put.headers["etag"])

    complete = {**ref, "parts": [{"part_number": 1, "etag": etags[0]}]}
    error(await owner.request("POST", f"{API}/uploads/multipart/complete", json=complete), 400)
    complete["parts"].append({"part_number": 2, "etag": etags[1]})
    other = await accounts.signup("bob")
    error(await other.request("POST", f"{API}/uploads/multipart/complete", json=complete), 400)
    done = await owner.request("POST", f"{API}/uploads/multipart/complete", json=complete)
    assert done.status_code == 200, done.text
    file_key = done.json()["file_key"]
    assert (objects_root(ctx) / file_key).read_bytes() == data
    workflow_id = await workflow(owner)
    assert (await run(owner, workflow_id, file_key)).status_code == 202


async def test_multipart_for_a_presigned_key_and_abort(
    accounts: Accounts, ctx: ServiceContext
) -> None:
    owner = await accounts.signup("alice")
    body = await presign(owner.client, owner.headers(), "big.bin", 10, "application/octet-stream")
    url = f"{API}/uploads/multipart/initiate"
    error(
        await owner.request("POST", url, json={"storage_key": body["file_key"], "file_size": 11}),
        400,
        "differs",
    )
    stranger = await accounts.signup("bob")
    error(
        await stranger.request(
            "POST", url, json={"storage_key": body["file_key"], "file_size": 10}
        ),
        400,
        "not an input file of this team",
    )
    started = await owner.request(
        "POST", url, json={"storage_key": body["file_key"], "file_size": 10}
    )
    assert started.status_code == 200, started.text
    upload = started.json()
    assert upload["storage_key"] == body["file_key"] and upload["part_count"] == 1
    error(
        await owner.request("POST", url, json={"storage_key": body["file_key"], "file_size": 10}),
        412,
    )
    ref = {"storage_key": body["file_key"], "upload_id": upload["upload_id"]}
    error(
        await owner.request(
            "POST", f"{API}/uploads/multipart/abort", json={**ref, "upload_id": "0" * 32}
        ),
        404,
    )
    aborted = await owner.request("POST", f"{API}/uploads/multipart/abort", json=ref)
    assert aborted.json() == {"is_success": True}
    assert await count(ctx, StoredFile) == 0
    assert not list((objects_root(ctx) / ".multipart").iterdir())
    error(await owner.request("POST", f"{API}/uploads/multipart/parts", json=ref), 400)


# -- outputs, results, retention ----------------------------------------------------------------


async def test_result_links_outputs_redirect_and_retention(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    client = owner.client
    workflow_id = await workflow(owner)
    task_id = (await run(owner, workflow_id, await upload_input(client, owner.headers()))).json()[
        "task_id"
    ]
    result_url = f"{API}/r/tasks/{task_id}/result"
    pending = (await owner.request("GET", result_url)).json()
    assert pending["task_output"] is None and pending["download_urls"] is None

    # Attempt 1 uploads a file, then is lost; attempt 2 uploads two and completes the task.
    await start_attempt(ctx, task_id, 1)
    stale = await attempt_uploads(ctx, client, task_id, 1, **{"stale.png": b"old"})
    await move(ctx, task_id, TaskStatus.WAITING)
    await start_attempt(ctx, task_id, 2)
    entries = await attempt_uploads(
        ctx, client, task_id, 2, **{"a.png": b"first image", "sub/b.png": b"second"}
    )
    forged = {"node_id": "9", "kind": "images", "storage_key": f"tasks/{task_id}/1/stale.png"}
    await complete(ctx, task_id, 2, {"outputs": [*entries, forged, *stale], "note": "kept"})

    result = (await owner.request("GET", result_url)).json()
    output = result["task_output"]
    assert output["storage_key"] == f"tasks/{task_id}/2/a.png"
    assert output["image_count"] == 2
    assert output["note"] == "kept"
    assert [o["storage_key"] for o in output["outputs"]] == [
        f"tasks/{task_id}/2/a.png",
        f"tasks/{task_id}/2/sub/b.png",
    ]
    assert output["outputs"][1] == {
        "node_id": "9",
        "kind": "images",
        "file_name": "sub/b.png",
        "content_type": "image/png",
        "size": 6,
        "storage_key": f"tasks/{task_id}/2/sub/b.png",
    }
    assert set(result["download_urls"]) == {"9.images.0", "9.images.1"}
    assert result["download_url"] == result["download_urls"]["9.images.0"]
    assert result["expires_at"] is not None
    assert (await client.get(result["download_url"])).content == b"first image"
    assert (await client.get(result["download_urls"]["9.images.1"])).content == b"second"
    again = (await owner.request("GET", result_url)).json()
    assert again["task_output"] == output

    redirect = await owner.request("GET", f"{API}/r/tasks/{task_id}/outputs/1")
    assert redirect.status_code == 302
    assert (await client.get(redirect.headers["location"])).content == b"second"
    error(await owner.request("GET", f"{API}/r/tasks/{task_id}/outputs/2"), 404)
    other = await accounts.signup("bob")
    error(await other.request("GET", f"{API}/r/tasks/{task_id}/outputs/0"), 404)

    # Links expire; the sweeper removes the lost attempt's file once its links have expired.
    root = objects_root(ctx)
    assert (root / f"tasks/{task_id}/1/stale.png").exists()
    clock.advance(ctx.settings.storage.link_ttl_seconds + 1)
    assert (await client.get(result["download_url"])).status_code == 403
    report = await sweep(ctx)
    assert report.orphans == 1 and report.outputs == 0
    assert not (root / f"tasks/{task_id}/1/stale.png").exists()
    assert (root / f"tasks/{task_id}/2/a.png").exists()

    # Inputs go after a day, outputs after seven.
    clock.advance(DAY)
    assert (await sweep(ctx)).inputs == 1
    assert await count(ctx, StoredFile) == 0
    clock.advance(6 * DAY)
    assert (await sweep(ctx)).outputs == 2
    assert not (root / f"tasks/{task_id}/2/a.png").exists()
    await owner.relogin()
    swept = (await owner.request("GET", result_url)).json()
    assert swept["task_output"]["expired"] is True
    assert swept["download_url"] is None and swept["download_urls"] is None
    error(await owner.request("GET", f"{API}/r/tasks/{task_id}/outputs/0"), 410, "retention")
    assert await count(ctx, TaskOutput) == 2
    assert (await sweep(ctx)).total == 0


async def test_inputs_of_unfinished_tasks_are_kept(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock
) -> None:
    ctx.settings.storage.output_retention_days = 0  # keep outputs
    owner = await accounts.signup("alice")
    workflow_id = await workflow(owner)
    used = await upload_input(owner.client, owner.headers(), name="used.png")
    await upload_input(owner.client, owner.headers(), name="unused.png")
    task_id = (await run(owner, workflow_id, used)).json()["task_id"]
    clock.advance(DAY + 1)
    assert (await sweep(ctx)).inputs == 1  # the unused one
    assert (objects_root(ctx) / used).exists()
    await start_attempt(ctx, task_id, 1)
    await complete(ctx, task_id, 1, {"outputs": []})
    assert (await sweep(ctx)).inputs == 1
    assert not (objects_root(ctx) / used).exists()
    clock.advance(30 * DAY)
    assert (await sweep(ctx)).total == 0


async def test_output_names_are_checked(accounts: Accounts, ctx: ServiceContext) -> None:
    owner = await accounts.signup("alice")
    task_id = (
        await run(owner, await workflow(owner), await upload_input(owner.client, owner.headers()))
    ).json()["task_id"]
    for name in ("../x.png", "/abs.png", "a\\b.png", "a/../../b.png", "./a.png", "a//b.png"):
        request = v1.UploadRequest(
            task_id=task_id, attempt=1, files=[v1.UploadFile(name=name, size=1)]
        )
        reply = await transfers(ctx).upload_links(request)
        assert reply.error and not reply.links, name
    twice = [v1.UploadFile(name="a.png", size=1), v1.UploadFile(name="a.png", size=2)]
    reply = await transfers(ctx).upload_links(
        v1.UploadRequest(task_id=task_id, attempt=1, files=twice)
    )
    assert reply.error and "twice" in reply.error
    assert await count(ctx, TaskOutput) == 0


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELLED])
async def test_files_of_a_task_that_did_not_complete_are_orphans(
    accounts: Accounts, ctx: ServiceContext, clock: FakeClock, status: TaskStatus
) -> None:
    owner = await accounts.signup("alice")
    task_id = (
        await run(owner, await workflow(owner), await upload_input(owner.client, owner.headers()))
    ).json()["task_id"]
    await start_attempt(ctx, task_id, 1)
    await attempt_uploads(ctx, owner.client, task_id, 1, **{"x.png": b"x"})
    await move(ctx, task_id, status, task_error="boom")
    assert (await sweep(ctx)).orphans == 0  # its link may still be in use
    clock.advance(ctx.settings.storage.link_ttl_seconds + 1)
    assert (await sweep(ctx)).orphans == 1
    assert not (objects_root(ctx) / f"tasks/{task_id}/1/x.png").exists()
    await owner.relogin()
    result = (await owner.request("GET", f"{API}/r/tasks/{task_id}/result")).json()
    assert result["task_output"] is None and result["download_url"] is None


async def test_partial_uploads_left_by_a_crash_are_swept(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    partial = objects_root(ctx) / ".tmp" / "interrupted"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a file")
    assert (await sweep(ctx)).total == 0  # an upload may still be writing it
    # (The file's time is the real clock's, a moment after the fake one started: leave room.)
    clock.advance(ctx.settings.storage.link_ttl_seconds + 60)
    assert (await sweep(ctx)).orphans == 1
    assert not partial.exists()


async def test_a_file_parameter_takes_only_the_types_it_accepts(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    body = image_workflow("clips")
    for param in body["parameters"]:
        if param["key"] == "init_image":
            param["accept"] = ["image/*", ".exr"]
    imported = await owner.request("POST", f"{API}/workflows/import", json=body)
    assert imported.status_code == 200, imported.text
    workflow_id = imported.json()["id"]
    notes = await upload_input(
        owner.client, owner.headers(), b"{}", "notes.json", "application/json"
    )
    refused = await run(owner, workflow_id, notes)
    assert refused.status_code == 400
    assert refused.json()["error_message"] == (
        "parameter 'init_image': notes.json (application/json) is not one of the accepted "
        "types: image/*, .exr"
    )
    for name, kind in (("photo.png", "image/png"), ("plate.exr", "application/octet-stream")):
        key = await upload_input(owner.client, owner.headers(), b"px", name, kind)
        assert (await run(owner, workflow_id, key)).status_code == 202
