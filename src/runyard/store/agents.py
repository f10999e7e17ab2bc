"""Queries for agents, gateways (server replicas), attempts and scheduler bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    literal_column,
    or_,
    select,
    update,
)

from runyard.domain.attempts import AgentKey, Claimed, WaitingTask
from runyard.domain.tasks import TaskStatus
from runyard.store.db import Session
from runyard.store.repos import Page
from runyard.store.tables import Agent, Credential, Gateway, Task, TaskAttempt, TaskEvent

ACTIVE = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
WAITING = (TaskStatus.PENDING.value, TaskStatus.WAITING.value)

#: Whether the task's team has an active webhook, computed by the statement that changes the
#: task (``RETURNING``), so a transition without webhooks costs no extra query. Written as SQL
#: text because SQLite's RETURNING renders column names unqualified, which would bind a
#: correlated ``team_id`` to the webhooks table.
HAS_WEBHOOKS = literal_column(
    "EXISTS (SELECT 1 FROM webhooks w WHERE w.team_id = tasks.team_id"
    " AND w.webhook_status = 'active')",
    Boolean,
).label("has_webhooks")


# -- the hot path's statements, built once -------------------------------------------------
#
# Core statements on the tables (not the ORM entities) with bound parameters: SQLAlchemy
# neither rebuilds them nor recomputes their cache keys per call, and no ORM bulk-update
# machinery runs. Parameters are prefixed ``p_`` (names of columns are reserved in SET).

_tasks = cast(Table, Task.__table__)
_events = cast(Table, TaskEvent.__table__)
_attempts = cast(Table, TaskAttempt.__table__)
_agents = cast(Table, Agent.__table__)
_t = _tasks.c


def _held_by_agent() -> list[Any]:
    """Fencing as a WHERE clause: the task's current attempt, held by this agent."""
    return [
        _t.id == bindparam("p_id"),
        _t.attempt == bindparam("p_attempt"),
        _t.agent_id == bindparam("p_agent"),
        or_(_t.team_id == bindparam("p_team"), _t.target_pool == "community"),
    ]


_CLAIM_VALUES = {
    "task_status": TaskStatus.QUEUED.value,
    "updated_at": bindparam("p_now"),
    "attempt": _t.attempt + 1,
    "event_seq": _t.event_seq + 1,
    "agent_id": bindparam("p_agent"),
    "agent_labels": bindparam("p_labels"),
    "gateway_id": bindparam("p_gateway"),
    "gpu_type": bindparam("p_gpu"),
    "lease_expires_at": bindparam("p_lease"),
    "deadline_at": None,
    "not_before": None,
}
_CLAIM_RETURNING = (
    _t.id,
    _t.team_id,
    _t.attempt,
    _t.event_seq,
    _t.workflow_id,
    _t.tool_type,
    _t.workflow_json,
    _t.parameters,
    _t.task_timeout,
)
_CLAIM_WHERE = (
    _t.id == bindparam("p_id"),
    _t.task_status.in_(WAITING),
    or_(_t.not_before.is_(None), _t.not_before <= bindparam("p_now")),
)
CLAIM = update(_tasks).where(*_CLAIM_WHERE).values(_CLAIM_VALUES).returning(*_CLAIM_RETURNING)
#: PostgreSQL: a row another replica holds locked is skipped, never waited for.
CLAIM_SKIP_LOCKED = (
    update(_tasks)
    .where(
        *_CLAIM_WHERE,
        _t.id.in_(
            select(_t.id).where(_t.id == bindparam("p_id")).with_for_update(skip_locked=True)
        ),
    )
    .values(_CLAIM_VALUES)
    .returning(*_CLAIM_RETURNING)
)
START = (
    update(_tasks)
    .where(*_held_by_agent(), _t.task_status == TaskStatus.QUEUED.value)
    .values(
        task_status=TaskStatus.RUNNING.value,
        updated_at=bindparam("p_now"),
        started_at=bindparam("p_now"),
        lease_expires_at=bindparam("p_lease"),
        deadline_at=bindparam("p_deadline"),
        event_seq=_t.event_seq + 1,
    )
    .returning(_t.team_id, _t.event_seq, HAS_WEBHOOKS)
)
COMPLETE = (
    update(_tasks)
    .where(*_held_by_agent(), _t.task_status == TaskStatus.RUNNING.value)
    .values(
        task_status=TaskStatus.COMPLETED.value,
        updated_at=bindparam("p_now"),
        completed_at=bindparam("p_now"),
        task_output=bindparam("p_output"),
        lease_expires_at=None,
        deadline_at=None,
        event_seq=_t.event_seq + 1,
    )
    .returning(_t.team_id, _t.event_seq, HAS_WEBHOOKS)
)
NEXT_EVENT_SEQ = (
    update(_tasks)
    .where(*_held_by_agent(), _t.task_status.in_(bindparam("p_statuses", expanding=True)))
    .values(event_seq=_t.event_seq + 1)
    .returning(_t.event_seq)
)
MARK_WAITING = (
    update(_tasks)
    .where(_t.id == bindparam("p_id"), _t.task_status == TaskStatus.PENDING.value)
    .values(
        task_status=TaskStatus.WAITING.value,
        updated_at=bindparam("p_now"),
        event_seq=_t.event_seq + 1,
    )
    .returning(_t.event_seq)
)
_ATTEMPT_KEY = (
    _attempts.c.task_id == bindparam("p_id"),
    _attempts.c.attempt == bindparam("p_attempt"),
)
ACKED = update(_attempts).where(*_ATTEMPT_KEY).values(acked_at=bindparam("p_now"))
ENDED = (
    update(_attempts)
    .where(*_ATTEMPT_KEY)
    .values(ended_at=bindparam("p_now"), outcome=bindparam("p_outcome"), error=bindparam("p_error"))
)
ENDED_IF_OPEN = ENDED.where(_attempts.c.ended_at.is_(None))
COUNT_COMPLETED = (
    update(_agents)
    .where(_agents.c.team_id == bindparam("p_team"), _agents.c.agent_id == bindparam("p_agent"))
    .values(tasks_completed=_agents.c.tasks_completed + 1)
)
INSERT_EVENT = insert(_events)
INSERT_ATTEMPT = insert(_attempts)


