"""The task lifecycle: states and the one table of legal transitions.

``pending`` (accepted) → ``waiting`` (no eligible agent yet) → ``queued`` (sent to an agent,
waiting for its ACK) → ``running`` → ``completed`` | ``failed`` | ``cancelled``.
Terminal states absorb: nothing leaves them. Every change of ``task_status`` anywhere in
Runyard is checked against ``TRANSITIONS``.
"""

from __future__ import annotations

from enum import StrEnum

from runyard.domain.errors import Conflict

# Re-exported: declared with every other limit (services/tasks.py imports it from here).
from runyard.domain.limits import MAX_RUNS_PER_REQUEST as MAX_RUNS_PER_REQUEST


class TaskStatus(StrEnum):
    PENDING = "pending"
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
ACTIVE = frozenset(set(TaskStatus) - TERMINAL)

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    # The scheduler may find an agent at once (pending → queued) or fail a task it cannot
    # ever run (pending → failed, e.g. a cloud dispatch with no cloud key).
    TaskStatus.PENDING: frozenset(
        {TaskStatus.WAITING, TaskStatus.QUEUED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.WAITING: frozenset({TaskStatus.QUEUED, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    # queued → waiting: the agent never acknowledged (ACK timeout) or vanished; retry.
    TaskStatus.QUEUED: frozenset(
        {TaskStatus.RUNNING, TaskStatus.WAITING, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    # running → waiting: the attempt failed and the task is retried.
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.WAITING, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


class IllegalTransition(Conflict):
    def __init__(self, current: TaskStatus, target: TaskStatus) -> None:
        super().__init__(f"task cannot go from {current.value} to {target.value}")
        self.current = current
        self.target = target


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: TaskStatus, target: TaskStatus) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(current, target)


class TaskSource(StrEnum):
    #: A person through a session (the dashboard) or a paired device.
    JWT = "jwt"
    #: A script with an integration key (sk-).
    API_KEY = "api_key"


class DispatchTarget(StrEnum):
    AGENT = "agent"
    COMFY_CLOUD = "comfy_cloud"


class TargetPool(StrEnum):
    TEAM = "team"
    COMMUNITY = "community"


class ToolType(StrEnum):
    COMFYUI = "comfyui"
    NERFSTUDIO = "nerfstudio"
