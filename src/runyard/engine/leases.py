"""Leases and upkeep: the reaper, lease renewal, agent key checks, the sweep.

A queued attempt must be acknowledged within ``ack_timeout``; a running one is renewed in
the store in batches every ``lease_ttl / 3`` while its agent heartbeats (never once per
heartbeat). A lapsed lease ends the attempt — an agent gone, a server killed: after a
restart the reaper finds every expired lease and the task is retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from runyard.config import SchedulerSettings
from runyard.domain.attempts import AgentKey, AttemptEnd, Outcome, RetryPolicy, TaskState
from runyard.domain.tasks import TaskStatus
from runyard.engine.dispatcher import Dispatcher
from runyard.engine.registry import AgentConnection, AgentRegistry
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.store.port import EngineStore

log = get_logger("runyard.scheduler")

#: Expired attempts handled per reaper pass.
REAP_BATCH = 200


class Leases:
    def __init__(
        self,
        store: EngineStore,
        agents: AgentRegistry,
        dispatcher: Dispatcher,
        settings: SchedulerSettings,
        now: Callable[[], datetime],
        gateway_id: str,
    ) -> None:
        self.store = store
        self.agents = agents
        self.dispatcher = dispatcher
        self.settings = settings
        self.now = now
        self.gateway_id = gateway_id
        self.policy = RetryPolicy(
            settings.retry_backoff_base_seconds, settings.retry_backoff_cap_seconds
        )

    # -- the reaper ---------------------------------------------------------------------------

    async def reaper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_seconds)
            try:
                await self.reap()
            except Exception:
                log.exception("reaper_failed")

    def _why_ended(self, task: TaskState, attempt: int, now: datetime) -> AttemptEnd | None:
        """How an expired attempt ended, by the task as locked (``None``: it did not)."""
        if task.attempt != attempt:
            return None
        if task.status is TaskStatus.RUNNING and task.deadline_at and task.deadline_at < now:
            return AttemptEnd(
                f"timed out after {task.task_timeout} s", True, Outcome.TIMED_OUT, "timed out"
            )
        if task.status not in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            return None
        if task.lease_expires_at is None or task.lease_expires_at >= now:
            return None
        if task.status is TaskStatus.QUEUED:
            seconds = int(self.settings.ack_timeout_seconds)
            return AttemptEnd(
                f"agent {task.agent_id} did not acknowledge within {seconds} s",
                True,
                Outcome.ABANDONED,
                "no ACK",
            )
        conn = self.agents.get(AgentKey(task.team_id, task.agent_id or ""))
        if conn is not None and not conn.closing and (task.id, task.attempt) in conn.attempts:
            return None  # alive here; the renewal loop is about to extend it
        return AttemptEnd(f"agent {task.agent_id} disconnected (lease expired)", True, Outcome.LOST)

    async def reap(self) -> None:
        """End attempts whose ACK deadline, lease or task timeout has passed."""
        now = self.now()
        for stale in await self.store.expired(now, REAP_BATCH):

            def decide(task: TaskState, attempt: int = stale.attempt) -> AttemptEnd | None:
                return self._why_ended(task, attempt, now)

            ended = await self.store.end_attempt(stale.id, decide, self.policy, now)
            if ended is None:
                continue
            log.info(
                "attempt_ended",
                task_id=stale.id,
                attempt=stale.attempt,
                outcome=ended.end.outcome.value,
                error=ended.end.error,
                requeued=ended.plan.requeued,
            )
            for conn in self.agents:
                if conn.agent_id == stale.agent_id:
                    conn.attempts.pop((stale.id, stale.attempt), None)
        self.dispatcher.wake()

    # -- lease renewal and agent liveness ------------------------------------------------------

    async def renewer(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.settings.lease_ttl_seconds / 3))
            try:
                await self.renew()
            except Exception:
                log.exception("lease_renewal_failed")

    async def renew(self) -> None:
        """Extend the leases of attempts whose agents are alive; drop silent agents."""
        ttl = self.settings.lease_ttl_seconds
        now = self.now()
        alive: list[AgentConnection] = []
        for conn in self.agents:
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
        await self.store.renew_leases(running, now + timedelta(seconds=ttl))
        await self.store.gateway_alive(
            self.gateway_id, [c.key for c in alive], now, now - timedelta(seconds=ttl * 3)
        )
        await self._check_credentials(alive)

    async def _check_credentials(self, conns: Sequence[AgentConnection]) -> None:
        """Close connections whose agent key was revoked or expired meanwhile."""
        if not conns:
            return
        now = self.now()
        states = await self.store.credential_states([c.credential_id for c in conns])
        for conn in conns:
            state = states.get(conn.credential_id)
            if state is None or state[0] is not None:
                conn.close(v1.CLOSE_UNAUTHORIZED, "agent key revoked")
            elif state[1] is not None and state[1] <= now:
                conn.close(v1.CLOSE_UNAUTHORIZED, "agent key expired")

    # -- the sweep ----------------------------------------------------------------------------

    async def sweeper(self) -> None:
        """The safety net: a dispatch pass now and then, a rebuilt index less often, in
        case a wake-up was missed."""
        reloads = 0
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                reloads += 1
                if reloads % 6 == 0:
                    await self.dispatcher.reload()
                self.dispatcher.wake()
            except Exception:
                log.exception("sweep_failed")
