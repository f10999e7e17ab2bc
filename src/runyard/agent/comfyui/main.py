"""The ``comfyui`` runner kind: detection, ``--check``, and the agent wired to ComfyUI
(registered in ``runyard.agent.main.RUNNERS``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from runyard.agent.client import GatewayClient
from runyard.agent.comfyui.api import ComfyUIUnavailable, Detected, nvidia_smi_present
from runyard.agent.comfyui.runner import ComfyUIRunner
from runyard.agent.config import AgentSettings
from runyard.logging import get_logger


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
        health_interval=settings.health_interval_seconds,
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
    derived = derived_labels(detected)
    labels = agent_labels(settings, detected)
    if detected is not None:
        gpu = "yes (a non-CPU device in /system_stats)" if detected.has_gpu else "no"
    else:
        gpu = "yes (nvidia-smi found)" if "gpu" in derived else "no (nvidia-smi not found)"
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
    echo(f"gpu:       {gpu}")
    echo(f"labels:    {', '.join(labels)}")
    echo(f"agent id:  {settings.agent_id}")
    echo(f"capacity:  {settings.capacity}")
    echo(f"pools:     {', '.join(settings.pools)}")
    echo(f"gateway:   {settings.gateway or '(not set)'}")
    return 0 if detected is not None else 1


def agent_labels(settings: AgentSettings, detected: Detected | None) -> list[str]:
    """What the agent announces: the derived labels, then ``--labels``."""
    return list(dict.fromkeys([*derived_labels(detected), *settings.labels]))


@contextlib.asynccontextmanager
async def comfyui_agent(settings: AgentSettings, key: str) -> AsyncIterator[GatewayClient]:
    """The agent wired up: ComfyUI detected (or not yet), its health watched. The caller runs
    the yielded client (``runyard.agent.main.run_agent``).

    An agent started before ComfyUI answers connects with what it could guess (``comfyui``,
    ``gpu`` if ``nvidia-smi`` exists, no version) as ``unhealthy``; once ComfyUI answers, the
    detected labels and version replace them (the client reconnects with a new ``hello``).
    """
    runner = make_runner(settings)
    try:
        try:
            detected: Detected | None = await runner.detect()
        except ComfyUIUnavailable:
            detected = None
        client = GatewayClient(
            settings.gateway,
            key,
            runner,
            agent_id=settings.agent_id,
            labels=agent_labels(settings, detected),
            capacity=settings.capacity,
            pools=settings.pools,
            tool="comfyui",
            tool_version=detected.comfyui_version if detected else None,
            comfyui_version=detected.comfyui_version if detected else None,
            system_stats=detected.system_stats() if detected else None,
        )

        async def announce(found: Detected) -> None:
            try:
                await client.update_identity(
                    labels=agent_labels(settings, found),
                    tool_version=found.comfyui_version,
                    comfyui_version=found.comfyui_version,
                )
            except ValueError as exc:  # e.g. one label too many: keep the old ones
                get_logger("runyard.agent").warning("agent_identity_refused", detail=str(exc))

        runner.on_detected = announce
        await runner.check_health(client)  # unhealthy from the first hello if ComfyUI is down
        watch = asyncio.create_task(runner.watch(client), name="comfyui-health")
        try:
            yield client
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
    finally:
        await runner.aclose()
