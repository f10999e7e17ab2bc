"""Run the fake ComfyUI the tests use, to try Runyard end to end without a GPU.

    ./scripts/fake-comfyui [--port 8188] [--step-delay 0.1]

It speaks ComfyUI's HTTP and WebSocket protocol and writes real (synthetic) PNGs; no model
runs. See tests/fakes/README.md for what it reproduces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.fakes

from tests.fakes.comfyui import FakeComfyUI


async def serve(port: int, step_delay: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with FakeComfyUI(port=port, step_delay=step_delay) as comfy:
        print(f"fake ComfyUI at {comfy.url} (Ctrl-C stops it)", flush=True)  # noqa: T201
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="The fake ComfyUI of Runyard's tests.")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--step-delay", type=float, default=0.1, help="seconds per sampler step")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.step_delay))


if __name__ == "__main__":
    main()
