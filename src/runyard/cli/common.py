"""What every API command shares: finding the server and credentials, errors, output."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from runyard.cli import userconfig
from runyard.client import Runyard, RunyardError
from runyard.client._core import DEFAULT_SERVER, base_url

#: Progress, status and errors go to stderr, so stdout stays clean for --json and ids.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


class State:
    debug = False
    #: Connection options given before the command (``runyard --api-key … tasks list``);
    #: the command's own take precedence.
    connection: dict[str, str | None] = {}  # noqa: RUF012 (one process-wide state)


state = State()

CONNECTION = "Connection"

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Server URL (env RUNYARD_SERVER_URL; then `runyard login`'s config).",
        show_default=DEFAULT_SERVER,
        rich_help_panel=CONNECTION,
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="An sk- or dk- key (env RUNYARD_API_KEY; then `runyard login`'s config).",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
EmailOpt = Annotated[
    str | None,
    typer.Option(
        "--email",
        help="Sign in with email and password instead of a key (env RUNYARD_EMAIL; the "
        "password from RUNYARD_PASSWORD or a prompt). Managing keys needs this.",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
TeamOpt = Annotated[
    str | None,
    typer.Option(
        "--team",
        help="Team id for an email sign-in (env RUNYARD_TEAM_ID; default: your first team).",
        show_default=False,
        rich_help_panel=CONNECTION,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class UsageError(Exception):
    """Bad input on the command line: exit 2."""


@contextmanager
def cli_errors() -> Iterator[None]:
    """One clear line and a non-zero exit instead of a traceback (unless --debug)."""
    try:
        yield
    except (
        typer.Exit,
        typer.Abort,
        typer.exceptions.TyperException,
        click.exceptions.Exit,
        click.ClickException,
        click.Abort,
        KeyboardInterrupt,
    ):
        raise
    except UsageError as exc:
        if state.debug:
            raise
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    except RunyardError as exc:
        if state.debug:
            raise
        err.print(f"error: {exc.error_message}", markup=False)
        raise typer.Exit(1) from None
    except Exception as exc:
        if state.debug:
            raise
        err.print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
        raise typer.Exit(1) from None


_CONNECTION_OPTIONS = (
    inspect.Parameter("server", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ServerOpt),
    inspect.Parameter(
        "api_key", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ApiKeyOpt
    ),
    inspect.Parameter("email", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=EmailOpt),
    inspect.Parameter("team", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TeamOpt),
)


def with_client(command: Callable[..., None]) -> Callable[..., None]:
    """An API command: adds ``--server``, ``--api-key``, ``--email`` and ``--team`` to its
    options, and runs it inside :func:`cli_errors` with a connected ``client`` (its first
    parameter). Put it under ``@app.command(…)``."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "client"]

    @functools.wraps(command)
    def run(**options: Any) -> None:
        where = {p.name: options.pop(p.name) for p in _CONNECTION_OPTIONS}
        for name, value in state.connection.items():
            if where.get(name) is None:
                where[name] = value
        with cli_errors(), connect(**where) as client:
            command(client, **options)

    parameters = [*own, *_CONNECTION_OPTIONS]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


@dataclass(frozen=True)
class Connection:
    server: str
    api_key: str | None = None
    email: str | None = None
    password: str | None = None
    team: str | None = None
    #: Where the credentials came from: flag, env, config, or none.
    source: str = "none"


def resolve_server(server: str | None) -> tuple[str, str]:
    """The server URL and where it came from: flag, env, config, or default."""
    if server:
        return base_url(server), "flag"
    if os.environ.get("RUNYARD_SERVER_URL"):
        return base_url(os.environ["RUNYARD_SERVER_URL"]), "env"
    stored = userconfig.load().get("server_url")
    if isinstance(stored, str) and stored:
        return base_url(stored), "config"
    return DEFAULT_SERVER, "default"


