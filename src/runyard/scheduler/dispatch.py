"""Dispatch: the waiting index, the dispatcher's rounds, claims and ``pending → waiting``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from runyard.domain.tasks import TaskStatus
from runyard.gateway.connection import AgentConnection, AttemptState
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.scheduler.base import SchedulerBase
from runyard.scheduler.common import (
    CLAIMED_AT_SUBMIT,
    MARK_WAITING_BATCH,
    RELOAD_PAGE,
    SUBMITTED,
    TASK_READY,
    WaitingFields,
    iso,
    waiting_entry,
)
from runyard.scheduler.index import WaitingIndex, WaitingTask
from runyard.services import files
from runyard.store.agents import WAITING, AgentRepos, Claimed
from runyard.store.db import add_message
from runyard.store.tables import Task

log = get_logger("runyard.scheduler")


class Dispatching(SchedulerBase):
    # -- the waiting index -----------------------------------------------------------------

    async def reload_waiting(self) -> None:
        """Rebuild the index from the database (start, and the periodic safety net).

        Reads only the index's columns, ``RELOAD_PAGE`` rows per read transaction, so the
        event loop serves others between pages. Whatever the live index gains or loses
        meanwhile (a submit, a claim) is journaled and replayed onto the rebuilt index, so a
        task submitted during a reload is never dropped by it.
        """
        fresh = WaitingIndex()
        fresh._community_next = self.index._community_next
        pending: set[str] = set()
        now = self.ctx.now()
        after = ""
        self._journal = {}
        try:
            while True:
                async with self.ctx.db.read() as session:
                    rows = await AgentRepos(session).waiting_tasks(limit=RELOAD_PAGE, after=after)
                for row in rows:
                    fresh.add(waiting_entry(row), now)
                    if row.task_status == TaskStatus.PENDING.value:
                        pending.add(row.id)
                if len(rows) < RELOAD_PAGE:
                    break
                after = rows[-1].id
            journal = self._journal
        finally:
            self._journal = None
        for task_id, entry in journal.items():
            if entry is None:
                fresh.remove(task_id)
                pending.discard(task_id)
            else:
                fresh.add(entry, now)
                if task_id in self._pending:
                    pending.add(task_id)
        self.index = fresh
        self._pending = pending
        self.wake()

    async def _on_task_ready(self, task_id: str) -> None:
        if task_id in self._submitted_here:
            # Indexed from memory when its submit committed (and maybe claimed since).
            self._submitted_here.discard(task_id)
            return
        if task_id in self.index:
            return  # known here already
        async with self.ctx.db.read() as session:
            row = await AgentRepos(session).waiting_task(task_id)
        if row is None:
            return
        self._index_task(row)

    def _index_task(self, row: WaitingFields, status: str = "") -> None:
        self._index_add(waiting_entry(row))
        if (status or getattr(row, "task_status", "")) == TaskStatus.PENDING.value:
            self._pending.add(row.id)
        self.wake()

    async def _before_commit(self, session: AsyncSession) -> None:
        """Tasks submitted in this transaction: claimed at once for an idle agent here when
        nothing waits ahead of them; announced in the transaction on a transactional bus
        (PostgreSQL: ``NOTIFY`` leaves with the commit, no round trip of its own after)."""
        submitted: list[Task] = session.info.get(SUBMITTED, [])
        if not submitted:
            return
        claimed = await self._claim_at_submit(session, submitted)
        for task in submitted:
            if len(self._announced) > 10_000:  # task_submitted calls that never came
                self._announced.clear()
            if task.id in claimed:
                self._announced.add(task.id)  # dispatched: nobody needs to hear of it
            elif self.bus.transactional:
                add_message(session, TASK_READY, task.id)
                self._announced.add(task.id)
                if len(self._submitted_here) > 10_000:  # announcements that never came
                    self._submitted_here.clear()
                # Before the commit: our own listener may hear the NOTIFY before the
                # ``after_commit`` hook below has run; it must not read the task back.
                self._submitted_here.add(task.id)

    async def _claim_at_submit(self, session: AsyncSession, submitted: list[Task]) -> set[str]:
        """Claim each new task for an idle agent connected here, in the submit's own
        transaction: no second transaction, no dispatcher wake-up, and the ``dispatch``
        frame leaves right after the commit. Only when the agent has nothing waiting that
        it would take first (priority, then age, hold: else the dispatcher decides).
        The slot is reserved now; ``_after_commit`` sends the frame and ``_rolled_back``
        frees the slot if the transaction does not commit."""
        claims: list[tuple[Claimed, AgentConnection]] = []
        now = self.ctx.now()
        for task in submitted:
            if task.dispatch_target != "agent":
                continue
            entry = waiting_entry(task)
            conn = self._idle_agent_for(entry)
            if conn is None:
                continue
            self._hold(conn)  # while the claim statement runs, nobody else takes the slot
            try:
                claimed = await AgentRepos(session).claim(
                    task.id,
                    now,
                    agent_id=conn.agent_id,
                    agent_labels=sorted(conn.labels),
                    gateway_id=self.gateway_id,
                    gpu_type=conn.gpu_type,
                    ack_deadline=now + timedelta(seconds=self.settings.ack_timeout_seconds),
                    for_update=not self.ctx.db.is_sqlite,
                )
            finally:
                self._release(conn)
            if claimed is None:
                continue
            conn.attempts[(claimed.id, claimed.attempt)] = AttemptState(
                claimed.id, claimed.attempt, task_timeout=claimed.task_timeout
            )
            claims.append((claimed, conn))
        if not claims:
            return set()
        session.info.setdefault(CLAIMED_AT_SUBMIT, []).extend(claims)
        await AgentRepos(session).record_claims(
            [(c, conn.agent_id, self.gateway_id) for c, conn in claims], now, iso(now)
        )
        return {c.id for c, _ in claims}

    def _idle_agent_for(self, entry: WaitingTask) -> AgentConnection | None:
        conns = list(self.connections.values())
        if not conns:
            return None
        start = self._rotation % len(conns)
        for conn in conns[start:] + conns[:start]:
            if self._free(conn) <= 0:
                continue
            slot = conn.slot()
            if WaitingIndex.accepts(slot, entry) and not self.index.has_work_for(slot):
                return conn
        return None

    def _free(self, conn: AgentConnection) -> int:
        """Free slots, less those a claim in flight (not yet in ``attempts``) holds."""
        return conn.free_slots() - self._claiming.get(conn.key, 0)

    def _hold(self, conn: AgentConnection) -> None:
        self._claiming[conn.key] = self._claiming.get(conn.key, 0) + 1

    def _release(self, conn: AgentConnection) -> None:
        left = self._claiming.get(conn.key, 0) - 1
        if left > 0:
            self._claiming[conn.key] = left
        else:
            self._claiming.pop(conn.key, None)

    def _rolled_back(self, info: dict[str, Any]) -> None:
        """A submit's transaction did not commit: free the slots its claims reserved."""
        for claimed, conn in info.get(CLAIMED_AT_SUBMIT, ()):
            conn.attempts.pop((claimed.id, claimed.attempt), None)
            self._announced.discard(claimed.id)
        if info.get(CLAIMED_AT_SUBMIT):
            self.wake()

    async def _after_commit(self, info: dict[str, Any]) -> None:
        """Claims made at submit: their ``dispatch`` frames. Other tasks submitted through
        this process go straight into the index (no read back)."""
        claims: list[tuple[Claimed, AgentConnection]] = info.get(CLAIMED_AT_SUBMIT, [])
        if claims:
            await self._send_dispatches(claims)
        claimed = {c.id for c, _ in claims}
        transactional = self.bus.transactional
        for task in info.get(SUBMITTED, ()):
            if task.id in claimed:
                continue
            if task.dispatch_target == "agent" and task.id not in self.index:
                if not transactional:  # (else done before the commit)
                    if len(self._submitted_here) > 10_000:  # announcements that never came
                        self._submitted_here.clear()
                    self._submitted_here.add(task.id)
                self._index_task(task, TaskStatus.PENDING.value)

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
            conns = [c for c in self.connections.values() if self._free(c) > 0]
            if not conns:
                break
            # Rotate the starting agent so equal agents share the work.
            self._rotation = (self._rotation + 1) % len(conns)
            picks: list[tuple[WaitingTask, AgentConnection]] = []
            for conn in conns[self._rotation :] + conns[: self._rotation]:
                entry = self.index.best_for(conn.slot())
                if entry is None:
                    continue
                self._index_remove(entry.task_id)
                picks.append((entry, conn))
            if picks and await self._claim(picks):
                progressed = True
        await self._mark_waiting()

    async def _claim(self, picks: list[tuple[WaitingTask, AgentConnection]]) -> int:
        """Claim one task for each agent in one write transaction; send the dispatches."""
        now = self.ctx.now()
        ack_deadline = now + timedelta(seconds=self.settings.ack_timeout_seconds)
        won: list[tuple[Claimed, AgentConnection]] = []
        # Until these claims commit, a submit must not give the same slots away.
        for _, conn in picks:
            self._hold(conn)
        try:
            async with self.ctx.db.write() as session:
                agents = AgentRepos(session)
                for entry, conn in picks:
                    claimed = await agents.claim(
                        entry.task_id,
                        now,
                        agent_id=conn.agent_id,
                        agent_labels=sorted(conn.labels),
                        gateway_id=self.gateway_id,
                        gpu_type=conn.gpu_type,
                        ack_deadline=ack_deadline,
                        for_update=not self.ctx.db.is_sqlite,
                    )
                    if claimed is not None:
                        won.append((claimed, conn))
                        continue
                    blocker = await agents.claim_blocker(entry.task_id)
                    if blocker is not None and blocker[0] in WAITING:
                        not_before = blocker[1]
                        if not_before is not None and not_before > now:
                            # Not due yet (a retry's backoff): back into the index until then.
                            self._index_add(dataclasses.replace(entry, not_before=not_before))
                await agents.record_claims(
                    [(c, conn.agent_id, self.gateway_id) for c, conn in won], now, iso(now)
                )
        except Exception:
            # Nothing was claimed: put the picks back so the next round tries again.
            for entry, _ in picks:
                self._index_add(entry)
            raise
        finally:
            for _, conn in picks:
                self._release(conn)
        for claimed, conn in won:
            conn.attempts[(claimed.id, claimed.attempt)] = AttemptState(
                claimed.id, claimed.attempt, task_timeout=claimed.task_timeout
            )
        await self._send_dispatches(won)
        return len(won)

    async def _send_dispatches(self, won: list[tuple[Claimed, AgentConnection]]) -> None:
        for claimed, conn in won:
            frame = v1.Dispatch(
                task_id=claimed.id,
                attempt=claimed.attempt,
                workflow_id=claimed.workflow_id,
                tool_type=claimed.tool_type,
                workflow=claimed.workflow_json,
                parameters=claimed.parameters,
                timeout=claimed.task_timeout,
            )
            inputs = await files.dispatch_inputs(
                self.ctx, Task(id=claimed.id, parameters=claimed.parameters)
            )
            if inputs:
                frame = frame.model_copy(update={"inputs": inputs})
            conn.send(frame)
            log.info(
                "task_dispatched",
                task_id=claimed.id,
                attempt=claimed.attempt,
                agent_id=conn.agent_id,
            )

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
        async with self.ctx.db.write() as session:
            moved = await AgentRepos(session).mark_waiting(
                ids, now, iso(now), "waiting for eligible agent"
            )
            # Another replica may have skipped these rows while we held them locked (and
            # dropped them from its index): announce them again so every replica can place
            # them — with this transaction (one NOTIFY statement for all, at its commit).
            if moved and self.bus.transactional:
                for task_id in moved:
                    add_message(session, TASK_READY, task_id)
