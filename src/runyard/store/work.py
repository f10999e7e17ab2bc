"""Queries for workflows, snapshots, tasks, task events and idempotency keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, select

from runyard.domain.attempts import TaskState, WaitingTask
from runyard.domain.ids import new_id
from runyard.domain.tasks import TaskStatus, check_transition
from runyard.domain.times import iso
from runyard.domain.webhooks import EVENT_FOR_STATUS, task_body
from runyard.store.db import Session
from runyard.store.repos import Page
from runyard.store.tables import (
    IdempotencyKey,
    Task,
    TaskEvent,
    Webhook,
    WebhookDelivery,
    Workflow,
    WorkflowSnapshot,
)

_INSERT_EVENT = insert(cast(Table, TaskEvent.__table__))
_TASKS = cast(Table, Task.__table__)
_INSERT_TASK = insert(_TASKS)
# Built once: every run reads its workflow's head, and building the statement cost more
# Python than executing it.
_HEAD = select(Workflow.id, Workflow.version, Workflow.workflow_status).where(
    Workflow.team_id == bindparam("team_id")
)
_HEAD_BY_ID = _HEAD.where(Workflow.id == bindparam("key"))
_HEAD_BY_SLUG = _HEAD.where(Workflow.workflow_slug == bindparam("key"))


def waiting_entry(task: Task) -> WaitingTask:
    """The dispatcher's view of a task waiting for an agent."""
    return WaitingTask(
        task_id=task.id,
        team_id=task.team_id,
        pool=task.target_pool,
        labels=frozenset(task.required_labels),
        priority=task.priority,
        created_at=task.created_at,
        not_before=task.not_before,
        pending=task.task_status == TaskStatus.PENDING.value,
    )


def task_state(task: Task) -> TaskState:
    """What the fencing and retry rules read of a task."""
    return TaskState(
        id=task.id,
        team_id=task.team_id,
        status=TaskStatus(task.task_status),
        attempt=task.attempt,
        agent_id=task.agent_id,
        target_pool=task.target_pool,
        retry_count=task.retry_count,
        max_retries=task.max_retries,
        task_timeout=task.task_timeout,
        lease_expires_at=task.lease_expires_at,
        deadline_at=task.deadline_at,
    )


