"""The scheduler's background work: the reaper, lease renewal, key checks, the sweep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta

from runyard.domain.tasks import TaskStatus
from runyard.gateway.connection import AgentConnection
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.scheduler.base import SchedulerBase
from runyard.scheduler.common import AttemptEnd
from runyard.store.agents import AgentRepos
from runyard.store.work import WorkRepos

log = get_logger("runyard.scheduler")


class Upkeep(SchedulerBase):
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
        now = self.ctx.now()
        async with self.ctx.db.read() as session:
            states = await AgentRepos(session).credential_states([c.credential_id for c in conns])
        for conn in conns:
            state = states.get(conn.credential_id)
            if state is None or state[0] is not None:
                conn.close(v1.CLOSE_UNAUTHORIZED, "agent key revoked")
            elif state[1] is not None and state[1] <= now:
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
