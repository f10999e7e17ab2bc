"""Tasks: submission (with parameter checking and idempotency), listing, cancel, result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from runyard.context import ServiceContext
from runyard.domain import limits
from runyard.domain.attempts import Stop
from runyard.domain.errors import BadRequest, Conflict, NotFound
from runyard.domain.ids import new_id
from runyard.domain.limits import PRIORITY
from runyard.domain.roles import Permission
from runyard.domain.tasks import (
    MAX_RUNS_PER_REQUEST,
    DispatchTarget,
    TargetPool,
    TaskSource,
    TaskStatus,
    ToolType,
)
from runyard.domain.times import iso
from runyard.domain.workflows import (
    ParamType,
    WorkflowStatus,
    parse_slug_ref,
    render,
    resolve_values,
)
from runyard.objects.keys import input_prefix
from runyard.services import files, workflows
from runyard.services.auth import CallerKind, TeamScope
from runyard.store.db import Session
from runyard.store.repos import Page
from runyard.store.tables import IdempotencyKey, Task
from runyard.store.work import WorkRepos

IDEMPOTENCY_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class RunRequest:
    parameters: Mapping[str, Any]
    dispatch_target: DispatchTarget | None = None
    target_pool: TargetPool = TargetPool.TEAM
    submitter_region: str | None = None
    tool_type: ToolType | None = None
    priority: int = 0


def input_file_prefix(team_id: str) -> str:
    """Where a team's uploaded inputs live in object storage."""
    return input_prefix(team_id)


