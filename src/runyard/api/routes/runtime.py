"""Runtime routes (/r/): session + X-Team-ID, sk- or dk-. What scripts and CI call."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse

from runyard.api.deps import Ctx, PageDep, RuntimeScope
from runyard.api.routes.workflows import workflow_out
from runyard.domain.errors import BadRequest
from runyard.domain.tasks import DispatchTarget, TargetPool, TaskSource, TaskStatus, ToolType
from runyard.schemas.identity import PageMeta, SuccessResponse
from runyard.schemas.work import (
    RunAccepted,
    RunIn,
    RunsAccepted,
    RunsIn,
    TaskListResponse,
    TaskOut,
    TaskResult,
    WorkflowListResponse,
    WorkflowOut,
)
from runyard.services import files, tasks, workflows
from runyard.services.auth import CallerKind, TeamScope
from runyard.services.tasks import RunRequest
from runyard.store.tables import Task

router = APIRouter(prefix="/r")

WorkflowId = Annotated[UUID, Path(description="The workflow's id")]
WorkflowSlug = Annotated[
    str, Path(max_length=120, description="A slug, or slug@version to pin a saved version")
]
TaskId = Annotated[UUID, Path(description="The task's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Same key and body within 24 h → the same task; another body → 409.",
    ),
]


def _with_graph(scope: TeamScope) -> bool:
    # Integration keys run workflows but do not read their graphs (the reference's rule).
    return scope.caller.kind is not CallerKind.INTEGRATION


def task_out(task: Task) -> TaskOut:
    return TaskOut(
        id=task.id,
        workflow_id=task.workflow_id,
        task_source=TaskSource(task.task_source),
        task_status=TaskStatus(task.task_status),
        created_at=task.created_at,
        task_error=task.task_error,
        retry_count=task.retry_count,
        started_at=task.started_at,
        completed_at=task.completed_at,
        agent_id=task.agent_id,
        agent_labels=task.agent_labels,
        gateway_id=task.gateway_id,
        gpu_type=task.gpu_type,
        dispatch_target=DispatchTarget(task.dispatch_target),
        target_pool=TargetPool(task.target_pool),
        tool_type=ToolType(task.tool_type),
    )


def _run_request(body: RunIn) -> RunRequest:
    return RunRequest(
        parameters=body.parameters,
        dispatch_target=body.dispatch_target,
        target_pool=body.target_pool,
        submitter_region=body.submitter_region,
        tool_type=body.tool_type,
        priority=body.priority,
    )


def _accepted(task_id: str) -> JSONResponse:
    return JSONResponse({"task_id": task_id}, status_code=202)


def _no_batch_idempotency(key: str | None) -> None:
    # Refused rather than ignored: a caller who sends it counts on a retry being safe.
    if key is not None:
        raise BadRequest(
            "Idempotency-Key is not supported with …/runs; submit runs one at a time "
            "(…/run) to use it"
        )


def _idempotency(key: str | None) -> str | None:
    if key is not None and not key.strip():
        raise BadRequest("Idempotency-Key must not be empty")
    return key


@router.get(
    "/workflows",
    tags=["workflow"],
    response_model=WorkflowListResponse,
    response_model_exclude_unset=True,
)
async def list_workflows(ctx: Ctx, scope: RuntimeScope, page: PageDep) -> WorkflowListResponse:
    """Workflows visible to the team, with parameters and label requirements."""
    rows, total = await workflows.list_workflows(ctx, scope, page)
    return WorkflowListResponse(
        workflow_list=[workflow_out(w, with_graph=False) for w in rows],
        page_meta=PageMeta.of(page, total),
    )


@router.get(
    "/workflows/slug/{workflowSlug}",
    tags=["workflow"],
    response_model=WorkflowOut,
    response_model_exclude_unset=True,
)
async def get_workflow_by_slug(
    ctx: Ctx,
    scope: RuntimeScope,
    workflowSlug: WorkflowSlug,
) -> WorkflowOut:
    wf = await workflows.resolve(ctx, scope, ref=workflowSlug)
    return workflow_out(wf, with_graph=_with_graph(scope))


@router.get(
    "/workflows/{workflowId}",
    tags=["workflow"],
    response_model=WorkflowOut,
    response_model_exclude_unset=True,
)
async def get_workflow(ctx: Ctx, scope: RuntimeScope, workflowId: WorkflowId) -> WorkflowOut:
    wf = await workflows.resolve(ctx, scope, workflow_id=str(workflowId))
    return workflow_out(wf, with_graph=_with_graph(scope))


@router.post(
    "/workflows/slug/{workflowSlug}/run",
    tags=["task"],
    status_code=202,
    response_model=RunAccepted,
)
async def run_by_slug(
    ctx: Ctx,
    scope: RuntimeScope,
    workflowSlug: WorkflowSlug,
    body: RunIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Submit a run; answers 202 with the task id at once. ``slug@version`` pins a version."""
    task_id = await tasks.submit(
        ctx,
        scope,
        _run_request(body),
        ref=workflowSlug,
        idempotency_key=_idempotency(idempotency_key),
    )
    return _accepted(task_id)


