"""The engine's storage port, one contract for every implementation: the in-memory store the
engine's unit tests run on, and the SQL store on SQLite and PostgreSQL.

Each scenario drives the port's operations directly and checks what a user would see of the
task (its status, attempt, retries, error) and what the transaction announced (its
``Changes``). If the in-memory store drifts from the SQL one, these fail, so the engine's fast
unit tests (tests/unit/test_engine.py) keep telling the truth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runyard.domain.attempts import (
    AgentKey,
    AttemptEnd,
    Outcome,
    RetryPolicy,
    TaskState,
    Verdict,
    WaitingTask,
)
from runyard.domain.ids import new_id
from runyard.domain.tasks import TaskStatus
from runyard.store.changes import Changes
from runyard.store.db import Database, Session
from runyard.store.engine_store import SqlEngineStore
from runyard.store.memory import MemoryStore
from runyard.store.port import AgentInfo, AttemptRef, EngineStore, Pick
from runyard.store.tables import Agent, Task, Team, User
from runyard.store.work import WorkRepos
from tests.conftest import database_url

TEAM = "01900000-0000-7000-8000-000000000001"
GPU = AgentKey(TEAM, "gpu-1")
OTHER = AgentKey(TEAM, "gpu-2")
POLICY = RetryPolicy(backoff_base_seconds=10, backoff_cap_seconds=10)
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


class Heard:
    """A commit listener that keeps what each committed transaction announced."""

    def __init__(self) -> None:
        self.committed: list[Changes] = []
        self.rolled_back: list[Changes] = []

    async def before_commit(self, session: Session) -> None:
        return None

    async def after_commit(self, changes: Changes) -> None:
        self.committed.append(changes)

    def rolled_back_(self, changes: Changes) -> None:
        self.rolled_back.append(changes)

    def last(self) -> Changes:
        return self.committed[-1]


class Port:
    """One implementation of the port, with a way to add tasks as a submit would."""

    def __init__(self, store: EngineStore, heard: Heard) -> None:
        self.store = store
        self.heard = heard

    async def new_task(self, **fields: Any) -> str:
        raise NotImplementedError

    async def gateway_of(self, agent: AgentKey) -> str | None:
        """The server the agents list shows the agent connected to (None: not listed)."""
        raise NotImplementedError


class MemoryPort(Port):
    def __init__(self) -> None:
        heard = Heard()
        store = MemoryStore()
        store.listener = _Listener(heard)
        super().__init__(store, heard)
        self.memory = store

    async def new_task(self, **fields: Any) -> str:
        fields.setdefault("labels", frozenset({"gpu"}))
        return (await self.memory.submit(TEAM, T0, **fields)).id

    async def gateway_of(self, agent: AgentKey) -> str | None:
        row = self.memory.agents.get(agent)
        return None if row is None else row.get("gateway_id")


class SqlPort(Port):
    def __init__(self, db: Database) -> None:
        heard = Heard()
        db.listener = _Listener(heard)
        super().__init__(SqlEngineStore(db), heard)
        self.db = db

    async def setup(self) -> None:
        async with self.db.write() as session:
            user = User(id=new_id(), email_address="o@example.com", password_hash="x")
            user.created_at = user.updated_at = T0
            session.add(user)
            await session.flush()
            session.add(
                Team(id=TEAM, display_name="t", owner_id=user.id, created_at=T0, updated_at=T0)
            )

    async def new_task(self, **fields: Any) -> str:
        labels = sorted(fields.pop("labels", frozenset({"gpu"})))
        task = Task(
            id=new_id(),
            team_id=TEAM,
            workflow_id=new_id(),
            workflow_slug="wf",
            workflow_version=1,
            task_source="api_key",
            task_status=TaskStatus.PENDING.value,
            priority=fields.pop("priority", 0),
            parameters={},
            workflow_json={},
            tool_type="comfyui",
            dispatch_target="agent",
            target_pool="team",
            required_labels=labels,
            task_timeout=fields.pop("task_timeout", 0),
            max_retries=fields.pop("max_retries", 0),
            retry_count=0,
            attempt=0,
            event_seq=1,
            created_at=T0,
            updated_at=T0,
        )
        assert not fields, fields
        async with self.db.write() as session:
            repos = WorkRepos(session)
            await repos.insert_tasks([task])
            await repos.insert_events([(task.id, 1, "status", {"status": "pending"}, T0)])
        return task.id

    async def gateway_of(self, agent: AgentKey) -> str | None:
        async with self.db.read() as session:
            row = await session.get(Agent, (agent.team_id, agent.agent_id))
        return None if row is None else row.gateway_id

    async def close(self) -> None:
        await self.db.dispose()


class _Listener:
    def __init__(self, heard: Heard) -> None:
        self.heard = heard

    async def before_commit(self, session: Session) -> None:
        return None

    async def after_commit(self, changes: Changes) -> None:
        await self.heard.after_commit(changes)

    def rolled_back(self, changes: Changes) -> None:
        self.heard.rolled_back_(changes)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``memory``, or a migrated, empty database (made before the test's event loop runs)."""
    kind: str = request.param
    return kind if kind == "memory" else database_url(request, kind, tmp_path)


