"""Agent overhead benchmark: the time ``runyard agent`` adds on top of ComfyUI's own execution.

    .venv/bin/python bench/agent.py [--tasks 50] [--steps 10] [--step-delay 0.005] [--size 512]

One real ``runyard agent`` process (ComfyUI runner, as users run it) between:

- a protocol-level gateway in this process (WebSocket, protocol v1): it sends ``welcome`` with
  uploads on, one ``dispatch`` at a time, answers ``upload_request`` with links to
- a tiny object store in this process (``PUT`` sink), and
- the fake ComfyUI (``runyard.dev.fake_comfyui``) in this process, timed from the inside.

Per task, on one clock (``time.monotonic`` is system-wide on Linux, but every timestamp here is
taken in this process anyway):

- **before**: ``dispatch`` sent → ``POST /prompt`` arriving at ComfyUI (ack, graph copy, the
  ``/ws`` check, the HTTP request);
- **after**: ComfyUI emitting ``execution_success`` → the ``complete`` frame arriving at the
  gateway (the ``/ws`` event, ``/history`` read, ``/view`` of the output, ``upload_request`` and
  its answer, the ``PUT`` to storage, ``complete``);
- **overhead** = before + after (target ≤ 50 ms); ComfyUI's own time (``POST /prompt`` →
  ``execution_success``) is printed next to it.

Figures are printed, never asserted. The machine load average is printed at the start and end:
anything else running (other test suites) skews every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from runyard.dev.fake_comfyui import FakeComfyUI  # noqa: E402
from runyard.protocol import v1  # noqa: E402


class TimedComfyUI(FakeComfyUI):
    """The fake ComfyUI, noting when a prompt arrives and when it succeeds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompt_at: dict[str, float] = {}
        self.success_at: dict[str, float] = {}

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        with contextlib.suppress(Exception):
            body = await request.json()
            if isinstance(body, dict) and isinstance(body.get("prompt_id"), str):
                self.prompt_at[body["prompt_id"]] = arrived
        return await super()._post_prompt(request)

    def _message(self, run: Any, event: str, data: dict[str, Any], broadcast: bool) -> None:
        if event == "execution_success":
            self.success_at[run.prompt_id] = time.monotonic()
        super()._message(run, event, data, broadcast)


