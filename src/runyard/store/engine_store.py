"""The engine's storage port (``store/port.py``) on SQLite and PostgreSQL.

The frames of every lifecycle — ACKs, completions, progress and log events — are single
conditional ``UPDATE … RETURNING`` statements run through the group commit (one
transaction for all those that arrive together, ``store/batch.py``); anything unusual (a
repeated ACK, a stale attempt, a completion without an ACK) falls back to the careful path
that locks and loads the row and applies ``domain.attempts``' rules to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, cast

from runyard.domain.attempts import (
    WAITING,
    AgentKey,
    AttemptEnd,
    RetryPolicy,
    Stop,
    TaskState,
    Verdict,
    WaitingTask,
    plan_end,
    verdict,
)
from runyard.domain.tasks import TaskStatus
from runyard.domain.times import iso
from runyard.store.agents import AgentRepos, Transitioned
from runyard.store.batch import GroupCommit
from runyard.store.db import Database, Session
from runyard.store.files import FileRepos
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
from runyard.store.tables import Task, TaskOutput
from runyard.store.work import WorkRepos, task_state, waiting_entry


class SqlEngineStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.commits = GroupCommit(db, workers=1 if db.is_sqlite else 4)

    async def stop(self) -> None:
        await self.commits.stop()

    # -- this server (gateway) and its agents -----------------------------------------------

    async def gateway_started(self, gateway_id: str, now: datetime, leases_until: datetime) -> int:
        async with self.db.write() as session:
            agents = AgentRepos(session)
            await agents.touch_gateway(gateway_id, now)
            return await agents.extend_all_leases(leases_until)

    async def gateway_alive(
        self, gateway_id: str, agents: Sequence[AgentKey], now: datetime, dead_before: datetime
    ) -> None:
        async with self.db.write() as session:
            repos = AgentRepos(session)
            await repos.set_heartbeats(gateway_id, [(a.team_id, a.agent_id) for a in agents], now)
            await repos.touch_gateway(gateway_id, now)
            await repos.release_agents_of_dead_gateways(dead_before)

    async def gateway_stopped(self, gateway_id: str) -> None:
        async with self.db.write() as session:
            await AgentRepos(session).forget_gateway(gateway_id)

    async def agent_connected(
        self,
        agent: AgentInfo,
        gateway_id: str,
        now: datetime,
        running: Sequence[AttemptRef],
        lease_until: datetime,
    ) -> list[Resumed]:
        kept: list[Resumed] = []
        async with self.db.write() as session:
            row = await AgentRepos(session).connected_row(agent.key.team_id, agent.key.agent_id)
            row.gateway_id = gateway_id
            row.credential_id = agent.credential_id
            row.agent_status = agent.status
            row.labels = sorted(agent.labels)
            row.pools = sorted(agent.pools)
            row.gpu_capacity = agent.capacity
            row.agent_version = agent.agent_version
            row.tool = agent.tool
            row.tool_version = agent.tool_version
            row.comfyui_version = agent.comfyui_version
            row.platform_arch = agent.platform_arch
            row.system_stats = agent.system_stats
            row.sync_phase = row.sync_detail = None
            row.sync_percent = None
            row.connected_at = now
            row.last_heartbeat = now
            repos = WorkRepos(session)
            for ref in running:
                task, _ = await _lock_held(repos, ref, agent.key)
                if task is None:
                    continue
                task.gateway_id = gateway_id
                is_running = task.task_status == TaskStatus.RUNNING.value
                if is_running:
                    task.lease_expires_at = lease_until
                kept.append(Resumed(ref.task_id, ref.attempt, task.task_timeout, is_running))
        return kept

    async def agent_disconnected(
        self, agent: AgentKey, gateway_id: str, connected_at: datetime
    ) -> None:
        async with self.db.write() as session:
            await AgentRepos(session).disconnect(
                agent.team_id, agent.agent_id, gateway_id, connected_at
            )

    async def agent_status(self, agent: AgentKey, status: AgentStatus) -> None:
        async with self.db.write() as session:
            await AgentRepos(session).set_status(
                agent.team_id,
                agent.agent_id,
                status.status,
                status.sync_phase,
                status.sync_detail,
                status.sync_percent,
            )

    async def credential_states(
        self, credential_ids: Sequence[str]
    ) -> dict[str, tuple[datetime | None, datetime | None]]:
        async with self.db.read() as session:
            return await AgentRepos(session).credential_states(credential_ids)

    # -- the queue --------------------------------------------------------------------------

    async def waiting_page(self, limit: int, after: str) -> list[WaitingTask]:
        async with self.db.read() as session:
            return await AgentRepos(session).waiting_tasks(limit=limit, after=after)

    async def waiting_task(self, task_id: str) -> WaitingTask | None:
        async with self.db.read() as session:
            return await AgentRepos(session).waiting_task(task_id)

    async def claim(
        self,
        picks: Sequence[Pick],
        now: datetime,
        ack_deadline: datetime,
        gateway_id: str,
        tx: Any = None,
    ) -> ClaimResult:
        if tx is not None:
            return await self._claim_in(cast(Session, tx), picks, now, ack_deadline, gateway_id)
        async with self.db.write() as session:
            return await self._claim_in(session, picks, now, ack_deadline, gateway_id)

    async def _claim_in(
        self,
        session: Session,
        picks: Sequence[Pick],
        now: datetime,
        ack_deadline: datetime,
        gateway_id: str,
    ) -> ClaimResult:
        agents = AgentRepos(session)
        result = ClaimResult()
        for pick in picks:
            claimed = await agents.claim(
                pick.task.task_id,
                now,
                agent=pick.agent,
                agent_labels=list(pick.labels),
                gateway_id=gateway_id,
                gpu_type=pick.gpu_type,
                ack_deadline=ack_deadline,
                # PostgreSQL: skip a row another replica holds locked, never wait for it.
                for_update=not self.db.is_sqlite,
            )
            if claimed is not None:
                result.won.append(claimed)
                continue
            blocker = await agents.claim_blocker(pick.task.task_id)
            if blocker is not None and TaskStatus(blocker[0]) in WAITING:
                not_before = blocker[1]
                if not_before is not None and not_before > now:
                    result.not_due[pick.task.task_id] = not_before
        if result.won:
            await agents.record_claims(result.won, gateway_id, now, iso(now))
            for claimed in result.won:
                session.changes.waiting.pop(claimed.id, None)
            session.changes.claims.extend(result.won)
        return result

    async def mark_waiting(
        self, tasks: Sequence[WaitingTask], now: datetime, reasons: dict[str, str]
    ) -> list[str]:
        by_id = {t.task_id: t for t in tasks}
        why = {t: reasons.get(t, "waiting for an eligible agent") for t in by_id}
        async with self.db.write() as session:
            moved = await AgentRepos(session).mark_waiting(why, now, iso(now))
            # Another replica may have skipped these rows while they were locked here (and
            # dropped them from its index): announced again so every one can place them.
            for task_id in moved:
                session.changes.waiting[task_id] = replace(by_id[task_id], pending=False)
            return moved

    async def task_inputs(self, task_id: str) -> list[InputFile]:
        async with self.db.read() as session:
            rows = await FileRepos(session).task_inputs(task_id)
        return [
            InputFile(
                param=param,
                key=key,
                content_type=None if row is None else row.content_type,
                file_name=None if row is None else row.file_name,
                present=row is not None,
            )
            for param, row, key in rows
        ]

    # -- attempts ---------------------------------------------------------------------------

    async def task_state(self, task_id: str) -> TaskState | None:
        async with self.db.read() as session:
            task = await AgentRepos(session).task(task_id)
        return None if task is None else task_state(task)

    async def start(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        now: datetime,
        lease_until: datetime,
        timeout: int | None,
    ) -> Checked:
        if timeout is not None:
            deadline = now + timedelta(seconds=timeout) if timeout else None

            async def job(session: Session) -> bool:
                done = await AgentRepos(session).start_attempt(
                    ref.task_id,
                    ref.attempt,
                    team_id=agent.team_id,
                    agent_id=agent.agent_id,
                    now=now,
                    lease_expires_at=lease_until,
                    deadline_at=deadline,
                )
                if done is None:
                    return False
                who = {"agent_id": agent.agent_id, "attempt": ref.attempt}
                await _record_transition(session, ref, done, TaskStatus.RUNNING, now, **who)
                return True

            if await self.commits.run(job):
                return Checked(Verdict.HOLDS, TaskStatus.RUNNING)
        # The careful path: a repeated ACK, a stale attempt, an ended task.
        async with self.db.write() as session:
            repos = WorkRepos(session)
            task, checked = await _lock_held(repos, ref, agent)
            if task is None or checked.status is TaskStatus.RUNNING:
                return checked  # refused, or a repeated ACK
            await repos.change_status(
                task,
                TaskStatus.RUNNING,
                now,
                extra={"agent_id": agent.agent_id, "attempt": ref.attempt},
                started_at=now,
                lease_expires_at=lease_until,
                deadline_at=(
                    now + timedelta(seconds=task.task_timeout) if task.task_timeout else None
                ),
            )
            await AgentRepos(session).mark_acked(ref.task_id, ref.attempt, now)
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
        async def job(session: Session) -> bool:
            seq = await AgentRepos(session).next_event_seq(
                ref.task_id,
                ref.attempt,
                team_id=agent.team_id,
                agent_id=agent.agent_id,
                statuses=[s.value for s in statuses],
            )
            if seq is None:
                return False
            await WorkRepos(session).insert_event(ref.task_id, seq, event, payload, now)
            return True

        return await self.commits.run(job)

    async def complete(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        now: datetime,
        output: dict[str, Any],
        attach: Sequence[Attach],
    ) -> Checked:

        async def job(session: Session) -> bool:
            done = await AgentRepos(session).complete_attempt(
                ref.task_id,
                ref.attempt,
                team_id=agent.team_id,
                agent_id=agent.agent_id,
                now=now,
                task_output=output,
            )
            if done is None:
                return False
            if attach:
                await FileRepos(session).attach(ref.task_id, ref.attempt, attach)
            await _record_transition(session, ref, done, TaskStatus.COMPLETED, now, output=output)
            return True

        if await self.commits.run(job):
            return Checked(Verdict.HOLDS, TaskStatus.COMPLETED)
        # The careful path: completed without an ACK, or refused.
        async with self.db.write() as session:
            repos = WorkRepos(session)
            task, checked = await _lock_held(repos, ref, agent)
            if task is None:
                return checked
            if checked.status is TaskStatus.QUEUED:
                # Completed without an ACK: count it as started now.
                await repos.change_status(task, TaskStatus.RUNNING, now, started_at=now)
            await repos.change_status(
                task,
                TaskStatus.COMPLETED,
                now,
                task_output=output,
                lease_expires_at=None,
                deadline_at=None,
            )
            if attach:
                await FileRepos(session).attach(ref.task_id, ref.attempt, attach)
            agents = AgentRepos(session)
            await agents.end_attempt_row(ref.task_id, ref.attempt, now, "completed", None)
            await agents.count_completed(agent.team_id, agent.agent_id)
        return Checked(Verdict.HOLDS, TaskStatus.COMPLETED)

    async def end_attempt(
        self,
        task_id: str,
        decide: Callable[[TaskState], AttemptEnd | None],
        policy: RetryPolicy,
        now: datetime,
    ) -> Ended | None:
        async with self.db.write() as session:
            repos = WorkRepos(session)
            task = await repos.task_for_update(task_id)
            if task is None:
                return None
            state = task_state(task)
            end = decide(state)
            if end is None:
                return None
            plan = plan_end(state, end, policy, now)
            await AgentRepos(session).end_attempt_row(
                task.id, task.attempt, now, end.outcome.value, end.error
            )
            await repos.change_status(task, plan.target, now, extra=plan.event, **plan.fields)
            if plan.requeued:
                session.changes.waiting[task.id] = waiting_entry(task)
            if end.stop is not None and state.agent_id is not None:
                session.changes.stops.append(
                    Stop(task.id, task.team_id, state.agent_id, state.attempt, end.stop)
                )
        return Ended(state, end, plan)

    async def close_attempt(self, ref: AttemptRef, now: datetime, outcome: str) -> None:
        async with self.db.write() as session:
            await AgentRepos(session).end_attempt_row(
                ref.task_id, ref.attempt, now, outcome, None, only_open=True
            )

    async def expired(self, now: datetime, limit: int) -> list[TaskState]:
        async with self.db.read() as session:
            rows = await AgentRepos(session).expired_leases(now, limit)
        return [task_state(row) for row in rows]

    async def renew_leases(self, task_ids: Sequence[str], until: datetime) -> None:
        if not task_ids:
            return
        async with self.db.write() as session:
            await AgentRepos(session).renew_leases(task_ids, until)

    # -- outputs ----------------------------------------------------------------------------

    async def record_outputs(
        self, ref: AttemptRef, outputs: Sequence[OutputSlot], now: datetime
    ) -> None:
        async with self.db.write() as session:
            repos = FileRepos(session)
            for out in outputs:
                await repos.record_output(
                    TaskOutput(
                        task_id=ref.task_id,
                        attempt=ref.attempt,
                        storage_key=out.storage_key,
                        name=out.name,
                        content_type=out.content_type,
                        size=out.size,
                        created_at=now,
                    )
                )

    async def attempt_outputs(self, ref: AttemptRef) -> dict[str, OutputSlot]:
        async with self.db.read() as session:
            rows = await FileRepos(session).attempt_outputs(ref.task_id, ref.attempt)
        return {
            key: OutputSlot(row.storage_key, row.name, row.content_type, row.size)
            for key, row in rows.items()
        }


async def _lock_held(
    repos: WorkRepos, ref: AttemptRef, agent: AgentKey
) -> tuple[Task | None, Checked]:
    """Lock the task and judge ``ref`` (``domain.attempts.verdict``): the task, only when the
    agent holds the attempt, and the verdict with the task's status."""
    task = await repos.task_for_update(ref.task_id)
    state = None if task is None else task_state(task)
    checked = Checked(
        verdict(state, ref.task_id, ref.attempt, agent), None if state is None else state.status
    )
    return (task if checked.verdict is Verdict.HOLDS else None), checked


async def _record_transition(
    session: Session,
    ref: AttemptRef,
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


def _implements_the_port(store: SqlEngineStore) -> EngineStore:
    return store  # mypy checks that the SQL store implements the whole port
