"""The scheduler of one server process (one gateway).

It dispatches waiting tasks to the agents connected *here*, follows their attempts, and
recovers tasks whose attempts were lost anywhere:

* **Dispatch** runs on wake-ups (task submitted or re-queued, slot freed, agent connected or
  idle) and on a slow sweep. A claim is a short write transaction that moves the task to
  ``queued`` with a new attempt number; on PostgreSQL the row is locked with ``SKIP LOCKED``
  so replicas never claim the same task.
* **Leases**: a queued attempt must be acknowledged within ``ack_timeout``; a running one is
  renewed in the database in batches every ``lease_ttl / 3`` while its agent heartbeats (never
  once per heartbeat). A lapsed lease ends the attempt: an agent gone, a server killed — after
  a restart the reaper finds every expired lease and re-queues the task.
* **Fencing**: every message about a task carries ``(task_id, attempt)``; anything from an
  attempt that is not the task's current one is refused and the agent is told to abort it.
* **Retries** with capped exponential backoff while ``retry_count < max_retries``, unless the
  failure is not retryable; then ``failed`` with an error saying what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from runyard.domain.retry import backoff_seconds, should_retry
from runyard.domain.tasks import TaskStatus
from runyard.events.bus import Bus
from runyard.gateway.connection import AgentConnection, AttemptState
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.scheduler.index import WaitingIndex, WaitingTask
from runyard.services import files
from runyard.services.context import ServiceContext
from runyard.store.agents import AgentRepos
from runyard.store.tables import Agent, Task, TaskAttempt
from runyard.store.work import WorkRepos

log = get_logger("runyard.scheduler")

TASK_READY = "task_ready"
#: Tasks moved ``pending → waiting`` per transaction (and per dispatch round).
MARK_WAITING_BATCH = 200
AGENT_COMMAND = "agent_command"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def waiting_entry(task: Task) -> WaitingTask:
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


class Scheduler:
    def __init__(self, ctx: ServiceContext, bus: Bus, gateway_id: str | None = None) -> None:
        self.ctx = ctx
        self.bus = bus
        self.settings = ctx.settings.scheduler
        self.gateway_id = gateway_id or f"gw-{secrets.token_hex(4)}"
        self.index = WaitingIndex()
        self.connections: dict[tuple[str, str], AgentConnection] = {}
        #: Tasks seen as ``pending`` that this process has not placed yet.
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._rotation = 0
        self._progress_last: dict[str, float] = {}
        self._progress_pending: dict[tuple[str, int], v1.Progress] = {}
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
        with contextlib.suppress(Exception):
            async with self.ctx.db.write() as session:
                await AgentRepos(session).forget_gateway(self.gateway_id)

    def wake(self) -> None:
        self._wake.set()

    # -- the waiting index -----------------------------------------------------------------

    async def reload_waiting(self) -> None:
        """Rebuild the index from the database (start, and the periodic safety net)."""
        fresh = WaitingIndex()
        fresh._community_next = self.index._community_next
        pending: set[str] = set()
        now = self.ctx.now()
        after = ""
        while True:
            async with self.ctx.db.read() as session:
                rows = await AgentRepos(session).waiting_tasks(limit=2000, after=after)
            for task in rows:
                fresh.add(waiting_entry(task), now)
                if task.task_status == TaskStatus.PENDING.value:
                    pending.add(task.id)
            if len(rows) < 2000:
                break
            after = rows[-1].id
        self.index = fresh
        self._pending = pending
        self.wake()

    async def _on_task_ready(self, task_id: str) -> None:
        async with self.ctx.db.read() as session:
            task = await session.get(Task, task_id)
        if task is None or task.dispatch_target != "agent":
            return
        if task.task_status not in (TaskStatus.PENDING.value, TaskStatus.WAITING.value):
            self.index.remove(task_id)
            return
        self.index.add(waiting_entry(task), self.ctx.now())
        if task.task_status == TaskStatus.PENDING.value:
            self._pending.add(task.id)
        self.wake()

    # -- dispatch --------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            due = self.index.next_due()
            timeout = None
            if due is not None:
                timeout = max(0.0, (due - self.ctx.now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self.dispatch_round()
            except Exception:
                log.exception("dispatch_round_failed")
                await asyncio.sleep(0.5)

    async def dispatch_round(self) -> None:
        self.index.promote_due(self.ctx.now())
        progressed = True
        while progressed and len(self.index):
            progressed = False
            conns = [c for c in self.connections.values() if c.free_slots() > 0]
            if not conns:
                break
            # Rotate the starting agent so equal agents share the work.
            self._rotation = (self._rotation + 1) % len(conns)
            for conn in conns[self._rotation :] + conns[: self._rotation]:
                if conn.free_slots() <= 0:
                    continue
                entry = self.index.best_for(conn.slot())
                if entry is None:
                    continue
                self.index.remove(entry.task_id)
                self._pending.discard(entry.task_id)
                if await self._claim(entry, conn):
                    progressed = True
        await self._mark_waiting()

    async def _claim(self, entry: WaitingTask, conn: AgentConnection) -> bool:
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            agents = AgentRepos(session)
            task = await agents.task_for_claim(entry.task_id)
            if task is None or task.task_status not in (
                TaskStatus.PENDING.value,
                TaskStatus.WAITING.value,
            ):
                return False
            if task.not_before is not None and task.not_before > now:
                self.index.add(waiting_entry(task), now)
                return False
            attempt = task.attempt + 1
            await WorkRepos(session).change_status(
                task,
                TaskStatus.QUEUED,
                now,
                extra={"agent_id": conn.agent_id, "attempt": attempt},
                attempt=attempt,
                agent_id=conn.agent_id,
                agent_labels=sorted(conn.labels),
                gateway_id=self.gateway_id,
                gpu_type=conn.gpu_type,
                lease_expires_at=now + timedelta(seconds=self.settings.ack_timeout_seconds),
                deadline_at=None,
                not_before=None,
            )
            session.add(
                TaskAttempt(
                    task_id=task.id,
                    attempt=attempt,
                    agent_id=conn.agent_id,
                    gateway_id=self.gateway_id,
                    dispatched_at=now,
                )
            )
            frame = v1.Dispatch(
                task_id=task.id,
                attempt=attempt,
                workflow_id=task.workflow_id,
                tool_type=task.tool_type,
                workflow=task.workflow_json,
                parameters=task.parameters,
                timeout=task.task_timeout,
            )
        inputs = await files.dispatch_inputs(self.ctx, task)
        if inputs:
            frame = frame.model_copy(update={"inputs": inputs})
        conn.attempts[(frame.task_id, attempt)] = AttemptState(frame.task_id, attempt)
        conn.send(frame)
        log.info("task_dispatched", task_id=frame.task_id, attempt=attempt, agent_id=conn.agent_id)
        return True

    async def _mark_waiting(self) -> None:
        """Tasks this process could not place at once: ``pending → waiting``, saying why.

        At most ``MARK_WAITING_BATCH`` per round, each batch its own short transaction: a
        large backlog (a restart with thousands of pending tasks) must neither hold the
        write lock for seconds nor keep the dispatcher from dispatching meanwhile.
        """
        if not self._pending:
            return
        ids = [t for t in self._pending if t in self.index]
        self._pending = set(ids[MARK_WAITING_BATCH:])
        ids = ids[:MARK_WAITING_BATCH]
        if self._pending:
            self.wake()  # the rest in the next rounds
        if not ids:
            return
        now = self.ctx.now()
        moved: list[str] = []
        async with self.ctx.db.write() as session:
            repos = WorkRepos(session)
            for task_id in ids:
                task = await repos.task_for_update(task_id)
                if task is None or task.task_status != TaskStatus.PENDING.value:
                    continue
                await repos.change_status(
                    task, TaskStatus.WAITING, now, extra={"reason": "waiting for eligible agent"}
                )
                moved.append(task_id)
        # Another replica may have skipped these rows while we held them locked (and dropped
        # them from its index): announce them again so every replica can place them.
        if not self.ctx.db.is_sqlite:
            for task_id in moved:
                await self.announce_ready(task_id)

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
            row = await AgentRepos(session).agent(conn.team_id, conn.agent_id)
            if row is None:
                row = Agent(team_id=conn.team_id, agent_id=conn.agent_id, tasks_completed=0)
                session.add(row)
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
                    state = AttemptState(ref.task_id, ref.attempt)
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
                    await AgentRepos(session).disconnect(
                        conn.team_id, conn.agent_id, self.gateway_id
                    )
        log.info("agent_disconnected", agent_id=conn.agent_id, team_id=conn.team_id)

    async def handle(self, conn: AgentConnection, frame: Any) -> None:
        """One frame from an agent, in the order the agent sent them."""
        conn.last_seen = time.monotonic()
        if isinstance(frame, v1.Heartbeat):
            await self._heartbeat(conn, frame)
        elif isinstance(frame, v1.StatusUpdate):
            await self._status(conn, frame)
        elif isinstance(frame, v1.Ack):
            await self._ack(conn, frame)
        elif isinstance(frame, v1.Progress):
            await self._progress(conn, frame)
        elif isinstance(frame, v1.Log):
            await self._log(conn, frame)
        elif isinstance(frame, v1.Complete):
            await self._complete(conn, frame)
        elif isinstance(frame, v1.Fail):
            outcome = "abandoned" if frame.handback else "failed"
            await self._attempt_failed(
                conn, frame, AttemptEnd(frame.error, frame.retryable, outcome)
            )
        elif isinstance(frame, v1.Cancelled):
            await self._cancelled(conn, frame)
        elif isinstance(frame, v1.UploadRequest):
            await self._upload_request(conn, frame)
        elif isinstance(frame, v1.Hello):
            conn.send(v1.Error(message="hello was already received"))

    async def _heartbeat(self, conn: AgentConnection, frame: v1.Heartbeat) -> None:
        now = self.ctx.now()
        conn.last_heartbeat_at = now
        if frame.system_stats is not None:
            conn.system_stats = frame.system_stats
        reported = {(r.task_id, r.attempt) for r in frame.running}
        grace = self.settings.heartbeat_interval_seconds
        for key, state in list(conn.attempts.items()):
            if key in reported:
                continue
            if state.stopping:
                # Cancelled or timed out, and the agent no longer runs it: slot free.
                del conn.attempts[key]
                self.wake()
            elif state.acked_at is not None and time.monotonic() - state.acked_at > grace:
                ref = v1.AttemptRef(task_id=key[0], attempt=key[1])
                await self._attempt_failed(
                    conn,
                    ref,
                    AttemptEnd("the agent no longer runs this attempt", True, "lost"),
                )

    async def _status(self, conn: AgentConnection, frame: v1.StatusUpdate) -> None:
        conn.status = frame.agent_status
        conn.sync_phase = frame.sync_phase
        conn.sync_detail = frame.sync_detail
        conn.sync_percent = frame.sync_percent
        async with self.ctx.db.write() as session:
            row = await AgentRepos(session).agent(conn.team_id, conn.agent_id)
            if row is not None:
                row.agent_status = frame.agent_status
                row.sync_phase = frame.sync_phase
                row.sync_detail = frame.sync_detail
                row.sync_percent = frame.sync_percent
        if frame.agent_status == "idle":
            self.wake()

    def _refuse_stale(self, conn: AgentConnection, ref: v1.AttemptRef, why: str) -> None:
        conn.attempts.pop((ref.task_id, ref.attempt), None)
        conn.send(v1.Cancel(task_id=ref.task_id, attempt=ref.attempt, reason=why))
        log.warning(
            "stale_attempt_refused",
            task_id=ref.task_id,
            attempt=ref.attempt,
            agent_id=conn.agent_id,
            reason=why,
        )

    def _owns(self, conn: AgentConnection, task: Task | None, ref: v1.AttemptRef) -> bool:
        return (
            task is not None
            and task.attempt == ref.attempt
            and task.agent_id == conn.agent_id
            and (task.team_id == conn.team_id or task.target_pool == "community")
        )

    async def _ack(self, conn: AgentConnection, ref: v1.Ack) -> None:
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            repos = WorkRepos(session)
            task = await repos.task_for_update(ref.task_id)
            if not self._owns(conn, task, ref):
                self._refuse_stale(conn, ref, "stale attempt")
                return
            assert task is not None
            if task.task_status == TaskStatus.RUNNING.value:
                return  # a repeated ACK
            if task.task_status != TaskStatus.QUEUED.value:
                self._refuse_stale(conn, ref, f"task is {task.task_status}")
                return
            await repos.change_status(
                task,
                TaskStatus.RUNNING,
                now,
                extra={"agent_id": conn.agent_id, "attempt": ref.attempt},
                started_at=now,
                lease_expires_at=now + timedelta(seconds=self.settings.lease_ttl_seconds),
                deadline_at=(
                    now + timedelta(seconds=task.task_timeout) if task.task_timeout else None
                ),
            )
            attempt = await AgentRepos(session).attempt(ref.task_id, ref.attempt)
            if attempt is not None:
                attempt.acked_at = now
        state = conn.attempts.get((ref.task_id, ref.attempt))
        if state is None:
            state = conn.attempts[(ref.task_id, ref.attempt)] = AttemptState(
                ref.task_id, ref.attempt
            )
        state.acked_at = time.monotonic()

    async def _progress(self, conn: AgentConnection, frame: v1.Progress) -> None:
        key = (frame.task_id, frame.attempt)
        if key not in conn.attempts:
            self._refuse_stale(conn, frame, "stale attempt")
            return
        # Coalesce: at most one progress event per task per interval; the latest tick wins.
        last = self._progress_last.get(frame.task_id, 0.0)
        if time.monotonic() - last < self.settings.progress_interval_seconds:
            self._progress_pending[key] = frame
            return
        self._progress_pending.pop(key, None)
        await self._write_progress(conn, frame)

    async def _write_progress(self, conn: AgentConnection, frame: v1.Progress) -> None:
        self._progress_last[frame.task_id] = time.monotonic()
        now = self.ctx.now()
        payload: dict[str, Any] = {"task_id": frame.task_id, "timestamp": _iso(now)}
        for name in ("progress", "current_node", "step_current", "step_total", "stage", "message"):
            value = getattr(frame, name)
            if value is not None:
                payload[name] = value
        async with self.ctx.db.write() as session:
            repos = WorkRepos(session)
            task = await repos.task_for_update(frame.task_id)
            if not self._owns(conn, task, frame) or task is None:
                self._refuse_stale(conn, frame, "stale attempt")
                return
            if task.task_status != TaskStatus.RUNNING.value:
                return
            await repos.add_event(task, "progress", payload, now)

    async def _flush_progress(self, conn: AgentConnection, ref: v1.AttemptRef) -> None:
        pending = self._progress_pending.pop((ref.task_id, ref.attempt), None)
        if pending is not None:
            await self._write_progress(conn, pending)
        self._progress_last.pop(ref.task_id, None)

    async def _log(self, conn: AgentConnection, frame: v1.Log) -> None:
        if (frame.task_id, frame.attempt) not in conn.attempts:
            self._refuse_stale(conn, frame, "stale attempt")
            return
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            repos = WorkRepos(session)
            task = await repos.task_for_update(frame.task_id)
            if task is None or not self._owns(conn, task, frame):
                return
            if TaskStatus(task.task_status).is_terminal:
                return
            await repos.add_event(
                task,
                "log",
                {"task_id": task.id, "lines": frame.lines[-200:], "timestamp": _iso(now)},
                now,
            )

    async def _complete(self, conn: AgentConnection, frame: v1.Complete) -> None:
        await self._flush_progress(conn, frame)
        # Checked against this attempt's upload links and storage; attached only if it wins.
        prepared = await files.prepare_outputs(self.ctx, frame)
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            repos = WorkRepos(session)
            task = await repos.task_for_update(frame.task_id)
            if not self._owns(conn, task, frame) or task is None:
                self._refuse_stale(conn, frame, "stale attempt")
                return
            status = TaskStatus(task.task_status)
            if status is TaskStatus.QUEUED:
                # Completed without an ACK: count it as started now.
                await repos.change_status(task, TaskStatus.RUNNING, now, started_at=now)
            elif status is not TaskStatus.RUNNING:
                self._refuse_stale(conn, frame, f"task is {task.task_status}")
                return
            await repos.change_status(
                task,
                TaskStatus.COMPLETED,
                now,
                task_output=prepared.task_output,
                lease_expires_at=None,
                deadline_at=None,
            )
            await files.attach_outputs(session, frame, prepared)
            agents = AgentRepos(session)
            attempt = await agents.attempt(frame.task_id, frame.attempt)
            if attempt is not None:
                attempt.ended_at = now
                attempt.outcome = "completed"
            await agents.count_completed(conn.team_id, conn.agent_id)
        conn.attempts.pop((frame.task_id, frame.attempt), None)
        log.info("task_completed", task_id=frame.task_id, attempt=frame.attempt)
        self.wake()

    async def _upload_request(self, conn: AgentConnection, frame: v1.UploadRequest) -> None:
        """Upload links for the outputs of the task's current attempt, and no other."""
        if (frame.task_id, frame.attempt) not in conn.attempts:
            self._refuse_stale(conn, frame, "stale attempt")
            return
        async with self.ctx.db.read() as session:
            task = await session.get(Task, frame.task_id)
        if not self._owns(conn, task, frame) or task is None:
            self._refuse_stale(conn, frame, "stale attempt")
            return
        if task.task_status not in (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value):
            self._refuse_stale(conn, frame, f"task is {task.task_status}")
            return
        conn.send(await files.output_links(self.ctx, frame))

    async def _cancelled(self, conn: AgentConnection, frame: v1.Cancelled) -> None:
        state = conn.attempts.pop((frame.task_id, frame.attempt), None)
        self.wake()
        async with self.ctx.db.read() as session:
            task = await session.get(Task, frame.task_id)
        if task is None or not self._owns(conn, task, frame):
            return
        if TaskStatus(task.task_status).is_terminal or (state is not None and state.stopping):
            await self._end_attempt_row(frame, "cancelled", None)
            return
        # The agent stopped on its own (shutting down, say): the attempt failed; retry it.
        await self._attempt_failed(
            conn, frame, AttemptEnd("the agent stopped the attempt", True, "failed")
        )

    async def _end_attempt_row(self, ref: v1.AttemptRef, outcome: str, error: str | None) -> None:
        async with self.ctx.db.write() as session:
            attempt = await AgentRepos(session).attempt(ref.task_id, ref.attempt)
            if attempt is not None and attempt.ended_at is None:
                attempt.ended_at = self.ctx.now()
                attempt.outcome = outcome
                attempt.error = error

    async def _attempt_failed(
        self, conn: AgentConnection | None, ref: v1.AttemptRef, end: AttemptEnd
    ) -> None:
        if conn is not None:
            await self._flush_progress(conn, ref)
            conn.attempts.pop((ref.task_id, ref.attempt), None)
        async with self.ctx.db.write() as session:
            task = await WorkRepos(session).task_for_update(ref.task_id)
            if task is None or task.attempt != ref.attempt:
                if conn is not None:
                    self._refuse_stale(conn, ref, "stale attempt")
                return
            if conn is not None and not self._owns(conn, task, ref):
                self._refuse_stale(conn, ref, "stale attempt")
                return
            if task.task_status not in (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value):
                return
            requeue = await self.end_attempt(session, task, end)
        if requeue:
            await self.announce_ready(ref.task_id)
        self.wake()

    async def end_attempt(self, session: Any, task: Task, end: AttemptEnd) -> bool:
        """Close the task's current attempt: back to waiting for a retry, or failed.

        Returns whether the task waits again; the caller announces it after committing.
        """
        now = self.ctx.now()
        repos = WorkRepos(session)
        attempt = await AgentRepos(session).attempt(task.id, task.attempt)
        if attempt is not None:
            attempt.ended_at = now
            attempt.outcome = end.outcome
            attempt.error = end.error
        cleared = {
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

    async def announce_ready(self, task_id: str) -> None:
        """A task (re)entered the queue: every replica's dispatcher hears of it."""
        await self.bus.publish(TASK_READY, task_id)

    # -- the services' notifier ----------------------------------------------------------------

    async def task_submitted(self, task_id: str) -> None:
        await self.announce_ready(task_id)

    async def task_cancelled(
        self, task_id: str, team_id: str, agent_id: str | None, attempt: int
    ) -> None:
        await self.send_cancel(task_id, team_id, agent_id, attempt, "cancelled")

    # -- commands to agents (cancel, timeout) -------------------------------------------------

    async def _on_agent_command(self, payload: str) -> None:
        command = json.loads(payload)
        task_id = command["task_id"]
        self.index.remove(task_id)
        self._pending.discard(task_id)
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

    # -- background loops -------------------------------------------------------------------

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_seconds)
            try:
                await self.reap()
            except Exception:
                log.exception("reaper_failed")

    async def reap(self) -> None:
        """End attempts whose ACK deadline, lease or task timeout has passed."""
        now = self.ctx.now()
        async with self.ctx.db.read() as session:
            expired = await AgentRepos(session).expired_leases(now)
        for stale in expired:
            cancel: tuple[str, str, str | None, int, str] | None = None
            requeue = False
            async with self.ctx.db.write() as session:
                task = await WorkRepos(session).task_for_update(stale.id)
                if task is None or task.attempt != stale.attempt:
                    continue
                status = TaskStatus(task.task_status)
                if status is TaskStatus.RUNNING and task.deadline_at and task.deadline_at < now:
                    end = AttemptEnd(f"timed out after {task.task_timeout} s", True, "timed_out")
                    cancel = (task.id, task.team_id, task.agent_id, task.attempt, "timed out")
                elif task.lease_expires_at is not None and task.lease_expires_at < now:
                    conn = self.connections.get((task.team_id, task.agent_id or ""))
                    held = conn is not None and (task.id, task.attempt) in conn.attempts
                    if status is TaskStatus.QUEUED:
                        seconds = int(self.settings.ack_timeout_seconds)
                        end = AttemptEnd(
                            f"agent {task.agent_id} did not acknowledge within {seconds} s",
                            True,
                            "abandoned",
                        )
                        cancel = (task.id, task.team_id, task.agent_id, task.attempt, "no ACK")
                    elif held and conn is not None and not conn.closing:
                        continue  # alive here; the renewal loop is about to extend it
                    else:
                        end = AttemptEnd(
                            f"agent {task.agent_id} disconnected (lease expired)", True, "lost"
                        )
                else:
                    continue
                requeue = await self.end_attempt(session, task, end)
            if requeue:
                await self.announce_ready(stale.id)
            for conn in self.connections.values():
                if conn.agent_id == stale.agent_id:
                    conn.attempts.pop((stale.id, stale.attempt), None)
            if cancel is not None:
                await self.send_cancel(*cancel)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.settings.lease_ttl_seconds / 3))
            try:
                await self.renew_leases()
            except Exception:
                log.exception("lease_renewal_failed")

    async def renew_leases(self) -> None:
        """Extend the leases of attempts whose agents are alive; drop silent agents."""
        ttl = self.settings.lease_ttl_seconds
        now = self.ctx.now()
        alive: list[AgentConnection] = []
        for conn in list(self.connections.values()):
            if time.monotonic() - conn.last_seen > ttl:
                conn.close(v1.CLOSE_LEASE, f"no heartbeat for {ttl:g} s")
            else:
                alive.append(conn)
        running = [
            task_id
            for conn in alive
            for (task_id, _), state in conn.attempts.items()
            if state.acked_at is not None and not state.stopping
        ]
        async with self.ctx.db.write() as session:
            agents = AgentRepos(session)
            await agents.renew_leases(running, now + timedelta(seconds=ttl))
            await agents.set_heartbeats(self.gateway_id, [c.key for c in alive], now)
            await agents.touch_gateway(self.gateway_id, now)
            await agents.release_agents_of_dead_gateways(now - timedelta(seconds=ttl * 3))
        await self._check_credentials(alive)

    async def _check_credentials(self, conns: Sequence[AgentConnection]) -> None:
        """Close connections whose agent key was revoked or expired meanwhile."""
        if not conns:
            return
        from runyard.store.tables import Credential

        now = self.ctx.now()
        async with self.ctx.db.read() as session:
            for conn in conns:
                row = await session.get(Credential, conn.credential_id)
                if row is None or row.revoked_at is not None:
                    conn.close(v1.CLOSE_UNAUTHORIZED, "agent key revoked")
                elif row.expires_at is not None and row.expires_at <= now:
                    conn.close(v1.CLOSE_UNAUTHORIZED, "agent key expired")

    async def _sweep_loop(self) -> None:
        reloads = 0
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                reloads += 1
                if reloads % 6 == 0:
                    await self.reload_waiting()
                self.wake()
            except Exception:
                log.exception("sweep_failed")
