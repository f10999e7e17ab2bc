"""``runyard run`` and ``runyard tasks list|show|cancel|watch|result``."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from runyard.cli.common import (
    JsonOpt,
    UsageError,
    err,
    out,
    parse_params,
    print_json,
    table,
    text_values,
    when,
    with_client,
)
from runyard.client import (
    DownloadProgress,
    Runyard,
    RunyardError,
    Task,
    TaskEvent,
    TaskResult,
    UploadProgress,
)
from runyard.domain.limits import MAX_RUNS_PER_REQUEST, PRIORITY

app = typer.Typer(no_args_is_help=True, help="Tasks: list, show, cancel, watch, result.")

TimeoutOpt = Annotated[
    float | None,
    typer.Option(help="Give up waiting after this many seconds (exit 1).", show_default="never"),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Download the outputs into this folder.", show_default=False, file_okay=False
    ),
]


OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace files of the same name in --out (default: keep them; the download gets "
        "a numbered name).",
    ),
]


class TaskProgress:
    """A live Rich progress bar fed by a task's events: state, node, step, percent."""

    def __init__(self, console: Console, task_id: str) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[state]:<9}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.bar: TaskID = self.progress.add_task(task_id, total=100, state="submitted", detail="")

    def __enter__(self) -> TaskProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def __call__(self, event: TaskEvent) -> None:
        update: dict[str, Any] = {}
        if event.event == "status" and event.status:
            update["state"] = event.status
            reason = event.data.get("reason")
            retry = event.data.get("retry_count")
            if retry:
                update["detail"] = f"retry {retry}"
            elif isinstance(reason, str) and reason:
                update["detail"] = escape(reason)
        elif event.event == "progress":
            update["state"] = "running"
            if event.progress is not None:
                update["completed"] = max(0.0, min(1.0, event.progress)) * 100
            parts = []
            if event.current_node:
                parts.append(f"node {event.current_node}")
            if event.step_total:
                parts.append(f"step {event.step_current or 0}/{event.step_total}")
            stage = event.data.get("stage")
            if isinstance(stage, str) and stage:
                parts.append(stage)
            update["detail"] = escape(" · ".join(parts))
        elif event.event == "completed":
            update.update(state="completed", completed=100, detail="")
        elif event.event == "failed":
            update.update(state="failed", detail=escape(event.error or ""))
        elif event.event == "cancelled":
            update.update(state="cancelled", detail="")
        if update:
            self.progress.update(self.bar, **update)


class TransferBars:
    """One Rich bar per file, fed by ``download_outputs(progress=…)`` (``download``) or by
    uploads (``upload``; only files of ``BIG`` bytes or more get a bar)."""

    BIG = 1024 * 1024

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
        )
        self.bars: dict[object, TaskID] = {}

    def __enter__(self) -> TransferBars:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def _show(self, key: object, label: str, done: int, total: int | None) -> None:
        bar = self.bars.get(key)
        if bar is None:
            bar = self.bars[key] = self.progress.add_task(escape(label), total=total)
        self.progress.update(bar, completed=done, total=total)

    def download(self, step: DownloadProgress) -> None:
        self._show(step.index, step.filename, step.done, step.total)

    def upload(self, step: UploadProgress) -> None:
        if step.total >= self.BIG:
            self._show(("upload", step.filename), f"↑ {step.filename}", step.done, step.total)


def _seconds(task: Task) -> str:
    if task.completed_at is None:
        return ""
    start = task.started_at or task.created_at
    return f" in {(task.completed_at - start).total_seconds():.1f} s"


def _download(
    client: Runyard, task_id: str, folder: Path, quiet: bool, overwrite: bool = False
) -> list[Path]:
    if quiet:
        return client.download_outputs(task_id, folder, overwrite=overwrite)
    with TransferBars(err) as bars:
        return client.download_outputs(task_id, folder, progress=bars.download, overwrite=overwrite)


def _finish(
    client: Runyard, task: Task, folder: Path | None, as_json: bool, overwrite: bool = False
) -> None:
    """Report a finished task; download its outputs; exit 1 unless it completed."""
    result = client.get_result(task.id)
    files = _download(client, task.id, folder, as_json, overwrite) if folder and task.ok else []
    if as_json:
        print_json({"task": task, "result": result, "files": files})
    elif task.ok:
        out.print(f"Task {task.id} completed{_seconds(task)}")
        _describe_outputs(result, files, folder)
    if task.ok:
        return
    if not as_json:
        if task.task_status == "cancelled":
            message = f"error: task {task.id} was cancelled"
        else:
            message = f"error: task {task.id} failed: {task.task_error or 'no error message'}"
        err.print(message, markup=False)
    raise typer.Exit(1)