@dataclass(frozen=True)
class Transitioned:
    """A task changed by a single ``UPDATE … RETURNING``."""

    team_id: str
    event_seq: int
    has_webhooks: bool


def _waiting_rows() -> Select[str, str, str, str, list[str], int, datetime, datetime | None]:
    """The waiting index's columns of tasks (see ``WaitingTask``)."""
    return select(
        Task.id,
        Task.team_id,
        Task.task_status,
        Task.target_pool,
        Task.required_labels,
        Task.priority,
        Task.created_at,
        Task.not_before,
    )


def _waiting(
    task_id: str,
    team_id: str,
    status: str,
    pool: str,
    labels: list[str],
    priority: int,
    created_at: datetime,
    not_before: datetime | None,
) -> WaitingTask:
    return WaitingTask(
        task_id=task_id,
        team_id=team_id,
        pool=pool,
        labels=frozenset(labels),
        priority=priority,
        created_at=created_at,
        not_before=not_before,
        pending=status == TaskStatus.PENDING.value,
    )


class AgentRepos:
    def __init__(self, session: Session) -> None:
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

    async def connected_row(self, team_id: str, agent_id: str) -> Agent:
        """The agent's row, created on its first connection."""
        row = await self.agent(team_id, agent_id)
        if row is None:
            row = Agent(team_id=team_id, agent_id=agent_id, tasks_completed=0)
            self.session.add(row)
        return row

    async def set_status(
        self,
        team_id: str,
        agent_id: str,
        status: str,
        sync_phase: str | None,
        sync_detail: str | None,
        sync_percent: float | None,
    ) -> None:
        await self.session.execute(
            update(Agent)
            .where(Agent.team_id == team_id, Agent.agent_id == agent_id)
            .values(
                agent_status=status,
                sync_phase=sync_phase,
                sync_detail=sync_detail,
                sync_percent=sync_percent,
            )
        )

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

    async def disconnect(
        self, team_id: str, agent_id: str, gateway_id: str, connected_at: datetime
    ) -> None:
        """Unlist the agent if its row is still this connection's: a newer connection of the
        same agent (``connected_at`` written after this one's) keeps it, whichever of the two
        transactions commits first."""
        await self.session.execute(
            update(Agent)
            .where(
                Agent.team_id == team_id,
                Agent.agent_id == agent_id,
                Agent.gateway_id == gateway_id,
                Agent.connected_at == connected_at,
            )
            .values(gateway_id=None)
        )

    async def count_completed(self, team_id: str, agent_id: str) -> None:
        await self.session.execute(COUNT_COMPLETED, {"p_team": team_id, "p_agent": agent_id})

    # -- scheduler -------------------------------------------------------------------------

    async def claim(
        self,
        task_id: str,
        now: datetime,
        *,
        agent: AgentKey,
        agent_labels: list[str],
        gateway_id: str,
        gpu_type: str | None,
        ack_deadline: datetime,
        for_update: bool,
    ) -> Claimed | None:
        """``pending|waiting → queued`` with the next attempt number, in one statement.

        Only a task that still waits and is due (``not_before``) is claimed; on PostgreSQL
        (``for_update``) a row another replica holds locked is skipped, never waited for.
        The status event and the attempt row are written by :meth:`record_claims`.
        """
        result = await self.session.execute(
            CLAIM_SKIP_LOCKED if for_update else CLAIM,
            {
                "p_id": task_id,
                "p_now": now,
                "p_agent": agent.agent_id,
                "p_labels": agent_labels,
                "p_gateway": gateway_id,
                "p_gpu": gpu_type,
                "p_lease": ack_deadline,
            },
        )
        row = result.first()
        if row is None:
            return None
        task_id, team_id, attempt, seq, workflow_id, tool_type, graph, params, timeout = row
        return Claimed(
            id=task_id,
            team_id=team_id,
            attempt=attempt,
            event_seq=seq,
            workflow_id=workflow_id,
            tool_type=tool_type,
            workflow_json=graph,
            parameters=params,
            task_timeout=timeout,
            agent=agent,
        )

    async def record_claims(
        self, claims: Sequence[Claimed], gateway_id: str, now: datetime, timestamp: str
    ) -> None:
        """The ``queued`` events and ``task_attempts`` rows of claims."""
        if not claims:
            return
        await self.session.execute(
            INSERT_EVENT,
            [
                {
                    "task_id": c.id,
                    "seq": c.event_seq,
                    "event_type": "status",
                    "payload": {
                        "task_id": c.id,
                        "status": TaskStatus.QUEUED.value,
                        "timestamp": timestamp,
                        "agent_id": c.agent.agent_id,
                        "attempt": c.attempt,
                    },
                    "created_at": now,
                }
                for c in claims
            ],
        )
        await self.session.execute(
            INSERT_ATTEMPT,
            [
                {
                    "task_id": c.id,
                    "attempt": c.attempt,
                    "agent_id": c.agent.agent_id,
                    "gateway_id": gateway_id,
                    "dispatched_at": now,
                }
                for c in claims
            ],
        )
        self.session.changes.events.update(c.id for c in claims)

    async def mark_waiting(
        self, reasons: dict[str, str], now: datetime, timestamp: str
    ) -> list[str]:
        """``pending → waiting`` for those still pending (task id → why it waits), with their
        events; returns them."""
        moved: list[tuple[str, int]] = []
        for task_id in reasons:
            row = (
                await self.session.execute(MARK_WAITING, {"p_id": task_id, "p_now": now})
            ).first()
            if row is not None:
                moved.append((task_id, int(row[0])))
        if moved:
            await self.session.execute(
                INSERT_EVENT,
                [
                    {
                        "task_id": task_id,
                        "seq": seq,
                        "event_type": "status",
                        "payload": {
                            "task_id": task_id,
                            "status": TaskStatus.WAITING.value,
                            "timestamp": timestamp,
                            "reason": reasons[task_id],
                        },
                        "created_at": now,
                    }
                    for task_id, seq in moved
                ],
            )
            self.session.changes.events.update(t for t, _ in moved)
        return [t for t, _ in moved]

    async def start_attempt(
        self,
        task_id: str,
        attempt: int,
        *,
        team_id: str,
        agent_id: str,
        now: datetime,
        lease_expires_at: datetime,
        deadline_at: datetime | None,
    ) -> Transitioned | None:
        """ACK: ``queued → running`` if this agent holds the current attempt, else ``None``
        (the caller then looks closer: a repeated ACK, a stale attempt, a cancelled task)."""
        row = (
            await self.session.execute(
                START,
                {
                    "p_id": task_id,
                    "p_attempt": attempt,
                    "p_agent": agent_id,
                    "p_team": team_id,
                    "p_now": now,
                    "p_lease": lease_expires_at,
                    "p_deadline": deadline_at,
                },
            )
        ).first()
        if row is None:
            return None
        await self.mark_acked(task_id, attempt, now)
        return Transitioned(row[0], row[1], bool(row[2]))

    async def complete_attempt(
        self,
        task_id: str,
        attempt: int,
        *,
        team_id: str,
        agent_id: str,
        now: datetime,
        task_output: dict[str, Any] | None,
    ) -> Transitioned | None:
        """``running → completed`` if this agent holds the current attempt, else ``None``."""
        row = (
            await self.session.execute(
                COMPLETE,
                {
                    "p_id": task_id,
                    "p_attempt": attempt,
                    "p_agent": agent_id,
                    "p_team": team_id,
                    "p_now": now,
                    "p_output": task_output,
                },
            )
        ).first()
        if row is None:
            return None
        await self.end_attempt_row(task_id, attempt, now, "completed", None)
        await self.count_completed(team_id, agent_id)
        return Transitioned(row[0], row[1], bool(row[2]))

    async def mark_acked(self, task_id: str, attempt: int, now: datetime) -> None:
        await self.session.execute(ACKED, {"p_id": task_id, "p_attempt": attempt, "p_now": now})

    async def next_event_seq(
        self,
        task_id: str,
        attempt: int,
        *,
        team_id: str,
        agent_id: str,
        statuses: Sequence[str],
    ) -> int | None:
        """Take the next event number of a task this agent's attempt holds in one of
        ``statuses`` (progress, logs); ``None`` when it does not."""
        row = (
            await self.session.execute(
                NEXT_EVENT_SEQ,
                {
                    "p_id": task_id,
                    "p_attempt": attempt,
                    "p_agent": agent_id,
                    "p_team": team_id,
                    "p_statuses": list(statuses),
                },
            )
        ).first()
        return None if row is None else int(row[0])

    async def end_attempt_row(
        self,
        task_id: str,
        attempt: int,
        now: datetime,
        outcome: str,
        error: str | None,
        *,
        only_open: bool = False,
    ) -> None:
        """Record how an attempt ended (``only_open``: unless it already has an end)."""
        await self.session.execute(
            ENDED_IF_OPEN if only_open else ENDED,
            {
                "p_id": task_id,
                "p_attempt": attempt,
                "p_now": now,
                "p_outcome": outcome,
                "p_error": error,
            },
        )

    async def task(self, task_id: str) -> Task | None:
        """A task of any team, without locking it (checks before a write)."""
        return await self.session.get(Task, task_id)

    async def claim_blocker(self, task_id: str) -> tuple[str, datetime | None] | None:
        """Why a claim found nothing: the task's status and ``not_before`` (or ``None``)."""
        row = (
            await self.session.execute(
                select(Task.task_status, Task.not_before).where(Task.id == task_id)
            )
        ).first()
        return None if row is None else (str(row[0]), row[1])

    async def credential_states(
        self, credential_ids: Sequence[str]
    ) -> dict[str, tuple[datetime | None, datetime | None]]:
        """credential id → (revoked_at, expires_at) for the keys of connected agents."""
        if not credential_ids:
            return {}
        rows = await self.session.execute(
            select(Credential.id, Credential.revoked_at, Credential.expires_at).where(
                Credential.id.in_(list(set(credential_ids)))
            )
        )
        return {str(i): (r, e) for i, r, e in rows.all()}

    async def task_for_claim(self, task_id: str) -> Task | None:
        """Lock a task for a claim; on PostgreSQL skip it if another replica holds it."""
        result = await self.session.execute(
            select(Task).where(Task.id == task_id).with_for_update(skip_locked=True)
        )
        return result.scalar_one_or_none()

    async def attempt(self, task_id: str, attempt: int) -> TaskAttempt | None:
        return await self.session.get(TaskAttempt, (task_id, attempt))

    async def waiting_tasks(self, limit: int, after: str = "") -> list[WaitingTask]:
        """One page (by id) of the tasks waiting for an agent: only the index's columns."""
        result = await self.session.execute(
            _waiting_rows()
            .where(
                Task.task_status.in_(WAITING),
                Task.dispatch_target == "agent",
                Task.id > after,
            )
            .order_by(Task.id)
            .limit(limit)
        )
        return [_waiting(*row) for row in result.all()]

    async def waiting_task(self, task_id: str) -> WaitingTask | None:
        """The index's columns of one task, if it waits for an agent."""
        row = (
            await self.session.execute(
                _waiting_rows().where(
                    Task.id == task_id,
                    Task.task_status.in_(WAITING),
                    Task.dispatch_target == "agent",
                )
            )
        ).first()
        return None if row is None else _waiting(*row)

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
