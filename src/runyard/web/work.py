"""Workflows (list, import, detail, run form, snapshots) and tasks (list, detail, cancel)."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from runyard.domain.errors import BadRequest, NotFound, RunyardError
from runyard.domain.ids import parse_id
from runyard.domain.limits import MAX_PAGE, MAX_RUNS_PER_REQUEST, PRIORITY
from runyard.domain.pages import Page, first_page
from runyard.domain.roles import Permission
from runyard.domain.tasks import TaskStatus, ToolType
from runyard.domain.text import UNSTORABLE_TEXT, find_unstorable
from runyard.domain.workflows import (
    ParameterDef,
    ParamType,
    check_slug,
    validate_graph,
    validate_parameter_defs,
)
from runyard.schemas.work import WorkflowIn
from runyard.services import tasks, workflows
from runyard.services.tasks import RunRequest
from runyard.services.workflows import WorkflowVersion
from runyard.web.render import PageRoute, page, redirect
from runyard.web.session import Viewer, posted_form, resource_id, viewer

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PER_PAGE = 50
IMPORT_FIELDS = ("workflow_slug", "display_name", "description", "workflow_json", "parameters")
_QUOTED = re.compile(r"'([^']+)'")
_RUN_INDEX = re.compile(r"^runs\[\d+\]: ")
_DIGITS = re.compile(r"[0-9]{1,3}")
_INTEGER = re.compile(r"-?[0-9]{1,10}")


def _page_number(value: int) -> Page:
    return Page(value, PER_PAGE)


def _pages(total: int) -> int:
    return max(1, math.ceil(total / PER_PAGE))


# -- workflows -----------------------------------------------------------------------------------


@router.get("/workflows")
async def workflow_list(
    request: Request, page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1
) -> Response:
    who = await viewer(request)
    rows, total = await workflows.list_workflows(who.ctx, who.scope, _page_number(page_no))
    return page(
        "workflows.html",
        who,
        nav="workflows",
        workflows=rows,
        total=total,
        page_no=page_no,
        pages=_pages(total),
        title="Workflows",
    )


@router.get("/workflows/import")
async def import_form(request: Request) -> Response:
    who = await viewer(request)
    who.scope.require(Permission.MANAGE_RESOURCES)
    return page("workflow_import.html", who, nav="workflows", values={}, errors={}, title="Import")


def _import_errors(form: dict[str, str]) -> tuple[dict[str, str], WorkflowIn | None]:
    """Check each field on its own, so each error is shown next to its field."""
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "workflow_slug": form.get("workflow_slug", "").strip(),
        "display_name": form.get("display_name", "").strip()
        or form.get("workflow_slug", "").strip(),
        "description": form.get("description", ""),
    }
    try:
        check_slug(data["workflow_slug"])
    except BadRequest as exc:
        errors["workflow_slug"] = exc.message
    try:
        data["workflow_json"] = json.loads(form.get("workflow_json", ""))
    except ValueError as exc:
        errors["workflow_json"] = f"not valid JSON ({exc})"
    raw_params = form.get("parameters", "").strip()
    try:
        data["parameters"] = json.loads(raw_params) if raw_params else []
    except ValueError as exc:
        errors["parameters"] = f"not valid JSON ({exc})"
    for field in ("workflow_json", "parameters"):
        where = find_unstorable(data[field], field) if field not in errors else None
        if where is not None:
            errors[field] = f"{where}: {UNSTORABLE_TEXT}"
    labels = [x.strip() for x in form.get("required_labels", "").split(",") if x.strip()]
    data["required_labels"] = labels
    if "workflow_json" not in errors:
        try:
            validate_graph(ToolType.COMFYUI, data["workflow_json"])
        except BadRequest as exc:
            errors["workflow_json"] = exc.message
    if errors:
        return errors, None
    try:
        body = WorkflowIn.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = [str(p) for p in error.get("loc", ())]
            known = (*IMPORT_FIELDS, "required_labels")
            field = loc[0] if loc and loc[0] in known else "workflow_json"
            where = ".".join(loc[1:])
            message = str(error.get("msg", "invalid value"))
            errors.setdefault(field, f"{where}: {message}" if where else message)
        return errors, None
    try:
        validate_parameter_defs(
            tuple(p.to_domain() for p in body.parameters), body.tool_type, body.workflow_json
        )
    except BadRequest as exc:
        errors["parameters"] = exc.message
        return errors, None
    return {}, body


@router.post("/workflows/import")
async def import_submit(request: Request) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    who.scope.require(Permission.MANAGE_RESOURCES)
    errors, body = _import_errors(form)
    if body is not None:
        try:
            row, _created = await workflows.import_workflow(who.ctx, who.scope, body.to_spec())
        except BadRequest as exc:
            errors["workflow_json"] = exc.message
        else:
            return redirect(f"/workflows/{row.id}", imported="1")
    return page(
        "workflow_import.html",
        who,
        status=400,
        nav="workflows",
        values=form,
        errors=errors,
        title="Import",
    )


def _param_view(d: ParameterDef) -> dict[str, Any]:
    return {**d.to_dict(), "name": f"p.{d.key}", "id": f"param-{d.key}"}


async def _workflow_page(
    who: Viewer,
    wf: WorkflowVersion,
    *,
    status: int = 200,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    form_error: str | None = None,
    count_error: str | None = None,
    priority_error: str | None = None,
    notice: str | None = None,
) -> Response:
    snaps, _ = await workflows.list_snapshots(who.ctx, who.scope, wf.id, first_page())
    return page(
        "workflow.html",
        who,
        status=status,
        nav="workflows",
        wf=wf,
        params=[_param_view(d) for d in wf.spec.parameters],
        snapshots=snaps,
        values=values or {},
        errors=errors or {},
        form_error=form_error,
        count_error=count_error,
        max_runs=MAX_RUNS_PER_REQUEST,
        priority_error=priority_error,
        priority=PRIORITY,
        notice=notice,
        title=wf.spec.display_name,
    )


@router.get("/workflows/{workflow_id}")
async def workflow_detail(
    request: Request,
    workflow_id: str,
    imported: Annotated[str | None, Query(max_length=5)] = None,
    restored: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    who = await viewer(request)
    wf = await workflows.get_workflow(who.ctx, who.scope, resource_id(workflow_id, "workflow"))
    notice = None
    if imported:
        notice = f"Imported as version {wf.version}."
    elif restored:
        notice = f"Restored version {restored} as version {wf.version}."
    return await _workflow_page(who, wf, notice=notice)


def _convert(d: ParameterDef, form: dict[str, str]) -> tuple[bool, Any]:
    """The value of one run-form field, as the parameter's type wants it; (False, None) when
    the field was left empty (the default applies)."""
    name = f"p.{d.key}"
    if d.type is ParamType.BOOLEAN:
        return True, name in form and form[name] not in ("", "false", "off")
    raw = form.get(name, "")
    if raw.strip() == "" and d.type is not ParamType.STRING:
        return False, None
    if d.type is ParamType.STRING:
        return raw != "", raw  # left empty: the default (or "missing" when required)
    if d.type is ParamType.NUMBER:
        try:
            number = float(raw)
        except ValueError:
            raise BadRequest(f"parameter {d.key!r}: must be a number") from None
        return True, int(number) if number.is_integer() and "." not in raw else number
    if d.type is ParamType.SELECT:
        for option in d.options or ():
            if str(option) == raw:
                return True, option
        return True, raw
    return True, raw.strip()  # file: the file_key the page's script put there


def _field_of(message: str, keys: set[str]) -> str | None:
    for match in _QUOTED.finditer(message):
        if match.group(1) in keys:
            return match.group(1)
    return None


def _run_count(form: dict[str, str]) -> int | None:
    """How many times to submit the run (empty: once); None when not a whole number in range."""
    raw = form.get("run_count", "").strip()
    if raw == "":
        return 1
    # A regex, not int(): int() also takes "1_0", "+5" and other digits than 0-9.
    if not _DIGITS.fullmatch(raw):
        return None
    count = int(raw)
    return count if 1 <= count <= MAX_RUNS_PER_REQUEST else None


def _priority(form: dict[str, str]) -> int | None:
    """The run's priority (empty: 0); None when not a whole number in ``PRIORITY``, which
    the page then reports with the API's own message (never clamped to something else)."""
    raw = form.get("priority", "").strip()
    if raw == "":
        return 0
    if not _INTEGER.fullmatch(raw):  # int() would also take "1_0" and "+5"
        return None
    value = int(raw)
    return value if value in PRIORITY else None


