"""The fake ComfyUI, driven over real loopback HTTP and WebSocket connections.

These tests pin the protocol the agent will be written against: message order and routing,
history and /view, validation errors, interrupt, uploads, restarts and socket drops.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fakes import CPU_DEVICE, FakeComfyUI
from tests.fixtures.graphs import TEXT_TO_IMAGE, add_media_outputs, node, text_to_image

Message = dict[str, Any]


# -- helpers -------------------------------------------------------------------------------------


def t2i(seed: int | None = None, ckpt: str | None = None) -> dict[str, Any]:
    graph = text_to_image()
    if seed is not None:
        graph["3"]["inputs"]["seed"] = seed
    if ckpt is not None:
        graph["4"]["inputs"]["ckpt_name"] = ckpt
    return graph


def new_id() -> str:
    return str(uuid.uuid4())


async def next_json(
    ws: ClientConnection, predicate: Callable[[Message], bool], timeout: float = 5.0
) -> Message:
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            if isinstance(raw, str):
                message: Message = json.loads(raw)
                if predicate(message):
                    return message


async def until_done(
    ws: ClientConnection, prompt_id: str, timeout: float = 5.0
) -> list[Message | bytes]:
    """Every frame up to and including ``executing {node: null}`` for ``prompt_id``."""
    frames: list[Message | bytes] = []
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                frames.append(raw)
                continue
            message: Message = json.loads(raw)
            frames.append(message)
            data = message["data"]
            finished = data.get("node") is None and data.get("prompt_id") == prompt_id
            if message["type"] == "executing" and finished:
                return frames


async def drain(ws: ClientConnection, quiet: float = 0.15) -> list[Message | bytes]:
    frames: list[Message | bytes] = []
    while True:
        try:
            async with asyncio.timeout(quiet):
                raw = await ws.recv()
        except TimeoutError:
            return frames
        frames.append(raw if isinstance(raw, bytes) else json.loads(raw))


async def poll_history(http: httpx.AsyncClient, prompt_id: str, timeout: float = 5.0) -> Message:
    async with asyncio.timeout(timeout):
        while True:
            body = (await http.get(f"/history/{prompt_id}")).json()
            if prompt_id in body:
                entry: Message = body[prompt_id]
                return entry
            await asyncio.sleep(0.02)


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines of a PNG, checked chunk by chunk (CRCs included)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == size[1] * (1 + 3 * size[0])
    return size[0], size[1], raw


def flow(frames: list[Message | bytes]) -> list[tuple[str, Any]]:
    """The prompt-specific messages (no status/progress_state, no binary) as (type, detail)."""
    out: list[tuple[str, Any]] = []
    for frame in frames:
        if isinstance(frame, bytes) or frame["type"] in ("status", "progress_state"):
            continue
        data = frame["data"]
        detail = {
            "executing": data.get("node"),
            "progress": data.get("value"),
            "executed": data.get("node"),
            "execution_cached": data.get("nodes"),
        }.get(frame["type"])
        out.append((frame["type"], detail))
    return out


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI(step_delay=0.002, steps_override=4) as fake:
        yield fake


@pytest.fixture
async def http(comfy: FakeComfyUI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=comfy.url, timeout=5.0) as client:
        yield client


# -- tests ---------------------------------------------------------------------------------------


async def test_text_to_image_emits_comfyui_sequence_to_its_client_only(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    comfy.preview_method = "auto"
    async with (
        connect(f"{comfy.ws_url}?clientId=agent") as agent,
        connect(f"{comfy.ws_url}?clientId=other") as other,
    ):
        hello = json.loads(await agent.recv())
        assert hello == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "agent"},
        }
        prompt_id = new_id()
        response = await http.post(
            "/prompt", json={"prompt": TEXT_TO_IMAGE, "client_id": "agent", "prompt_id": prompt_id}
        )
        assert response.status_code == 200
        assert response.json() == {"prompt_id": prompt_id, "number": 0, "node_errors": {}}

        frames = await until_done(agent, prompt_id)

        assert flow(frames) == [
            ("execution_start", None),
            ("execution_cached", []),
            ("executing", "4"),
            ("executing", "5"),
            ("executing", "7"),
            ("executing", "6"),
            ("executing", "3"),
            ("progress", 1),
            ("progress", 2),
            ("progress", 3),
            ("progress", 4),
            ("executing", "8"),
            ("executing", "9"),
            ("executed", "9"),
            ("execution_success", None),
            ("executing", None),
        ]
        messages = [f for f in frames if isinstance(f, dict)]
        for message in messages:
            if message["type"] != "status":
                assert message["data"]["prompt_id"] == prompt_id
        by_type = {m["type"]: m["data"] for m in messages}
        assert set(by_type["execution_start"]) == {"prompt_id", "timestamp"}
        assert by_type["progress"] == {"value": 4, "max": 4, "prompt_id": prompt_id, "node": "3"}
        assert by_type["executed"] == {
            "node": "9",
            "display_node": "9",
            "output": {
                "images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
            },
            "prompt_id": prompt_id,
        }
        final_state = by_type["progress_state"]["nodes"]
        assert set(final_state) == {"3", "4", "5", "6", "7", "8", "9"}
        assert all(node["state"] == "finished" for node in final_state.values())
        # status (queue length) comes after execution_success, before executing{node: null}
        kinds = [m["type"] for m in messages]
        assert kinds[-3:] == ["execution_success", "status", "executing"]
        assert messages[-2]["data"] == {"status": {"exec_info": {"queue_remaining": 0}}}

        # one legacy preview per sampler step: event 1, image type 2 (PNG), then the image
        previews = [f for f in frames if isinstance(f, bytes)]
        assert len(previews) == 4
        for preview in previews:
            assert struct.unpack(">II", preview[:8]) == (1, 2)
            assert png_pixels(preview[8:])[:2] == (16, 16)

        # the other client only sees broadcasts: queue status and progress_state
        seen = await drain(other)
        assert seen
        assert not any(isinstance(f, bytes) for f in seen)
        assert {f["type"] for f in seen if isinstance(f, dict)} == {"status", "progress_state"}


async def test_history_and_view_return_outputs_whose_pixels_follow_the_seed(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    first = new_id()
    await http.post("/prompt", json={"prompt": t2i(seed=1), "client_id": "a", "prompt_id": first})
    entry = await poll_history(http, first)

    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    number, prompt_id, graph, extra_data, outputs_to_execute = entry["prompt"]
    assert (number, prompt_id, outputs_to_execute) == (0, first, ["9"])
    assert graph["3"]["inputs"]["seed"] == 1
    assert extra_data["client_id"] == "a"
    assert isinstance(extra_data["create_time"], int)
    image = {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}
    assert entry["outputs"] == {"9": {"images": [image]}}
    assert entry["meta"]["9"]["node_id"] == "9"
    status = entry["status"]
    assert (status["status_str"], status["completed"]) == ("success", True)
    assert [event for event, _ in status["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]

    view = await http.get("/view", params=image)
    assert view.status_code == 200
    assert view.headers["content-type"] == "image/png"
    assert view.headers["content-disposition"] == 'filename="ComfyUI_00001_.png"'
    width, height, pixels_seed_1 = png_pixels(view.content)
    assert (width, height) == (512, 512)
    assert (await http.get("/api/view", params=image)).content == view.content

    # another seed: the text encoders and loaders are cached, the pixels differ
    second = new_id()
    await http.post("/prompt", json={"prompt": t2i(seed=2), "client_id": "a", "prompt_id": second})
    entry = await poll_history(http, second)
    cached = entry["status"]["messages"][1][1]["nodes"]
    assert cached == ["4", "5", "6", "7"]
    image2 = entry["outputs"]["9"]["images"][0]
    assert image2["filename"] == "ComfyUI_00002_.png"
    pixels_seed_2 = png_pixels((await http.get("/view", params=image2)).content)[2]
    assert pixels_seed_2 != pixels_seed_1

    # the identical prompt again: everything is cached, no new file, the same outputs
    third = new_id()
    await http.post("/prompt", json={"prompt": t2i(seed=2), "client_id": "a", "prompt_id": third})
    entry = await poll_history(http, third)
    assert entry["status"]["messages"][1][1]["nodes"] == ["3", "4", "5", "6", "7", "8", "9"]
    assert entry["outputs"]["9"]["images"] == [image2]

    history = (await http.get("/history")).json()
    assert list(history) == [first, second, third]
    assert list((await http.get("/history", params={"max_items": 1})).json()) == [third]
    await http.post("/history", json={"delete": [first]})
    assert (await http.get(f"/history/{first}")).json() == {}

    for params, expected in [
        ({"filename": "../secret", "type": "output"}, 400),
        ({"filename": "x.png", "subfolder": "../..", "type": "output"}, 403),
        ({"filename": "nope.png", "type": "output"}, 404),
        ({"filename": "ComfyUI_00001_.png", "type": "bogus"}, 400),
    ]:
        assert (await http.get("/view", params=params)).status_code == expected


async def test_invalid_prompts_get_comfyui_400_bodies(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    graph = t2i()
    graph["10"] = {"class_type": "NotARealNode", "inputs": {}, "_meta": {"title": "Mystery"}}
    response = await http.post("/prompt", json={"prompt": graph, "client_id": "a"})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "missing_node_type",
            "message": "Node 'Mystery' not found. The custom node may not be installed.",
            "details": "Node ID '#10'",
            "extra_info": {"node_id": "10", "class_type": "NotARealNode", "node_title": "Mystery"},
        },
        "node_errors": {},
    }

    response = await http.post("/prompt", json={"prompt": t2i(ckpt="missing.safetensors")})
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"] == "Prompt outputs failed validation"
    assert list(body["node_errors"]) == ["4"]
    node_error = body["node_errors"]["4"]
    assert node_error["class_type"] == "CheckpointLoaderSimple"
    assert node_error["dependent_outputs"] == ["9"]
    (error,) = node_error["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["message"] == "Value not in list"
    assert error["details"].startswith("ckpt_name: 'missing.safetensors' not in [")
    assert error["extra_info"]["input_name"] == "ckpt_name"
    assert error["extra_info"]["received_value"] == "missing.safetensors"

    bad_steps = t2i()
    bad_steps["3"]["inputs"]["steps"] = 0
    del bad_steps["6"]["inputs"]["text"]
    body = (await http.post("/prompt", json={"prompt": bad_steps})).json()
    assert body["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"
    assert body["node_errors"]["6"]["errors"][0]["type"] == "required_input_missing"

    response = await http.post("/prompt", json={"client_id": "a"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "no_prompt"

    response = await http.post("/prompt", json={"prompt": t2i(), "prompt_id": "task-17"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_prompt_id"

    no_outputs = {k: v for k, v in t2i().items() if k != "9"}
    body = (await http.post("/prompt", json={"prompt": no_outputs})).json()
    assert body["error"]["type"] == "prompt_no_outputs"

    comfy.legacy_validation_errors = True
    body = (await http.post("/prompt", json={"prompt": graph})).json()
    assert body["error"]["type"] == "invalid_prompt"
    assert body["error"]["message"] == "Cannot execute because node NotARealNode does not exist."

    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert (await http.get("/history")).json() == {}


async def test_interrupt_targets_the_running_prompt_and_queue_delete_removes_pending(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    comfy.step_delay, comfy.steps_override = 0.01, 500
    running, pending, deleted = new_id(), new_id(), new_id()
    async with connect(f"{comfy.ws_url}?clientId=agent") as ws:
        for prompt_id, seed in ((running, 1), (pending, 2), (deleted, 3)):
            body = {"prompt": t2i(seed=seed), "client_id": "agent", "prompt_id": prompt_id}
            assert (await http.post("/prompt", json=body)).status_code == 200
        await next_json(ws, lambda m: m["type"] == "progress")
        queue = (await http.get("/queue")).json()
        assert [item[1] for item in queue["queue_running"]] == [running]
        assert [item[1] for item in queue["queue_pending"]] == [pending, deleted]

        await http.post("/queue", json={"delete": [deleted]})
        # an id that is not running is ignored (PR #9607): the sampler keeps going
        await http.post("/interrupt", json={"prompt_id": pending})
        await next_json(ws, lambda m: m["type"] == "progress" and m["data"]["value"] >= 3)

        await http.post("/interrupt", json={"prompt_id": running})
        frames = await until_done(ws, running)
        (interrupted,) = [
            f for f in frames if isinstance(f, dict) and f["type"] == "execution_interrupted"
        ]
        assert interrupted["data"]["prompt_id"] == running
        assert interrupted["data"]["node_id"] == "3"
        assert interrupted["data"]["node_type"] == "KSampler"
        assert sorted(interrupted["data"]["executed"]) == ["4", "5", "6", "7"]
        assert "timestamp" in interrupted["data"]
        entry = (await http.get(f"/history/{running}")).json()[running]
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["completed"] is False
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert entry["outputs"] == {}

        # the next prompt starts; an interrupt without a body stops whatever runs
        await next_json(ws, lambda m: m["type"] == "progress" and m["data"]["prompt_id"] == pending)
        await http.post("/interrupt")
        await until_done(ws, pending)
        assert (await http.get(f"/history/{pending}")).json()[pending]["status"][
            "completed"
        ] is False

        await comfy.wait_idle()
        assert (await http.get(f"/history/{deleted}")).json() == {}
        jobs = (await http.get("/api/jobs")).json()
        assert {job["id"]: job["status"] for job in jobs["jobs"]} == {
            running: "cancelled",
            pending: "cancelled",
        }


async def test_upload_image_names_and_an_img2img_run(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    def upload(data: bytes, name: str = "photo.png", **fields: str) -> Any:
        return http.post("/upload/image", files={"image": (name, data, "image/png")}, data=fields)

    original = png_from(64, 48, b"one")
    response = await upload(original)
    assert response.json() == {"name": "photo.png", "subfolder": "", "type": "input"}
    assert (await upload(original)).json()["name"] == "photo.png"  # same bytes: same name
    other = png_from(32, 32, b"two")
    assert (await upload(other)).json()["name"] == "photo (1).png"
    assert (await upload(other)).json()["name"] == "photo (1).png"
    replaced = await upload(png_from(8, 8, b"three"), overwrite="true")
    assert replaced.json()["name"] == "photo.png"
    in_folder = await upload(original, subfolder="refs", type="input")
    assert in_folder.json() == {"name": "photo.png", "subfolder": "refs", "type": "input"}
    view = await http.get("/view", params={"filename": "photo (1).png", "type": "input"})
    assert view.content == other
    assert (await http.post("/upload/image", data={"type": "input"})).status_code == 400
    escape = await upload(original, subfolder="../../etc")
    assert escape.status_code == 400

    img2img = {
        "1": node("LoadImage", image="photo (1).png"),
        "2": node("CheckpointLoaderSimple", ckpt_name="sd_xl_base_1.0.safetensors"),
        "3": node("VAEEncode", pixels=["1", 0], vae=["2", 2]),
        "4": node("CLIPTextEncode", text="a cat", clip=["2", 1]),
        "5": node(
            "KSampler",
            model=["2", 0],
            seed=7,
            steps=10,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            positive=["4", 0],
            negative=["4", 0],
            latent_image=["3", 0],
            denoise=0.6,
        ),
        "6": node("VAEDecode", samples=["5", 0], vae=["2", 2]),
        "7": node("SaveImage", images=["6", 0], filename_prefix="i2i/out"),
    }
    prompt_id = new_id()
    await http.post("/prompt", json={"prompt": img2img, "client_id": "a", "prompt_id": prompt_id})
    (image,) = (await poll_history(http, prompt_id))["outputs"]["7"]["images"]
    assert image == {"filename": "out_00001_.png", "subfolder": "i2i", "type": "output"}
    result = (await http.get("/view", params=image)).content
    assert png_pixels(result)[:2] == (32, 32)  # the size of the uploaded input

    img2img["1"]["inputs"]["image"] = "missing.png"
    response = await http.post("/prompt", json={"prompt": img2img})
    assert response.status_code == 400
    (error,) = response.json()["node_errors"]["1"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "image - Invalid image file: missing.png"

    comfy.upload_delay = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    await upload(png_from(4, 4, b"slow"), name="slow.png")
    assert loop.time() - started >= 0.2
    assert comfy.count("POST", "/upload/image") == 9


def png_from(width: int, height: int, seed: bytes) -> bytes:
    from tests.fakes.comfyui import make_png

    return make_png(width, height, seed)


async def test_execution_errors_carry_comfyui_fields(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    comfy.fail_node("8", "VAE exploded")
    async with connect(f"{comfy.ws_url}?clientId=agent") as ws:
        prompt_id = new_id()
        body = {"prompt": t2i(seed=5), "client_id": "agent", "prompt_id": prompt_id}
        await http.post("/prompt", json=body)
        frames = await until_done(ws, prompt_id)
        assert [kind for kind, _ in flow(frames)][-3:] == [
            "executing",
            "execution_error",
            "executing",
        ]
        (error,) = [
            f["data"] for f in frames if isinstance(f, dict) and f["type"] == "execution_error"
        ]
        assert error["prompt_id"] == prompt_id
        assert (error["node_id"], error["node_type"]) == ("8", "VAEDecode")
        assert error["exception_message"] == "VAE exploded\n"  # ComfyUI appends "\n{tips}"
        assert error["exception_type"] == "RuntimeError"
        assert error["traceback"] and all(isinstance(line, str) for line in error["traceback"])
        assert error["current_inputs"] == {
            "samples": ["<class 'dict'>"],
            "vae": ["<class 'comfy.sd.VAE'>"],
        }
        assert error["current_outputs"] == []
        assert sorted(error["executed"]) == ["3", "4", "5", "6", "7"]
        entry = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
        assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
        assert entry["status"]["messages"][-1][0] == "execution_error"

        # a failure inside the sampler, at a given step; the retry succeeds
        comfy.fail_node(
            "KSampler", "CUDA out of memory", exception_type="torch.OutOfMemoryError", at_step=2
        )
        prompt_id = new_id()
        body = {"prompt": t2i(seed=6), "client_id": "agent", "prompt_id": prompt_id}
        await http.post("/prompt", json=body)
        frames = await until_done(ws, prompt_id)
        progress = [detail for kind, detail in flow(frames) if kind == "progress"]
        assert progress == [1]
        (error,) = [
            f["data"] for f in frames if isinstance(f, dict) and f["type"] == "execution_error"
        ]
        assert (error["node_id"], error["exception_type"]) == ("3", "torch.OutOfMemoryError")
        assert error["current_outputs"] == ["4", "5", "6", "7"]

        retry = new_id()
        await http.post("/prompt", json={**body, "prompt_id": retry})
        frames = await until_done(ws, retry)
        assert ("execution_success", None) in flow(frames)


async def test_socket_drop_mid_run_then_reconnect_and_history(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    comfy.drop_ws_at_step = 2
    comfy.step_delay, comfy.steps_override = 0.02, 20
    prompt_id = new_id()
    async with connect(f"{comfy.ws_url}?clientId=agent") as ws:
        body = {"prompt": t2i(), "client_id": "agent", "prompt_id": prompt_id}
        await http.post("/prompt", json=body)
        with pytest.raises(ConnectionClosed):
            await until_done(ws, prompt_id)

    async with connect(f"{comfy.ws_url}?clientId=agent") as ws:
        hello = json.loads(await ws.recv())
        assert hello["data"]["sid"] == "agent"
        # ComfyUI's reconnect catch-up: the current node, and no prompt_id in it
        catch_up = json.loads(await ws.recv())
        assert catch_up == {"type": "executing", "data": {"node": "3"}}
        frames = await until_done(ws, prompt_id)
        assert ("execution_success", None) in flow(frames)

    # what the agent does after losing the socket: read the authoritative /history entry
    entry = await poll_history(http, prompt_id)
    assert entry["status"]["status_str"] == "success"
    assert comfy.count("GET", "/history/{prompt_id}") == 1
    assert comfy.count("GET", "/ws") == 2


async def test_reusing_a_client_id_replaces_the_socket_and_the_old_close_unregisters_it(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    async with connect(f"{comfy.ws_url}?clientId=agent") as old:
        await old.recv()
        async with connect(f"{comfy.ws_url}?clientId=agent") as new:
            await new.recv()
            await old.close()
            await asyncio.sleep(0.05)
            # upstream pops the sid when *any* socket with that id closes: the new one is
            # no longer registered and gets nothing until it reconnects
            assert "agent" not in comfy.client_ids
            prompt_id = new_id()
            body = {"prompt": t2i(), "client_id": "agent", "prompt_id": prompt_id}
            await http.post("/prompt", json=body)
            await poll_history(http, prompt_id)
            assert await drain(new) == []


async def test_restart_loses_queue_history_and_sockets_but_keeps_files(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    done = new_id()
    await http.post("/prompt", json={"prompt": t2i(seed=1), "client_id": "a", "prompt_id": done})
    image = (await poll_history(http, done))["outputs"]["9"]["images"][0]

    comfy.step_delay, comfy.steps_override = 0.01, 500
    lost = new_id()
    port = comfy.port
    async with connect(f"{comfy.ws_url}?clientId=a") as ws:
        body = {"prompt": t2i(seed=2), "client_id": "a", "prompt_id": lost}
        await http.post("/prompt", json=body)
        await next_json(ws, lambda m: m["type"] == "progress")
        await comfy.restart()
        with pytest.raises(ConnectionClosed):
            await drain(ws, quiet=2.0)

    assert comfy.port == port
    assert (await http.get(f"/history/{done}")).json() == {}
    assert (await http.get(f"/history/{lost}")).json() == {}
    assert (await http.get("/history")).json() == {}
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}
    assert (await http.get("/view", params=image)).status_code == 200  # files survive
    async with connect(f"{comfy.ws_url}?clientId=a") as ws:
        assert json.loads(await ws.recv())["type"] == "status"

    await comfy.stop()
    with pytest.raises(httpx.ConnectError):
        await http.get("/system_stats")
    await comfy.start()
    assert (await http.get("/system_stats")).status_code == 200


async def test_every_output_kind_lands_in_history_and_view(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    graph = t2i()
    graph["5"]["inputs"].update(width=64, height=64, batch_size=2)
    graph["10"] = node(
        "SaveAnimatedWEBP",
        images=["8", 0],
        filename_prefix="anim",
        fps=6.0,
        lossless=False,
        quality=80,
        method="default",
    )
    add_media_outputs(graph)
    graph["18"] = node("PreviewImage", images=["8", 0])
    prompt_id = new_id()
    await http.post("/prompt", json={"prompt": graph, "client_id": "a", "prompt_id": prompt_id})
    outputs = (await poll_history(http, prompt_id))["outputs"]

    assert [i["filename"] for i in outputs["9"]["images"]] == [
        "ComfyUI_00001_.png",
        "ComfyUI_00002_.png",
    ]
    assert outputs["10"] == {
        "images": [{"filename": "anim_00001_.webp", "subfolder": "", "type": "output"}],
        "animated": [True],
    }
    (video,) = outputs["11"]["gifs"]
    assert video["filename"] == "clip_00001.mp4"
    assert (video["format"], video["type"], video["workflow"]) == (
        "video/h264-mp4",
        "output",
        "clip_00001.png",
    )
    assert outputs["14"] == {
        "audio": [{"filename": "ComfyUI_00001_.flac", "subfolder": "audio", "type": "output"}]
    }
    assert outputs["16"] == {"text": ["a caption"]}
    assert outputs["17"] == {
        "files": [{"filename": "notes_00001_.txt", "subfolder": "", "type": "output"}]
    }
    (preview,) = outputs["18"]["images"][:1]
    assert preview["type"] == "temp"
    assert preview["filename"].startswith("ComfyUI_temp_")

    async def fetch(item: dict[str, Any]) -> httpx.Response:
        params = {k: item[k] for k in ("filename", "subfolder", "type")}
        return await http.get("/view", params=params)

    webp = await fetch(outputs["10"]["images"][0])
    assert webp.content[:4] == b"RIFF" and webp.content[8:12] == b"WEBP"
    assert webp.headers["content-type"] == "image/webp"
    mp4 = await fetch(video)
    assert mp4.content[4:8] == b"ftyp"
    assert mp4.headers["content-type"] == "video/mp4"
    flac = await fetch(outputs["14"]["audio"][0])
    assert flac.content[:4] == b"fLaC"
    assert (await fetch(outputs["17"]["files"][0])).text == "a caption"
    assert png_pixels((await fetch(preview)).content)[:2] == (64, 64)


async def test_catalogue_health_features_and_origin_check(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    stats = (await http.get("/system_stats")).json()
    (device,) = stats["devices"]
    assert {"name", "type", "index", "vram_total", "vram_free"} <= set(device)
    assert device["type"] == "cuda"
    assert stats["system"]["comfyui_version"]
    assert (await http.get("/api/system_stats")).json() == stats
    comfy.devices = [CPU_DEVICE]
    assert (await http.get("/system_stats")).json()["devices"][0]["type"] == "cpu"

    catalogue = (await http.get("/object_info")).json()
    assert {
        "CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "EmptyLatentImage", "VAEDecode",
        "SaveImage", "LoadImage", "SaveAnimatedWEBP", "VHS_VideoCombine", "SaveAudio",
        "PreviewAny",
    } <= set(catalogue)  # fmt: skip
    ckpt = catalogue["CheckpointLoaderSimple"]
    assert ckpt["input"]["required"]["ckpt_name"][0] == [
        "v1-5-pruned-emaonly.safetensors",
        "sd_xl_base_1.0.safetensors",
    ]
    assert ckpt["output"] == ["MODEL", "CLIP", "VAE"]
    assert catalogue["SaveImage"]["output_node"] is True
    assert catalogue["KSampler"]["input_order"]["required"][:3] == ["model", "seed", "steps"]
    one = (await http.get("/object_info/KSampler")).json()
    assert one == {"KSampler": catalogue["KSampler"]}
    unknown = await http.get("/object_info/NoSuchNode")
    assert (unknown.status_code, unknown.json()) == (200, {})
    assert (await http.get("/models/checkpoints")).json() == ckpt["input"]["required"]["ckpt_name"][
        0
    ]
    assert (await http.get("/features")).json()["supports_preview_metadata"] is True

    host = f"127.0.0.1:{comfy.port}"
    evil = await http.get("/queue", headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    same = await http.get("/queue", headers={"Origin": f"http://{host}"})
    assert same.status_code == 200
    assert comfy.count("GET", "/queue") == 2
    assert comfy.count("GET", "/system_stats") == 3  # /api/... folded in

    comfy.frozen = True  # a wedged process: connections open, nothing answers
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/system_stats", timeout=0.2)
    comfy.frozen = False
    assert (await http.get("/system_stats")).status_code == 200


async def test_feature_flags_switch_previews_to_metadata_frames(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    async with connect(f"{comfy.ws_url}?clientId=agent") as ws:
        await ws.recv()  # status
        flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
        await ws.send(json.dumps(flags))
        reply = await next_json(ws, lambda m: m["type"] == "feature_flags")
        assert reply["data"]["supports_preview_metadata"] is True
        assert reply["data"]["max_upload_size"] == 100 * 1024 * 1024

        prompt_id = new_id()
        body = {
            "prompt": t2i(),
            "client_id": "agent",
            "prompt_id": prompt_id,
            "extra_data": {"preview_method": "auto"},
        }
        await http.post("/prompt", json=body)
        frames = await until_done(ws, prompt_id)
    previews = [f for f in frames if isinstance(f, bytes)]
    assert len(previews) == 4
    for frame in previews:
        event, length = struct.unpack(">II", frame[:8])
        assert event == 4
        metadata = json.loads(frame[8 : 8 + length])
        assert metadata["prompt_id"] == prompt_id
        assert metadata["node_id"] == "3"
        assert metadata["image_type"] == "image/png"
        assert png_pixels(frame[8 + length :])[:2] == (16, 16)


async def test_prompt_without_client_id_sends_no_execution_events(
    comfy: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    async with connect(comfy.ws_url) as ws:
        hello = json.loads(await ws.recv())
        assert len(hello["data"]["sid"]) == 32  # the server made up a hex sid
        response = await http.post("/prompt", json={"prompt": t2i()})
        prompt_id = response.json()["prompt_id"]
        uuid.UUID(prompt_id)
        await poll_history(http, prompt_id)
        seen = await drain(ws)
    kinds = {f["type"] for f in seen if isinstance(f, dict)}
    # progress and progress_state are broadcast when there is no client_id; nothing else is
    assert kinds == {"status", "progress_state", "progress"}
    messages = comfy.history[prompt_id]["status"]["messages"]
    assert [event for event, _ in messages] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]


# -- the shipped command -------------------------------------------------------------------------


def test_dev_fake_comfyui_serves_until_sigterm_and_keeps_its_root(tmp_path: Any) -> None:
    """``runyard dev fake-comfyui`` as a process: announces its URL, serves ComfyUI's routes,
    writes into ``--root``, exits 0 on SIGTERM; a port in use is one error line, exit 1."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "runyard.cli.main", "dev", "fake-comfyui"]
    args = ["--port", str(port), "--step-delay", "0", "--root", str(tmp_path)]
    proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert first.startswith(f"fake ComfyUI at http://127.0.0.1:{port}"), first
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/system_stats").json()["system"]["comfyui_version"]
        body = {"prompt": t2i(seed=3), "prompt_id": str(uuid.uuid4())}
        assert httpx.post(f"{url}/prompt", json=body).status_code == 200
        deadline = time.monotonic() + 20
        while not httpx.get(f"{url}/history/{body['prompt_id']}").json():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert list((tmp_path / "output").glob("*.png"))

        busy = subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1
        assert busy.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}"), busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert (tmp_path / "output").is_dir()  # a given root is kept
