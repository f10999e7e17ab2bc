"""Workflow templates: create, import (upsert by slug), update, enable/disable, snapshots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from runyard.context import ServiceContext
from runyard.domain.errors import BadRequest, Conflict, NotFound
from runyard.domain.ids import new_id
from runyard.domain.roles import Permission
from runyard.domain.tasks import DispatchTarget, ToolType
from runyard.domain.workflows import (
    ParameterDef,
    WorkflowStatus,
    parse_slug_ref,
)

# Re-exported: the spec is pure domain (the wire schemas build it); callers import it here.
from runyard.domain.workflows import WorkflowSpec as WorkflowSpec
from runyard.services.auth import TeamScope
from runyard.store.repos import Page
from runyard.store.tables import Workflow, WorkflowSnapshot
from runyard.store.work import WorkRepos

#: Changing only these does not make a new version.
_NON_VERSIONED = {"workflow_status"}


@dataclass(frozen=True)
class WorkflowVersion:
    """A workflow as it is (live) or as it was (a snapshot): what runs and what GETs show."""

    id: str
    team_id: str
    version: int
    spec: WorkflowSpec
    created_at: datetime
    updated_at: datetime
    live: bool = True
    snapshot_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def spec_of(row: Workflow) -> WorkflowSpec:
    return WorkflowSpec(
        workflow_slug=row.workflow_slug,
        display_name=row.display_name,
        workflow_json=row.workflow_json,
        description=row.description,
        parameters=tuple(ParameterDef.from_dict(p) for p in row.parameters),
        tool_type=ToolType(row.tool_type),
        required_labels=tuple(row.required_labels),
        task_timeout=row.task_timeout,
        max_retries=row.max_retries,
        preferred_gpu=row.preferred_gpu,
        min_vram_gb=row.min_vram_gb,
        required_models=tuple(row.required_models),
        default_dispatch_target=DispatchTarget(row.default_dispatch_target),
        workflow_status=WorkflowStatus(row.workflow_status),
    )


def version_of(row: Workflow) -> WorkflowVersion:
    return WorkflowVersion(
        id=row.id,
        team_id=row.team_id,
        version=row.version,
        spec=spec_of(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _spec_of_snapshot(row: Workflow, snap: WorkflowSnapshot) -> WorkflowSpec:
    s = snap.settings
    return WorkflowSpec(
        workflow_slug=row.workflow_slug,
        display_name=s["display_name"],
        workflow_json=snap.workflow_json,
        description=s.get("description", ""),
        parameters=tuple(ParameterDef.from_dict(p) for p in snap.workflow_params),
        tool_type=ToolType(s["tool_type"]),
        required_labels=tuple(s.get("required_labels", ())),
        task_timeout=int(s.get("task_timeout", 0)),
        max_retries=int(s.get("max_retries", 0)),
        preferred_gpu=s.get("preferred_gpu"),
        min_vram_gb=s.get("min_vram_gb"),
        required_models=tuple(s.get("required_models", ())),
        default_dispatch_target=DispatchTarget(s.get("default_dispatch_target", "agent")),
        # A pinned version runs only while the workflow itself is enabled.
        workflow_status=WorkflowStatus(row.workflow_status),
    )


def _apply(row: Workflow, spec: WorkflowSpec) -> None:
    row.workflow_slug = spec.workflow_slug
    row.display_name = spec.display_name
    row.description = spec.description
    row.workflow_json = spec.workflow_json
    row.parameters = [p.to_dict() for p in spec.parameters]
    row.tool_type = spec.tool_type.value
    row.required_labels = list(spec.required_labels)
    row.task_timeout = spec.task_timeout
    row.max_retries = spec.max_retries
    row.preferred_gpu = spec.preferred_gpu
    row.min_vram_gb = spec.min_vram_gb
    row.required_models = list(spec.required_models)
    row.default_dispatch_target = spec.default_dispatch_target.value
    row.workflow_status = spec.workflow_status.value


async def _snapshot(
    repos: WorkRepos, row: Workflow, spec: WorkflowSpec, now: datetime, note: str
) -> None:
    await repos.add(
        WorkflowSnapshot(
            id=new_id(),
            workflow_id=row.id,
            workflow_version=row.version,
            snapshot_note=note[:500],
            workflow_json=spec.workflow_json,
            workflow_params=[p.to_dict() for p in spec.parameters],
            settings=spec.settings(),
            created_at=now,
        )
    )


async def _insert(repos: WorkRepos, team_id: str, spec: WorkflowSpec, now: datetime) -> Workflow:
    row = Workflow(id=new_id(), team_id=team_id, version=1, created_at=now, updated_at=now)
    _apply(row, spec)
    await repos.add(row)
    await _snapshot(repos, row, spec, now, "created")
    return row


async def _save_new_version(
    repos: WorkRepos, row: Workflow, spec: WorkflowSpec, now: datetime, note: str
) -> None:
    row.version += 1
    row.updated_at = now
    _apply(row, spec)
    await repos.session.flush()
    await _snapshot(repos, row, spec, now, note)


async def create_workflow(ctx: ServiceContext, scope: TeamScope, spec: WorkflowSpec) -> Workflow:
    scope.require(Permission.MANAGE_RESOURCES)
    spec.validate()
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        if await repos.workflow_by_slug(scope.team_id, spec.workflow_slug) is not None:
            raise Conflict(f"a workflow with slug {spec.workflow_slug!r} already exists")
        return await _insert(repos, scope.team_id, spec, ctx.now())


async def import_workflow(
    ctx: ServiceContext, scope: TeamScope, spec: WorkflowSpec
) -> tuple[Workflow, bool]:
    """Upsert by slug: an existing workflow is overwritten as a new version. → (row, created)."""
    scope.require(Permission.MANAGE_RESOURCES)
    spec.validate()
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        row = await repos.workflow_by_slug(scope.team_id, spec.workflow_slug)
        if row is None:
            return await _insert(repos, scope.team_id, spec, now), True
        await _save_new_version(repos, row, spec, now, "imported")
        return row, False


async def update_workflow(
    ctx: ServiceContext, scope: TeamScope, workflow_id: str, changes: Mapping[str, Any]
) -> Workflow:
    """Partial update. Any change but ``workflow_status`` makes a new version and snapshot."""
    scope.require(Permission.MANAGE_RESOURCES)
    known = {f.name for f in fields(WorkflowSpec)}
    unknown = set(changes) - known
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}")
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        row = await repos.workflow(scope.team_id, workflow_id)
        if row is None:
            raise NotFound("workflow not found")
        current = spec_of(row)
        updated = replace(current, **dict(changes))
        if updated == current:
            return row
        updated.validate()
        if updated.workflow_slug != current.workflow_slug:
            clash = await repos.workflow_by_slug(scope.team_id, updated.workflow_slug)
            if clash is not None:
                raise Conflict(f"a workflow with slug {updated.workflow_slug!r} already exists")
        content_changed = any(
            getattr(updated, f.name) != getattr(current, f.name)
            for f in fields(WorkflowSpec)
            if f.name not in _NON_VERSIONED
        )
        if content_changed:
            await _save_new_version(repos, row, updated, now, "updated")
        else:
            _apply(row, updated)
            row.updated_at = now
        return row


async def set_status(
    ctx: ServiceContext, scope: TeamScope, workflow_id: str, status: WorkflowStatus
) -> Workflow:
    return await update_workflow(ctx, scope, workflow_id, {"workflow_status": status})


async def delete_workflow(ctx: ServiceContext, scope: TeamScope, workflow_id: str) -> None:
    """Delete a workflow and its snapshots. Its tasks stay (they carry their own graph)."""
    scope.require(Permission.MANAGE_RESOURCES)
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        if await repos.workflow(scope.team_id, workflow_id) is None:
            raise NotFound("workflow not found")
        await repos.delete_workflow(workflow_id)


async def list_workflows(
    ctx: ServiceContext, scope: TeamScope, page: Page, status: WorkflowStatus | None = None
) -> tuple[list[WorkflowVersion], int]:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        rows, total = await WorkRepos(session).workflows(
            scope.team_id, page, status.value if status else None
        )
    return [version_of(r) for r in rows], total


async def get_workflow(ctx: ServiceContext, scope: TeamScope, workflow_id: str) -> WorkflowVersion:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        row = await WorkRepos(session).workflow(scope.team_id, workflow_id)
    if row is None:
        raise NotFound("workflow not found")
    return version_of(row)


async def resolve(
    ctx: ServiceContext, scope: TeamScope, *, workflow_id: str | None = None, ref: str | None = None
) -> WorkflowVersion:
    """The workflow named by id, by ``slug``, or pinned to a version by ``slug@version``."""
    scope.require(Permission.READ)
    version: int | None = None
    async with ctx.db.read() as session:
        repos = WorkRepos(session)
        if workflow_id is not None:
            row = await repos.workflow(scope.team_id, workflow_id)
        else:
            assert ref is not None
            slug, version = parse_slug_ref(ref)
            row = await repos.workflow_by_slug(scope.team_id, slug)
        if row is None:
            raise NotFound("workflow not found")
        if version is None or version == row.version:
            return version_of(row)
        snap = await repos.snapshot_by_version(row.id, version)
        if snap is None:
            raise NotFound(f"workflow {row.workflow_slug!r} has no version {version}")
        return WorkflowVersion(
            id=row.id,
            team_id=row.team_id,
            version=snap.workflow_version,
            spec=_spec_of_snapshot(row, snap),
            created_at=row.created_at,
            updated_at=snap.created_at,
            live=False,
            snapshot_id=snap.id,
        )


async def list_snapshots(
    ctx: ServiceContext, scope: TeamScope, workflow_id: str, page: Page
) -> tuple[Sequence[WorkflowSnapshot], int]:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        repos = WorkRepos(session)
        if await repos.workflow(scope.team_id, workflow_id) is None:
            raise NotFound("workflow not found")
        return await repos.snapshots(workflow_id, page)


async def get_snapshot(
    ctx: ServiceContext, scope: TeamScope, workflow_id: str, snapshot_id: str
) -> WorkflowSnapshot:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        repos = WorkRepos(session)
        if await repos.workflow(scope.team_id, workflow_id) is None:
            raise NotFound("workflow not found")
        snap = await repos.snapshot(workflow_id, snapshot_id)
    if snap is None:
        raise NotFound("snapshot not found")
    return snap


async def restore_snapshot(
    ctx: ServiceContext, scope: TeamScope, workflow_id: str, snapshot_id: str
) -> Workflow:
    """Make a snapshot's content the live workflow, as a new version.

    The version being replaced already has its snapshot (every save writes one), so nothing
    is lost and the restore itself can be undone by restoring that one.
    """
    scope.require(Permission.MANAGE_RESOURCES)
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        row = await repos.workflow(scope.team_id, workflow_id)
        if row is None:
            raise NotFound("workflow not found")
        snap = await repos.snapshot(workflow_id, snapshot_id)
        if snap is None:
            raise NotFound("snapshot not found")
        spec = replace(
            _spec_of_snapshot(row, snap), workflow_status=WorkflowStatus(row.workflow_status)
        )
        await _save_new_version(
            repos, row, spec, now, f"restored from version {snap.workflow_version}"
        )
        return row
