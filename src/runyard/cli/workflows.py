"""``runyard workflows import|list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from runyard.cli.common import (
    JsonOpt,
    UsageError,
    out,
    print_json,
    table,
    when,
    with_client,
)
from runyard.client import Runyard, Workflow
from runyard.client._core import parameters_from, read_json_file
from runyard.domain.limits import DEFAULT_MAX_RETRIES, MAX_RETRIES, TASK_TIMEOUT

app = typer.Typer(no_args_is_help=True, help="Workflow templates: import, list, show.")


@app.command("import")
@with_client
def import_(
    client: Runyard,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="A ComfyUI API-format graph (Workflow → Export (API)) or a workflow object "
            "with workflow_json.",
            show_default=False,
        ),
    ],
    slug: Annotated[
        str | None,
        typer.Option(
            help="Slug to run it by (a-z, 0-9, hyphens); an existing slug gets a new version.",
            show_default="the file's workflow_slug",
        ),
    ] = None,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params", help="JSON file with a list of parameter definitions.", show_default=False
        ),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated labels an agent must have, e.g. gpu,comfyui."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Display name.", show_default="the slug")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Description.")] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            help="How often a task is tried again after a transient failure (agent lost, "
            "ComfyUI restarted, out of memory); deterministic errors are never retried.",
            show_default=f"the file's max_retries, else {DEFAULT_MAX_RETRIES}",
        ),
    ] = None,
    timeout: Annotated[
        int | None,
        typer.Option(
            "--timeout",
            help="Seconds an attempt may run before it is stopped and retried (0: no limit).",
            show_default="the file's task_timeout, else none",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import (or re-import as a new version) a workflow from a JSON file."""
    if retries is not None and retries not in MAX_RETRIES:
        raise UsageError(f"--retries: {MAX_RETRIES.problem}")
    if timeout is not None and timeout not in TASK_TIMEOUT:
        raise UsageError(f"--timeout: {TASK_TIMEOUT.problem}")
    for path in (file, params):
        if path is not None and not path.is_file():
            raise UsageError(f"{path}: no such file")
    graph = read_json_file(file)
    if not isinstance(graph, dict):
        raise UsageError(f"{file} must hold a JSON object (a ComfyUI API-format graph)")
    if slug is None and not graph.get("workflow_slug"):
        raise UsageError("--slug is required (the file names no workflow_slug)")
    definitions = parameters_from(read_json_file(params), str(params)) if params else None
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    workflow = client.import_workflow(
        graph,
        slug=slug,
        display_name=name,
        parameters=definitions,
        labels=label_list,
        description=description,
        **({"max_retries": retries} if retries is not None else {}),
        **({"task_timeout": timeout} if timeout is not None else {}),
    )
    if as_json:
        print_json(workflow)
        return
    out.print(
        f"Imported {workflow.workflow_slug} version {workflow.version} "
        f"({len(workflow.parameters)} parameters) — id {workflow.id}"
    )
    out.print(f"Run it: runyard run {workflow.workflow_slug} --wait")


@app.command("list")
@with_client
def list_(
    client: Runyard,
    as_json: JsonOpt = False,
) -> None:
    """The team's workflows."""
    page = client.list_workflows()
    if as_json:
        print_json(page.items)
        return
    grid = table("slug", "version", "status", "parameters", "labels", "updated", "id")
    for w in page:
        grid.add_row(
            w.workflow_slug,
            str(w.version),
            w.workflow_status,
            escape(", ".join(p.key for p in w.parameters) or "-"),
            escape(", ".join(w.required_labels) or "-"),
            when(w.updated_at),
            w.id,
        )
    out.print(grid if page.items else "No workflows yet: runyard workflows import FILE")


@app.command("show")
@with_client
def show(
    client: Runyard,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", help="Slug, slug@version or id.")],
    as_json: JsonOpt = False,
) -> None:
    """One workflow: its parameters, labels and limits (--json includes the graph)."""
    found = client.get_workflow(workflow)
    if as_json:
        print_json(found)
        return
    _describe(found)


def _describe(w: Workflow) -> None:
    out.print(
        f"[bold]{escape(w.display_name)}[/] ({w.workflow_slug}@{w.version}, {w.workflow_status})"
    )
    if w.description:
        out.print(w.description, markup=False)
    out.print(f"id           {w.id}")
    out.print(f"tool         {w.tool_type}")
    out.print(f"labels       {', '.join(w.required_labels) or '-'}", markup=False)
    out.print(f"timeout      {w.task_timeout or 'none'} s, retries {w.max_retries}")
    if w.workflow_json is not None:
        out.print(f"graph        {len(w.workflow_json)} nodes")
    if w.parameters:
        grid = table("key", "type", "required", "default", "target", "description")
        for p in w.parameters:
            target = f"{p.node_id}.{p.field}" if p.node_id else (p.target_path or "-")
            grid.add_row(
                escape(p.key),
                p.type,
                "yes" if p.required else "",
                escape("-" if p.default is None else repr(p.default)),
                escape(target),
                escape(p.description or p.label),
            )
        out.print(grid)
