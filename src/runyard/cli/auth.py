"""``runyard login`` (device pairing), ``runyard logout``, ``runyard whoami``."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from runyard.cli import userconfig
from runyard.cli.common import (
    ApiKeyOpt,
    EmailOpt,
    JsonOpt,
    ServerOpt,
    TeamOpt,
    UsageError,
    cli_errors,
    err,
    out,
    print_json,
    resolve,
    resolve_server,
)
from runyard.client import PairingStart, Runyard, RunyardError
from runyard.client._core import base_url, read_json_file


def _bootstrap_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path} does not exist (it is written by `runyard up`)")
    data = read_json_file(path)
    if not isinstance(data, dict) or not data.get("email") or not data.get("password"):
        raise UsageError(f"{path} is not a bootstrap.json written by `runyard up`")
    return data


def login(
    server: ServerOpt = None,
    email: Annotated[
        str | None,
        typer.Option(
            help="Confirm the pairing yourself by signing in with this email (password from "
            "--password, RUNYARD_PASSWORD or a prompt).",
            show_default=False,
        ),
    ] = None,
    password: Annotated[
        str | None, typer.Option(help="Password for --email.", show_default=False)
    ] = None,
    team: TeamOpt = None,
    bootstrap: Annotated[
        Path | None,
        typer.Option(
            "--bootstrap",
            help="Sign in as the owner `runyard up` created, from its bootstrap.json "
            "(e.g. ./runyard-data/bootstrap.json).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name of this device's key.", show_default="host name"),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for confirmation.", show_default="the code's life"),
    ] = None,
) -> None:
    """Pair this machine: get a device key (dk-) and store it in the user config.

    Prints a code and a link; someone signed in to the team confirms it (POST
    /desktop/pair/confirm, or the dashboard once it exists) and the CLI picks the key up.
    With --email (or --bootstrap) the CLI confirms the code itself with your password.
    """
    with cli_errors():
        boot: dict[str, Any] = {}
        if bootstrap is not None:
            boot = _bootstrap_file(bootstrap)
            email = email or boot["email"]
            password = password or boot["password"]
            team = team or boot.get("team_id")
        if server:
            url = base_url(server)
        elif os.environ.get("RUNYARD_SERVER_URL") or not boot.get("server_url"):
            url, _ = resolve_server(None)
        else:
            url = base_url(str(boot["server_url"]))
        email = email or os.environ.get("RUNYARD_EMAIL") or None
        if email and not password:
            password = os.environ.get("RUNYARD_PASSWORD") or None
            if not password:
                if not sys.stdin.isatty():
                    raise UsageError("set RUNYARD_PASSWORD or pass --password")
                password = typer.prompt(f"Password for {email}", hide_input=True)
        device_name = name or f"CLI on {socket.gethostname()}"[:100]

        with Runyard(url, api_key="") as anonymous:
            if email:
                with Runyard(url, email=email, password=password, team_id=team) as session:
                    session.login()

                    def confirm(start: PairingStart) -> None:
                        session.confirm_pairing(start.user_code, device_name)

                    result = anonymous.pair(confirm, timeout=timeout)
                who = email
            else:

                def show(start: PairingStart) -> None:
                    err.print(
                        f"To sign this machine in, confirm the code [bold]{start.user_code}[/] "
                        f"while signed in to the team:\n  {start.verification_uri}\n"
                        f"(the code expires in {start.expires_in // 60} minutes; Ctrl-C to stop)"
                    )

                with err.status("Waiting for confirmation…"):
                    result = anonymous.pair(show, timeout=timeout)
                who = None
            with (
                Runyard(url, api_key=result.device_key) as paired,
                contextlib.suppress(RunyardError),
            ):
                who = paired.me().email_address
        _replace_stored_key(url, result.device_key)
        path = userconfig.save({"server_url": url, "api_key": result.device_key})
        err.print(f"Signed in to {url}" + (f" as {who}" if who else "") + f"; key stored in {path}")


def _replace_stored_key(url: str, new_key: str) -> None:
    """Revoke the device key this config held for the same server before replacing it."""
    stored = userconfig.load()
    old = stored.get("api_key")
    if not isinstance(old, str) or not old.startswith("dk-") or old == new_key:
        return
    try:
        same = base_url(str(stored.get("server_url", ""))) == url
    except RunyardError:
        same = False
    if same:
        with contextlib.suppress(RunyardError), Runyard(url, api_key=old) as previous:
            previous.logout()


def logout(server: ServerOpt = None) -> None:
    """Revoke the stored device key (and its agent key) and forget it."""
    with cli_errors():
        stored = userconfig.load()
        key = stored.get("api_key")
        if not isinstance(key, str) or not key:
            err.print("Not signed in (no key in " + str(userconfig.config_path()) + ")")
            return
        url = base_url(server or str(stored.get("server_url") or ""))
        if key.startswith("dk-"):
            try:
                with Runyard(url, api_key=key) as client:
                    client.logout()
            except RunyardError as exc:
                if exc.status not in (401, 403):
                    err.print(f"warning: could not revoke the key on {url}: {exc.error_message}")
        userconfig.clear_key()
        err.print(f"Signed out of {url}")


def whoami(
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    email: EmailOpt = None,
    team: TeamOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which server and credentials the CLI would use, and who that is."""
    with cli_errors():
        conn = resolve(server, api_key, email, team)
        info: dict[str, Any] = {"server_url": conn.server, "credentials_from": conn.source}
        if conn.api_key:
            info["key_prefix"] = conn.api_key[:12]
        if conn.email:
            client = Runyard(conn.server, email=conn.email, password=conn.password, team_id=team)
        else:
            client = Runyard(conn.server, api_key=conn.api_key or "")
        with client:
            if conn.api_key and conn.api_key.startswith("sk-"):
                client.list_workflows(per_page=1)  # integration keys have no user
                info["kind"] = "integration key"
            else:
                me = client.me()
                info["kind"] = "session" if conn.email else "device key"
                info["email"] = me.email_address
                info["teams"] = [t.model_dump() for t in me.team_list]
        if as_json:
            print_json(info)
            return
        out.print(f"server       {info['server_url']}")
        out.print(f"credentials  {info['kind']} (from {info['credentials_from']})")
        if "email" in info:
            out.print(f"user         {info['email']}")
            for t in info["teams"]:
                out.print(f"team         {t['display_name']} ({t['id']}, {t['member_role']})")
