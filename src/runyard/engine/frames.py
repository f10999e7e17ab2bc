"""Frames from agents: ACK, progress, logs, results, status, heartbeats, upload requests.

Every message about a task carries ``(task_id, attempt)`` and is checked against the task's
current attempt and agent (fencing, ``domain.attempts``); a stale one is refused and the
agent told to abort it. The store applies the same rule in the transaction that writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from runyard.config import SchedulerSettings
from runyard.domain.attempts import (
    HELD,
    LOG_STATUSES,
    PROGRESS_STATUSES,
    AttemptEnd,
    Outcome,
    RetryPolicy,
    TaskState,
    Verdict,
    owns,
    verdict,
)
from runyard.domain.times import iso
from runyard.engine.dispatcher import Dispatcher
from runyard.engine.outputs import Transfers
from runyard.engine.registry import AgentConnection, AttemptState
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.store.port import AgentStatus, AttemptRef, Checked, EngineStore

log = get_logger("runyard.scheduler")


def _ref(frame: v1.AttemptRef) -> AttemptRef:
    return AttemptRef(frame.task_id, frame.attempt)


class FrameHandler:
    def __init__(
        self,
        store: EngineStore,
        dispatcher: Dispatcher,
        transfers: Transfers,
        settings: SchedulerSettings,
        now: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.transfers = transfers
        self.settings = settings
        self.now = now
        self.policy = RetryPolicy(
            settings.retry_backoff_base_seconds, settings.retry_backoff_cap_seconds
        )
        self._progress_last: dict[str, float] = {}
        self._progress_pending: dict[tuple[str, int], v1.Progress] = {}
        #: Attempts with a held tick and a timer that writes it when the interval ends.
        self._progress_timers: dict[tuple[str, int], asyncio.Task[None]] = {}

    async def stop(self) -> None:
        timers = list(self._progress_timers.values())
        for timer in timers:
            timer.cancel()  # a held progress tick is not worth delaying a stop
        await asyncio.gather(*timers, return_exceptions=True)

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
            outcome = Outcome.ABANDONED if frame.handback else Outcome.FAILED
            if frame.handback:
                conn.held = True
            await self.attempt_failed(
                conn, frame, AttemptEnd(frame.error, frame.retryable, outcome)
            )
        elif isinstance(frame, v1.Cancelled):
            await self._cancelled(conn, frame)
        elif isinstance(frame, v1.UploadRequest):
            await self._upload_request(conn, frame)
        elif isinstance(frame, v1.Hello):
            conn.send(v1.Error(message="hello was already received"))

    async def _heartbeat(self, conn: AgentConnection, frame: v1.Heartbeat) -> None:
        conn.last_heartbeat_at = self.now()
        if conn.held:
            conn.held = False
            self.dispatcher.wake()
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
                self.dispatcher.wake()
            elif state.acked_at is not None and time.monotonic() - state.acked_at > grace:
                ref = v1.AttemptRef(task_id=key[0], attempt=key[1])
                await self.attempt_failed(
                    conn,
                    ref,
                    AttemptEnd("the agent no longer runs this attempt", True, Outcome.LOST),
                )

    async def _status(self, conn: AgentConnection, frame: v1.StatusUpdate) -> None:
        conn.status = frame.agent_status
        conn.sync_phase = frame.sync_phase
        conn.sync_detail = frame.sync_detail
        conn.sync_percent = frame.sync_percent
        await self.store.agent_status(
            conn.key,
            AgentStatus(
                frame.agent_status, frame.sync_phase, frame.sync_detail, frame.sync_percent
            ),
        )
        if frame.agent_status == "idle":
            self.dispatcher.wake()

    # -- fencing ------------------------------------------------------------------------------

    def refuse(self, conn: AgentConnection, ref: v1.AttemptRef, why: str) -> None:
        conn.attempts.pop((ref.task_id, ref.attempt), None)
        conn.send(v1.Cancel(task_id=ref.task_id, attempt=ref.attempt, reason=why))
        log.warning(
            "stale_attempt_refused",
            task_id=ref.task_id,
            attempt=ref.attempt,
            agent_id=conn.agent_id,
            reason=why,
        )

    def _known(self, conn: AgentConnection, ref: v1.AttemptRef) -> bool:
        """Whether this connection runs the attempt (cheap, in memory); else it is refused."""
        if (ref.task_id, ref.attempt) in conn.attempts:
            return True
        self.refuse(conn, ref, "stale attempt")
        return False

    def _fenced(self, conn: AgentConnection, ref: v1.AttemptRef, checked: Checked) -> bool:
        """Whether the agent holds the attempt; else it is told to abort it."""
        if checked.verdict is Verdict.HOLDS:
            return True
        if checked.verdict is Verdict.ENDED and checked.status is not None:
            self.refuse(conn, ref, f"task is {checked.status.value}")
        else:
            self.refuse(conn, ref, "stale attempt")
        return False

    # -- ACK ----------------------------------------------------------------------------------

    async def _ack(self, conn: AgentConnection, ref: v1.Ack) -> None:
        key = (ref.task_id, ref.attempt)
        state = conn.attempts.get(key)
        now = self.now()
        lease = now + timedelta(seconds=self.settings.lease_ttl_seconds)
        timeout = None if state is None else state.task_timeout
        checked = await self.store.start(_ref(ref), conn.key, now, lease, timeout)
        if not self._fenced(conn, ref, checked):
            return
        state = conn.attempts.get(key)
        if state is None:
            state = conn.attempts[key] = AttemptState(ref.task_id, ref.attempt)
        state.acked_at = time.monotonic()

    # -- progress and logs --------------------------------------------------------------------

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
        now = self.now()
        payload: dict[str, Any] = {"task_id": frame.task_id, "timestamp": iso(now)}
        for name in ("progress", "current_node", "step_current", "step_total", "stage", "message"):
            value = getattr(frame, name)
            if value is not None:
                payload[name] = value
        ref = _ref(frame)
        if await self.store.append_event(
            ref, conn.key, "progress", payload, now, PROGRESS_STATUSES
        ):
            return
        # Not written: a stale attempt (refuse it), or the task is not running (drop it).
        task = await self.store.task_state(frame.task_id)
        if not owns(task, frame.task_id, frame.attempt, conn.key):
            self.refuse(conn, frame, "stale attempt")

    async def _flush_progress(self, conn: AgentConnection, ref: v1.AttemptRef) -> None:
        pending = self._progress_pending.pop((ref.task_id, ref.attempt), None)
        if pending is not None:
            await self._write_progress(conn, pending)
        self._progress_last.pop(ref.task_id, None)

    async def _log(self, conn: AgentConnection, frame: v1.Log) -> None:
        if not self._known(conn, frame):
            return
        now = self.now()
        payload = {"task_id": frame.task_id, "lines": frame.lines[-200:], "timestamp": iso(now)}
        # Not written (a stale attempt, or the task ended): dropped without a word.
        await self.store.append_event(_ref(frame), conn.key, "log", payload, now, LOG_STATUSES)

    # -- results ------------------------------------------------------------------------------

    async def _complete(self, conn: AgentConnection, frame: v1.Complete) -> None:
        await self._flush_progress(conn, frame)
        # Checked against this attempt's upload links and storage; attached only if it wins.
        prepared = await self.transfers.prepare(frame)
        checked = await self.store.complete(
            _ref(frame), conn.key, self.now(), prepared.task_output, prepared.attached
        )
        if not self._fenced(conn, frame, checked):
            return
        conn.attempts.pop((frame.task_id, frame.attempt), None)
        log.info("task_completed", task_id=frame.task_id, attempt=frame.attempt)
        self.dispatcher.wake()

    async def _upload_request(self, conn: AgentConnection, frame: v1.UploadRequest) -> None:
        """Upload links for the outputs of the task's current attempt, and no other."""
        if not self._known(conn, frame):
            return
        task = await self.store.task_state(frame.task_id)
        status = None if task is None else task.status
        checked = Checked(verdict(task, frame.task_id, frame.attempt, conn.key), status)
        if self._fenced(conn, frame, checked):
            conn.send(await self.transfers.upload_links(frame))

    async def _cancelled(self, conn: AgentConnection, frame: v1.Cancelled) -> None:
        state = conn.attempts.pop((frame.task_id, frame.attempt), None)
        self.dispatcher.wake()
        task = await self.store.task_state(frame.task_id)
        if task is None or not owns(task, frame.task_id, frame.attempt, conn.key):
            return
        if task.status.is_terminal or (state is not None and state.stopping):
            await self.store.close_attempt(_ref(frame), self.now(), Outcome.CANCELLED.value)
            return
        # The agent stopped on its own (shutting down, say): the attempt failed; retry it.
        await self.attempt_failed(
            conn, frame, AttemptEnd("the agent stopped the attempt", True, Outcome.FAILED)
        )

    async def attempt_failed(
        self, conn: AgentConnection, ref: v1.AttemptRef, end: AttemptEnd
    ) -> None:
        await self._flush_progress(conn, ref)
        conn.attempts.pop((ref.task_id, ref.attempt), None)
        stale = True  # unless the task exists and is this agent's attempt

        def decide(task: TaskState) -> AttemptEnd | None:
            nonlocal stale
            if not owns(task, ref.task_id, ref.attempt, conn.key):
                return None
            stale = False
            # The agent stopped this attempt already: a task that ended needs no Cancel.
            return end if task.status in HELD else None

        ended = await self.store.end_attempt(ref.task_id, decide, self.policy, self.now())
        if stale:
            self.refuse(conn, ref, "stale attempt")
        if ended is not None:
            log.info(
                "attempt_ended",
                task_id=ref.task_id,
                attempt=ref.attempt,
                outcome=end.outcome.value,
                error=end.error,
                requeued=ended.plan.requeued,
            )
        self.dispatcher.wake()
