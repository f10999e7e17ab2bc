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
            "checking a deployment.",
        ),
    ] = False,
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
    from pydantic import ValidationError

    from runyard.agent.client import GatewayClient, run_until_signalled
    from runyard.agent.config import ConfigError, load_settings
    from runyard.agent.simulate import SimulatedRunner
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
        "behaviour": behaviour,
        "run_seconds": run_seconds,
        "grace_seconds": grace,
        "simulate": simulate or None,
        "comfyui_url": comfyui_url,
    }
    try:
        settings = load_settings(flags, config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if config is not None:
        _warn_if_key_readable(config, settings.key.get_secret_value())
    if check:
        from runyard.agent.comfyui.main import check as check_comfyui

        raise typer.Exit(asyncio.run(check_comfyui(settings, typer.echo)))
    if not settings.gateway:
        typer.echo("error: no gateway: pass --gateway URL or set RUNYARD_AGENT_GATEWAY", err=True)
        raise typer.Exit(2)
    secret = settings.key.get_secret_value()
    if not secret.startswith("ak-"):
        typer.echo(
            "error: an agent key (ak-…) is needed: pass --key or set RUNYARD_AGENT_KEY", err=True
        )
        raise typer.Exit(2)
    if not settings.simulate:
        from runyard.agent.comfyui.main import run_agent

        try:
            code = asyncio.run(run_agent(settings, secret))
        except (ValueError, ValidationError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        raise typer.Exit(code)
    runner = SimulatedRunner(settings.behaviour, settings.run_seconds)
    try:
        client = GatewayClient(
            settings.gateway,
            secret,
            runner,
            agent_id=settings.agent_id,
            labels=settings.labels,
            capacity=settings.capacity,
            pools=settings.pools,
            tool_version="simulated",
        )
    except (ValueError, ValidationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(asyncio.run(run_until_signalled(client, settings.grace_seconds)))


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
