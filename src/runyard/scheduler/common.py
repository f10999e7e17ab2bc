"""Names and small values shared by the scheduler's parts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from runyard.scheduler.index import WaitingTask
from runyard.services.tasks import SUBMITTED as SUBMITTED

TASK_READY = "task_ready"
#: ``session.info`` key: ``(Claimed, AgentConnection)`` of tasks claimed in their submit's
#: transaction (see ``Dispatching._claim_at_submit``).
CLAIMED_AT_SUBMIT = "claimed_at_submit"
AGENT_COMMAND = "agent_command"
#: Tasks moved ``pending → waiting`` per transaction (and per dispatch round).
MARK_WAITING_BATCH = 200
#: Rows per page when the waiting index is rebuilt from the database: a page must never hold
#: the event loop for long (10,000 waiting tasks in pages of 2,000 full rows held it
#: 110 to 140 ms a page).
RELOAD_PAGE = 500


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class WaitingFields(Protocol):
    """What the index needs of a task (a ``Task`` row or a ``WaitingRow``)."""

    @property
    def id(self) -> str: ...
    @property
    def team_id(self) -> str: ...
    @property
    def target_pool(self) -> str: ...
    @property
    def required_labels(self) -> list[str]: ...
    @property
    def priority(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def not_before(self) -> datetime | None: ...


def waiting_entry(task: WaitingFields) -> WaitingTask:
    return WaitingTask(
        task_id=task.id,
        team_id=task.team_id,
        pool=task.target_pool,
        labels=frozenset(task.required_labels),
        priority=task.priority,
        created_at=task.created_at,
        not_before=task.not_before,
    )


@dataclass
class AttemptEnd:
    """What happened to an attempt that ended without completing."""

    error: str
    retryable: bool
    outcome: str  # failed | lost | timed_out | abandoned | cancelled
