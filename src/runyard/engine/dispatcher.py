"""The dispatcher: the waiting index, dispatch rounds, claims, ``pending → waiting``.

It runs on wake-ups (a task entered the queue, a slot was freed, an agent connected or
became idle) and on a slow sweep. A round claims one task for each agent of this server with
a free slot, all in one transaction (``EngineStore.claim``); the claims reach the agents
through the transaction's changes (:meth:`Dispatcher.claims_committed`), like the claims a
submit makes in its own transaction (:meth:`Dispatcher.claim_at_submit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from runyard.config import SchedulerSettings
from runyard.domain.attempts import (
    HELD,
    AttemptEnd,
    Claimed,
    Outcome,
    RetryPolicy,
    TaskState,
    WaitingTask,
    owns,
)
from runyard.engine.index import WaitingIndex
from runyard.engine.outputs import Transfers
from runyard.engine.registry import AgentConnection, AgentRegistry, AttemptState
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.store.port import EngineStore, Pick

log = get_logger("runyard.scheduler")

#: Tasks moved ``pending → waiting`` per transaction (and per dispatch round).
MARK_WAITING_BATCH = 200
#: Rows per page when the waiting index is rebuilt from the store: a page must never hold
#: the event loop for long (10,000 waiting tasks in pages of 2,000 full rows held it
#: 110 to 140 ms a page).
RELOAD_PAGE = 500


class Dispatcher:
    def __init__(
        self,
        store: EngineStore,
        agents: AgentRegistry,
        transfers: Transfers,
        settings: SchedulerSettings,
        now: Callable[[], datetime],
        gateway_id: str,
    ) -> None:
        self.store = store
        self.agents = agents
        self.transfers = transfers
        self.settings = settings
        self.now = now
        self.gateway_id = gateway_id
        self.index = WaitingIndex()
        #: Tasks seen as ``pending`` that this process has not placed yet.
        self._pending: set[str] = set()
        #: While the index is rebuilt: what changed in the live index meanwhile (task id →
        #: the entry added, or ``None`` when removed), replayed onto the rebuilt one.
        self._journal: dict[str, WaitingTask | None] | None = None
        self._wake = asyncio.Event()
        self._rotation = 0

    def wake(self) -> None:
        self._wake.set()

    # -- the waiting index (every change goes through here: see reload) --------------------

    def add(self, entry: WaitingTask) -> None:
        self.index.add(entry, self.now())
        if entry.pending:
            self._pending.add(entry.task_id)
        if self._journal is not None:
            self._journal[entry.task_id] = entry
        self.wake()

    def forget(self, task_id: str) -> None:
        self.index.remove(task_id)
        self._pending.discard(task_id)
        if self._journal is not None:
            self._journal[task_id] = None

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.index

    async def reload(self) -> None:
        """Rebuild the index from the store (start, and the periodic safety net).

        Reads only the index's columns, ``RELOAD_PAGE`` rows at a time, so the event loop
        serves others between pages. Whatever the live index gains or loses meanwhile (a
        submit, a claim) is journaled and replayed onto the rebuilt index, so a task
        submitted during a reload is never dropped by it.
        """
        fresh = WaitingIndex()
        fresh._community_next = self.index._community_next
        pending: set[str] = set()
        now = self.now()
        after = ""
        self._journal = {}
        try:
            while True:
                rows = await self.store.waiting_page(RELOAD_PAGE, after)
                for row in rows:
                    fresh.add(row, now)
                    if row.pending:
                        pending.add(row.task_id)
                if len(rows) < RELOAD_PAGE:
                    break
                after = rows[-1].task_id
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

    async def heard_of(self, task_id: str) -> None:
        """Another server said this task entered the queue: index it if it still waits."""
        if task_id in self.index:
            return
        row = await self.store.waiting_task(task_id)
        if row is not None:
            self.add(row)

    def entered_queue(self, entries: Sequence[WaitingTask]) -> None:
        """Tasks a committed transaction put in the queue (from memory: no read)."""
        for entry in entries:
            if entry.task_id not in self.index:
                self.add(entry)

    # -- claims ------------------------------------------------------------------------------

    def _pick(self, entry: WaitingTask, conn: AgentConnection) -> Pick:
        conn.reserved.add(entry.task_id)  # nobody else takes the slot until the claim ends
        return Pick(entry, conn.key, tuple(sorted(conn.labels)), conn.gpu_type)

    def _release(self, picks: Sequence[Pick], won: Sequence[Claimed] = ()) -> None:
        """Free the slots of picks that were not won (won ones: once their commit ends)."""
        kept = {c.id for c in won}
        for pick in picks:
            if pick.task.task_id not in kept:
                conn = self.agents.get(pick.agent)
                if conn is not None:
                    conn.reserved.discard(pick.task.task_id)

    async def claim_at_submit(self, tx: Any, entries: Sequence[WaitingTask]) -> None:
        """Claim new tasks for idle agents connected here, in their submit's own
        transaction: no second transaction, no dispatcher wake-up, and the ``dispatch``
        frame leaves right after the commit. Only when the agent has nothing waiting that it
        would take first (priority, then age: else the dispatcher decides)."""
        picks: list[Pick] = []
        for entry in entries:
            conn = self._idle_agent_for(entry)
            if conn is not None:
                picks.append(self._pick(entry, conn))
        if not picks:
            return
        now = self.now()
        deadline = now + timedelta(seconds=self.settings.ack_timeout_seconds)
        try:
            result = await self.store.claim(picks, now, deadline, self.gateway_id, tx=tx)
        except BaseException:
            self._release(picks)
            raise
        self._release(picks, result.won)

    def _idle_agent_for(self, entry: WaitingTask) -> AgentConnection | None:
        conns = list(self.agents)
        if not conns:
            return None
        start = self._rotation % len(conns)
        for conn in conns[start:] + conns[:start]:
            if conn.free_slots() <= 0:
                continue
            slot = conn.slot()
            if WaitingIndex.accepts(slot, entry) and not self.index.has_work_for(slot):
                return conn
        return None

    async def claims_committed(self, claims: Sequence[Claimed]) -> None:
        """Claims are durable: the attempts are the agents', their ``dispatch`` frames go."""
        for claimed in claims:
            conn = self.agents.get(claimed.agent)
            if conn is None:
                continue  # gone meanwhile: the ACK deadline brings the task back
            conn.reserved.discard(claimed.id)
            conn.attempts[(claimed.id, claimed.attempt)] = AttemptState(
                claimed.id, claimed.attempt, task_timeout=claimed.task_timeout
            )
        for claimed in claims:
            conn = self.agents.get(claimed.agent)
            if conn is not None:
                await self._send_dispatch(claimed, conn)

    def claims_rolled_back(self, claims: Sequence[Claimed]) -> None:
        for claimed in claims:
            conn = self.agents.get(claimed.agent)
            if conn is not None:
                conn.reserved.discard(claimed.id)
        if claims:
            self.wake()

    async def _send_dispatch(self, claimed: Claimed, conn: AgentConnection) -> None:
        frame = v1.Dispatch(
            task_id=claimed.id,
            attempt=claimed.attempt,
            workflow_id=claimed.workflow_id,
            tool_type=claimed.tool_type,
            workflow=claimed.workflow_json,
            parameters=claimed.parameters,
            timeout=claimed.task_timeout,
        )
        inputs = await self.transfers.inputs(claimed.id, claimed.parameters)
        if inputs:
            frame = frame.model_copy(update={"inputs": inputs})
        # A frame that cannot be encoded, or that the agent would refuse, would be sent again
        # after every ACK timeout, forever: the task fails now instead, saying why.
        try:
            text = frame.model_dump_json()
        except ValueError as exc:
            await self._undispatchable(claimed, conn, f"the task cannot be sent to an agent: {exc}")
            return
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > conn.max_frame_bytes:
            await self._undispatchable(
                claimed,
                conn,
                f"the task's dispatch frame is {size:,} bytes, over agent {conn.agent_id}'s "
                f"limit of {conn.max_frame_bytes:,} bytes",
            )
            return
        conn.send_encoded(text)
        log.info(
            "task_dispatched",
            task_id=claimed.id,
            attempt=claimed.attempt,
            agent_id=conn.agent_id,
        )

    async def _undispatchable(self, claimed: Claimed, conn: AgentConnection, error: str) -> None:
        conn.attempts.pop((claimed.id, claimed.attempt), None)
        end = AttemptEnd(error, False, Outcome.FAILED)

        def decide(task: TaskState) -> AttemptEnd | None:
            holds = owns(task, claimed.id, claimed.attempt, conn.key) and task.status in HELD
            return end if holds else None

        await self.store.end_attempt(claimed.id, decide, RetryPolicy(), self.now())
        log.warning(
            "task_undispatchable",
            task_id=claimed.id,
            attempt=claimed.attempt,
            agent_id=conn.agent_id,
            error=error,
        )
        self.wake()

    # -- rounds ------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            due = self.index.next_due()
            timeout = None
            if due is not None:
                timeout = max(0.0, (due - self.now()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self.round()
            except Exception:
                log.exception("dispatch_round_failed")
                await asyncio.sleep(0.5)

    async def round(self) -> None:
        self.index.promote_due(self.now())
        progressed = True
        while progressed and len(self.index):
            progressed = False
            conns = self.agents.with_free_slots()
            if not conns:
                break
            # Rotate the starting agent so equal agents share the work.
            self._rotation = (self._rotation + 1) % len(conns)
            picks: list[Pick] = []
            for conn in conns[self._rotation :] + conns[: self._rotation]:
                entry = self.index.best_for(conn.slot())
                if entry is None:
                    continue
                self.forget(entry.task_id)
                picks.append(self._pick(entry, conn))
            if picks and await self._claim(picks):
                progressed = True
        await self._mark_waiting()

    async def _claim(self, picks: list[Pick]) -> int:
        """Claim one task for each agent in one transaction (dispatched as it commits)."""
        now = self.now()
        deadline = now + timedelta(seconds=self.settings.ack_timeout_seconds)
        try:
            result = await self.store.claim(picks, now, deadline, self.gateway_id)
        except Exception:
            self._release(picks)
            # Nothing was claimed: put the picks back so the next round tries again.
            for pick in picks:
                self.add(pick.task)
            raise
        self._release(picks, result.won)
        for pick in picks:
            not_before = result.not_due.get(pick.task.task_id)
            if not_before is not None:
                # Not due yet (a retry's backoff): back into the index until then.
                self.add(dataclasses.replace(pick.task, not_before=not_before))
        return len(result.won)

    async def _mark_waiting(self) -> None:
        """Tasks this process could not place at once: ``pending → waiting``, saying why.

        At most ``MARK_WAITING_BATCH`` per round, each batch its own short transaction: a
        large backlog (a restart with thousands of pending tasks) must neither hold the
        write lock for seconds nor keep the dispatcher from dispatching meanwhile.
        """
        if not self._pending:
            return
        entries = [e for t in self._pending if (e := self.index.get(t)) is not None]
        self._pending = {e.task_id for e in entries[MARK_WAITING_BATCH:]}
        entries = entries[:MARK_WAITING_BATCH]
        if self._pending:
            self.wake()  # the rest in the next rounds
        if entries:
            reasons = {e.task_id: self._why_waiting(e) for e in entries}
            await self.store.mark_waiting(entries, self.now(), reasons)

    def _why_waiting(self, entry: WaitingTask) -> str:
        """Why a task waits, in words a user can act on: the labels it needs and which of them
        no agent connected here has (other servers may have agents of their own)."""
        if not entry.labels:
            return "waiting for an eligible agent"
        needed = ", ".join(sorted(entry.labels))
        seen: set[str] = set()
        for conn in self.agents:
            if entry.pool in conn.pools and (
                entry.pool == "community" or conn.team_id == entry.team_id
            ):
                seen |= conn.labels
        missing = sorted(entry.labels - seen)
        if not missing:
            return f"waiting for an eligible agent (labels: {needed}); those connected are busy"
        return (
            f"waiting for an eligible agent (labels: {needed}); no agent connected here has "
            + ", ".join(missing)
        )