@router.post("/workflows/{workflow_id}/run")
async def run_submit(request: Request, workflow_id: str) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    wf = await workflows.get_workflow(who.ctx, who.scope, resource_id(workflow_id, "workflow"))
    keys = {d.key for d in wf.spec.parameters}
    errors: dict[str, str] = {}
    parameters: dict[str, Any] = {}
    for d in wf.spec.parameters:
        try:
            given, value = _convert(d, form)
        except BadRequest as exc:
            errors[d.key] = exc.message
            continue
        if given:
            parameters[d.key] = value
    count = _run_count(form)
    count_error = None
    if count is None:
        count_error = f"Runs must be a whole number from 1 to {MAX_RUNS_PER_REQUEST}."
    priority = _priority(form)
    priority_error = PRIORITY.message if priority is None else None
    form_error = None
    if not errors and count is not None and priority is not None:
        try:
            if count == 1:
                task_id = await tasks.submit(
                    who.ctx,
                    who.scope,
                    RunRequest(parameters=parameters, priority=priority),
                    workflow_id=wf.id,
                )
                return redirect(f"/tasks/{task_id}")
            await tasks.submit_many(
                who.ctx,
                who.scope,
                [RunRequest(parameters=dict(parameters), priority=priority) for _ in range(count)],
                workflow_id=wf.id,
            )
        except RunyardError as exc:
            # Every run is the same, so the first one's message (without its index) says it all.
            message = _RUN_INDEX.sub("", exc.message)
            field = _field_of(message, keys)
            if field is not None and exc.status_code == 400:
                errors[field] = message
            else:
                form_error = message
        else:
            return redirect("/tasks", submitted=str(count), workflow=wf.id)
    return await _workflow_page(
        who,
        wf,
        status=400,
        values=form,
        errors=errors,
        form_error=form_error,
        count_error=count_error,
        priority_error=priority_error,
    )