def _request_hash(target: str, request: RunRequest) -> str:
    body = {
        "target": target,
        "parameters": dict(request.parameters),
        "dispatch_target": request.dispatch_target,
        "target_pool": request.target_pool,
        "submitter_region": request.submitter_region,
        "tool_type": request.tool_type,
        "priority": request.priority,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class _Prepared:
    """A validated run, ready to insert: the task row and the inputs its file parameters name."""

    task: Task
    file_inputs: dict[str, Any]


async def submit(
    ctx: ServiceContext,
    scope: TeamScope,
    request: RunRequest,
    *,
    workflow_id: str | None = None,
    ref: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Accept a run of a workflow; returns the task id. Nothing is stored unless all is valid."""
    scope.require(Permission.RUN)
    target = workflow_id or ref or ""
    request_hash = _request_hash(target, request)
    if idempotency_key is not None:
        existing = await _idempotent_replay(ctx, scope.team_id, idempotency_key, request_hash)
        if existing is not None:
            return existing

    wf = await _resolve(ctx, scope, workflow_id=workflow_id, ref=ref)
    run = await _prepare(ctx, scope, wf, request)
    key = None if idempotency_key is None else (idempotency_key, request_hash)
    try:
        await _store(ctx, scope, [run], key)
    except IntegrityError:
        # A concurrent submission with the same key won the race: answer as it did.
        if idempotency_key is None:
            raise
        existing = await _idempotent_replay(ctx, scope.team_id, idempotency_key, request_hash)
        if existing is None:
            raise
        return existing
    return run.task.id


async def submit_many(
    ctx: ServiceContext,
    scope: TeamScope,
    requests: Sequence[RunRequest],
    *,
    workflow_id: str | None = None,
    ref: str | None = None,
) -> list[str]:
    """Accept several runs of one workflow in one transaction; the task ids, in order.

    All or nothing: one invalid run refuses the batch (its index in the message) and stores
    nothing. The tasks are submitted together, so the scheduler sees them at once.
    """
    scope.require(Permission.RUN)
    if not requests:
        raise BadRequest("runs must list at least one run")
    if len(requests) > MAX_RUNS_PER_REQUEST:
        raise BadRequest(f"at most {MAX_RUNS_PER_REQUEST} runs per request, not {len(requests)}")
    wf = await _resolve(ctx, scope, workflow_id=workflow_id, ref=ref)
    runs: list[_Prepared] = []
    for index, request in enumerate(requests):
        try:
            runs.append(await _prepare(ctx, scope, wf, request))
        except BadRequest as exc:
            raise BadRequest(f"runs[{index}]: {exc.message}") from None
    await _store(ctx, scope, runs, None)
    return [run.task.id for run in runs]


async def _prepare(
    ctx: ServiceContext, scope: TeamScope, wf: workflows.WorkflowVersion, request: RunRequest
) -> _Prepared:
    """Check a run against the workflow and build its task row (nothing stored)."""
    # Here, not only in the wire schema: the dashboard (and any other caller) comes this way.
    PRIORITY.check(request.priority)
    spec = wf.spec
    if spec.workflow_status is WorkflowStatus.DISABLED:
        raise Conflict(f"workflow {spec.workflow_slug!r} is disabled")
    if request.tool_type is not None and request.tool_type is not spec.tool_type:
        raise BadRequest(
            f"tool_type {request.tool_type.value!r} does not match the workflow's "
            f"{spec.tool_type.value!r}"
        )
    resolved = resolve_values(
        spec.parameters,
        request.parameters,
        is_team_file=lambda key: files.is_team_input(scope.team_id, key),
    )
    # File parameters (defaults included) must name uploaded inputs of this team.
    file_inputs = {
        d.key: resolved[d.key]
        for d in spec.parameters
        if d.type is ParamType.FILE and d.key in resolved
    }
    accept = {d.key: d.accept for d in spec.parameters if d.type is ParamType.FILE}
    await files.check_inputs(ctx, scope.team_id, file_inputs, accept)
    rendered = render(spec.tool_type, spec.workflow_json, spec.parameters, resolved)
    # Sizes that always fit the frames that carry the task (and text the databases can hold).
    limits.check_task_size(resolved, rendered, _template_bytes(wf))

    now = ctx.now()
    caller = scope.caller
    task = Task(
        id=new_id(),
        team_id=scope.team_id,
        workflow_id=wf.id,
        workflow_slug=spec.workflow_slug,
        workflow_version=wf.version,
        task_source=(
            TaskSource.API_KEY if caller.kind is CallerKind.INTEGRATION else TaskSource.JWT
        ).value,
        submitted_by=caller.user_id,
        credential_id=caller.credential_id,
        task_status=TaskStatus.PENDING.value,
        priority=request.priority,
        parameters=resolved,
        workflow_json=rendered,
        tool_type=spec.tool_type.value,
        dispatch_target=(request.dispatch_target or spec.default_dispatch_target).value,
        target_pool=request.target_pool.value,
        submitter_region=request.submitter_region,
        required_labels=list(spec.required_labels),
        task_timeout=spec.task_timeout,
        max_retries=spec.max_retries,
        retry_count=0,
        attempt=0,
        event_seq=1,  # the ``pending`` event written with it
        created_at=now,
        updated_at=now,
    )
    return _Prepared(task, file_inputs)


#: JSON size of each live workflow version's graph (a version's content never changes).
_graph_bytes: dict[tuple[str, int], int] = {}


def _template_bytes(wf: workflows.WorkflowVersion) -> int:
    key = (wf.id, wf.version)
    size = _graph_bytes.get(key)
    if size is None:
        if len(_graph_bytes) >= _VERSIONS_MAX:
            _graph_bytes.clear()
        graph = wf.spec.workflow_json
        size = _graph_bytes[key] = limits.json_size(graph, "workflow")
    return size


async def _store(
    ctx: ServiceContext,
    scope: TeamScope,
    runs: Sequence[_Prepared],
    idempotency: tuple[str, str] | None,
) -> None:
    """Insert prepared runs, each with its first event, in one transaction, and hand them to
    the engine in it. ``idempotency``: (key, request hash) to remember for a single run."""
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        await repos.insert_tasks([run.task for run in runs])
        for run in runs:
            await files.record_task_inputs(session, run.task.id, run.file_inputs)
        # Each task's first event: sequence number 1, taken when the row was built.
        await repos.insert_events(
            [
                (
                    run.task.id,
                    1,
                    "status",
                    {
                        "task_id": run.task.id,
                        "status": TaskStatus.PENDING.value,
                        "timestamp": iso(run.task.created_at),
                    },
                    run.task.created_at,
                )
                for run in runs
            ]
        )
        if idempotency is not None:
            key, request_hash = idempotency
            now = runs[0].task.created_at
            await repos.delete_expired_idempotency_keys(now)
            await repos.add(
                IdempotencyKey(
                    team_id=scope.team_id,
                    key=key,
                    request_hash=request_hash,
                    task_id=runs[0].task.id,
                    created_at=now,
                    expires_at=now + IDEMPOTENCY_TTL,
                )
            )
        # The new tasks are in this transaction's changes (``insert_tasks``): an idle agent
        # of this server may claim them in it; the rest are announced as it commits.
        await ctx.engine.claim_at_submit(session)


#: Live workflow versions by (id, version): a version's content never changes, so an entry
#: is never stale; only ``workflow_status`` (not versioned) is read each time.
_versions: dict[tuple[str, int], workflows.WorkflowVersion] = {}
_VERSIONS_MAX = 1000


async def _resolve(
    ctx: ServiceContext, scope: TeamScope, *, workflow_id: str | None, ref: str | None
) -> workflows.WorkflowVersion:
    """``workflows.resolve``, reading only (id, version, status) when the version is known:
    the graph and parameters are not loaded and decoded again for every run."""
    slug, pinned = parse_slug_ref(ref) if ref is not None else ("", None)
    if pinned is None and scope.can(Permission.READ):
        async with ctx.db.read() as session:
            head = await WorkRepos(session).workflow_head(
                scope.team_id, workflow_id=workflow_id, slug=None if workflow_id else slug
            )
        cached = _versions.get(head[:2]) if head is not None else None
        if head is not None and cached is not None and cached.team_id == scope.team_id:
            status = WorkflowStatus(head[2])
            if status is cached.spec.workflow_status:
                return cached
            return dataclasses.replace(
                cached, spec=dataclasses.replace(cached.spec, workflow_status=status)
            )
    wf = await workflows.resolve(ctx, scope, workflow_id=workflow_id, ref=ref)
    if wf.live:
        if len(_versions) >= _VERSIONS_MAX:
            _versions.clear()
        _versions[(wf.id, wf.version)] = wf
    return wf


async def _idempotent_replay(
    ctx: ServiceContext, team_id: str, key: str, request_hash: str
) -> str | None:
    async with ctx.db.read() as session:
        row = await WorkRepos(session).idempotency_key(team_id, key)
    if row is None or row.expires_at <= ctx.now():
        return None
    if row.request_hash != request_hash:
        raise Conflict("Idempotency-Key was already used with a different request")
    return row.task_id


async def list_tasks(
    ctx: ServiceContext,
    scope: TeamScope,
    page: Page,
    status: TaskStatus | None = None,
    workflow_id: str | None = None,
) -> tuple[Sequence[Task], int]:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        return await WorkRepos(session).tasks(
            scope.team_id, page, status.value if status else None, workflow_id
        )


async def get_task(ctx: ServiceContext, scope: TeamScope, task_id: str) -> Task:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        task = await WorkRepos(session).task(scope.team_id, task_id)
    if task is None:
        raise NotFound("task not found")
    return task


async def _cancel_locked(repos: WorkRepos, task: Task, now: datetime) -> bool:
    """Cancel a locked task that has not ended; its agent (if it had one) is told to stop
    and every dispatcher drops it once this commits."""
    if TaskStatus(task.task_status).is_terminal:
        return False
    agent_id, attempt = task.agent_id, task.attempt
    await repos.change_status(task, TaskStatus.CANCELLED, now)
    repos.session.changes.stops.append(
        Stop(task.id, task.team_id, agent_id, attempt, "cancelled", ended=True)
    )
    return True


async def cancel_team_tasks(session: Session, team_id: str, now: datetime) -> int:
    """Cancel every unfinished task of a team (the team is being deleted); how many."""
    repos = WorkRepos(session)
    cancelled = 0
    for task_id in await repos.active_task_ids_of_team(team_id):
        task = await repos.task_for_update(task_id)
        if task is not None and await _cancel_locked(repos, task, now):
            cancelled += 1
    return cancelled


async def cancel(ctx: ServiceContext, scope: TeamScope, task_id: str) -> Task:
    """Cancel a task that has not ended; on an ended task this succeeds and changes nothing.

    A queued or running attempt is told to abort; anything its agent sends later is ignored.
    """
    scope.require(Permission.RUN)
    async with ctx.db.write() as session:
        repos = WorkRepos(session)
        task = await repos.task_for_update(task_id)
        if task is None or task.team_id != scope.team_id:
            raise NotFound("task not found")
        await _cancel_locked(repos, task, ctx.now())
    return task
