"""``runyard up``: everything on one machine — the server on SQLite and local files, an owner,
a team and keys on first start (kept in ``<data-dir>/bootstrap.json``), and optionally a local
agent process. SIGTERM or Ctrl-C stops both."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from runyard.cli.common import err, out
from runyard.cli.userconfig import write_private

if TYPE_CHECKING:
    from runyard.config import Settings
    from runyard.context import ServiceContext

BOOTSTRAP_FILE = "bootstrap.json"
OWNER_EMAIL = "owner@runyard.local"
TEAM_NAME = "Local"
FIELDS = ("email", "password", "team_id", "api_key", "agent_key", "server_url")
#: Seconds the local agent gets to finish running work when stopped.
AGENT_GRACE = 5.0


class BootstrapProblem(Exception):
    pass


def _read_bootstrap(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BootstrapProblem(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in FIELDS[:2]):
        raise BootstrapProblem(f"{path} is not a bootstrap file (move it away to start afresh)")
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


async def _still_valid(ctx: ServiceContext, stored: dict[str, str]) -> bool:
    """The stored owner, team membership and both keys exist in this database and work."""
    from runyard.services.credentials import bootstrap_still_valid

    keys = [stored.get("api_key", ""), stored.get("agent_key", "")]
    return await bootstrap_still_valid(ctx, stored["email"], stored.get("team_id", ""), keys)


async def prepare(settings: Settings, server_url: str) -> tuple[dict[str, str], str]:
    """Migrate, then reuse ``bootstrap.json`` or create (or renew) what it describes.

    Returns its content and ``created``, ``renewed`` (the file no longer matched the
    database: same owner, fresh keys) or ``reused``.
    """
    from runyard.app import start_services
    from runyard.domain.errors import RunyardError
    from runyard.services.credentials import bootstrap
    from runyard.store.db import Database

    path = settings.data_dir / BOOTSTRAP_FILE
    stored = _read_bootstrap(path)
    db = Database(settings.database_url(), settings.database)
    try:
        ctx = await start_services(settings, db)
        if stored is not None and await _still_valid(ctx, stored):
            outcome = "reused"
        else:
            email = stored["email"] if stored else OWNER_EMAIL
            password = stored["password"] if stored else secrets.token_urlsafe(18)
            try:
                made = await bootstrap(ctx, email, password, TEAM_NAME, with_agent_key=True)
            except RunyardError as exc:
                raise BootstrapProblem(
                    f"{path} does not match this database ({exc.message}); move it away to "
                    "create a fresh owner"
                ) from None
            assert made.agent_key is not None
            outcome = "renewed" if stored else "created"
            stored = {
                "email": email,
                "password": password,
                "team_id": made.team_id,
                "api_key": made.api_key,
                "agent_key": made.agent_key,
                "server_url": server_url,
            }
    finally:
        await db.dispose()
    if outcome != "reused" or stored.get("server_url") != server_url:
        stored["server_url"] = server_url
        write_private(path, {k: stored.get(k, "") for k in FIELDS})
    path.chmod(0o600)
    return stored, outcome


def _banner(
    settings: Settings,
    boot: dict[str, str],
    outcome: str,
    agent: str,
    path: Path,
) -> Callable[[int | None], None]:
    url = boot["server_url"]

    def show(agent_pid: int | None) -> None:
        shown = str(path)
        lines = [
            f"[bold green]Runyard is up[/] at {url}",
            f"  Dashboard    {url}/ (sign in as the owner below)",
            f"  API docs     {url}/api/v1/docs",
            f"  Data         {settings.data_dir} ({_database_kind(settings)}, local files)",
        ]
        if outcome == "reused":
            lines.append(f"  Credentials  {shown} (owner {boot['email']}, team {boot['team_id']})")
        else:
            verb = "Created" if outcome == "created" else "Renewed"
            lines += [
                f"  {verb} an owner, a team and keys; they are kept in {shown} (mode 0600):",
                f"    owner      {boot['email']}  password {boot['password']}",
                f"    team       {boot['team_id']}",
                f"    api key    {boot['api_key']}",
                f"    agent key  {boot['agent_key']}",
            ]
        if agent_pid is not None:
            lines.append(f"  Agent        {agent} (pid {agent_pid})")
        else:
            lines.append(
                "  Agent        none; `--with-agent` runs one on the ComfyUI of this machine "
                "(`--with-agent --simulate`: a simulated one)"
            )
        lines += [
            "",
            "In another terminal:",
            f"  runyard login --bootstrap {shown}",
            "  runyard workflows import examples/text-to-image.json --slug text-to-image \\",
            "      --params examples/text-to-image.params.json",
            '  runyard run text-to-image -p prompt="a red fox" --wait --out outputs/',
            "",
            "Ctrl-C stops Runyard.",
        ]
        for line in lines:
            out.print(line, highlight=False)

    return show


def _database_kind(settings: Settings) -> str:
    url = settings.database_url()
    return "SQLite" if url.startswith("sqlite") else "PostgreSQL"


def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Folder for the database, local files and bootstrap.json (env RUNYARD_DATA_DIR).",
            show_default="./runyard-data",
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to listen on.", show_default="127.0.0.1")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on.", show_default="8080")
    ] = None,
    with_agent: Annotated[
        bool,
        typer.Option("--with-agent", help="Also run a local agent driving --comfyui-url."),
    ] = False,
    simulate: Annotated[
        bool,
        typer.Option(
            "--simulate",
            help="With --with-agent: the simulated worker (no GPU, no ComfyUI needed).",
        ),
    ] = False,
    comfyui_url: Annotated[
        str,
        typer.Option("--comfyui-url", help="The ComfyUI the local agent drives."),
    ] = "http://127.0.0.1:8188",
    agent_labels: Annotated[
        str | None,
        typer.Option("--agent-labels", help="Comma-separated labels of the local agent."),
    ] = None,
    run_seconds: Annotated[
        float,
        typer.Option("--run-seconds", help="Simulated run time per task (with --simulate)."),
    ] = 3.0,
) -> None:
    """Start Runyard on this machine, with a first owner, team and keys.

    The server runs on SQLite and local files in --data-dir. The first start creates an owner,
    a team, an integration key and an agent key and keeps them in <data-dir>/bootstrap.json
    (mode 0600); later starts reuse them. --with-agent also runs a local agent driving the
    ComfyUI at --comfyui-url (--simulate: the simulated worker, no ComfyUI needed). SIGTERM or
    Ctrl-C stops everything.
    """
    if simulate and not with_agent:
        err.print("error: --simulate goes with --with-agent")
        raise typer.Exit(2)
    from runyard.app import create_app
    from runyard.cli.serve import check_port, server_config
    from runyard.cli.upserver import UpServer
    from runyard.config import load_settings
    from runyard.context import SecretProblem, prepare_data_dir
    from runyard.logging import configure_logging

    settings = load_settings(data_dir)
    configure_logging(settings.logger)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    check_port(settings.server.host, settings.server.port)
    prepare_data_dir(settings.data_dir)
    server_url = settings.public_url()
    try:
        boot, outcome = asyncio.run(prepare(settings, server_url))
    except (BootstrapProblem, SecretProblem) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None

    agent_argv: list[str] | None = None
    if with_agent:
        listen = settings.server.host
        local_host = "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen
        agent_argv = [
            sys.executable,
            "-m",
            "runyard.cli.main",
            "agent",
            "--gateway",
            f"http://{local_host}:{settings.server.port}",
            "--grace",
            str(AGENT_GRACE),
        ]
        if simulate:
            agent_argv += ["--simulate", "--run-seconds", str(run_seconds)]
        else:
            agent_argv += ["--comfyui-url", comfyui_url]
        if agent_labels:
            agent_argv += ["--labels", agent_labels]
    # The key goes through the environment, never the command line (visible in `ps`).
    agent_env = {**os.environ, "RUNYARD_AGENT_KEY": boot["agent_key"]}

    config = server_config(create_app(settings), settings.server.host, settings.server.port)
    path = settings.data_dir / BOOTSTRAP_FILE
    server = UpServer(
        config,
        agent_argv=agent_argv,
        agent_env=agent_env,
        on_ready=_banner(
            settings, boot, outcome, "simulated" if simulate else f"ComfyUI at {comfyui_url}", path
        ),
        agent_grace=AGENT_GRACE,
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
