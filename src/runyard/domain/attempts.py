"""Attempts: the rules the engine and every store implementation share.

A task runs as a sequence of attempts. An agent may act on an attempt only while it *holds*
it: the attempt is the task's current one, dispatched to this agent, and the task is queued
or running (fencing). When an attempt ends without completing, :func:`plan_end` decides
whether the task waits for a retry or fails. Both are pure, so the SQL store, the in-memory
store and the engine apply exactly the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from runyard.domain.limits import MAX_UNSTARTED_DISPATCHES
from runyard.domain.retry import backoff_seconds, should_retry
from runyard.domain.tasks import TaskStatus

#: Statuses in which an agent holds the task's attempt (claimed, or running).
HELD = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})
#: Statuses in which a task waits for an agent.
WAITING = frozenset({TaskStatus.PENDING, TaskStatus.WAITING})
#: Log lines are kept in any status short of the end; progress only while running.
LOG_STATUSES = frozenset({*WAITING, *HELD})
PROGRESS_STATUSES = frozenset({TaskStatus.RUNNING})


@dataclass(frozen=True)
class AgentKey:
    """An agent as the engine knows it: its team and its id within the team."""

    team_id: str
    agent_id: str


@dataclass(frozen=True)
class TaskState:
    """What the fencing and retry rules read of a task (a snapshot, never written back)."""

    id: str
    team_id: str
    status: TaskStatus
    attempt: int
    agent_id: str | None
    target_pool: str
    retry_count: int = 0
    max_retries: int = 0
    task_timeout: int | None = None
    lease_expires_at: datetime | None = None
    deadline_at: datetime | None = None


class Verdict(StrEnum):
    """What a message about an attempt may do."""

    #: The agent holds the attempt: go ahead.
    HOLDS = "holds"
    #: Not this agent's current attempt (or no such task): refuse it, tell the agent to abort.
    STALE = "stale"
    #: The agent's attempt, but the task has ended (or is not held any more).
    ENDED = "ended"


def owns(task: TaskState | None, task_id: str, attempt: int, agent: AgentKey) -> bool:
    """Whether ``attempt`` is the task's current attempt and was dispatched to ``agent``.

    An agent runs its own team's tasks and community tasks of any team."""
    return (
        task is not None
        and task.id == task_id
        and task.attempt == attempt
        and task.agent_id == agent.agent_id
        and (task.team_id == agent.team_id or task.target_pool == "community")
    )


def verdict(task: TaskState | None, task_id: str, attempt: int, agent: AgentKey) -> Verdict:
    if task is None or not owns(task, task_id, attempt, agent):
        return Verdict.STALE
    return Verdict.HOLDS if task.status in HELD else Verdict.ENDED


class Outcome(StrEnum):
    """How an attempt ended (``task_attempts.outcome``)."""

    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "lost"
    TIMED_OUT = "timed_out"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class AttemptEnd:
    """What happened to an attempt that ended without completing."""

    error: str
    retryable: bool
    outcome: Outcome
    #: Tell the agent to stop the attempt, with this reason (a timeout, a missing ACK).
    stop: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    backoff_base_seconds: float = 2.0
    backoff_cap_seconds: float = 300.0


@dataclass(frozen=True)
class EndPlan:
    """The transition :func:`plan_end` chose: the target status and the task's new fields."""

    target: TaskStatus
    fields: dict[str, Any]
    event: dict[str, Any] = field(default_factory=dict)

    @property
    def requeued(self) -> bool:
        return self.target is TaskStatus.WAITING


#: What a task that leaves its agent forgets of it.
_RELEASED: dict[str, Any] = {
    "agent_id": None,
    "agent_labels": None,
    "gateway_id": None,
    "gpu_type": None,
    "lease_expires_at": None,
    "deadline_at": None,
}


def plan_end(task: TaskState, end: AttemptEnd, policy: RetryPolicy, now: datetime) -> EndPlan:
    """Back to waiting for a retry (with backoff), or failed with an error saying why.

    An attempt that was never acknowledged (``abandoned``) never ran: it is not a retry — but a
    task whose dispatches keep ending that way (an agent that drops it every time) fails after
    ``MAX_UNSTARTED_DISPATCHES`` instead of going round forever."""
    if end.outcome is Outcome.ABANDONED:
        # Every attempt that was neither a retry nor the first one ended unstarted.
        unstarted = task.attempt - task.retry_count
        if unstarted < MAX_UNSTARTED_DISPATCHES:
            return EndPlan(TaskStatus.WAITING, dict(_RELEASED), {"reason": end.error})
        error = f"{end.error} ({unstarted} dispatches of this task never started)"
        return EndPlan(
            TaskStatus.FAILED,
            {"task_error": error, "lease_expires_at": None, "deadline_at": None},
        )
    if should_retry(task.retry_count, task.max_retries, end.retryable):
        retry = task.retry_count + 1
        delay = backoff_seconds(
            retry, base=policy.backoff_base_seconds, cap=policy.backoff_cap_seconds
        )
        return EndPlan(
            TaskStatus.WAITING,
            {**_RELEASED, "retry_count": retry, "not_before": now + timedelta(seconds=delay)},
            {"reason": f"retrying: {end.error}", "retry_count": retry},
        )
    error = end.error if task.attempt <= 1 else f"{end.error} (attempt {task.attempt})"
    return EndPlan(
        TaskStatus.FAILED,
        {"task_error": error, "lease_expires_at": None, "deadline_at": None},
    )


@dataclass(frozen=True)
class WaitingTask:
    """A task waiting for an agent, as the dispatcher's index holds it (no graph, no
    parameters)."""

    task_id: str
    team_id: str
    pool: str
    labels: frozenset[str]
    priority: int
    created_at: datetime
    not_before: datetime | None = None
    #: Still ``pending`` (not yet told it waits for an eligible agent).
    pending: bool = False

    @property
    def group(self) -> tuple[str, str, frozenset[str]]:
        return (self.pool, self.team_id, self.labels)

    @property
    def rank(self) -> tuple[int, datetime, str]:
        return (-self.priority, self.created_at, self.task_id)


@dataclass(frozen=True)
class Claimed:
    """A task just moved to ``queued`` for an agent: what its ``dispatch`` frame needs."""

    id: str
    team_id: str
    attempt: int
    event_seq: int
    workflow_id: str
    tool_type: str
    workflow_json: dict[str, Any]
    parameters: dict[str, Any]
    task_timeout: int
    agent: AgentKey


@dataclass(frozen=True)
class Stop:
    """An attempt its agent (if any) must stop: the task was cancelled, or the attempt timed
    out or was never acknowledged (the task may be queued again)."""

    task_id: str
    team_id: str
    agent_id: str | None
    attempt: int
    reason: str
    #: The task ended (cancelled): every server drops it from its index too.
    ended: bool = False