@pytest.fixture
async def port(store_url: str) -> AsyncIterator[Port]:
    if store_url == "memory":
        yield MemoryPort()
        return
    sql = SqlPort(Database(store_url))
    try:
        await sql.setup()
        yield sql
    finally:
        assert isinstance(sql.store, SqlEngineStore)
        await sql.store.stop()
        await sql.close()


def entry(task_id: str, labels: frozenset[str] = frozenset({"gpu"})) -> WaitingTask:
    return WaitingTask(task_id, TEAM, "team", labels, 0, T0, pending=True)


async def claim(port: Port, task_id: str, agent: AgentKey = GPU, now: datetime = T0) -> int:
    """Claim for ``agent``; the attempt number won, or 0."""
    result = await port.store.claim(
        [Pick(entry(task_id), agent, ("gpu",), None)], now, now + timedelta(seconds=30), "gw-1"
    )
    return result.won[0].attempt if result.won else 0


async def state(port: Port, task_id: str) -> TaskState:
    found = await port.store.task_state(task_id)
    assert found is not None
    return found


def ref(task_id: str, attempt: int = 1) -> AttemptRef:
    return AttemptRef(task_id, attempt)


LEASE = T0 + timedelta(seconds=30)


async def test_a_new_task_waits_and_is_claimed_once(port: Port) -> None:
    task_id = await port.new_task()
    assert port.heard.last().waiting[task_id].pending
    assert [w.task_id for w in await port.store.waiting_page(10, "")] == [task_id]
    assert await claim(port, task_id) == 1
    claimed = port.heard.last()
    assert [c.id for c in claimed.claims] == [task_id] and task_id in claimed.events
    assert task_id not in claimed.waiting
    assert await claim(port, task_id, OTHER) == 0  # already queued: nobody else gets it
    now = await state(port, task_id)
    assert (now.status, now.attempt, now.agent_id) == (TaskStatus.QUEUED, 1, "gpu-1")
    assert await port.store.waiting_task(task_id) is None


async def test_mark_waiting_moves_only_pending_tasks(port: Port) -> None:
    pending, claimed = await port.new_task(), await port.new_task()
    await claim(port, claimed)
    why = {pending: "no agent has sdxl", claimed: "no agent"}
    moved = await port.store.mark_waiting([entry(pending), entry(claimed)], T0, why)
    assert moved == [pending]
    assert (await state(port, pending)).status is TaskStatus.WAITING
    assert not port.heard.last().waiting[pending].pending


async def test_the_ack_is_fenced(port: Port) -> None:
    task_id = await port.new_task(task_timeout=60)
    await claim(port, task_id)
    for timeout in (60, None):  # the fast path (timeout known) and the careful one
        stale = await port.store.start(ref(task_id, 2), GPU, T0, LEASE, timeout)
        assert stale.verdict is Verdict.STALE
        other = await port.store.start(ref(task_id), OTHER, T0, LEASE, timeout)
        assert other.verdict is Verdict.STALE
    started = await port.store.start(ref(task_id), GPU, T0, LEASE, 60)
    assert (started.verdict, started.status) == (Verdict.HOLDS, TaskStatus.RUNNING)
    running = await state(port, task_id)
    assert running.status is TaskStatus.RUNNING
    assert running.deadline_at == T0 + timedelta(seconds=60)
    again = await port.store.start(ref(task_id), GPU, T0, LEASE, None)
    assert again.verdict is Verdict.HOLDS  # a repeated ACK


async def test_events_only_from_the_holder_while_allowed(port: Port) -> None:
    task_id = await port.new_task()
    await claim(port, task_id)
    running = frozenset({TaskStatus.RUNNING})
    held = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING})
    payload = {"progress": 0.5}
    assert not await port.store.append_event(ref(task_id), GPU, "progress", payload, T0, running)
    assert await port.store.append_event(ref(task_id), GPU, "log", {"lines": []}, T0, held)
    assert not await port.store.append_event(ref(task_id), OTHER, "log", {}, T0, held)
    assert not await port.store.append_event(ref(task_id, 2), GPU, "log", {}, T0, held)