class Store:
    """``PUT /o/{key}``: takes the bytes, answers 200."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_put("/o/{key:.*}", self._put)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _put(self, request: web.Request) -> web.Response:
        self.sizes[request.match_info["key"]] = len(await request.read())
        return web.Response(status=200)


class Gateway:
    """Enough of the gateway for one agent: welcome, dispatch, upload links, results."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.connected = asyncio.Event()
        self.ws: ServerConnection | None = None
        self.results: dict[str, tuple[str, float, Any]] = {}
        self.waiters: dict[str, asyncio.Future[None]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        hello = v1.parse_agent_frame(await ws.recv())
        assert isinstance(hello, v1.Hello), hello
        welcome = v1.Welcome(gateway_id="bench", heartbeat_interval=5, lease_ttl=60, uploads=True)
        await ws.send(welcome.model_dump_json())
        self.ws = ws
        self.connected.set()
        async for message in ws:
            now = time.monotonic()
            frame = v1.parse_agent_frame(message)
            if isinstance(frame, v1.UploadRequest):
                prefix = f"tasks/{frame.task_id}/{frame.attempt}/"
                links = [
                    v1.UploadLink(
                        name=f.name,
                        key=prefix + f.name,
                        url=f"{self.store.url}/o/{prefix}{f.name}",
                        headers={"Content-Type": f.content_type},
                    )
                    for f in frame.files
                ]
                reply = v1.UploadLinks(
                    task_id=frame.task_id,
                    attempt=frame.attempt,
                    request_id=frame.request_id,
                    links=links,
                )
                await ws.send(reply.model_dump_json())
            elif isinstance(frame, v1.Complete | v1.Fail | v1.Cancelled):
                detail = frame.output if isinstance(frame, v1.Complete) else frame
                self.results[frame.task_id] = (frame.type, now, detail)
                waiter = self.waiters.pop(frame.task_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def run(self, graph: dict[str, Any]) -> tuple[str, float]:
        assert self.ws is not None
        task_id = str(uuid.uuid4())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters[task_id] = waiter
        dispatch = v1.Dispatch(
            task_id=task_id, attempt=1, workflow_id="bench", tool_type="comfyui", workflow=graph
        )
        sent = time.monotonic()
        await self.ws.send(dispatch.model_dump_json())
        await asyncio.wait_for(waiter, 60)
        return task_id, sent


def graph(steps: int, size: int, index: int) -> dict[str, Any]:
    def node(class_type: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs}

    return {
        "3": node(
            "KSampler",
            seed=index,
            steps=steps,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            denoise=1.0,
            model=["4", 0],
            positive=["6", 0],
            negative=["7", 0],
            latent_image=["5", 0],
        ),
        "4": node("CheckpointLoaderSimple", ckpt_name="v1-5-pruned-emaonly.safetensors"),
        "5": node("EmptyLatentImage", width=size, height=size, batch_size=1),
        "6": node("CLIPTextEncode", text=f"a red fox number {index}", clip=["4", 1]),
        "7": node("CLIPTextEncode", text="blurry", clip=["4", 1]),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", filename_prefix="bench", images=["8", 0]),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"  {name:<34} p50 {pct(ms, 50):7.1f}  p90 {pct(ms, 90):7.1f}  p99 {pct(ms, 99):7.1f}"
        f"  max {max(ms):7.1f}  mean {statistics.fmean(ms):7.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    python = platform.python_version()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {python}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="runyard-bench-agent-") as tmp:
        store = Store()
        await store.start()
        gateway = Gateway(store)
        comfy = TimedComfyUI(root=Path(tmp) / "comfy", step_delay=args.step_delay)
        async with comfy, serve(gateway.handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
            env.update(RUNYARD_LOGGER_FORMAT="json", RUNYARD_AGENT_WORK_DIR=tmp)
            log = (Path(tmp) / "agent.log").open("wb")
            agent = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runyard.cli.main",
                "agent",
                "--gateway",
                f"ws://127.0.0.1:{port}/bench",
                "--key",
                "ak-bench-not-checked",
                "--agent-id",
                "bench-agent",
                "--comfyui-url",
                comfy.url,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                await asyncio.wait_for(gateway.connected.wait(), 30)
                await asyncio.sleep(0.5)  # its ComfyUI /ws is up
                for i in range(args.warmup):
                    await gateway.run(graph(args.steps, args.size, -1 - i))
                before: list[float] = []
                after: list[float] = []
                comfy_time: list[float] = []
                total: list[float] = []
                failures = 0
                for i in range(args.tasks):
                    task_id, sent = await gateway.run(graph(args.steps, args.size, i))
                    kind, done_at, detail = gateway.results[task_id]
                    if kind != "complete":
                        failures += 1
                        print(f"  task {i}: {kind} {detail}")
                        continue
                    prompt_id = detail["prompt_id"]
                    queued = comfy.prompt_at[prompt_id]
                    succeeded = comfy.success_at[prompt_id]
                    before.append(queued - sent)
                    after.append(done_at - succeeded)
                    comfy_time.append(succeeded - queued)
                    total.append(done_at - sent)
                size = statistics.fmean(store.sizes.values()) if store.sizes else 0
                print(
                    f"{len(total)} tasks one at a time (after {args.warmup} warm-up), "
                    f"{args.steps} steps x {args.step_delay * 1000:g} ms, "
                    f"one {args.size}x{args.size} PNG output ({size / 1024:.0f} KiB)"
                    + (f", {failures} failed" if failures else "")
                )
                if total:
                    overhead = [b + a for b, a in zip(before, after, strict=True)]
                    print(line("before (dispatch -> POST /prompt)", before))
                    print(line("after (success -> complete)", after))
                    print(line("agent overhead (before + after)", overhead))
                    print(line("ComfyUI (POST /prompt -> success)", comfy_time))
                    print(line("dispatch -> complete", total))
            finally:
                agent.terminate()
                try:
                    await asyncio.wait_for(agent.wait(), 15)
                except TimeoutError:
                    agent.kill()
                    await agent.wait()
                log.close()
        await store.stop()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.005)
    parser.add_argument("--size", type=int, default=512)
    asyncio.run(main(parser.parse_args()))