def resolve(
    server: str | None = None,
    api_key: str | None = None,
    email: str | None = None,
    team: str | None = None,
    *,
    need_credentials: bool = True,
) -> Connection:
    """Flags, then the environment, then the config ``runyard login`` wrote.

    The stored key is used only with the server it was issued by, so a ``--server`` elsewhere
    never receives it.
    """
    url, _ = resolve_server(server)
    team = team or os.environ.get("RUNYARD_TEAM_ID") or None
    email = email or os.environ.get("RUNYARD_EMAIL") or None
    if email and not api_key:
        password = os.environ.get("RUNYARD_PASSWORD")
        if not password:
            if not sys.stdin.isatty():
                raise UsageError("set RUNYARD_PASSWORD (no terminal to ask for the password)")
            password = typer.prompt(f"Password for {email}", hide_input=True)
        return Connection(url, email=email, password=password, team=team, source="email")
    if api_key:
        return Connection(url, api_key=api_key, source="flag")
    if os.environ.get("RUNYARD_API_KEY"):
        return Connection(url, api_key=os.environ["RUNYARD_API_KEY"], source="env")
    stored = userconfig.load()
    key = stored.get("api_key")
    stored_server = stored.get("server_url")
    if isinstance(key, str) and key and isinstance(stored_server, str):
        try:
            same = base_url(stored_server) == url
        except RunyardError:
            same = False
        if same:
            return Connection(url, api_key=key, source="config")
    if need_credentials:
        raise UsageError(
            f"no credentials for {url}: run `runyard login`, pass --api-key, or set RUNYARD_API_KEY"
        )
    return Connection(url)


def connect(
    server: str | None = None,
    api_key: str | None = None,
    email: str | None = None,
    team: str | None = None,
) -> Runyard:
    conn = resolve(server, api_key, email, team)
    if conn.email:
        return Runyard(conn.server, email=conn.email, password=conn.password, team_id=conn.team)
    return Runyard(conn.server, api_key=conn.api_key or "")


def dump(value: Any) -> Any:
    """JSON-ready data from models, pages, lists and paths."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def print_json(value: Any) -> None:
    typer.echo(json.dumps(dump(value), indent=2, default=str))


def when(value: Any) -> str:
    """A timestamp for tables: ``2026-11-28 17:23:34`` (UTC), or ``-``."""
    if value is None:
        return "-"
    return str(value.strftime("%Y-%m-%d %H:%M:%S"))


def table(*columns: str) -> Table:
    """A table whose ids and times never wrap (they are copied into other commands)."""
    grid = Table()
    for name in columns:
        keep = name == "id" or name in ("created", "updated", "heartbeat", "last used", "prefix")
        grid.add_column(name, no_wrap=keep, overflow="ellipsis" if not keep else "ignore")
    return grid


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``-p key=value``: the value as JSON when it parses (20, true, null, [1,2], "x"),
    else as the literal string; ``-p key=@FILE`` is a local file to upload (a ``Path``),
    ``-p key=@@text`` the literal ``@text``."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"bad -p {item!r}: use -p key=value (e.g. -p steps=20)")
        if raw.startswith("@@"):
            params[key] = raw[1:]
            continue
        if raw.startswith("@"):
            path = Path(raw[1:]).expanduser()
            if not raw[1:] or not path.is_file():
                raise UsageError(f"-p {key}={raw}: no such file {raw[1:]!r}")
            params[key] = path
            continue
        try:
            params[key] = json.loads(raw, parse_constant=_no_constants)
        except ValueError:
            params[key] = raw
    return params


def text_values(items: list[str] | None) -> dict[str, str]:
    """``-p key=value`` values as typed, for parameters the workflow declares as text
    (``-p prompt=42`` means the text ``42`` there, not a number)."""
    found: dict[str, str] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if sep and key.strip() and not raw.startswith("@"):
            found[key.strip()] = raw
    return found


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
