"""The scheduler of one server process (one gateway).

It dispatches waiting tasks to the agents connected *here*, follows their attempts, and
recovers tasks whose attempts were lost anywhere:

* **Dispatch** (``dispatch.py``) runs on wake-ups (task submitted or re-queued, slot freed,
  agent connected or idle) and on a slow sweep. A dispatch round claims one task for each
  agent with a free slot in one write transaction: each claim is a conditional update that
  moves the task to ``queued`` with a new attempt number; on PostgreSQL the row is locked with
  ``SKIP LOCKED`` so replicas never claim the same task.
* **Frames** (``frames.py``): ACKs, progress, results. ACKs and completions of many agents
  share one transaction (``batch.py``, group commit).
* **Leases** (``upkeep.py``): a queued attempt must be acknowledged within ``ack_timeout``; a
  running one is renewed in the database in batches every ``lease_ttl / 3`` while its agent
  heartbeats (never once per heartbeat). A lapsed lease ends the attempt: an agent gone, a
  server killed — after a restart the reaper finds every expired lease and re-queues the task.
* **Fencing**: every message about a task carries ``(task_id, attempt)``; anything from an
  attempt that is not the task's current one is refused and the agent is told to abort it.
* **Retries** with capped exponential backoff while ``retry_count < max_retries``, unless the
  failure is not retryable; then ``failed`` with an error saying what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import timedelta

from runyard.context import ServiceContext
from runyard.domain.tasks import TaskStatus
from runyard.events.bus import Bus
from runyard.gateway.connection import AgentConnection, AttemptState
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.scheduler.common import (
    AGENT_COMMAND,
    MARK_WAITING_BATCH,
    TASK_READY,
    AttemptEnd,
    waiting_entry,
)
from runyard.scheduler.dispatch import Dispatching
from runyard.scheduler.frames import FrameHandling
from runyard.scheduler.upkeep import Upkeep
from runyard.store.agents import AgentRepos
from runyard.store.work import WorkRepos

__all__ = [
    "AGENT_COMMAND",
    "MARK_WAITING_BATCH",
    "TASK_READY",
    "AttemptEnd",
    "Scheduler",
    "waiting_entry",
]

log = get_logger("runyard.scheduler")


class Scheduler(Dispatching, FrameHandling, Upkeep):
    def __init__(self, ctx: ServiceContext, bus: Bus, gateway_id: str | None = None) -> None:
        super().__init__(ctx, bus, gateway_id)
        bus.subscribe(TASK_READY, self._on_task_ready)
        bus.subscribe(AGENT_COMMAND, self._on_agent_command)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            agents = AgentRepos(session)
            await agents.touch_gateway(self.gateway_id, now)
            # While this server was down nobody could renew leases. Give agents one lease
            # period to reconnect and report their attempts before they count as lost, so a
            # restart resumes work instead of running it twice.
            extended = await agents.extend_all_leases(
                now + timedelta(seconds=self.settings.lease_ttl_seconds)
            )
        if extended:
            log.info("leases_extended_after_start", attempts=extended)
        # First: the dispatcher hears of a new task before anything is announced elsewhere
        # (on PostgreSQL each announcement is a round trip).
        self.ctx.db.after_commit.insert(0, self._after_commit)
        # Before the app's hook that sends the transaction's messages.
        self.ctx.db.before_commit.insert(0, self._before_commit)
        self.ctx.db.after_rollback.append(self._rolled_back)
        await self.reload_waiting()
        for loop in (self._dispatch_loop, self._reaper_loop, self._lease_loop, self._sweep_loop):
            self._loops.append(asyncio.create_task(loop(), name=loop.__name__))
        log.info("scheduler_started", gateway_id=self.gateway_id, waiting=len(self.index))

    async def stop(self) -> None:
        for conn in list(self.connections.values()):
            conn.close(v1.CLOSE_SHUTDOWN, "server restarting")
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        timers = list(self._progress_timers.values())
        for timer in timers:
            timer.cancel()  # a held progress tick is not worth delaying a stop
        await asyncio.gather(*timers, return_exceptions=True)
        await self.commits.stop()
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(ValueError):
            self.ctx.db.after_commit.remove(self._after_commit)
        with contextlib.suppress(ValueError):
            self.ctx.db.before_commit.remove(self._before_commit)
        with contextlib.suppress(ValueError):
            self.ctx.db.after_rollback.remove(self._rolled_back)
        with contextlib.suppress(Exception):
            async with self.ctx.db.write() as session:
                await AgentRepos(session).forget_gateway(self.gateway_id)

    # -- agents ----------------------------------------------------------------------------

    async def agent_connected(
        self, conn: AgentConnection
    ) -> tuple[list[v1.AttemptRef], list[v1.AttemptRef]]:
        """Register an agent; decide keep/abort for the attempts it says it still runs."""
        previous = self.connections.get(conn.key)
        if previous is not None and previous is not conn:
            previous.close(v1.CLOSE_REPLACED, "replaced by a new connection of the same agent")
        self.connections[conn.key] = conn
        now = self.ctx.now()
        keep: list[v1.AttemptRef] = []
        abort: list[v1.AttemptRef] = []
        hello = conn.hello
        async with self.ctx.db.write() as session:
            row = await AgentRepos(session).connected_row(conn.team_id, conn.agent_id)
            row.gateway_id = self.gateway_id
            row.credential_id = conn.credential_id
            row.agent_status = conn.status
            row.labels = sorted(conn.labels)
            row.pools = sorted(conn.pools)
            row.gpu_capacity = conn.capacity
            row.agent_version = hello.agent_version
            row.tool = hello.tool
            row.tool_version = hello.tool_version
            row.comfyui_version = hello.comfyui_version
            row.platform_arch = hello.platform_arch
            row.system_stats = hello.system_stats.model_dump()
            row.sync_phase = row.sync_detail = None
            row.sync_percent = None
            row.connected_at = now
            row.last_heartbeat = now
            repos = WorkRepos(session)
            for ref in hello.running:
                task = await repos.task_for_update(ref.task_id)
                if (
                    task is not None
                    and task.agent_id == conn.agent_id
                    and task.attempt == ref.attempt
                    and task.task_status in (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
                    and (task.team_id == conn.team_id or task.target_pool == "community")
                ):
                    keep.append(ref)
                    task.gateway_id = self.gateway_id
                    state = AttemptState(ref.task_id, ref.attempt, task_timeout=task.task_timeout)
                    if task.task_status == TaskStatus.RUNNING.value:
                        state.acked_at = time.monotonic()
                        task.lease_expires_at = now + timedelta(
                            seconds=self.settings.lease_ttl_seconds
                        )
                    conn.attempts[(ref.task_id, ref.attempt)] = state
                else:
                    abort.append(ref)
        log.info(
            "agent_connected",
            agent_id=conn.agent_id,
            team_id=conn.team_id,
            labels=sorted(conn.labels),
            capacity=conn.capacity,
            kept=len(keep),
            aborted=len(abort),
        )
        self.wake()
        return keep, abort

    async def agent_disconnected(self, conn: AgentConnection) -> None:
        """Its attempts are kept until their leases lapse: it may come back in time."""
        if self.connections.get(conn.key) is conn:
            del self.connections[conn.key]
            with contextlib.suppress(Exception):
                async with self.ctx.db.write() as session:
                    # Asked again once the write is ours: a new connection of the same agent
                    # (a quick reconnect) may have registered while this one waited, and its
                    # row must stay listed.
                    await session.connection()
                    if conn.key not in self.connections:
                        await AgentRepos(session).disconnect(
                            conn.team_id, conn.agent_id, self.gateway_id
                        )
        log.info("agent_disconnected", agent_id=conn.agent_id, team_id=conn.team_id)

    # -- the services' notifier ----------------------------------------------------------------

    async def task_submitted(self, task_id: str) -> None:
        if task_id in self._announced:
            self._announced.discard(task_id)  # sent with the submit's commit
            return
        await self.announce_ready(task_id)

    async def task_cancelled(
        self, task_id: str, team_id: str, agent_id: str | None, attempt: int
    ) -> None:
        await self.send_cancel(task_id, team_id, agent_id, attempt, "cancelled")

    # -- commands to agents (cancel, timeout) -------------------------------------------------

    async def _on_agent_command(self, payload: str) -> None:
        command = json.loads(payload)
        task_id = command["task_id"]
        self._index_remove(task_id)
        conn = self.connections.get((command.get("team_id", ""), command.get("agent_id", "")))
        if conn is None:
            # Community tasks run on agents of other teams.
            conn = next(
                (c for c in self.connections.values() if c.agent_id == command.get("agent_id")),
                None,
            )
        if conn is None or command.get("op") != "cancel":
            return
        attempt = int(command.get("attempt", 0))
        state = conn.attempts.get((task_id, attempt))
        if state is not None:
            state.stopping = True
        conn.send(
            v1.Cancel(task_id=task_id, attempt=attempt, reason=command.get("reason", "cancelled"))
        )
