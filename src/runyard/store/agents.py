"""Queries for agents, gateways (server replicas), attempts and scheduler bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from runyard.domain.tasks import TaskStatus
from runyard.store.repos import Page
from runyard.store.tables import Agent, Gateway, Task, TaskAttempt

ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
WAITING = (TaskStatus.PENDING.value, TaskStatus.WAITING.value)


class AgentRepos:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- gateways ------------------------------------------------------------------------

    async def touch_gateway(self, gateway_id: str, now: datetime) -> None:
        row = await self.session.get(Gateway, gateway_id)
        if row is None:
            self.session.add(Gateway(gateway_id=gateway_id, started_at=now, last_seen_at=now))
        else:
            row.last_seen_at = now
        await self.session.flush()

    async def forget_gateway(self, gateway_id: str) -> None:
        await self.session.execute(
            update(Agent).where(Agent.gateway_id == gateway_id).values(gateway_id=None)
        )
        await self.session.execute(delete(Gateway).where(Gateway.gateway_id == gateway_id))

    async def release_agents_of_dead_gateways(self, stale_before: datetime) -> None:
        dead = select(Gateway.gateway_id).where(Gateway.last_seen_at < stale_before)
        await self.session.execute(
            update(Agent).where(Agent.gateway_id.in_(dead)).values(gateway_id=None)
        )
        await self.session.execute(delete(Gateway).where(Gateway.last_seen_at < stale_before))

    # -- agents --------------------------------------------------------------------------

    async def agent(self, team_id: str, agent_id: str) -> Agent | None:
        return await self.session.get(Agent, (team_id, agent_id))

    async def connected_agents(
        self, team_id: str, page: Page | None = None, agent_id: str | None = None
    ) -> tuple[Sequence[Agent], int]:
        base = select(Agent).where(Agent.team_id == team_id, Agent.gateway_id.is_not(None))
        if agent_id is not None:
            base = base.where(Agent.agent_id == agent_id)
        from sqlalchemy import func

        total = int(
            (
                await self.session.execute(
                    select(func.count()).select_from(base.order_by(None).subquery())
                )
            ).scalar_one()
        )
        query = base.order_by(Agent.agent_id)
        if page is not None:
            query = query.offset(page.offset).limit(page.per_page)
        return (await self.session.execute(query)).scalars().all(), total

    async def running_tasks_of(
        self, team_id: str, agent_ids: Sequence[str]
    ) -> Sequence[tuple[str, str, str]]:
        """(agent_id, task_id, task_status) of the unfinished attempts of these agents."""
        if not agent_ids:
            return []
        result = await self.session.execute(
            select(Task.agent_id, Task.id, Task.task_status)
            .where(
                Task.task_status.in_(ACTIVE),
                Task.agent_id.in_(list(agent_ids)),
                # An agent's own team's tasks, and community tasks it runs for other teams.
                or_(Task.team_id == team_id, Task.target_pool == "community"),
            )
            .order_by(Task.created_at)
        )
        return [(str(a), str(t), str(s)) for a, t, s in result.all()]

    async def set_heartbeats(
        self, gateway_id: str, agents: Sequence[tuple[str, str]], now: datetime
    ) -> None:
        for team_id, agent_id in agents:
            await self.session.execute(
                update(Agent)
                .where(
                    Agent.team_id == team_id,
                    Agent.agent_id == agent_id,
                    Agent.gateway_id == gateway_id,
                )
                .values(last_heartbeat=now)
            )

    async def disconnect(self, team_id: str, agent_id: str, gateway_id: str) -> None:
        await self.session.execute(
            update(Agent)
            .where(
                Agent.team_id == team_id,
                Agent.agent_id == agent_id,
                Agent.gateway_id == gateway_id,
            )
            .values(gateway_id=None)
        )

    async def count_completed(self, team_id: str, agent_id: str) -> None:
        await self.session.execute(
            update(Agent)
            .where(Agent.team_id == team_id, Agent.agent_id == agent_id)
            .values(tasks_completed=Agent.tasks_completed + 1)
        )

    # -- scheduler -------------------------------------------------------------------------

    async def task_for_claim(self, task_id: str) -> Task | None:
        """Lock a task for a claim; on PostgreSQL skip it if another replica holds it."""
        result = await self.session.execute(
            select(Task).where(Task.id == task_id).with_for_update(skip_locked=True)
        )
        return result.scalar_one_or_none()

    async def attempt(self, task_id: str, attempt: int) -> TaskAttempt | None:
        return await self.session.get(TaskAttempt, (task_id, attempt))

    async def waiting_tasks(self, limit: int, after: str = "") -> Sequence[Task]:
        result = await self.session.execute(
            select(Task)
            .where(
                Task.task_status.in_(WAITING),
                Task.dispatch_target == "agent",
                Task.id > after,
            )
            .order_by(Task.id)
            .limit(limit)
        )
        return result.scalars().all()

    async def expired_leases(self, now: datetime, limit: int = 200) -> Sequence[Task]:
        result = await self.session.execute(
            select(Task)
            .where(
                or_(
                    and_(Task.task_status.in_(ACTIVE), Task.lease_expires_at < now),
                    and_(Task.task_status == TaskStatus.RUNNING.value, Task.deadline_at < now),
                )
            )
            .limit(limit)
        )
        return result.scalars().all()

    async def extend_all_leases(self, until: datetime) -> int:
        """Give every unfinished attempt at least until ``until`` (after a server restart)."""
        result = await self.session.execute(
            update(Task)
            .where(Task.task_status.in_(ACTIVE), Task.lease_expires_at < until)
            .values(lease_expires_at=until)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def renew_leases(self, task_ids: Sequence[str], expires_at: datetime) -> None:
        if not task_ids:
            return
        await self.session.execute(
            update(Task)
            .where(Task.id.in_(list(task_ids)), Task.task_status == TaskStatus.RUNNING.value)
            .values(lease_expires_at=expires_at)
        )
