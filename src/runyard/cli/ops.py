"""Operator commands that run the server or work on its database: ``runyard server``,
``runyard db upgrade``, ``runyard admin bootstrap``, ``runyard admin rotate-secret``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from runyard.config import Settings

admin_app = typer.Typer(no_args_is_help=True, help="Operator commands that work on the database.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder for the SQLite database and local files (env RUNYARD_DATA_DIR).",
        show_default="./runyard-data",
    ),
]


def _settings(data_dir: Path | None) -> Settings:
    # Imported here: the config and logging stack is not needed by the user-facing commands.
    from runyard.config import load_settings
    from runyard.logging import configure_logging

    settings = load_settings(data_dir)
    configure_logging(settings.logger)
    return settings


def server(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the control plane: the API, the agent gateway, the engine and the dashboard."""
    from runyard.app import create_app
    from runyard.cli.serve import DrainingServer, check_port, server_config
    from runyard.context import prepare_data_dir

    settings = _settings(data_dir)
    if host is not None:
        settings.server.host = host
    if port is not None:
        settings.server.port = port
    check_port(settings.server.host, settings.server.port)
    prepare_data_dir(settings.data_dir)
    _check_secret(settings)
    app = create_app(settings)
    DrainingServer(server_config(app, settings.server.host, settings.server.port)).run()


def _check_secret(settings: Settings) -> None:
    """Exit with one line when the signing secret is missing or not the database's, before
    the server starts (the app's start-up would end in a traceback)."""
    from runyard.app import start_services
    from runyard.context import SecretProblem
    from runyard.store.db import Database

    async def run() -> None:
        db = Database(settings.database_url(), settings.database)
        try:
            await start_services(settings, db)
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except SecretProblem as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception:  # anything else (a database down) fails the app's start as it always did
        return


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
    from runyard.context import SecretProblem
    from runyard.domain.errors import RunyardError
    from runyard.domain.limits import NAME_MAX, PASSWORD_MAX, PASSWORD_MIN
    from runyard.services.credentials import bootstrap as run_bootstrap
    from runyard.store.db import Database

    settings = _settings(data_dir)
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        typer.echo(
            f"error: the password needs {PASSWORD_MIN} to {PASSWORD_MAX} characters", err=True
        )
        raise typer.Exit(2)
    if not team_name.strip() or len(team_name) > NAME_MAX:
        typer.echo(f"error: --team-name needs 1 to {NAME_MAX} characters", err=True)
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
    except SecretProblem as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except RunyardError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"user    {result['user_id']}")
    typer.echo(f"team    {result['team_id']}")
    typer.echo(f"api key {result['api_key']}  (shown once; store it now)")


@admin_app.command("rotate-secret")
def rotate_secret(
    force: Annotated[
        bool,
        typer.Option("--force", help="Rotate even though a server seems to be running."),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Replace the signing secret in its key file with a new one.

    Every session (access and refresh tokens, dashboard sign-ins) and every signed link ends;
    webhook secrets are encrypted again under the new secret and stay as they were. Stop every
    server of the database first, then give each the new key file and start them.
    """
    from runyard.app import start_services
    from runyard.context import SecretProblem
    from runyard.context import rotate_secret as run_rotation
    from runyard.store.db import Database

    settings = _settings(data_dir)

    async def run() -> tuple[Path, int, int]:
        db = Database(settings.database_url(), settings.database)
        try:
            await start_services(settings, db)
            done = await run_rotation(db, settings, now=datetime.now(UTC), force=force)
            return done.key_file, done.webhook_secrets, done.unreadable
        finally:
            await db.dispose()

    try:
        key_file, resealed, unreadable = asyncio.run(run())
    except SecretProblem as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"new signing secret written to {key_file} (mode 0600)")
    typer.echo(f"webhook secrets encrypted again: {resealed}")
    if unreadable:
        typer.echo(
            f"webhook secrets that could not be read and were left as they were: {unreadable} "
            "(rotate each: POST /webhooks/{id}/rotate-secret)"
        )
    typer.echo(
        "every session and signed link has ended; copy the key file to every server of this "
        "database, then start them"
    )