class WorkRepos:
    def __init__(self, session: Session) -> None:
        self.session = session

    async def add(self, row: object) -> None:
        self.session.add(row)
        await self.session.flush()

    async def _count(self, query: Any) -> int:
        counted = select(func.count()).select_from(query.order_by(None).subquery())
        return int((await self.session.execute(counted)).scalar_one())

    # -- workflows -----------------------------------------------------------------------

    async def workflow(self, team_id: str, workflow_id: str) -> Workflow | None:
        row = await self.session.get(Workflow, workflow_id)
        return row if row is not None and row.team_id == team_id else None

    async def workflow_by_slug(self, team_id: str, slug: str) -> Workflow | None:
        result = await self.session.execute(
            select(Workflow).where(Workflow.team_id == team_id, Workflow.workflow_slug == slug)
        )
        return result.scalar_one_or_none()

    async def workflow_head(
        self, team_id: str, *, workflow_id: str | None = None, slug: str | None = None
    ) -> tuple[str, int, str] | None:
        """(id, live version, status) of a team's workflow, without its graph."""
        query, key = (
            (_HEAD_BY_ID, workflow_id) if workflow_id is not None else (_HEAD_BY_SLUG, slug)
        )
        row = (await self.session.execute(query, {"team_id": team_id, "key": key})).first()
        return None if row is None else (str(row[0]), int(row[1]), str(row[2]))

    async def workflows(
        self, team_id: str, page: Page, status: str | None = None
    ) -> tuple[Sequence[Workflow], int]:
        base = select(Workflow).where(Workflow.team_id == team_id)
        if status:
            base = base.where(Workflow.workflow_status == status)
        total = await self._count(base)
        rows = (
            await self.session.execute(
                base.order_by(Workflow.workflow_slug).offset(page.offset).limit(page.per_page)
            )
        ).scalars()
        return rows.all(), total

    async def delete_workflow(self, workflow_id: str) -> None:
        await self.session.execute(delete(Workflow).where(Workflow.id == workflow_id))

    async def snapshot(self, workflow_id: str, snapshot_id: str) -> WorkflowSnapshot | None:
        row = await self.session.get(WorkflowSnapshot, snapshot_id)
        return row if row is not None and row.workflow_id == workflow_id else None

    async def snapshot_by_version(self, workflow_id: str, version: int) -> WorkflowSnapshot | None:
        result = await self.session.execute(
            select(WorkflowSnapshot).where(
                WorkflowSnapshot.workflow_id == workflow_id,
                WorkflowSnapshot.workflow_version == version,
            )
        )
        return result.scalar_one_or_none()

    async def snapshots(
        self, workflow_id: str, page: Page
    ) -> tuple[Sequence[WorkflowSnapshot], int]:
        base = select(WorkflowSnapshot).where(WorkflowSnapshot.workflow_id == workflow_id)
        total = await self._count(base)
        rows = (
            await self.session.execute(
                base.order_by(WorkflowSnapshot.workflow_version.desc())
                .offset(page.offset)
                .limit(page.per_page)
            )
        ).scalars()
        return rows.all(), total

    # -- tasks ---------------------------------------------------------------------------

    async def task(self, team_id: str, task_id: str) -> Task | None:
        row = await self.session.get(Task, task_id)
        return row if row is not None and row.team_id == team_id else None

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        """Insert new tasks built in memory (a Core insert, one statement for them all: the
        objects stay transient, so nothing is flushed or tracked for them)."""
        rows = [
            {
                column.key: task.__dict__[column.key]
                for column in _TASKS.columns
                if column.key in task.__dict__  # columns left to their defaults
            }
            for task in tasks
        ]
        await self.session.execute(_INSERT_TASK, rows)
        # New tasks for agents: the dispatchers index them once this commits.
        for task in tasks:
            if task.dispatch_target == "agent":
                self.session.changes.waiting[task.id] = waiting_entry(task)

    async def task_for_update(self, task_id: str) -> Task | None:
        """Load a task and lock its row (PostgreSQL) for a status change."""
        result = await self.session.execute(
            select(Task).where(Task.id == task_id).with_for_update()
        )
        return result.scalar_one_or_none()

    async def tasks(
        self,
        team_id: str,
        page: Page,
        status: str | None = None,
        workflow_id: str | None = None,
    ) -> tuple[Sequence[Task], int]:
        base = select(Task).where(Task.team_id == team_id)
        if status:
            base = base.where(Task.task_status == status)
        if workflow_id:
            base = base.where(Task.workflow_id == workflow_id)
        total = await self._count(base)
        rows = (
            await self.session.execute(
                base.order_by(Task.created_at.desc(), Task.id.desc())
                .offset(page.offset)
                .limit(page.per_page)
            )
        ).scalars()
        return rows.all(), total

    async def active_task_ids_of_team(self, team_id: str) -> Sequence[str]:
        result = await self.session.execute(
            select(Task.id).where(
                Task.team_id == team_id,
                Task.task_status.in_([s.value for s in TaskStatus if not s.is_terminal]),
            )
        )
        return result.scalars().all()

    async def add_event(
        self, task: Task, event_type: str, payload: dict[str, Any], now: datetime
    ) -> TaskEvent:
        task.event_seq += 1
        event = TaskEvent(
            task_id=task.id,
            seq=task.event_seq,
            event_type=event_type,
            payload=payload,
            created_at=now,
        )
        self.session.add(event)
        await self.session.flush()
        self.session.changes.events.add(task.id)
        return event

    async def change_status(
        self,
        task: Task,
        target: TaskStatus,
        now: datetime,
        extra: dict[str, Any] | None = None,
        **fields: Any,
    ) -> TaskEvent:
        """The only way a task changes state: checked against the domain table, logged."""
        check_transition(TaskStatus(task.task_status), target)
        task.task_status = target.value
        task.updated_at = now
        for name, value in fields.items():
            setattr(task, name, value)
        if target.is_terminal and task.completed_at is None:
            task.completed_at = now
        payload: dict[str, Any] = {
            "task_id": task.id,
            "status": target.value,
            "timestamp": iso(now),
        }
        if target is TaskStatus.FAILED:
            payload["error"] = task.task_error or ""
        if target is TaskStatus.COMPLETED:
            payload["output"] = task.task_output
        payload.update(extra or {})
        event_type = target.value if target.is_terminal else "status"
        event = await self.add_event(task, event_type, payload, now)
        await self._webhook_outbox(task, target, now)
        return event

    async def _webhook_outbox(self, task: Task, target: TaskStatus, now: datetime) -> None:
        """Outbox rows for the team's webhooks, in the same transaction as the transition."""
        await self.session.flush()
        await self.webhook_outbox(
            task.team_id, task.id, target, task.task_output, task.task_error, now
        )

    async def webhook_outbox(
        self,
        team_id: str,
        task_id: str,
        target: TaskStatus,
        output: dict[str, Any] | None,
        error: str | None,
        now: datetime,
    ) -> None:
        """Outbox rows for a transition of a task (call it in the transition's transaction)."""
        event_type = EVENT_FOR_STATUS.get(target)
        if event_type is None:
            return
        rows = await self.session.execute(
            select(Webhook.id, Webhook.webhook_events).where(
                Webhook.team_id == team_id, Webhook.webhook_status == "active"
            )
        )
        deliveries = [
            {
                "id": new_id(),
                "webhook_id": webhook_id,
                "team_id": team_id,
                "task_id": task_id,
                "event_type": event_type,
                "payload": task_body(event_type, task_id, target.value, output, error, now),
                "delivery_status": "pending",
                "attempt_count": 0,
                "attempts_in_round": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for webhook_id, events in rows.all()
            if event_type in events
        ]
        if deliveries:
            await self.session.execute(insert(WebhookDelivery), deliveries)
            self.session.changes.outbox = True

    async def insert_event(
        self, task_id: str, seq: int, event_type: str, payload: dict[str, Any], now: datetime
    ) -> None:
        """A task event whose ``seq`` the caller already took (``event_seq + 1 … RETURNING``)."""
        await self.insert_events([(task_id, seq, event_type, payload, now)])

    async def insert_events(
        self, events: Sequence[tuple[str, int, str, dict[str, Any], datetime]]
    ) -> None:
        """Task events ``(task_id, seq, event_type, payload, created_at)``, one statement."""
        rows = [
            {
                "task_id": task_id,
                "seq": seq,
                "event_type": event_type,
                "payload": payload,
                "created_at": created_at,
            }
            for task_id, seq, event_type, payload, created_at in events
        ]
        await self.session.execute(_INSERT_EVENT, rows)
        self.session.changes.events.update(e[0] for e in events)

    async def task_status(self, task_id: str) -> str | None:
        """The task's status, or None when it does not exist (any team)."""
        return (
            await self.session.execute(select(Task.task_status).where(Task.id == task_id))
        ).scalar_one_or_none()

    async def events(self, task_id: str, after: int = 0, limit: int = 1000) -> Sequence[TaskEvent]:
        result = await self.session.execute(
            select(TaskEvent)
            .where(TaskEvent.task_id == task_id, TaskEvent.seq > after)
            .order_by(TaskEvent.seq)
            .limit(limit)
        )
        return result.scalars().all()

    # -- idempotency ---------------------------------------------------------------------

    async def idempotency_key(self, team_id: str, key: str) -> IdempotencyKey | None:
        return await self.session.get(IdempotencyKey, (team_id, key))

    async def delete_idempotency_key(self, team_id: str, key: str) -> None:
        await self.session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.team_id == team_id, IdempotencyKey.key == key
            )
        )

    async def delete_expired_idempotency_keys(self, now: datetime) -> None:
        await self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
