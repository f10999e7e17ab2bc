"""``runyard``: the server, the agent, the one-machine quickstart, and everything a user does.

Commands live in modules by topic; this one assembles them:

- ``ops``: ``server``, ``db upgrade``, ``admin bootstrap`` (work on the database directly);
- ``agent``: ``agent``; ``up``: ``up`` (server + bootstrap + optional local agent);
- ``dev``: ``dev fake-comfyui`` (the fake ComfyUI, for trying Runyard without a GPU);
- ``auth``: ``login``, ``logout``, ``whoami``; ``workflows``: ``workflows …``;
- ``tasks``: ``run``, ``tasks …``; ``team``: ``agents …``, ``keys …``, ``webhooks …``.

Everything after ``ops``/``agent``/``up`` goes through the SDK (``runyard.client``).

The base install (``pip install runyard`` or ``runyard[agent]``) has what the agent, the SDK
and the user commands need; the server's packages come with ``runyard[server]``. So this module
and every command module import only typer, rich and the SDK at the top: the server commands
import the server inside their bodies, and :func:`needs_server` turns a missing server package
into one error line naming the extra instead of a traceback.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from typing import Annotated, ParamSpec, TypeVar

import typer

from runyard import __version__
from runyard.cli import agent, auth, dev, ops, tasks, team, up, workflows
from runyard.cli.common import ApiKeyOpt, EmailOpt, ServerOpt, TeamOpt, state

P = ParamSpec("P")
R = TypeVar("R")

#: The top-level modules the server commands import that only ``runyard[server]`` installs.
SERVER_MODULES = (
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "email_validator",
    "argon2",
    "jwt",
    "cryptography",
    "boto3",
    "jinja2",
    "fastapi_offline",
)
SERVER_EXTRA = "pip install 'runyard[server]'"


def missing_modules(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that cannot be imported here (looked up, not imported)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def needs_server(
    command: Callable[P, R], modules: Sequence[str] = SERVER_MODULES
) -> Callable[P, R]:
    """``command`` that first checks the server's packages are installed: without them it is
    one ``error:`` line naming ``runyard[server]`` and exit code 1. ``--help`` still works."""

    @functools.wraps(command)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        missing = missing_modules(modules)
        if missing:
            named = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" * (len(missing) > 3))
            typer.echo(
                f"error: this command needs the server's packages, not installed here "
                f"(missing: {named}): {SERVER_EXTRA}",
                err=True,
            )
            raise typer.Exit(1)
        return command(*args, **kwargs)

    return checked


def _server_group(group: typer.Typer, modules: Sequence[str] = SERVER_MODULES) -> typer.Typer:
    for info in group.registered_commands:
        if info.callback is not None:
            info.callback = needs_server(info.callback, modules)
    return group


app = typer.Typer(
    no_args_is_help=True,
    help="Runyard: run GPU work on machines you own.",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"runyard {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="RUNYARD_DEBUG", help="Show tracebacks on errors."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    email: EmailOpt = None,
    team: TeamOpt = None,
) -> None:
    """Runyard: run GPU work on machines you own.

    The connection options work before the command too: runyard --api-key sk-… tasks list.
    """
    state.debug = debug
    state.connection = {"server": server, "api_key": api_key, "email": email, "team": team}


app.command(rich_help_panel="Run Runyard")(needs_server(up.up))
app.command(rich_help_panel="Run Runyard")(needs_server(ops.server))
app.command(rich_help_panel="Run Runyard")(agent.agent)
app.add_typer(_server_group(ops.admin_app), name="admin", rich_help_panel="Run Runyard")
app.add_typer(_server_group(ops.db_app), name="db", rich_help_panel="Run Runyard")
# The fake ComfyUI is aiohttp only (ComfyUI itself is an aiohttp server).
app.add_typer(_server_group(dev.app, ("aiohttp",)), name="dev", rich_help_panel="Run Runyard")

app.command(rich_help_panel="Use Runyard")(auth.login)
app.command(rich_help_panel="Use Runyard")(auth.logout)
app.command(rich_help_panel="Use Runyard")(auth.whoami)
app.command(rich_help_panel="Use Runyard")(tasks.run)
app.add_typer(workflows.app, name="workflows", rich_help_panel="Use Runyard")
app.add_typer(tasks.app, name="tasks", rich_help_panel="Use Runyard")
app.add_typer(team.agents_app, name="agents", rich_help_panel="Use Runyard")
app.add_typer(team.keys_app, name="keys", rich_help_panel="Use Runyard")
app.add_typer(team.webhooks_app, name="webhooks", rich_help_panel="Use Runyard")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
