"""``runyard``: the server, administration, and (later) everything a user does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from runyard.config import Settings, load_settings
from runyard.domain.errors import RunyardError
from runyard.logging import configure_logging

app = typer.Typer(no_args_is_help=True, help="Runyard: run GPU work on machines you own.")
admin_app = typer.Typer(no_args_is_help=True, help="Operator commands that work on the database.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(admin_app, name="admin")
app.add_typer(db_app, name="db")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder for the SQLite database and local files (env RUNYARD_DATA_DIR).",
        show_default="./runyard-data",
    ),
]


def _settings(data_dir: Path | None) -> Settings:
    settings = load_settings(data_dir)
    configure_logging(settings.logger)
    return settings


@app.command()
def server(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the control plane (API, and later the agent gateway and dashboard)."""
    import uvicorn

    from runyard.app import create_app

    settings = _settings(data_dir)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply pending migrations."""
    from runyard.store import migrate
    from runyard.store.db import Database

    settings = _settings(data_dir)

    async def run() -> str | None:
        db = Database(settings.database_url(), settings.database)
        try:
            await migrate.upgrade(db)
            return await migrate.current_revision(db)
        finally:
            await db.dispose()

    typer.echo(f"database at revision {asyncio.run(run())}")


@admin_app.command("bootstrap")
def bootstrap(
    email: Annotated[str, typer.Option(help="Owner's email address.")],
    password: Annotated[str, typer.Option(help="Owner's password (8 characters or more).")],
    team_name: Annotated[str, typer.Option(help="Name of the team to create or reuse.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Create (or reuse) a user as owner of a team and print a new integration key once."""
    from runyard.app import start_services
    from runyard.services.credentials import bootstrap as run_bootstrap
    from runyard.store.db import Database

    settings = _settings(data_dir)
    if len(password) < 8:
        typer.echo("error: the password needs at least 8 characters", err=True)
        raise typer.Exit(2)
    if not team_name.strip() or len(team_name) > 100:
        typer.echo("error: --team-name needs 1 to 100 characters", err=True)
        raise typer.Exit(2)

    async def run() -> dict[str, str]:
        db = Database(settings.database_url(), settings.database)
        try:
            ctx = await start_services(settings, db)
            result = await run_bootstrap(ctx, email, password, team_name.strip())
            return {"user_id": result.user_id, "team_id": result.team_id, "api_key": result.api_key}
        finally:
            await db.dispose()

    try:
        result = asyncio.run(run())
    except RunyardError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"user    {result['user_id']}")
    typer.echo(f"team    {result['team_id']}")
    typer.echo(f"api key {result['api_key']}  (shown once; store it now)")


@app.command()
def agent(
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
    from runyard.agent.config import AgentSettings
    from runyard.agent.simulate import SimulatedRunner
    from runyard.config import LoggerSettings

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
    }
    try:
        settings = AgentSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            typer.echo(f"error: {where}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    if not settings.simulate:
        typer.echo(
            "error: the ComfyUI runner is not built yet; run `runyard agent --simulate` "
            "for the simulated worker",
            err=True,
        )
        raise typer.Exit(2)
    if not settings.gateway:
        typer.echo("error: no gateway: pass --gateway URL or set RUNYARD_AGENT_GATEWAY", err=True)
        raise typer.Exit(2)
    secret = settings.key.get_secret_value()
    if not secret.startswith("ak-"):
        typer.echo(
            "error: an agent key (ak-…) is needed: pass --key or set RUNYARD_AGENT_KEY", err=True
        )
        raise typer.Exit(2)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
