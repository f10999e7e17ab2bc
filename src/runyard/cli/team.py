"""``runyard agents list``, ``runyard keys …``, ``runyard webhooks …``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from runyard.cli.common import (
    JsonOpt,
    err,
    out,
    print_json,
    table,
    when,
    with_client,
)
from runyard.client import Runyard

agents_app = typer.Typer(no_args_is_help=True, help="Agents connected to the team.")
keys_app = typer.Typer(
    no_args_is_help=True,
    help="Integration (sk-) and agent (ak-) keys. Admins only, signed in with --email "
    "(device keys may not manage keys).",
)
webhooks_app = typer.Typer(no_args_is_help=True, help="Webhooks for task events (admins).")


@agents_app.command("list")
@with_client
def agents_list(
    client: Runyard,
    as_json: JsonOpt = False,
) -> None:
    """The team's agents and what they run."""
    agents = client.list_agents()
    if as_json:
        print_json(agents.items)
        return
    grid = table("agent", "status", "labels", "running", "capacity", "done", "heartbeat")
    for a in agents:
        grid.add_row(
            escape(a.agent_id),
            a.agent_status,
            escape(", ".join(a.agent_labels) or "-"),
            str(a.running_count),
            str(a.gpu_capacity),
            str(a.tasks_completed),
            when(a.last_heartbeat),
        )
    out.print(grid if agents.items else "No agents: start one with `runyard agent`.")


KindOpt = Annotated[str, typer.Option(help="integration (sk-) or agent (ak-).")]


@keys_app.command("create")
@with_client
def keys_create(
    client: Runyard,
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    kind: KindOpt = "integration",
    expires_in_days: Annotated[
        int | None,
        typer.Option("--expires-in-days", help="1 to 365.", show_default="never"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a key; it is shown this once."""
    created = client.create_key(name, kind=kind, expires_in_days=expires_in_days)
    if as_json:
        print_json(created)
        return
    out.print(created.raw_key, markup=False)
    err.print(f"{created.kind} key {created.id} (shown once; store it now)")


@keys_app.command("list")
@with_client
def keys_list(
    client: Runyard,
    kind: Annotated[str | None, typer.Option(help="integration, agent or device.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The team's keys (prefixes only, never the secrets)."""
    keys = client.list_keys(kind=kind)
    if as_json:
        print_json(keys.items)
        return
    grid = table("id", "kind", "name", "prefix", "status", "created", "last used")
    for k in keys:
        grid.add_row(
            k.id,
            k.kind,
            escape(k.display_name),
            k.key_prefix,
            k.key_status,
            when(k.created_at),
            when(k.last_used_at),
        )
    out.print(grid if keys.items else "No keys.")


@keys_app.command("revoke")
@with_client
def keys_revoke(
    client: Runyard,
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (not the secret).")],
) -> None:
    """Revoke a key for good."""
    client.revoke_key(key_id)
    out.print(f"Revoked {key_id}")


@webhooks_app.command("list")
@with_client
def webhooks_list(
    client: Runyard,
    as_json: JsonOpt = False,
) -> None:
    """The team's webhooks."""
    hooks = client.list_webhooks()
    if as_json:
        print_json(hooks.items)
        return
    grid = table("id", "name", "url", "events", "status", "last delivered")
    for w in hooks:
        grid.add_row(
            w.id,
            escape(w.display_name),
            escape(w.webhook_url),
            ", ".join(w.webhook_events),
            w.webhook_status,
            when(w.last_delivered_at),
        )
    out.print(grid if hooks.items else "No webhooks.")


@webhooks_app.command("create")
@with_client
def webhooks_create(
    client: Runyard,
    url: Annotated[str, typer.Option("--url", help="https:// endpoint to POST events to.")],
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    events: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: task.completed, task.failed, task.cancelled, task.running.",
            show_default="task.completed,task.failed",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a webhook; prints its signing secret."""
    event_list = [e.strip() for e in events.split(",") if e.strip()] if events else None
    created = client.create_webhook(name, url, events=event_list)
    if as_json:
        print_json(created)
        return
    out.print(f"webhook {created.id}", markup=False)
    out.print(f"secret  {created.webhook_secret}", markup=False)


@webhooks_app.command("delete")
@with_client
def webhooks_delete(
    client: Runyard,
    webhook_id: Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="The webhook's id.")],
) -> None:
    """Delete a webhook."""
    client.delete_webhook(webhook_id)
    out.print(f"Deleted {webhook_id}")


@webhooks_app.command("deliveries")
@with_client
def webhooks_deliveries(
    client: Runyard,
    webhook_id: Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="The webhook's id.")],
    as_json: JsonOpt = False,
) -> None:
    """A webhook's delivery log, newest first."""
    deliveries = client.list_deliveries(webhook_id)
    if as_json:
        print_json(deliveries.items)
        return
    grid = table("id", "event", "task", "status", "attempts", "last code", "last error")
    for d in deliveries:
        grid.add_row(
            d.id,
            d.event_type,
            d.task_id or "-",
            d.delivery_status,
            str(d.attempt_count),
            str(d.last_status_code or "-"),
            escape((d.last_error or "")[:60]),
        )
    out.print(grid if deliveries.items else "No deliveries yet.")