@router.get("/workflows/{workflow_id}/snapshots/{snapshot_id}")
async def snapshot_preview(request: Request, workflow_id: str, snapshot_id: str) -> Response:
    who = await viewer(request)
    wf = await workflows.get_workflow(who.ctx, who.scope, resource_id(workflow_id, "workflow"))
    snap = await workflows.get_snapshot(
        who.ctx, who.scope, wf.id, resource_id(snapshot_id, "snapshot")
    )
    return page(
        "snapshot.html",
        who,
        nav="workflows",
        wf=wf,
        snap=snap,
        graph=json.dumps(snap.workflow_json, indent=2, sort_keys=True),
        params=json.dumps(snap.workflow_params, indent=2),
        title=f"{wf.spec.display_name} v{snap.workflow_version}",
    )


@router.post("/workflows/{workflow_id}/snapshots/{snapshot_id}/restore")
async def snapshot_restore(request: Request, workflow_id: str, snapshot_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    wf_id = resource_id(workflow_id, "workflow")
    snap = await workflows.get_snapshot(
        who.ctx, who.scope, wf_id, resource_id(snapshot_id, "snapshot")
    )
    await workflows.restore_snapshot(who.ctx, who.scope, wf_id, snap.id)
    return redirect(f"/workflows/{wf_id}", restored=str(snap.workflow_version))


# -- tasks ---------------------------------------------------------------------------------------


async def _workflow_name(who: Viewer, workflow: str | None, names: dict[str, str]) -> str | None:
    """The display name of one of the team's workflows (None for an id of no such workflow)."""
    wf_id = parse_id(workflow) if workflow else None
    if wf_id is None:
        return None
    if wf_id in names:
        return names[wf_id]
    try:  # not among the first page of workflows
        return (await workflows.get_workflow(who.ctx, who.scope, wf_id)).spec.display_name
    except NotFound:
        return None


@router.get("/tasks")
async def task_list(
    request: Request,
    status: Annotated[str, Query(max_length=20)] = "",
    page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
    submitted: Annotated[int | None, Query(ge=1, le=MAX_RUNS_PER_REQUEST)] = None,
    workflow: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    who = await viewer(request)
    wanted: TaskStatus | None = None
    if status:
        try:
            wanted = TaskStatus(status)
        except ValueError:
            raise BadRequest(f"unknown task status {status!r}") from None
    rows, total = await tasks.list_tasks(who.ctx, who.scope, _page_number(page_no), wanted)
    names: dict[str, str] = {}
    wf_rows, _ = await workflows.list_workflows(who.ctx, who.scope, first_page())
    for wf in wf_rows:
        names[wf.id] = wf.spec.display_name
    notice = None
    if submitted is not None:
        runs = "1 run" if submitted == 1 else f"{submitted} runs"
        name = await _workflow_name(who, workflow, names)
        notice = f"Submitted {runs} of {name}." if name else f"Submitted {runs}."
    return page(
        "tasks.html",
        who,
        nav="tasks",
        notice=notice,
        tasks=rows,
        total=total,
        status_filter=status,
        statuses=[s.value for s in TaskStatus],
        names=names,
        page_no=page_no,
        pages=_pages(total),
        title="Tasks",
    )


def _media(content_type: str) -> str:
    kind = content_type.split("/", 1)[0]
    return kind if kind in ("image", "video", "audio") else "file"


@router.get("/tasks/{task_id}")
async def task_detail(request: Request, task_id: str) -> Response:
    who = await viewer(request)
    task = await tasks.get_task(who.ctx, who.scope, resource_id(task_id, "task"))
    outputs = []
    if task.task_status == TaskStatus.COMPLETED.value and task.task_output:
        for index, entry in enumerate(task.task_output.get("outputs") or []):
            if isinstance(entry, dict):
                content_type = str(entry.get("content_type") or "application/octet-stream")
                outputs.append(
                    {
                        "index": index,
                        "name": str(entry.get("file_name") or f"output {index}"),
                        "media": _media(content_type),
                        "content_type": content_type,
                        "size": entry.get("size"),
                        "url": f"/api/v1/r/tasks/{task.id}/outputs/{index}",
                    }
                )
    texts = (task.task_output or {}).get("texts") if task.task_output else None
    workflow_name = None
    if task.workflow_id:
        try:
            workflow_name = (
                await workflows.get_workflow(who.ctx, who.scope, task.workflow_id)
            ).spec.display_name
        except RunyardError:
            workflow_name = None
    return page(
        "task.html",
        who,
        nav="tasks",
        task=task,
        terminal=TaskStatus(task.task_status).is_terminal,
        outputs=outputs,
        texts=texts if isinstance(texts, list) else [],
        workflow_name=workflow_name,
        title=f"Task {task.id[:8]}",
    )


@router.post("/tasks/{task_id}/cancel")
async def task_cancel(request: Request, task_id: str) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    task = await tasks.cancel(who.ctx, who.scope, resource_id(task_id, "task"))
    return redirect(f"/tasks/{task.id}")
