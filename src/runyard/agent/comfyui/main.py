"""``runyard agent`` with ComfyUI: detection, ``--check``, and the running agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from runyard.agent.client import GatewayClient, run_until_signalled
from runyard.agent.comfyui.api import ComfyUIUnavailable, Detected, nvidia_smi_present
from runyard.agent.comfyui.runner import ComfyUIRunner
from runyard.agent.config import AgentSettings


def derived_labels(detected: Detected | None) -> list[str]:
    """``comfyui``, plus ``gpu`` when ComfyUI lists a non-CPU device (or, while ComfyUI does
    not answer, when ``nvidia-smi`` is installed)."""
    if detected is not None:
        return detected.labels()
    return ["comfyui", "gpu"] if nvidia_smi_present() else ["comfyui"]


def make_runner(settings: AgentSettings) -> ComfyUIRunner:
    return ComfyUIRunner(
        settings.comfyui_url,
        client_id=f"runyard-{settings.agent_id}",
        work_dir=Path(settings.work_dir) if settings.work_dir else None,
    )


async def check(settings: AgentSettings, echo: Callable[[str], None]) -> int:
    """Print what the agent detects; 0 when ComfyUI answers, 1 when it does not."""
    runner = make_runner(settings)
    try:
        try:
            detected: Detected | None = await runner.detect()
            error = None
        except ComfyUIUnavailable as exc:
            detected, error = None, str(exc)
    finally:
        await runner.aclose()
    labels = list(dict.fromkeys([*derived_labels(detected), *settings.labels]))
    echo(f"ComfyUI:   {settings.comfyui_url}")
    if detected is None:
        echo(f"answers:   no ({error})")
    else:
        echo("answers:   yes")
        echo(f"version:   {detected.comfyui_version or 'unknown'}")
        echo(f"pytorch:   {detected.pytorch_version or 'unknown'}")
        for device in detected.devices:
            vram = device.get("vram_total")
            size = f", {int(vram) / 2**30:.1f} GiB" if isinstance(vram, int | float) else ""
            echo(f"device:    {device.get('name')} ({device.get('type')}{size})")
        if not detected.devices:
            echo("device:    none listed")
    echo(f"labels:    {', '.join(labels)}")
    echo(f"agent id:  {settings.agent_id}")
    echo(f"gateway:   {settings.gateway or '(not set)'}")
    return 0 if detected is not None else 1


async def run_agent(settings: AgentSettings, key: str) -> int:
    """Detect ComfyUI, connect to the gateway, keep ComfyUI's health reported; until a signal."""
    runner = make_runner(settings)
    try:
        try:
            detected: Detected | None = await runner.detect()
        except ComfyUIUnavailable:
            detected = None
        labels = list(dict.fromkeys([*derived_labels(detected), *settings.labels]))
        client = GatewayClient(
            settings.gateway,
            key,
            runner,
            agent_id=settings.agent_id,
            labels=labels,
            capacity=settings.capacity,
            pools=settings.pools,
            tool="comfyui",
            tool_version=detected.comfyui_version if detected else None,
            comfyui_version=detected.comfyui_version if detected else None,
            system_stats=detected.system_stats() if detected else None,
        )
        await runner.check_health(client)  # unhealthy from the first hello if ComfyUI is down
        watch = asyncio.create_task(runner.watch(client), name="comfyui-health")
        try:
            return await run_until_signalled(client, settings.grace_seconds)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
    finally:
        await runner.aclose()
