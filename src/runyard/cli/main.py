"""``runyard``: the server, the agent, the one-machine quickstart, and everything a user does.

Commands live in modules by topic; this one assembles them:

- ``ops``: ``server``, ``db upgrade``, ``admin bootstrap`` (work on the database directly);
- ``agent``: ``agent``; ``up``: ``up`` (server + bootstrap + optional local agent);
- ``dev``: ``dev fake-comfyui`` (the fake ComfyUI, for trying Runyard without a GPU);
- ``auth``: ``login``, ``logout``, ``whoami``; ``workflows``: ``workflows …``;
- ``tasks``: ``run``, ``tasks …``; ``team``: ``agents …``, ``keys …``, ``webhooks …``.

Everything after ``ops``/``agent``/``up`` goes through the SDK (``runyard.client``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from runyard import __version__
from runyard.cli import agent, auth, dev, ops, tasks, team, up, workflows
from runyard.cli.common import state

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
) -> None:
    """Runyard: run GPU work on machines you own."""
    state.debug = debug


app.command(rich_help_panel="Run Runyard")(up.up)
app.command(rich_help_panel="Run Runyard")(ops.server)
app.command(rich_help_panel="Run Runyard")(agent.agent)
app.add_typer(ops.admin_app, name="admin", rich_help_panel="Run Runyard")
app.add_typer(ops.db_app, name="db", rich_help_panel="Run Runyard")
app.add_typer(dev.app, name="dev", rich_help_panel="Run Runyard")

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
