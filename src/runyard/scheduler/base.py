"""The scheduler's shared state and the steps its parts share (see ``core.Scheduler``)."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from runyard.context import ServiceContext
from runyard.domain.retry import backoff_seconds, should_retry
from runyard.domain.tasks import TaskStatus
from runyard.events.bus import Bus
from runyard.gateway.connection import AgentConnection
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.scheduler.batch import GroupCommit
from runyard.scheduler.common import AGENT_COMMAND, TASK_READY, AttemptEnd
from runyard.scheduler.index import WaitingIndex, WaitingTask
from runyard.store.agents import AgentRepos
from runyard.store.tables import Task
from runyard.store.work import WorkRepos

log = get_logger("runyard.scheduler")


class SchedulerBase:
    def __init__(self, ctx: ServiceContext, bus: Bus, gateway_id: str | None = None) -> None:
        self.ctx = ctx
        self.bus = bus
        self.settings = ctx.settings.scheduler
        self.gateway_id = gateway_id or f"gw-{secrets.token_hex(4)}"
        self.index = WaitingIndex()
        self.connections: dict[tuple[str, str], AgentConnection] = {}
        #: Tasks seen as ``pending`` that this process has not placed yet.
        self._pending: set[str] = set()
        #: Tasks indexed from memory at their submit's commit: their announcement on the bus
        #: (which follows) needs no read.
        self._submitted_here: set[str] = set()
        #: Tasks whose submit announced them inside its transaction (transactional bus):
        #: ``task_submitted`` after the commit has nothing left to send.
        self._announced: set[str] = set()
        #: Agents (by key) with claims of a dispatch round in flight: slots not free to
        #: the claim at submit until those commit.
        self._claiming: dict[tuple[str, str], int] = {}
        #: While the index is rebuilt: what changed in the live index meanwhile (task id →
        #: the entry added, or ``None`` when removed), replayed onto the rebuilt one.
        self._journal: dict[str, WaitingTask | None] | None = None
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        #: Fire-and-forget work (announcements) kept referenced until done.
        self._background: set[asyncio.Task[None]] = set()
        self._rotation = 0
        self._progress_last: dict[str, float] = {}
        self._progress_pending: dict[tuple[str, int], v1.Progress] = {}
        #: Attempts with a held tick and a timer that writes it when the interval ends.
        self._progress_timers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self.commits = GroupCommit(ctx.db, workers=1 if ctx.db.is_sqlite else 4)

    def wake(self) -> None:
        self._wake.set()

    async def reload_waiting(self) -> None:
        """Rebuild the waiting index from the database (see ``Dispatching``)."""
        raise NotImplementedError

    # -- the waiting index (every change goes through here: see reload_waiting) ----------

    def _index_add(self, entry: WaitingTask) -> None:
        self.index.add(entry, self.ctx.now())
        if self._journal is not None:
            self._journal[entry.task_id] = entry

    def _index_remove(self, task_id: str) -> None:
        self.index.remove(task_id)
        self._pending.discard(task_id)
        if self._journal is not None:
            self._journal[task_id] = None

    # -- announcements ---------------------------------------------------------------------

    async def announce_ready(self, task_id: str) -> None:
        """A task (re)entered the queue: every replica's dispatcher hears of it."""
        await self.bus.publish(TASK_READY, task_id)

    async def send_cancel(
        self, task_id: str, team_id: str, agent_id: str | None, attempt: int, reason: str
    ) -> None:
        """Tell whichever replica holds the agent to abort this attempt."""
        payload = json.dumps(
            {
                "op": "cancel",
                "task_id": task_id,
                "team_id": team_id,
                "agent_id": agent_id or "",
                "attempt": attempt,
                "reason": reason,
            }
        )
        await self.bus.publish(AGENT_COMMAND, payload)

    # -- ending attempts -------------------------------------------------------------------

    async def end_attempt(self, session: AsyncSession, task: Task, end: AttemptEnd) -> bool:
        """Close the task's current attempt: back to waiting for a retry, or failed.

        Returns whether the task waits again; the caller announces it after committing.
        """
        now = self.ctx.now()
        repos = WorkRepos(session)
        await AgentRepos(session).end_attempt_row(
            task.id, task.attempt, now, end.outcome, end.error
        )
        cleared: dict[str, Any] = {
            "agent_id": None,
            "agent_labels": None,
            "gateway_id": None,
            "gpu_type": None,
            "lease_expires_at": None,
            "deadline_at": None,
        }
        if end.outcome == "abandoned":
            # Never acknowledged: it never ran, so it is not a retry.
            await repos.change_status(
                task, TaskStatus.WAITING, now, extra={"reason": end.error}, **cleared
            )
            requeue = True
        elif should_retry(task.retry_count, task.max_retries, end.retryable):
            retry = task.retry_count + 1
            delay = backoff_seconds(
                retry,
                base=self.settings.retry_backoff_base_seconds,
                cap=self.settings.retry_backoff_cap_seconds,
            )
            await repos.change_status(
                task,
                TaskStatus.WAITING,
                now,
                extra={"reason": f"retrying: {end.error}", "retry_count": retry},
                retry_count=retry,
                not_before=now + timedelta(seconds=delay),
                **cleared,
            )
            requeue = True
        else:
            attempts = task.attempt
            error = end.error if attempts <= 1 else f"{end.error} (attempt {attempts})"
            await repos.change_status(
                task,
                TaskStatus.FAILED,
                now,
                task_error=error,
                lease_expires_at=None,
                deadline_at=None,
            )
            requeue = False
        log.info(
            "attempt_ended",
            task_id=task.id,
            attempt=task.attempt,
            outcome=end.outcome,
            error=end.error,
            requeued=requeue,
        )
        return requeue
