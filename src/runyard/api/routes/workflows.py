"""Workflow management (session + X-Team-ID, or dk-): templates, versions and snapshots."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from runyard.api.deps import Ctx, ManagementScope, PageDep
from runyard.domain.errors import BadRequest
from runyard.domain.workflows import WorkflowStatus
from runyard.schemas.identity import IdResponse, PageMeta, SuccessResponse
from runyard.schemas.work import (
    NULLABLE_UPDATE_FIELDS,
    SnapshotDetail,
    SnapshotItem,
    SnapshotListResponse,
    WorkflowIn,
    WorkflowListResponse,
    WorkflowOut,
    WorkflowUpdate,
)
from runyard.services import workflows
from runyard.services.workflows import WorkflowVersion
from runyard.store.tables import WorkflowSnapshot

router = APIRouter(tags=["workflow"])

WorkflowId = Annotated[UUID, Path(description="The workflow's id")]
SnapshotId = Annotated[UUID, Path(description="The snapshot's id")]


def workflow_out(wf: WorkflowVersion, *, with_graph: bool = True) -> WorkflowOut:
    spec = wf.spec
    out = WorkflowOut(
        id=wf.id,
        workflow_slug=spec.workflow_slug,
        display_name=spec.display_name,
        version=wf.version,
        workflow_status=spec.workflow_status,
        created_at=wf.created_at,
        updated_at=wf.updated_at,
        description=spec.description,
        parameters=[p.to_dict() for p in spec.parameters],
        required_labels=list(spec.required_labels),
        task_timeout=spec.task_timeout,
        max_retries=spec.max_retries,
        preferred_gpu=spec.preferred_gpu,
        default_dispatch_target=spec.default_dispatch_target,
        min_vram_gb=spec.min_vram_gb,
        required_models=list(spec.required_models),
        tool_type=spec.tool_type,
    )
    if with_graph:
        out.workflow_json = spec.workflow_json
    return out


def _snapshot_item(s: WorkflowSnapshot) -> SnapshotItem:
    return SnapshotItem(
        id=s.id,
        workflow_id=s.workflow_id,
        workflow_version=s.workflow_version,
        created_at=s.created_at,
        snapshot_note=s.snapshot_note,
    )


@router.post("/workflows/import", response_model=IdResponse)
async def import_workflow(ctx: Ctx, scope: ManagementScope, body: WorkflowIn) -> IdResponse:
    """Create, or overwrite the workflow with this slug as its next version."""
    row, _created = await workflows.import_workflow(ctx, scope, body.to_spec())
    return IdResponse(id=row.id)


@router.post("/workflows", response_model=IdResponse)
async def create_workflow(ctx: Ctx, scope: ManagementScope, body: WorkflowIn) -> IdResponse:
    """Create a workflow; a slug already used in the team is a 409."""
    row = await workflows.create_workflow(ctx, scope, body.to_spec())
    return IdResponse(id=row.id)


@router.get("/workflows", response_model=WorkflowListResponse, response_model_exclude_unset=True)
async def list_workflows(
    ctx: Ctx,
    scope: ManagementScope,
    page: PageDep,
    workflow_status: Annotated[WorkflowStatus | None, Query()] = None,
) -> WorkflowListResponse:
    """The team's workflows by slug (without their graphs)."""
    rows, total = await workflows.list_workflows(ctx, scope, page, workflow_status)
    return WorkflowListResponse(
        workflow_list=[workflow_out(w, with_graph=False) for w in rows],
        page_meta=PageMeta.of(page, total),
    )


@router.get(
    "/workflows/{workflowId}", response_model=WorkflowOut, response_model_exclude_unset=True
)
async def get_workflow(ctx: Ctx, scope: ManagementScope, workflowId: WorkflowId) -> WorkflowOut:
    return workflow_out(await workflows.get_workflow(ctx, scope, str(workflowId)))


@router.put("/workflows/{workflowId}", response_model=IdResponse)
async def update_workflow(
    ctx: Ctx,
    scope: ManagementScope,
    workflowId: WorkflowId,
    body: WorkflowUpdate,
) -> IdResponse:
    """Change the fields sent. A content change makes a new version (and snapshot)."""
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name not in NULLABLE_UPDATE_FIELDS:
            raise BadRequest(f"{name}: may not be null")
    if body.parameters is not None:
        changes["parameters"] = tuple(p.to_domain() for p in body.parameters)
    for name in ("required_labels", "required_models"):
        if changes.get(name) is not None:
            changes[name] = tuple(changes[name])
    row = await workflows.update_workflow(ctx, scope, str(workflowId), changes)
    return IdResponse(id=row.id)


@router.delete("/workflows/{workflowId}", status_code=204, response_class=Response)
async def delete_workflow(ctx: Ctx, scope: ManagementScope, workflowId: WorkflowId) -> Response:
    """Delete a workflow and its snapshots. Tasks already submitted are kept."""
    await workflows.delete_workflow(ctx, scope, str(workflowId))
    return Response(status_code=204)


@router.post("/workflows/{workflowId}/enable", response_model=SuccessResponse)
async def enable_workflow(
    ctx: Ctx,
    scope: ManagementScope,
    workflowId: WorkflowId,
) -> SuccessResponse:
    await workflows.set_status(ctx, scope, str(workflowId), WorkflowStatus.ACTIVE)
    return SuccessResponse()


@router.post("/workflows/{workflowId}/disable", response_model=SuccessResponse)
async def disable_workflow(
    ctx: Ctx,
    scope: ManagementScope,
    workflowId: WorkflowId,
) -> SuccessResponse:
    """New submissions are refused (409) until it is enabled again."""
    await workflows.set_status(ctx, scope, str(workflowId), WorkflowStatus.DISABLED)
    return SuccessResponse()


@router.get("/workflows/{workflowId}/snapshots", response_model=SnapshotListResponse)
async def list_snapshots(
    ctx: Ctx,
    scope: ManagementScope,
    workflowId: WorkflowId,
    page: PageDep,
) -> SnapshotListResponse:
    """Every saved version, newest first."""
    rows, total = await workflows.list_snapshots(ctx, scope, str(workflowId), page)
    return SnapshotListResponse(
        snapshot_list=[_snapshot_item(s) for s in rows], page_meta=PageMeta.of(page, total)
    )


@router.get("/workflows/{workflowId}/snapshots/{snapshotId}", response_model=SnapshotDetail)
async def get_snapshot(
    ctx: Ctx,
    scope: ManagementScope,
    workflowId: WorkflowId,
    snapshotId: SnapshotId,
) -> SnapshotDetail:
    s = await workflows.get_snapshot(ctx, scope, str(workflowId), str(snapshotId))
    return SnapshotDetail(
        **_snapshot_item(s).model_dump(),
        workflow_json=s.workflow_json,
        workflow_params=s.workflow_params,
    )


@router.post("/workflows/{workflowId}/snapshots/{snapshotId}/restore", response_model=IdResponse)
async def restore_snapshot(
    ctx: Ctx,
    scope: ManagementScope,
    workflowId: WorkflowId,
    snapshotId: SnapshotId,
) -> IdResponse:
    """Make that version live again, as a new version; the replaced one stays a snapshot."""
    row = await workflows.restore_snapshot(ctx, scope, str(workflowId), str(snapshotId))
    return IdResponse(id=row.id)