async def test_complete_without_an_ack_and_after_the_end(port: Port) -> None:
    task_id = await port.new_task()
    await claim(port, task_id)
    done = await port.store.complete(ref(task_id), GPU, T0, {"image_count": 1}, [])
    assert (done.verdict, done.status) == (Verdict.HOLDS, TaskStatus.COMPLETED)
    assert (await state(port, task_id)).status is TaskStatus.COMPLETED
    late = await port.store.complete(ref(task_id), GPU, T0, {}, [])
    assert (late.verdict, late.status) == (Verdict.ENDED, TaskStatus.COMPLETED)
    stale = await port.store.start(ref(task_id), GPU, T0, LEASE, None)
    assert stale.verdict is Verdict.ENDED


async def _running(port: Port, **fields: Any) -> str:
    task_id = await port.new_task(**fields)
    await claim(port, task_id)
    await port.store.start(ref(task_id), GPU, T0, LEASE, None)
    return task_id


def always(end: AttemptEnd) -> Any:
    return lambda task: end


async def test_a_retryable_end_waits_with_backoff_then_fails(port: Port) -> None:
    task_id = await _running(port, max_retries=1)
    oom = AttemptEnd("CUDA OOM", True, Outcome.FAILED)
    ended = await port.store.end_attempt(task_id, always(oom), POLICY, T0)
    assert ended is not None and ended.plan.requeued
    assert port.heard.last().waiting[task_id].not_before is not None
    retried = await state(port, task_id)
    assert (retried.status, retried.retry_count, retried.agent_id) == (TaskStatus.WAITING, 1, None)
    # Not due before its backoff; then attempt 2.
    assert await claim(port, task_id) == 0
    assert await claim(port, task_id, now=T0 + timedelta(seconds=13)) == 2
    await port.store.start(ref(task_id, 2), GPU, T0, LEASE, None)
    await port.store.end_attempt(task_id, always(oom), POLICY, T0)
    failed = await port.store.task_state(task_id)
    assert failed is not None and failed.status is TaskStatus.FAILED


async def test_ends_that_do_not_retry(port: Port) -> None:
    broken = await _running(port, max_retries=3)
    bad = AttemptEnd("bad graph", False, Outcome.FAILED)
    await port.store.end_attempt(broken, always(bad), POLICY, T0)
    assert (await state(port, broken)).status is TaskStatus.FAILED
    handed = await _running(port)
    back = AttemptEnd("stopping", True, Outcome.ABANDONED, stop="no ACK")
    await port.store.end_attempt(handed, always(back), POLICY, T0)
    waiting = await state(port, handed)
    assert (waiting.status, waiting.retry_count) == (TaskStatus.WAITING, 0)
    [stop] = port.heard.last().stops
    assert (stop.task_id, stop.agent_id, stop.attempt, stop.reason) == (
        handed,
        "gpu-1",
        1,
        "no ACK",
    )
    left = await _running(port)
    assert await port.store.end_attempt(left, lambda task: None, POLICY, T0) is None
    assert (await state(port, left)).status is TaskStatus.RUNNING


async def test_expired_leases_and_renewal(port: Port) -> None:
    task_id = await _running(port)
    assert await port.store.expired(T0 + timedelta(seconds=29), 10) == []
    [lapsed] = await port.store.expired(T0 + timedelta(seconds=31), 10)
    assert (lapsed.id, lapsed.attempt) == (task_id, 1)
    await port.store.renew_leases([task_id], T0 + timedelta(seconds=60))
    assert await port.store.expired(T0 + timedelta(seconds=31), 10) == []


async def test_a_reconnecting_agent_keeps_only_what_it_holds(port: Port) -> None:
    mine, theirs = await _running(port), await port.new_task()
    await claim(port, theirs, OTHER)
    info = AgentInfo(GPU, "cred", "idle", frozenset({"gpu"}), frozenset({"team"}), 1)
    kept = await port.store.agent_connected(
        info, "gw-2", T0, [ref(mine), ref(theirs), ref(mine, 7)], LEASE
    )
    assert [(k.task_id, k.attempt, k.running) for k in kept] == [(mine, 1, True)]


async def test_a_late_disconnect_never_unlists_a_newer_connection(port: Port) -> None:
    info = AgentInfo(GPU, "cred", "idle", frozenset({"gpu"}), frozenset({"team"}), 1)
    first, second = T0, T0 + timedelta(microseconds=1)
    await port.store.agent_connected(info, "gw-1", first, [], LEASE)
    await port.store.agent_connected(info, "gw-1", second, [], LEASE)  # a quick reconnect
    await port.store.agent_disconnected(GPU, "gw-1", first)  # the old socket's, committed late
    assert await port.gateway_of(GPU) == "gw-1"
    await port.store.agent_disconnected(GPU, "gw-1", second)
    assert await port.gateway_of(GPU) is None
