"""``runyard agent``: the process that dials out to the gateway and runs tasks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer


def agent(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="RUNYARD_AGENT_CONFIG",
            help="YAML config file with the settings below (keys: gateway, key, agent_id, "
            "labels, pools, capacity, comfyui_url, work_dir, grace_seconds, …); flags override "
            "it, it overrides RUNYARD_AGENT_* variables.",
            show_default=False,
        ),
    ] = None,
    simulate: Annotated[
        bool,
        typer.Option(
            "--simulate",
            help="Run the simulated worker (no GPU, no ComfyUI): for tests, benchmarks and "
            "checking a deployment. Same as --runner simulate.",
        ),
    ] = False,
    runner: Annotated[
        str | None,
        typer.Option(
            "--runner",
            help="What runs the tasks: comfyui or simulate (env RUNYARD_AGENT_RUNNER).",
            show_default="comfyui",
        ),
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option(help="Server base URL, http(s)://host:port (env RUNYARD_AGENT_GATEWAY)."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="Agent key, ak-… (env RUNYARD_AGENT_KEY).", show_default=False),
    ] = None,
    agent_id: Annotated[
        str | None, typer.Option("--agent-id", help="Agent id.", show_default="host name")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated labels, e.g. gpu,comfyui.")
    ] = None,
    pools: Annotated[
        str | None, typer.Option(help="Comma-separated pools: team, community.")
    ] = None,
    capacity: Annotated[
        int | None, typer.Option(help="Attempts run at once.", show_default="1")
    ] = None,
    behaviour: Annotated[
        str | None,
        typer.Option(
            "--behaviour",
            "--behavior",
            help="Simulated behaviour: succeed, fail, fail-permanent, stall, disconnect, slow, "
            "no-ack (a task's parameters may choose with {'simulate': …}).",
            show_default="succeed",
        ),
    ] = None,
    run_seconds: Annotated[
        float | None,
        typer.Option("--run-seconds", help="Simulated run time per task.", show_default="0"),
    ] = None,
    comfyui_url: Annotated[
        str | None,
        typer.Option(
            "--comfyui-url",
            help="The ComfyUI to drive (env RUNYARD_AGENT_COMFYUI_URL).",
            show_default="http://127.0.0.1:8188",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Print what the agent detects (ComfyUI version, devices, labels) and whether "
            "ComfyUI answers (exit 1 if not), then exit.",
        ),
    ] = False,
    grace: Annotated[
        float | None,
        typer.Option(
            help="Seconds running work may finish after SIGTERM/SIGINT before it is handed back.",
            show_default="30",
        ),
    ] = None,
) -> None:
    """Run an agent that dials out to the gateway and runs tasks."""
    # The agent's own modules only: this command must work with the base install.
    from runyard.agent import main as agent_main
    from runyard.agent.config import ConfigError, load_settings
    from runyard.config import LoggerSettings
    from runyard.logging import configure_logging

    configure_logging(LoggerSettings())
    flags: dict[str, Any] = {
        "gateway": gateway,
        "key": key,
        "agent_id": agent_id,
        "labels": labels,
        "pools": pools,
        "capacity": capacity,
        "runner": runner,
        "behaviour": behaviour,
        "run_seconds": run_seconds,
        "grace_seconds": grace,
        "simulate": simulate or None,
        "comfyui_url": comfyui_url,
    }
    try:
        settings = load_settings(flags, config)
        if config is not None:
            _warn_if_key_readable(config, settings.key.get_secret_value())
        if check:
            code = asyncio.run(agent_main.check(settings, typer.echo))
        else:
            code = asyncio.run(agent_main.run_agent(settings))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def _warn_if_key_readable(path: Path, key: str) -> None:
    """A config file holding the agent key should be readable by its owner only."""
    try:
        mode = path.stat().st_mode
        holds_key = bool(key) and key in path.read_text(encoding="utf-8")
    except OSError:
        return
    if holds_key and mode & 0o077:
        typer.echo(
            f"warning: {path} holds the agent key and is readable by others "
            f"(mode {mode & 0o777:o}); chmod 600 it",
            err=True,
        )
