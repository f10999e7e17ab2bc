"""The engine's storage port in memory: for the engine's unit tests (no database, no server).

It applies the same rules as the SQL store (``domain.attempts``: fencing, retries; the
transition table of ``domain.tasks``) to plain dictionaries, and hands each transaction's
changes to its listener as the SQL store's database does. A transaction that raises is not
undone here (nothing is written before its last check), but its listener hears that it rolled
back. :meth:`MemoryStore.submit` stands in for ``services.tasks.submit``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from runyard.domain.attempts import (
    HELD,
    WAITING,
    AgentKey,
    AttemptEnd,
    Claimed,
    RetryPolicy,
    Stop,
    TaskState,
    Verdict,
    WaitingTask,
    plan_end,
    verdict,
)
from runyard.domain.ids import new_id
from runyard.domain.tasks import TaskStatus, check_transition
from runyard.domain.times import iso
from runyard.store.changes import Changes, CommitListener, Unheard
from runyard.store.port import (
    AgentInfo,
    AgentStatus,
    Attach,
    AttemptRef,
    Checked,
    ClaimResult,
    Ended,
    EngineStore,
    InputFile,
    OutputSlot,
    Pick,
    Resumed,
)


@dataclass
class MemoryTask:
    id: str
    team_id: str
    created_at: datetime
    status: TaskStatus = TaskStatus.PENDING
    priority: int = 0
    labels: frozenset[str] = frozenset()
    target_pool: str = "team"
    attempt: int = 0
    agent_id: str | None = None
    gateway_id: str | None = None
    retry_count: int = 0
    max_retries: int = 0
    task_timeout: int = 0
    not_before: datetime | None = None
    lease_expires_at: datetime | None = None
    deadline_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    task_output: dict[str, Any] | None = None
    task_error: str | None = None
    workflow_id: str = "workflow"
    tool_type: str = "comfyui"
    workflow_json: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    #: ``(event_type, payload)`` in order (the ``task_events`` rows).
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def state(self) -> TaskState:
        return TaskState(
            id=self.id,
            team_id=self.team_id,
            status=self.status,
            attempt=self.attempt,
            agent_id=self.agent_id,
            target_pool=self.target_pool,
            retry_count=self.retry_count,
            max_retries=self.max_retries,
            task_timeout=self.task_timeout,
            lease_expires_at=self.lease_expires_at,
            deadline_at=self.deadline_at,
        )

    def waiting(self) -> WaitingTask:
        return WaitingTask(
            task_id=self.id,
            team_id=self.team_id,
            pool=self.target_pool,
            labels=self.labels,
            priority=self.priority,
            created_at=self.created_at,
            not_before=self.not_before,
            pending=self.status is TaskStatus.PENDING,
        )

    @property
    def statuses(self) -> list[str]:
        """The statuses its events went through, in order."""
        return [str(p["status"]) for _, p in self.events if "status" in p]


@dataclass
class MemoryTx:
    changes: Changes = field(default_factory=Changes)


@dataclass
class AttemptRow:
    agent_id: str
    dispatched_at: datetime
    acked_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    error: str | None = None


class MemoryStore:
    def __init__(self) -> None:
        self.tasks: dict[str, MemoryTask] = {}
        self.attempts: dict[tuple[str, int], AttemptRow] = {}
        self.agents: dict[AgentKey, dict[str, Any]] = {}
        self.gateways: dict[str, datetime] = {}
        self.credentials: dict[str, tuple[datetime | None, datetime | None]] = {}
        self.inputs: dict[str, list[InputFile]] = {}
        self.outputs: dict[tuple[str, int], dict[str, OutputSlot]] = {}
        self.attached: dict[str, list[Attach]] = {}
        #: Hears each transaction's changes (the engine's publisher).
        self.listener: CommitListener = Unheard()

    # -- transactions and tasks -------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTx]:
        tx = MemoryTx()
        try:
            yield tx
        except BaseException:
            if tx.changes:
                self.listener.rolled_back(tx.changes)
            raise
        if tx.changes:
            await self.listener.after_commit(tx.changes)

    def _change(
        self,
        tx: MemoryTx,
        task: MemoryTask,
        target: TaskStatus,
        now: datetime,
        extra: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        check_transition(task.status, target)
        task.status = target
        for name, value in fields.items():
            setattr(task, name, value)
        if target.is_terminal and task.completed_at is None:
            task.completed_at = now
        payload: dict[str, Any] = {"task_id": task.id, "status": target.value}
        payload["timestamp"] = iso(now)
        if target is TaskStatus.FAILED:
            payload["error"] = task.task_error or ""
        if target is TaskStatus.COMPLETED:
            payload["output"] = task.task_output
        payload.update(extra or {})
        task.events.append((target.value if target.is_terminal else "status", payload))
        tx.changes.events.add(task.id)

    async def submit(
        self,
        team_id: str,
        now: datetime,
        *,
        claim: Callable[[MemoryTx], Any] | None = None,
        **fields: Any,
    ) -> MemoryTask:
        """A new task, as ``services.tasks.submit`` stores it; ``claim``: the engine's
        ``claim_at_submit``, called in the same transaction."""
        task = MemoryTask(id=new_id(), team_id=team_id, created_at=now, **fields)
        async with self.transaction() as tx:
            self.tasks[task.id] = task
            task.events.append(("status", {"task_id": task.id, "status": "pending"}))
            tx.changes.events.add(task.id)
            tx.changes.waiting[task.id] = task.waiting()
            if claim is not None:
                await claim(tx)
        return task

    async def cancel(self, task_id: str, now: datetime) -> None:
        """As ``services.tasks.cancel``: the task ends, its agent is told to stop."""
        task = self.tasks[task_id]
        async with self.transaction() as tx:
            if task.status.is_terminal:
                return
            agent_id, attempt = task.agent_id, task.attempt
            self._change(tx, task, TaskStatus.CANCELLED, now)
            tx.changes.stops.append(
                Stop(task.id, task.team_id, agent_id, attempt, "cancelled", ended=True)
            )

    # -- this server (gateway) and its agents -----------------------------------------------

    async def gateway_started(self, gateway_id: str, now: datetime, leases_until: datetime) -> int:
        self.gateways[gateway_id] = now
        extended = 0
        for task in self.tasks.values():
            if task.status in HELD and (task.lease_expires_at or now) < leases_until:
                task.lease_expires_at = leases_until
                extended += 1
        return extended

    async def gateway_alive(
        self, gateway_id: str, agents: Sequence[AgentKey], now: datetime, dead_before: datetime
    ) -> None:
        self.gateways[gateway_id] = now
        for key in agents:
            if key in self.agents:
                self.agents[key]["last_heartbeat"] = now
        for dead in [g for g, seen in self.gateways.items() if seen < dead_before]:
            del self.gateways[dead]
            for row in self.agents.values():
                if row.get("gateway_id") == dead:
                    row["gateway_id"] = None

    async def gateway_stopped(self, gateway_id: str) -> None:
        self.gateways.pop(gateway_id, None)
        for row in self.agents.values():
            if row.get("gateway_id") == gateway_id:
                row["gateway_id"] = None

    async def agent_connected(
        self,
        agent: AgentInfo,
        gateway_id: str,
        now: datetime,
        running: Sequence[AttemptRef],
        lease_until: datetime,
    ) -> list[Resumed]:
        self.agents[agent.key] = {"info": agent, "gateway_id": gateway_id, "connected_at": now}
        kept: list[Resumed] = []
        for ref in running:
            task = self.tasks.get(ref.task_id)
            state = None if task is None else task.state()
            if task is None or verdict(state, ref.task_id, ref.attempt, agent.key) is not (
                Verdict.HOLDS
            ):
                continue
            task.gateway_id = gateway_id
            is_running = task.status is TaskStatus.RUNNING
            if is_running:
                task.lease_expires_at = lease_until
            kept.append(Resumed(ref.task_id, ref.attempt, task.task_timeout, is_running))
        return kept

    async def agent_disconnected(
        self, agent: AgentKey, gateway_id: str, connected_at: datetime
    ) -> None:
        row = self.agents.get(agent)
        if (
            row is not None
            and row.get("gateway_id") == gateway_id
            and row.get("connected_at") == connected_at
        ):
            row["gateway_id"] = None

    async def agent_status(self, agent: AgentKey, status: AgentStatus) -> None:
        if agent in self.agents:
            self.agents[agent]["status"] = status

    async def credential_states(
        self, credential_ids: Sequence[str]
    ) -> dict[str, tuple[datetime | None, datetime | None]]:
        return {c: self.credentials.get(c, (None, None)) for c in credential_ids}

    # -- the queue --------------------------------------------------------------------------

    def _waiting(self) -> list[MemoryTask]:
        return sorted((t for t in self.tasks.values() if t.status in WAITING), key=lambda t: t.id)

    async def waiting_page(self, limit: int, after: str) -> list[WaitingTask]:
        return [t.waiting() for t in self._waiting() if t.id > after][:limit]

    async def waiting_task(self, task_id: str) -> WaitingTask | None:
        task = self.tasks.get(task_id)
        return task.waiting() if task is not None and task.status in WAITING else None

    async def claim(
        self,
        picks: Sequence[Pick],
        now: datetime,
        ack_deadline: datetime,
        gateway_id: str,
        tx: Any = None,
    ) -> ClaimResult:
        if tx is not None:
            return self._claim_in(tx, picks, now, ack_deadline, gateway_id)
        async with self.transaction() as own:
            return self._claim_in(own, picks, now, ack_deadline, gateway_id)

    def _claim_in(
        self,
        tx: MemoryTx,
        picks: Sequence[Pick],
        now: datetime,
        ack_deadline: datetime,
        gateway_id: str,
    ) -> ClaimResult:
        result = ClaimResult()
        for pick in picks:
            task = self.tasks.get(pick.task.task_id)
            if task is None or task.status not in WAITING:
                continue
            if task.not_before is not None and task.not_before > now:
                result.not_due[task.id] = task.not_before
                continue
            self._change(
                tx,
                task,
                TaskStatus.QUEUED,
                now,
                {"agent_id": pick.agent.agent_id, "attempt": task.attempt + 1},
                attempt=task.attempt + 1,
                agent_id=pick.agent.agent_id,
                gateway_id=gateway_id,
                lease_expires_at=ack_deadline,
                deadline_at=None,
                not_before=None,
            )
            self.attempts[(task.id, task.attempt)] = AttemptRow(pick.agent.agent_id, now)
            claimed = Claimed(
                id=task.id,
                team_id=task.team_id,
                attempt=task.attempt,
                event_seq=len(task.events),
                workflow_id=task.workflow_id,
                tool_type=task.tool_type,
                workflow_json=task.workflow_json,
                parameters=task.parameters,
                task_timeout=task.task_timeout,
                agent=pick.agent,
            )
            result.won.append(claimed)
            tx.changes.waiting.pop(task.id, None)
            tx.changes.claims.append(claimed)
        return result

    async def mark_waiting(
        self, tasks: Sequence[WaitingTask], now: datetime, reasons: dict[str, str]
    ) -> list[str]:
        moved: list[str] = []
        async with self.transaction() as tx:
            for entry in tasks:
                task = self.tasks.get(entry.task_id)
                if task is not None and task.status is TaskStatus.PENDING:
                    reason = reasons.get(task.id, "waiting for an eligible agent")
                    self._change(tx, task, TaskStatus.WAITING, now, {"reason": reason})
                    tx.changes.waiting[task.id] = replace(entry, pending=False)
                    moved.append(task.id)
        return moved

    async def task_inputs(self, task_id: str) -> list[InputFile]:
        return list(self.inputs.get(task_id, ()))

    # -- attempts ---------------------------------------------------------------------------

    async def task_state(self, task_id: str) -> TaskState | None:
        task = self.tasks.get(task_id)
        return None if task is None else task.state()

    def _checked(self, ref: AttemptRef, agent: AgentKey) -> tuple[MemoryTask | None, Checked]:
        task = self.tasks.get(ref.task_id)
        state = None if task is None else task.state()
        checked = verdict(state, ref.task_id, ref.attempt, agent)
        return task, Checked(checked, None if state is None else state.status)

    async def start(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        now: datetime,
        lease_until: datetime,
        timeout: int | None,
    ) -> Checked:
        task, checked = self._checked(ref, agent)
        if task is None or checked.verdict is not Verdict.HOLDS:
            return checked
        if task.status is TaskStatus.RUNNING:
            return checked  # a repeated ACK
        async with self.transaction() as tx:
            self._change(
                tx,
                task,
                TaskStatus.RUNNING,
                now,
                {"agent_id": agent.agent_id, "attempt": ref.attempt},
                started_at=now,
                lease_expires_at=lease_until,
                deadline_at=(
                    now + timedelta(seconds=task.task_timeout) if task.task_timeout else None
                ),
            )
            self.attempts[(task.id, ref.attempt)].acked_at = now
        return Checked(Verdict.HOLDS, TaskStatus.RUNNING)

    async def append_event(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        event: str,
        payload: dict[str, Any],
        now: datetime,
        statuses: frozenset[TaskStatus],
    ) -> bool:
        task = self.tasks.get(ref.task_id)
        state = None if task is None else task.state()
        if task is None or state is None or task.status not in statuses:
            return False
        if not (task.attempt == ref.attempt and task.agent_id == agent.agent_id):
            return False
        async with self.transaction() as tx:
            task.events.append((event, payload))
            tx.changes.events.add(task.id)
        return True

    async def complete(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        now: datetime,
        output: dict[str, Any],
        attach: Sequence[Attach],
    ) -> Checked:
        task, checked = self._checked(ref, agent)
        if task is None or checked.verdict is not Verdict.HOLDS:
            return checked
        async with self.transaction() as tx:
            if task.status is TaskStatus.QUEUED:
                self._change(tx, task, TaskStatus.RUNNING, now, started_at=now)
            self._change(
                tx,
                task,
                TaskStatus.COMPLETED,
                now,
                task_output=output,
                lease_expires_at=None,
                deadline_at=None,
            )
            self.attached[task.id] = list(attach)
            row = self.attempts[(task.id, ref.attempt)]
            row.ended_at, row.outcome = now, "completed"
        return Checked(Verdict.HOLDS, TaskStatus.COMPLETED)

    async def end_attempt(
        self,
        task_id: str,
        decide: Callable[[TaskState], AttemptEnd | None],
        policy: RetryPolicy,
        now: datetime,
    ) -> Ended | None:
        task = self.tasks.get(task_id)
        if task is None:
            return None
        state = task.state()
        end = decide(state)
        if end is None:
            return None
        plan = plan_end(state, end, policy, now)
        async with self.transaction() as tx:
            row = self.attempts.get((task.id, task.attempt))
            if row is not None:
                row.ended_at, row.outcome, row.error = now, end.outcome.value, end.error
            fields = {k: v for k, v in plan.fields.items() if k not in ("agent_labels", "gpu_type")}
            self._change(tx, task, plan.target, now, plan.event, **fields)
            if plan.requeued:
                tx.changes.waiting[task.id] = task.waiting()
            if end.stop is not None and state.agent_id is not None:
                tx.changes.stops.append(
                    Stop(task.id, task.team_id, state.agent_id, state.attempt, end.stop)
                )
        return Ended(state, end, plan)

    async def close_attempt(self, ref: AttemptRef, now: datetime, outcome: str) -> None:
        row = self.attempts.get((ref.task_id, ref.attempt))
        if row is not None and row.ended_at is None:
            row.ended_at, row.outcome = now, outcome

    async def expired(self, now: datetime, limit: int) -> list[TaskState]:
        found = [
            t.state()
            for t in self.tasks.values()
            if (t.status in HELD and t.lease_expires_at is not None and t.lease_expires_at < now)
            or (
                t.status is TaskStatus.RUNNING and t.deadline_at is not None and t.deadline_at < now
            )
        ]
        return found[:limit]

    async def renew_leases(self, task_ids: Sequence[str], until: datetime) -> None:
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is not None and task.status is TaskStatus.RUNNING:
                task.lease_expires_at = until

    # -- outputs ----------------------------------------------------------------------------

    async def record_outputs(
        self, ref: AttemptRef, outputs: Sequence[OutputSlot], now: datetime
    ) -> None:
        slots = self.outputs.setdefault((ref.task_id, ref.attempt), {})
        for slot in outputs:
            slots[slot.storage_key] = slot

    async def attempt_outputs(self, ref: AttemptRef) -> dict[str, OutputSlot]:
        return dict(self.outputs.get((ref.task_id, ref.attempt), {}))


def _implements_the_port(store: MemoryStore) -> EngineStore:
    return store  # mypy checks that the in-memory store implements the whole port
