"""The agents registry as users see it: connected agents of a team, with their work."""

from __future__ import annotations

from dataclasses import dataclass

from runyard.context import ServiceContext
from runyard.domain.errors import NotFound
from runyard.domain.roles import Permission
from runyard.services.auth import TeamScope
from runyard.store.agents import AgentRepos
from runyard.store.repos import Page
from runyard.store.tables import Agent


@dataclass(frozen=True)
class AgentView:
    row: Agent
    running_tasks: list[str]

    @property
    def agent_status(self) -> str:
        if self.row.agent_status == "idle" and self.running_tasks:
            return "busy"
        return self.row.agent_status


async def list_agents(
    ctx: ServiceContext, scope: TeamScope, page: Page | None, agent_id: str | None = None
) -> tuple[list[AgentView], int]:
    """Connected agents only: one that dropped disappears from the list."""
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        repos = AgentRepos(session)
        rows, total = await repos.connected_agents(scope.team_id, page, agent_id)
        running = await repos.running_tasks_of(scope.team_id, [r.agent_id for r in rows])
    by_agent: dict[str, list[str]] = {}
    for agent, task_id, _status in running:
        by_agent.setdefault(agent, []).append(task_id)
    return [AgentView(r, by_agent.get(r.agent_id, [])) for r in rows], total


async def get_agent(ctx: ServiceContext, scope: TeamScope, agent_id: str) -> AgentView:
    views, _ = await list_agents(ctx, scope, None, agent_id)
    if not views:
        raise NotFound("agent not found or not connected")
    return views[0]
