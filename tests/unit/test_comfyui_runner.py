"""``ComfyUIRunner`` against ``FakeComfyUI`` (real loopback HTTP and WebSocket), with a fake
Reporter that records frames and a tiny object store that takes signed-link PUTs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
from aiohttp import web

from runyard.agent.client import Reporter
from runyard.agent.comfyui import ComfyUIRunner, attempt_prompt_id
from runyard.agent.comfyui.api import Detected, describe_rejection, parse_system_stats
from runyard.agent.comfyui.progress import ProgressTracker
from runyard.protocol import v1
from tests.fakes.comfyui import CPU_DEVICE, FakeComfyUI, make_png, png_size
from tests.fixtures.graphs import add_media_outputs, node, text_to_image

WAIT = 10.0


class Store:
    """Object storage stand-in: links are ``PUT <url>/o/<key>`` and ``GET`` back."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_put("/o/{key:.*}", self._put)
        app.router.add_get("/o/{key:.*}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _put(self, request: web.Request) -> web.Response:
        self.objects[request.match_info["key"]] = (
            await request.read(),
            request.headers.get("Content-Type", ""),
        )
        return web.Response(status=200)

    async def _get(self, request: web.Request) -> web.Response:
        data, ctype = self.objects[request.match_info["key"]]
        return web.Response(body=data, content_type=ctype or "application/octet-stream")


@dataclass(eq=False)
class FakeReporter:
    dispatch: v1.Dispatch
    store: Store
    uploads: bool = True
    acked: bool = False
    progress_frames: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    result: tuple[str, Any] | None = None
    cancel_kind: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    _cancel: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def task_id(self) -> str:
        return self.dispatch.task_id

    @property
    def attempt(self) -> int:
        return self.dispatch.attempt

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_kind is not None

    @property
    def done(self) -> bool:
        return self.result is not None

    async def wait_cancel_requested(self) -> None:
        await self._cancel.wait()

    def request_cancel(self) -> None:
        self.cancel_kind = "cancel"
        self._cancel.set()

    async def ack(self) -> None:
        self.acked = True

    async def progress(self, progress: float | None = None, **fields: Any) -> None:
        if self.result is None:
            self.progress_frames.append({"progress": progress, **fields})

    async def log(self, *lines: str) -> None:
        self.logs.extend(lines)

    def _set(self, kind: str, value: Any) -> None:
        if self.result is None:
            self.result = (kind, value)
            self.finished.set()

    async def complete(self, output: dict[str, Any]) -> None:
        self._set("complete", output)

    async def fail(self, error: str, *, retryable: bool = True) -> None:
        self._set("fail", (error, retryable))

    async def cancelled(self) -> None:
        self._set("cancelled", None)

    @property
    def uploads_supported(self) -> bool:
        return self.uploads

    async def upload_links(self, files: list[v1.UploadFile]) -> list[v1.UploadLink]:
        prefix = f"tasks/{self.task_id}/{self.attempt}/"
        return [
            v1.UploadLink(
                name=f.name,
                key=prefix + f.name,
                url=f"{self.store.url}/o/{prefix}{f.name}",
                headers={"Content-Type": f.content_type},
            )
            for f in files
        ]


def dispatch(graph: dict[str, Any] | None = None, **fields: Any) -> v1.Dispatch:
    return v1.Dispatch(
        task_id=fields.pop("task_id", str(uuid.uuid4())),
        attempt=fields.pop("attempt", 1),
        workflow_id="wf",
        tool_type="comfyui",
        workflow=graph if graph is not None else small_graph(),
        **fields,
    )


def small_graph(steps: int = 4, text: str = "a red fox") -> dict[str, Any]:
    graph = text_to_image()
    graph["3"]["inputs"]["steps"] = steps
    graph["5"]["inputs"].update(width=32, height=32)
    graph["6"]["inputs"]["text"] = text
    return graph


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI(step_delay=0.02) as fake:
        yield fake


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    s = Store()
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def runner(comfy: FakeComfyUI) -> AsyncIterator[ComfyUIRunner]:
    r = ComfyUIRunner(
        comfy.url,
        client_id="agent-test",
        progress_interval=0.0,
        poll_interval=0.05,
        watchdog_interval=0.5,
        unreachable_timeout=1.5,
        health_timeout=0.3,
    )
    yield r
    await r.aclose()


async def run(
    runner: ComfyUIRunner, reporter: FakeReporter, timeout: float = WAIT
) -> tuple[str, Any]:
    await asyncio.wait_for(runner.start(reporter.dispatch, cast(Reporter, reporter)), timeout)
    assert reporter.result is not None
    return reporter.result


async def test_text_to_image_completes_with_per_step_progress_and_uploaded_image(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    reporter = FakeReporter(dispatch(small_graph(steps=5)), store)
    kind, manifest = await run(runner, reporter)

    assert kind == "complete", manifest
    prompt_id = attempt_prompt_id(reporter.task_id, 1)
    assert manifest["prompt_id"] == prompt_id
    (out,) = manifest["outputs"]
    assert (out["node_id"], out["kind"], out["content_type"]) == ("9", "images", "image/png")
    stored, ctype = store.objects[out["storage_key"]]
    assert stored == (comfy.output_dir / out["file_name"]).read_bytes()
    assert ctype == "image/png" and out["size"] == len(stored)
    # Per-step progress of the sampler, monotonic over the whole graph, ending at 1.
    steps = [f["step_current"] for f in reporter.progress_frames if f.get("current_node") == "3"]
    assert {1, 2, 3, 4, 5} <= {s for s in steps if s is not None}
    values = [f["progress"] for f in reporter.progress_frames]
    assert values == sorted(values) and values[-1] == 1.0
    assert 0 < values[len(values) // 2] < 1
    assert reporter.acked
    # Queued with our own prompt_id and client_id; the history entry is deleted afterwards.
    assert prompt_id not in comfy.history
    assert comfy.count("POST", "/interrupt") == 0


async def test_every_output_kind_is_fetched_and_uploaded(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    graph = add_media_outputs(small_graph(steps=1))
    graph["18"] = node("PreviewImage", images=["8", 0])
    reporter = FakeReporter(dispatch(graph), store)
    kind, manifest = await run(runner, reporter)

    assert kind == "complete", manifest
    kinds = sorted((o["node_id"], o["kind"]) for o in manifest["outputs"])
    assert kinds == [
        ("11", "gifs"),
        ("14", "audio"),
        ("16", "text"),
        ("17", "files"),
        ("18", "images"),
        ("9", "images"),
    ]
    by_node = {o["node_id"]: o for o in manifest["outputs"]}
    assert store.objects[by_node["11"]["storage_key"]][0][4:8] == b"ftyp"
    assert store.objects[by_node["14"]["storage_key"]][0][:4] == b"fLaC"
    assert by_node["14"]["storage_key"].endswith("/audio/ComfyUI_00001_.flac")
    assert store.objects[by_node["17"]["storage_key"]][0] == b"a caption"
    assert store.objects[by_node["16"]["storage_key"]][0] == b"a caption"
    assert manifest["texts"] == [{"node_id": "16", "kind": "text", "text": "a caption"}]
    assert len({o["storage_key"] for o in manifest["outputs"]}) == 6


async def test_without_upload_links_the_manifest_lists_comfyui_files(
    runner: ComfyUIRunner, store: Store
) -> None:
    reporter = FakeReporter(dispatch(small_graph(steps=1)), store, uploads=False)
    kind, manifest = await run(runner, reporter)
    assert kind == "complete"
    assert manifest["uploaded"] is False
    assert manifest["outputs"][0]["file_name"] == "ComfyUI_00001_.png"
    assert store.objects == {}


async def test_validation_error_fails_not_retryable_with_node_and_message(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    graph = small_graph()
    graph["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    reporter = FakeReporter(dispatch(graph), store)
    kind, (error, retryable) = await run(runner, reporter)
    assert kind == "fail" and retryable is False
    assert "node 4 (CheckpointLoaderSimple)" in error
    assert "missing.safetensors" in error
    assert comfy.count("POST", "/prompt") == 1 and not comfy.history


async def test_execution_error_fails_with_the_node_and_its_message(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.fail_node("KSampler", "the sampler exploded", at_step=2)
    reporter = FakeReporter(dispatch(), store)
    kind, (error, retryable) = await run(runner, reporter)
    assert kind == "fail" and retryable is False
    assert error.startswith("node 3 (KSampler) failed: RuntimeError: the sampler exploded")


async def test_out_of_memory_is_retryable(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.fail_node("VAEDecode", "Allocation on device", exception_type="torch.OutOfMemoryError")
    kind, (_, retryable) = await run(runner, FakeReporter(dispatch(), store))
    assert kind == "fail" and retryable is True


async def test_cancel_interrupts_exactly_that_prompt(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.step_delay = 0.05
    mine = FakeReporter(dispatch(small_graph(steps=40)), store)
    task = asyncio.create_task(runner.start(mine.dispatch, cast(Reporter, mine)))
    prompt_id = attempt_prompt_id(mine.task_id, 1)
    async with asyncio.timeout(WAIT):
        while not any(f.get("step_current") for f in mine.progress_frames):
            await asyncio.sleep(0.01)
    # Someone else's prompt waits behind ours in ComfyUI's queue.
    other = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=comfy.url) as http:
        body = {"prompt": small_graph(steps=2, text="other"), "prompt_id": other}
        assert (await http.post("/prompt", json=body)).status_code == 200
    mine.request_cancel()
    await runner.cancel(mine.task_id, 1)
    await asyncio.wait_for(task, WAIT)

    assert mine.result == ("cancelled", None)
    entry = await comfy.wait_history(other)
    assert entry["status"]["status_str"] == "success"
    events = [m[0] for m in comfy.history[prompt_id]["status"]["messages"]]
    assert events[-1] == "execution_interrupted"
    assert ("POST", "/interrupt") in {(m, p) for m, p in comfy.requests}


async def test_cancel_of_a_pending_prompt_removes_it_from_the_queue(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.step_delay = 0.05
    async with httpx.AsyncClient(base_url=comfy.url) as http:
        blocker = {"prompt": small_graph(steps=30, text="blocker"), "prompt_id": str(uuid.uuid4())}
        assert (await http.post("/prompt", json=blocker)).status_code == 200
    mine = FakeReporter(dispatch(), store)
    task = asyncio.create_task(runner.start(mine.dispatch, cast(Reporter, mine)))
    prompt_id = attempt_prompt_id(mine.task_id, 1)
    async with asyncio.timeout(WAIT):
        while prompt_id not in comfy.pending_prompt_ids:
            await asyncio.sleep(0.01)
    mine.request_cancel()
    await runner.cancel(mine.task_id, 1)
    await asyncio.wait_for(task, WAIT)
    assert mine.result == ("cancelled", None)
    assert prompt_id not in comfy.pending_prompt_ids
    assert comfy.running_prompt_id == blocker["prompt_id"]


async def test_socket_drop_mid_run_still_completes_through_history(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.drop_ws_at_step = 2
    comfy.history_delay = 0.1
    reporter = FakeReporter(dispatch(small_graph(steps=6)), store)
    kind, manifest = await run(runner, reporter)
    assert kind == "complete", manifest
    assert len(manifest["outputs"]) == 1
    assert comfy.count("GET", "/history/{prompt_id}") >= 2
    # The socket comes back after the drop; the run may finish through /history first.
    async with asyncio.timeout(WAIT):  # a bound for the wait, not a speed check
        while runner.socket.connections < 2:
            await asyncio.sleep(0.02)


async def test_previews_and_history_written_late_are_tolerated(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.preview_method = "auto"
    comfy.history_delay = 0.3
    kind, manifest = await run(runner, FakeReporter(dispatch(), store))
    assert kind == "complete", manifest
    assert any(kind.startswith("binary:") for _, kind, _ in comfy.sent)


async def test_comfyui_restart_mid_run_fails_retryable(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.step_delay = 0.05
    reporter = FakeReporter(dispatch(small_graph(steps=40)), store)
    task = asyncio.create_task(runner.start(reporter.dispatch, cast(Reporter, reporter)))
    async with asyncio.timeout(WAIT):
        while not any(f.get("step_current") for f in reporter.progress_frames):
            await asyncio.sleep(0.01)
    await comfy.restart(down_for=0.3)
    await asyncio.wait_for(task, WAIT)
    assert reporter.result is not None
    kind, (error, retryable) = reporter.result
    assert kind == "fail" and retryable is True
    assert "restarted" in error


async def test_unreachable_comfyui_fails_retryable_after_the_timeout(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    comfy.step_delay = 0.05
    reporter = FakeReporter(dispatch(small_graph(steps=40)), store)
    task = asyncio.create_task(runner.start(reporter.dispatch, cast(Reporter, reporter)))
    async with asyncio.timeout(WAIT):
        while not any(f.get("step_current") for f in reporter.progress_frames):
            await asyncio.sleep(0.01)
    await comfy.stop()
    await asyncio.wait_for(task, WAIT)
    assert reporter.result is not None
    kind, (error, retryable) = reporter.result
    assert kind == "fail" and retryable is True and "unreachable" in error


async def test_file_inputs_are_downloaded_uploaded_to_comfyui_and_injected(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    picture = make_png(24, 16, b"input picture")
    key = "inputs/team/abc/photo.png"
    store.objects[key] = (picture, "image/png")
    graph = small_graph(steps=1)
    graph["11"] = {"class_type": "LoadImage", "inputs": {"image": key}}
    graph["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"]["latent_image"] = ["12", 0]
    reporter = FakeReporter(
        dispatch(
            graph, parameters={"init_image": key}, inputs={"init_image": f"{store.url}/o/{key}"}
        ),
        store,
    )
    kind, manifest = await run(runner, reporter)
    assert kind == "complete", manifest
    assert (comfy.input_dir / "photo.png").read_bytes() == picture
    queued = comfy.history.get(manifest["prompt_id"])
    assert queued is None  # deleted after upload
    out = manifest["outputs"][0]
    assert png_size(store.objects[out["storage_key"]][0]) == (24, 16)


class FakeClient:
    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.stats: list[v1.SystemStats] = []

    async def set_status(self, status: str, **_: Any) -> None:
        self.statuses.append(status)

    def update_system_stats(self, stats: v1.SystemStats) -> None:
        self.stats.append(stats)


async def test_health_reports_unhealthy_while_comfyui_is_silent_and_idle_after(
    comfy: FakeComfyUI, runner: ComfyUIRunner
) -> None:
    client = FakeClient()
    assert await runner.check_health(cast(Any, client))
    comfy.frozen = True
    assert not await runner.check_health(cast(Any, client))
    assert not await runner.check_health(cast(Any, client))
    comfy.frozen = False
    await comfy.stop()
    assert not await runner.check_health(cast(Any, client))
    await comfy.start()
    assert await runner.check_health(cast(Any, client))
    assert client.statuses == ["idle", "unhealthy", "idle"]
    (device,) = client.stats[-1].gpu_devices
    assert device.device_type == "cuda" and device.vram_total


async def test_detection_labels_and_system_stats(comfy: FakeComfyUI, runner: ComfyUIRunner) -> None:
    detected = await runner.detect()
    assert detected.labels() == ["comfyui", "gpu"]
    assert detected.comfyui_version == comfy.comfyui_version
    comfy.devices = [dict(CPU_DEVICE)]
    cpu = await runner.detect()
    assert cpu.labels() == ["comfyui"]
    stats = cpu.system_stats()
    assert stats.gpu_devices[0].device_type == "cpu"
    assert Detected(None, None, None).labels() == ["comfyui"]
    assert parse_system_stats("nonsense").devices == []


def test_rejection_messages_name_every_failing_node() -> None:
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed"},
        "node_errors": {
            "4": {
                "class_type": "CheckpointLoaderSimple",
                "errors": [{"message": "Value not in list", "details": "ckpt_name: 'x'"}],
            }
        },
    }
    text = describe_rejection(body)
    assert "Prompt outputs failed" in text
    assert "node 4 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'x'" in text
    assert describe_rejection("oops").startswith("ComfyUI refused")


def test_progress_tracker_counts_the_whole_graph_and_never_goes_back() -> None:
    tracker = ProgressTracker(small_graph())
    tracker.apply("execution_cached", {"nodes": ["4"]})
    first = tracker.snapshot().progress
    tracker.apply("executing", {"node": "3"})
    tracker.apply("progress", {"node": "3", "value": 2, "max": 4})
    snap = tracker.snapshot()
    assert snap.current_node == "3" and (snap.step_current, snap.step_total) == (2, 4)
    assert first < snap.progress < 1
    tracker.apply("progress_state", {"nodes": {"3": {"state": "running", "value": 0, "max": 1}}})
    assert tracker.snapshot().progress == snap.progress
    tracker.apply("execution_success", {})
    assert tracker.snapshot().progress == 1.0


def test_prompt_ids_are_stable_uuids_per_attempt() -> None:
    a = attempt_prompt_id("task-1", 1)
    assert a == attempt_prompt_id("task-1", 1) != attempt_prompt_id("task-1", 2)
    assert str(uuid.UUID(a)) == a


async def test_several_attempts_share_comfyuis_queue_each_following_its_own_prompt(
    comfy: FakeComfyUI, runner: ComfyUIRunner, store: Store
) -> None:
    """Capacity > 1: every attempt is queued in ComfyUI at once and ComfyUI runs them one by
    one; progress and outputs go to the right attempt; cancelling one (running or pending)
    leaves the others alone."""
    comfy.step_delay = 0.03
    first = FakeReporter(dispatch(small_graph(steps=200, text="first")), store)
    others = [
        FakeReporter(dispatch(small_graph(steps=3, text=f"fox {i}")), store) for i in range(3)
    ]
    everyone = [first, *others]
    tasks = [
        asyncio.create_task(runner.start(r.dispatch, cast(Reporter, r)))
        for r in everyone  # first is queued first: the others wait behind it in ComfyUI
    ]
    ids = [attempt_prompt_id(r.task_id, 1) for r in everyone]
    async with asyncio.timeout(WAIT):
        while comfy.running_prompt_id != ids[0] or set(comfy.pending_prompt_ids) != set(ids[1:]):
            await asyncio.sleep(0.01)
        while not any(f.get("step_current") for f in first.progress_frames):
            await asyncio.sleep(0.01)
    assert all(not r.done for r in everyone)

    # Cancel one that waits in ComfyUI's queue, then the one running.
    pending = others[1]
    pending.request_cancel()
    await runner.cancel(pending.task_id, 1)
    await asyncio.wait_for(tasks[2], WAIT)
    assert pending.result == ("cancelled", None)
    assert ids[2] not in comfy.pending_prompt_ids and ids[2] not in comfy.history
    assert comfy.running_prompt_id == ids[0]
    first.request_cancel()
    await runner.cancel(first.task_id, 1)
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    assert first.result == ("cancelled", None)
    completed = [others[0], others[2]]
    outputs = []
    for reporter in completed:
        assert reporter.result is not None and reporter.result[0] == "complete", reporter.result
        manifest = reporter.result[1]
        assert manifest["prompt_id"] == attempt_prompt_id(reporter.task_id, 1)
        (out,) = manifest["outputs"]
        assert out["storage_key"].startswith(f"tasks/{reporter.task_id}/1/")
        outputs.append(store.objects[out["storage_key"]][0])
        # Its progress is its own: three steps of its sampler, never the 200 of the first.
        totals = {f.get("step_total") for f in reporter.progress_frames} - {None}
        assert totals == {3}, reporter.progress_frames
        assert reporter.progress_frames[-1]["progress"] == 1.0
    assert outputs[0] != outputs[1]  # different prompts, different images
    assert {f.get("step_total") for f in first.progress_frames} - {None} == {200}
    # Interrupted exactly once, and only the prompt that was running; nothing else touched.
    assert comfy.history[ids[0]]["status"]["messages"][-1][0] == "execution_interrupted"
    assert comfy.count("POST", "/interrupt") >= 1
    assert all(ids[i] not in comfy.history for i in (1, 3))  # deleted once uploaded