@router.post(
    "/workflows/{workflowId}/run", tags=["task"], status_code=202, response_model=RunAccepted
)
async def run_by_id(
    ctx: Ctx,
    scope: RuntimeScope,
    workflowId: WorkflowId,
    body: RunIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Submit a run of the workflow's live version; answers 202 with the task id."""
    task_id = await tasks.submit(
        ctx,
        scope,
        _run_request(body),
        workflow_id=str(workflowId),
        idempotency_key=_idempotency(idempotency_key),
    )
    return _accepted(task_id)


@router.post(
    "/workflows/slug/{workflowSlug}/runs",
    tags=["task"],
    status_code=202,
    response_model=RunsAccepted,
)
async def runs_by_slug(
    ctx: Ctx,
    scope: RuntimeScope,
    workflowSlug: WorkflowSlug,
    body: RunsIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Submit up to 100 runs at once: all are accepted or none (the first invalid run's index
    is in the error); answers 202 with the task ids in the order of ``runs``."""
    _no_batch_idempotency(idempotency_key)
    ids = await tasks.submit_many(
        ctx, scope, [_run_request(r) for r in body.runs], ref=workflowSlug
    )
    return JSONResponse({"task_ids": ids}, status_code=202)


@router.post(
    "/workflows/{workflowId}/runs", tags=["task"], status_code=202, response_model=RunsAccepted
)
async def runs_by_id(
    ctx: Ctx,
    scope: RuntimeScope,
    workflowId: WorkflowId,
    body: RunsIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Submit up to 100 runs of the workflow's live version at once (see the slug form)."""
    _no_batch_idempotency(idempotency_key)
    ids = await tasks.submit_many(
        ctx, scope, [_run_request(r) for r in body.runs], workflow_id=str(workflowId)
    )
    return JSONResponse({"task_ids": ids}, status_code=202)


@router.get("/tasks", tags=["task"], response_model=TaskListResponse)
async def list_tasks(
    ctx: Ctx,
    scope: RuntimeScope,
    page: PageDep,
    status: Annotated[TaskStatus | None, Query(description="Only tasks in this state")] = None,
    workflow_id: Annotated[UUID | None, Query(description="Only runs of this workflow")] = None,
) -> TaskListResponse:
    """The team's tasks, newest first."""
    rows, total = await tasks.list_tasks(
        ctx, scope, page, status, str(workflow_id) if workflow_id else None
    )
    return TaskListResponse(
        task_list=[task_out(t) for t in rows], page_meta=PageMeta.of(page, total)
    )


@router.get("/tasks/{taskId}", tags=["task"], response_model=TaskOut)
async def get_task(ctx: Ctx, scope: RuntimeScope, taskId: TaskId) -> TaskOut:
    """The task's status and metadata (poll this, or follow its events)."""
    return task_out(await tasks.get_task(ctx, scope, str(taskId)))


@router.post("/tasks/{taskId}/cancel", tags=["task"], response_model=SuccessResponse)
async def cancel_task(ctx: Ctx, scope: RuntimeScope, taskId: TaskId) -> SuccessResponse:
    """Cancel a pending, waiting, queued or running task; on an ended task, a no-op."""
    await tasks.cancel(ctx, scope, str(taskId))
    return SuccessResponse()


@router.get("/tasks/{taskId}/result", tags=["task"], response_model=TaskResult)
async def get_result(ctx: Ctx, scope: RuntimeScope, taskId: TaskId) -> TaskResult:
    """Outputs of a completed task or the error of a failed one; nulls while it runs."""
    task = await tasks.get_task(ctx, scope, str(taskId))
    links = await files.result(ctx, task)  # fresh signed links on every call
    return TaskResult(
        id=task.id,
        task_status=TaskStatus(task.task_status),
        task_output=links.task_output,
        download_url=links.download_url,
        download_urls=links.download_urls,
        expires_at=links.expires_at,
        task_error=task.task_error,
        completed_at=task.completed_at,
    )
