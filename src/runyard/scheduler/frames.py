"""Frames from agents: ACK, progress, logs, results, status, heartbeats, upload requests.

Every message about a task carries ``(task_id, attempt)`` and is checked against the task's
current attempt and agent (fencing); a stale one is refused and the agent told to abort it.
ACKs and completions — the frames of every lifecycle — are single conditional ``UPDATE …
RETURNING`` statements run through the group commit (one transaction for all those that
arrive together); anything unusual (a repeated ACK, a stale attempt, a completion without an
ACK) falls back to the careful path that loads and locks the row.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from runyard.domain.tasks import TaskStatus
from runyard.gateway.connection import AgentConnection, AttemptState
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.scheduler.base import SchedulerBase
from runyard.scheduler.common import AttemptEnd, iso
from runyard.services import files
from runyard.store.agents import AgentRepos, Transitioned
from runyard.store.tables import Task
from runyard.store.work import WorkRepos

log = get_logger("runyard.scheduler")

#: Statuses in which an agent holds the task's attempt (claimed, or running).
HELD = (TaskStatus.QUEUED.value, TaskStatus.RUNNING.value)
#: Log lines are kept in any status short of the end; progress only while running.
LOG_STATUSES = (TaskStatus.PENDING.value, TaskStatus.WAITING.value, *HELD)


class FrameHandling(SchedulerBase):
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
            if frame.handback:
                conn.held = True
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
        if conn.held:
            conn.held = False
            self.wake()
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
            await AgentRepos(session).set_status(
                conn.team_id,
                conn.agent_id,
                frame.agent_status,
                frame.sync_phase,
                frame.sync_detail,
                frame.sync_percent,
            )
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

    def _known(self, conn: AgentConnection, ref: v1.AttemptRef) -> bool:
        """Whether this connection runs the attempt (cheap, in memory); else it is refused."""
        if (ref.task_id, ref.attempt) in conn.attempts:
            return True
        self._refuse_stale(conn, ref, "stale attempt")
        return False

    def _fence(self, conn: AgentConnection, task: Task | None, ref: v1.AttemptRef) -> Task | None:
        """The task if ``ref`` is its current attempt, this agent's, and still active; else
        ``None``, and the agent told to abort the attempt."""
        if task is None or not self._owns(conn, task, ref):
            self._refuse_stale(conn, ref, "stale attempt")
            return None
        if task.task_status not in HELD:
            self._refuse_stale(conn, ref, f"task is {task.task_status}")
            return None
        return task

    async def _record_transition(
        self,
        session: AsyncSession,
        ref: v1.AttemptRef,
        done: Transitioned,
        status: TaskStatus,
        now: datetime,
        **details: Any,
    ) -> None:
        """The event and webhook deliveries of a fast-path transition, in its transaction: the
        same event ``WorkRepos.change_status`` writes on the careful path."""
        payload = {"task_id": ref.task_id, "status": status.value, "timestamp": iso(now), **details}
        event = status.value if status.is_terminal else "status"
        repos = WorkRepos(session)
        await repos.insert_event(ref.task_id, done.event_seq, event, payload, now)
        if done.has_webhooks:
            output = details.get("output")
            await repos.webhook_outbox(done.team_id, ref.task_id, status, output, None, now)

    async def _append_event(
        self,
        conn: AgentConnection,
        ref: v1.AttemptRef,
        event: str,
        payload: dict[str, Any],
        now: datetime,
        statuses: tuple[str, ...],
    ) -> bool:
        """A progress or log event in the group commit; False (nothing written) unless the
        attempt is the agent's and its task in one of ``statuses``."""

        async def job(session: AsyncSession) -> bool:
            seq = await AgentRepos(session).next_event_seq(
                ref.task_id,
                ref.attempt,
                team_id=conn.team_id,
                agent_id=conn.agent_id,
                statuses=statuses,
            )
            if seq is None:
                return False
            await WorkRepos(session).insert_event(ref.task_id, seq, event, payload, now)
            return True

        return await self.commits.run(job)

    # -- ACK ------------------------------------------------------------------------------

    async def _ack(self, conn: AgentConnection, ref: v1.Ack) -> None:
        key = (ref.task_id, ref.attempt)
        state = conn.attempts.get(key)
        fast = state is not None and state.task_timeout is not None
        acked = fast and state is not None and await self._ack_fast(conn, ref, state)
        if not acked and not await self._ack_slow(conn, ref):
            return
        state = conn.attempts.get(key)
        if state is None:
            state = conn.attempts[key] = AttemptState(ref.task_id, ref.attempt)
        state.acked_at = time.monotonic()

    async def _ack_fast(self, conn: AgentConnection, ref: v1.Ack, state: AttemptState) -> bool:
        """``queued → running`` in the group commit; False: look closer (slow path)."""
        now = self.ctx.now()
        timeout = state.task_timeout
        deadline = now + timedelta(seconds=timeout) if timeout else None
        lease = now + timedelta(seconds=self.settings.lease_ttl_seconds)

        async def job(session: AsyncSession) -> bool:
            done = await AgentRepos(session).start_attempt(
                ref.task_id,
                ref.attempt,
                team_id=conn.team_id,
                agent_id=conn.agent_id,
                now=now,
                lease_expires_at=lease,
                deadline_at=deadline,
            )
            if done is None:
                return False
            who = {"agent_id": conn.agent_id, "attempt": ref.attempt}
            await self._record_transition(session, ref, done, TaskStatus.RUNNING, now, **who)
            return True

        return await self.commits.run(job)

    async def _ack_slow(self, conn: AgentConnection, ref: v1.Ack) -> bool:
        """Returns whether the attempt runs (now, or already: a repeated ACK)."""
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            repos = WorkRepos(session)
            task = self._fence(conn, await repos.task_for_update(ref.task_id), ref)
            if task is None:
                return False
            if task.task_status == TaskStatus.RUNNING.value:
                return True  # a repeated ACK
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
            await AgentRepos(session).mark_acked(ref.task_id, ref.attempt, now)
        return True

    # -- progress and logs ----------------------------------------------------------------

    async def _progress(self, conn: AgentConnection, frame: v1.Progress) -> None:
        if not self._known(conn, frame):
            return
        key = (frame.task_id, frame.attempt)
        # Coalesce: at most one progress event per task per interval; the latest tick wins.
        last = self._progress_last.get(frame.task_id, 0.0)
        wait = last + self.settings.progress_interval_seconds - time.monotonic()
        if wait > 0:
            self._progress_pending[key] = frame
            if key not in self._progress_timers:
                # Trailing edge: the held tick is written when the interval ends, so a
                # long node after the last sampler step still shows that step.
                self._progress_timers[key] = asyncio.create_task(
                    self._write_held_progress(conn, key, wait)
                )
            return
        self._progress_pending.pop(key, None)
        await self._write_progress(conn, frame)

    async def _write_held_progress(
        self, conn: AgentConnection, key: tuple[str, int], wait: float
    ) -> None:
        try:
            await asyncio.sleep(wait)
        finally:
            self._progress_timers.pop(key, None)
        pending = self._progress_pending.pop(key, None)
        if pending is None or key not in conn.attempts:
            return  # flushed by the attempt's end, or the attempt is gone
        try:
            await self._write_progress(conn, pending)
        except Exception:
            log.exception("progress_write_failed", task_id=key[0], attempt=key[1])

    async def _write_progress(self, conn: AgentConnection, frame: v1.Progress) -> None:
        self._progress_last[frame.task_id] = time.monotonic()
        now = self.ctx.now()
        payload: dict[str, Any] = {"task_id": frame.task_id, "timestamp": iso(now)}
        for name in ("progress", "current_node", "step_current", "step_total", "stage", "message"):
            value = getattr(frame, name)
            if value is not None:
                payload[name] = value
        running = (TaskStatus.RUNNING.value,)
        if await self._append_event(conn, frame, "progress", payload, now, running):
            return
        # Not written: a stale attempt (refuse it), or the task is not running (drop it).
        async with self.ctx.db.read() as session:
            task = await AgentRepos(session).task(frame.task_id)
        if not self._owns(conn, task, frame):
            self._refuse_stale(conn, frame, "stale attempt")

    async def _flush_progress(self, conn: AgentConnection, ref: v1.AttemptRef) -> None:
        pending = self._progress_pending.pop((ref.task_id, ref.attempt), None)
        if pending is not None:
            await self._write_progress(conn, pending)
        self._progress_last.pop(ref.task_id, None)

    async def _log(self, conn: AgentConnection, frame: v1.Log) -> None:
        if not self._known(conn, frame):
            return
        now = self.ctx.now()
        payload = {"task_id": frame.task_id, "lines": frame.lines[-200:], "timestamp": iso(now)}
        # Not written (a stale attempt, or the task ended): dropped without a word.
        await self._append_event(conn, frame, "log", payload, now, LOG_STATUSES)

    # -- results --------------------------------------------------------------------------

    async def _complete(self, conn: AgentConnection, frame: v1.Complete) -> None:
        await self._flush_progress(conn, frame)
        # Checked against this attempt's upload links and storage; attached only if it wins.
        prepared = await files.prepare_outputs(self.ctx, frame)
        now = self.ctx.now()

        async def job(session: AsyncSession) -> bool:
            done = await AgentRepos(session).complete_attempt(
                frame.task_id,
                frame.attempt,
                team_id=conn.team_id,
                agent_id=conn.agent_id,
                now=now,
                task_output=prepared.task_output,
            )
            if done is None:
                return False
            await files.attach_outputs(session, frame, prepared)
            output = prepared.task_output
            await self._record_transition(
                session, frame, done, TaskStatus.COMPLETED, now, output=output
            )
            return True

        if not await self.commits.run(job) and not await self._complete_slow(conn, frame, prepared):
            return
        conn.attempts.pop((frame.task_id, frame.attempt), None)
        log.info("task_completed", task_id=frame.task_id, attempt=frame.attempt)
        self.wake()

    async def _complete_slow(
        self, conn: AgentConnection, frame: v1.Complete, prepared: files.PreparedOutput
    ) -> bool:
        """A completion the fast path did not take: without an ACK, or refused."""
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            repos = WorkRepos(session)
            task = self._fence(conn, await repos.task_for_update(frame.task_id), frame)
            if task is None:
                return False
            if task.task_status == TaskStatus.QUEUED.value:
                # Completed without an ACK: count it as started now.
                await repos.change_status(task, TaskStatus.RUNNING, now, started_at=now)
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
            await agents.end_attempt_row(frame.task_id, frame.attempt, now, "completed", None)
            await agents.count_completed(conn.team_id, conn.agent_id)
        return True

    async def _upload_request(self, conn: AgentConnection, frame: v1.UploadRequest) -> None:
        """Upload links for the outputs of the task's current attempt, and no other."""
        if not self._known(conn, frame):
            return
        async with self.ctx.db.read() as session:
            task = await AgentRepos(session).task(frame.task_id)
        if self._fence(conn, task, frame) is None:
            return
        conn.send(await files.output_links(self.ctx, frame))

    async def _cancelled(self, conn: AgentConnection, frame: v1.Cancelled) -> None:
        state = conn.attempts.pop((frame.task_id, frame.attempt), None)
        self.wake()
        async with self.ctx.db.read() as session:
            task = await AgentRepos(session).task(frame.task_id)
        if task is None or not self._owns(conn, task, frame):
            return
        if TaskStatus(task.task_status).is_terminal or (state is not None and state.stopping):
            async with self.ctx.db.write() as session:
                await AgentRepos(session).end_attempt_row(
                    frame.task_id, frame.attempt, self.ctx.now(), "cancelled", None, only_open=True
                )
            return
        # The agent stopped on its own (shutting down, say): the attempt failed; retry it.
        await self._attempt_failed(
            conn, frame, AttemptEnd("the agent stopped the attempt", True, "failed")
        )

    async def _attempt_failed(
        self, conn: AgentConnection, ref: v1.AttemptRef, end: AttemptEnd
    ) -> None:
        await self._flush_progress(conn, ref)
        conn.attempts.pop((ref.task_id, ref.attempt), None)
        async with self.ctx.db.write() as session:
            task = await WorkRepos(session).task_for_update(ref.task_id)
            if task is None or not self._owns(conn, task, ref):
                self._refuse_stale(conn, ref, "stale attempt")
                return
            # Not _fence: the agent stopped this attempt already; a task that ended needs no Cancel.
            if task.task_status not in HELD:
                return
            requeue = await self.end_attempt(session, task, end)
        if requeue:
            await self.announce_ready(ref.task_id)
        self.wake()