def _describe_outputs(result: TaskResult, files: list[Path], folder: Path | None) -> None:
    for path in files:
        out.print(f"  {path} ({path.stat().st_size:,} bytes)", markup=False)
    links = len(result.download_urls or {}) or (1 if result.download_url else 0)
    if folder is not None and not files:
        out.print("  (no output files to download)")
    elif folder is None and links:
        out.print(f"  {links} output file(s): runyard tasks result {result.id} --out DIR")


def _watch(client: Runyard, task_id: str, timeout: float | None) -> Task:
    try:
        with TaskProgress(err, task_id) as bar:
            return client.wait(task_id, timeout=timeout, on_event=bar)
    except KeyboardInterrupt:
        err.print(f"Stopped watching; the task goes on: runyard tasks watch {task_id}")
        raise typer.Exit(130) from None


@with_client
def run(
    client: Runyard,
    workflow: Annotated[
        str, typer.Argument(metavar="WORKFLOW", help="Slug, slug@version or id of the workflow.")
    ],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--param",
            help="A parameter, key=value; the value is read as JSON when it parses "
            "(20, true, null) and as text otherwise; key=@FILE uploads a local file for a "
            "file parameter. Repeat for more.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the task until it ends, with progress.")
    ] = False,
    out_dir: OutOpt = None,
    overwrite: OverwriteOpt = False,
    timeout: TimeoutOpt = None,
    priority: Annotated[
        int | None,
        typer.Option(help=f"{PRIORITY.low}…{PRIORITY.high}; higher runs first.", show_default="0"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Submitting again with it gives the same task."),
    ] = None,
    count: Annotated[
        int,
        typer.Option(
            "--count",
            help=f"Submit this many runs with the same parameters ({MAX_RUNS_PER_REQUEST} per "
            "request); prints one task id a line. Not with --wait, --out or --idempotency-key.",
        ),
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Run a workflow; prints the task id.

    With --wait (or --out) it follows the task with a progress bar, downloads its outputs and
    exits 0 only if it completed.
    """
    if not 1 <= count <= 10_000:
        raise UsageError(f"--count must be a whole number from 1 to 10000, not {count}")
    if count > 1 and (wait or out_dir):
        raise UsageError(
            f"--wait and --out follow one run, not --count {count}: submit without them and "
            "follow each id with `runyard tasks watch ID`"
        )
    if count > 1 and idempotency_key:
        raise UsageError("--idempotency-key is for one run; it does not go with --count")
    parameters = _as_declared(client, workflow, parse_params(param), text_values(param))
    if count > 1:
        task_ids = _submit_many(client, workflow, parameters, priority, count, as_json)
        if as_json:
            print_json({"task_ids": task_ids})
        else:
            out.print("\n".join(task_ids), markup=False)
        return
    task_id = _submit(client, workflow, parameters, priority, idempotency_key, as_json)
    if not (wait or out_dir):
        if as_json:
            print_json({"task_id": task_id})
        else:
            out.print(task_id)
        return
    if as_json:
        task = client.wait(task_id, timeout=timeout)
    else:
        err.print(f"Task {task_id} submitted", markup=False)
        task = _watch(client, task_id, timeout)
    _finish(client, task, out_dir, as_json, overwrite)


def _as_declared(
    client: Runyard, workflow: str, parameters: dict[str, Any], typed: dict[str, str]
) -> dict[str, Any]:
    """Values read as JSON (``42``, ``true``) go back to the text that was typed where the
    workflow declares the parameter a string; asks for the workflow only when that can be."""
    parsed = [k for k, v in parameters.items() if k in typed and not isinstance(v, str)]
    if not parsed:
        return parameters
    try:
        declared = {p.key: p.type for p in client.get_workflow(workflow).parameters}
    except RunyardError:
        return parameters  # the submit says what is wrong with the workflow
    text = {k: typed[k] for k in parsed if declared.get(k) == "string"}
    return {**parameters, **text}


def _submit(
    client: Runyard,
    workflow: str,
    parameters: dict[str, Any],
    priority: int | None,
    idempotency_key: str | None,
    quiet: bool,
) -> str:
    """Submit; ``@FILE`` parameters are uploaded first (a bar for large ones)."""
    if quiet or not any(isinstance(v, Path) for v in parameters.values()):
        return client.submit(
            workflow, parameters, priority=priority, idempotency_key=idempotency_key
        )
    with TransferBars(err) as bars:
        return client.submit(
            workflow,
            parameters,
            priority=priority,
            idempotency_key=idempotency_key,
            upload_progress=bars.upload,
        )


def _submit_many(
    client: Runyard,
    workflow: str,
    parameters: dict[str, Any],
    priority: int | None,
    count: int,
    quiet: bool,
) -> list[str]:
    """``count`` runs of the same parameters (``@FILE`` uploaded once, first)."""
    runs = [parameters] * count
    if quiet or not any(isinstance(v, Path) for v in parameters.values()):
        return client.run_many(workflow, runs, priority=priority)
    with TransferBars(err) as bars:
        return client.run_many(workflow, runs, priority=priority, upload_progress=bars.upload)


TaskArg = Annotated[str, typer.Argument(metavar="TASK_ID", help="The task's id.")]


@app.command("list")
@with_client
def list_(
    client: Runyard,
    status: Annotated[
        str | None,
        typer.Option(help="pending, waiting, queued, running, completed, failed or cancelled."),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option(help="Only runs of this workflow (slug or id).")
    ] = None,
    page: Annotated[int, typer.Option(help="Page, from 1.")] = 1,
    per_page: Annotated[int, typer.Option("--per-page", help="1 to 100.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The team's tasks, newest first."""
    workflow_id = client.get_workflow(workflow).id if workflow else None
    tasks = client.list_tasks(status=status, workflow_id=workflow_id, page=page, per_page=per_page)
    if as_json:
        print_json(tasks.items)
        return
    grid = table("id", "status", "created", "agent", "error")
    for t in tasks:
        grid.add_row(
            t.id,
            t.task_status.value,
            when(t.created_at),
            escape(t.agent_id or "-"),
            escape((t.task_error or "")[:60]),
        )
    out.print(grid if tasks.items else "No tasks.")
    if tasks.total_count > len(tasks.items):
        out.print(f"page {tasks.current_page}, {tasks.total_count} tasks in all")


@app.command("show")
@with_client
def show(
    client: Runyard,
    task_id: TaskArg,
    as_json: JsonOpt = False,
) -> None:
    """One task's status and details."""
    task = client.get_task(task_id)
    if as_json:
        print_json(task)
        return
    for name, value in task.model_dump().items():
        shown = when(value) if name.endswith("_at") else value
        out.print(f"{name:<16} {'-' if shown is None else shown}", markup=False)


@app.command("cancel")
@with_client
def cancel(
    client: Runyard,
    task_id: TaskArg,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a task that has not ended yet (an ended task stays as it is)."""
    before = client.get_task(task_id).task_status
    client.cancel_task(task_id)
    task = client.get_task(task_id)
    if as_json:
        print_json(task)
    elif before.value in ("completed", "failed", "cancelled"):
        out.print(f"Task {task_id} had already ended ({before.value}); nothing was cancelled")
    else:
        out.print(f"Task {task_id}: {task.task_status.value}")


@app.command("watch")
@with_client
def watch(
    client: Runyard,
    task_id: TaskArg,
    timeout: TimeoutOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each event as a JSON line instead.")
    ] = False,
) -> None:
    """Follow a task's events until it ends; exit 0 only if it completed."""
    if as_json:
        for event in client.events(task_id, timeout=timeout):
            line = {"id": event.id, "event": event.event, "data": event.data}
            typer.echo(json.dumps(line))
        task = client.get_task(task_id)
        if not task.ok:
            raise typer.Exit(1)
        return
    task = _watch(client, task_id, timeout)
    _finish(client, task, None, False)


@app.command("result")
@with_client
def result(
    client: Runyard,
    task_id: TaskArg,
    out_dir: OutOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """A task's output or error; --out downloads its files."""
    found = client.get_result(task_id)
    files = _download(client, task_id, out_dir, as_json, overwrite) if out_dir else []
    if as_json:
        print_json({"result": found, "files": files})
        return
    out.print(f"Task {found.id}: {found.task_status.value}")
    if found.task_error:
        out.print(f"error: {found.task_error}", markup=False)
    if found.task_output is not None:
        out.print(json.dumps(found.task_output, indent=2), markup=False)
    _describe_outputs(found, files, out_dir)
