"""Connected agents: ``GET /agents`` (management), ``GET /r/agents`` (runtime)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from runyard.api.deps import Ctx, ManagementScope, PageDep, RuntimeScope
from runyard.domain import limits
from runyard.schemas.agents import AgentListResponse, AgentOut
from runyard.schemas.identity import PageMeta
from runyard.services import agents
from runyard.services.agents import AgentView

router = APIRouter(tags=["agent"])

AgentId = Annotated[
    str, Path(max_length=limits.AGENT_ID_MAX, description="The agent's id, e.g. gpu-node-01")
]


def agent_out(view: AgentView, request: Request) -> AgentOut:
    row = view.row
    last_heartbeat = row.last_heartbeat
    # The replica holding the connection knows the latest heartbeat to the second.
    scheduler = getattr(request.app.state, "scheduler", None)
    conn = scheduler.connections.get((row.team_id, row.agent_id)) if scheduler else None
    if conn is not None:
        last_heartbeat = conn.last_heartbeat_at
    return AgentOut(
        agent_id=row.agent_id,
        agent_status=view.agent_status,
        agent_labels=row.labels,
        last_heartbeat=last_heartbeat,
        agent_version=row.agent_version,
        tool=row.tool,
        tool_version=row.tool_version,
        comfyui_version=row.comfyui_version,
        gpu_capacity=row.gpu_capacity,
        running_count=len(view.running_tasks),
        running_tasks=view.running_tasks,
        platform_arch=row.platform_arch,
        sync_phase=row.sync_phase,
        sync_detail=row.sync_detail,
        sync_percent=row.sync_percent,
        connected_at=row.connected_at,
        tasks_completed=row.tasks_completed,
        current_task_id=view.running_tasks[0] if view.running_tasks else None,
        system_stats=row.system_stats,
        agent_pools=row.pools,
    )


async def _list(ctx: Any, scope: Any, page: Any, request: Request) -> AgentListResponse:
    views, total = await agents.list_agents(ctx, scope, page)
    return AgentListResponse(
        agent_list=[agent_out(v, request) for v in views], page_meta=PageMeta.of(page, total)
    )


@router.get("/agents", response_model=AgentListResponse)
async def list_agents(
    ctx: Ctx, scope: ManagementScope, page: PageDep, request: Request
) -> AgentListResponse:
    """The team's connected agents and what they run."""
    return await _list(ctx, scope, page, request)


@router.get("/r/agents", response_model=AgentListResponse)
async def list_agents_runtime(
    ctx: Ctx, scope: RuntimeScope, page: PageDep, request: Request
) -> AgentListResponse:
    """The same list for runtime callers (sk- included)."""
    return await _list(ctx, scope, page, request)


@router.get("/agents/{agentId}", response_model=AgentOut)
async def get_agent(
    ctx: Ctx,
    scope: ManagementScope,
    agentId: AgentId,
    request: Request,
) -> AgentOut:
    return agent_out(await agents.get_agent(ctx, scope, agentId), request)
