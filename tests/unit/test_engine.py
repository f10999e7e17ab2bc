"""The engine on its in-memory store: dispatch, fencing, retries, timeouts, leases, cancel.

No server, no database, no sockets: the engine is driven step by step (a dispatch round, a
frame, a reaper pass) with a clock the test moves, and the frames it sends are read from each
agent connection's queue — what the gateway would write to the agent's WebSocket.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runyard.config import SchedulerSettings
from runyard.domain.tasks import TaskStatus
from runyard.engine.engine import Engine
from runyard.engine.registry import AgentConnection
from runyard.events.bus import Bus
from runyard.protocol import v1
from runyard.store.memory import MemoryStore, MemoryTask

TEAM = "team-a"


class Clock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


class Rig:
    """An engine on a memory store, its agents, and a clock."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.store = MemoryStore()
        self.bus = Bus()
        defaults: dict[str, Any] = {
            "ack_timeout_seconds": 30,
            "lease_ttl_seconds": 30,
            "retry_backoff_base_seconds": 10,
            "retry_backoff_cap_seconds": 10,
            "progress_interval_seconds": 0,
        }
        self.engine = Engine(
            self.store, self.bus, SchedulerSettings(**{**defaults, **settings}), now=self.clock
        )
        self.store.listener = self.engine.publisher

    async def agent(
        self, agent_id: str, labels: list[str] | None = None, capacity: int = 1, team: str = TEAM
    ) -> AgentConnection:
        hello = v1.Hello(agent_id=agent_id, labels=labels or ["gpu"], capacity=capacity)
        conn = AgentConnection(
            team_id=team, credential_id=f"cred-{agent_id}", hello=hello, connected_at=self.clock()
        )
        await self.engine.agent_connected(conn)
        return conn

    async def submit(self, team: str = TEAM, **fields: Any) -> MemoryTask:
        fields.setdefault("labels", frozenset({"gpu"}))
        return await self.store.submit(
            team, self.clock(), claim=self.engine.claim_at_submit, **fields
        )

    async def settle(self) -> None:
        """Let the bus deliver what it was given (cancel commands run as tasks)."""
        for _ in range(3):
            await asyncio.sleep(0)

    async def frame(self, conn: AgentConnection, frame: v1.Frame) -> None:
        await self.engine.handle(conn, frame)
        await self.settle()

    def task(self, task: MemoryTask) -> MemoryTask:
        return self.store.tasks[task.id]


def sent(conn: AgentConnection) -> list[Any]:
    """The frames the engine queued for this agent since the last call."""
    frames = []
    while not conn.queue.empty():
        item = conn.queue.get_nowait()
        if item is not None:
            frames.append(v1.parse_gateway_frame(item))
    return frames


def dispatches(conn: AgentConnection) -> list[v1.Dispatch]:
    return [f for f in sent(conn) if isinstance(f, v1.Dispatch)]


# -- dispatch ------------------------------------------------------------------------------


async def test_a_submit_goes_straight_to_an_idle_agent() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit()
    [dispatch] = dispatches(gpu)
    assert (dispatch.task_id, dispatch.attempt) == (task.id, 1)
    assert task.statuses == ["pending", "queued"]
    assert gpu.free_slots() == 0


async def test_a_task_waits_for_an_agent_with_its_labels() -> None:
    rig = Rig()
    cpu = await rig.agent("cpu-1", labels=["cpu"])
    task = await rig.submit(labels=frozenset({"gpu", "sdxl"}))
    await rig.engine.dispatcher.round()
    assert dispatches(cpu) == []
    assert rig.task(task).status is TaskStatus.WAITING
    # It says what it waits for, and what no agent here has.
    assert rig.task(task).events[-1][1]["reason"] == (
        "waiting for an eligible agent (labels: gpu, sdxl); no agent connected here has gpu, sdxl"
    )
    gpu = await rig.agent("gpu-1", labels=["gpu", "sdxl", "fp16"])
    await rig.engine.dispatcher.round()
    assert [d.task_id for d in dispatches(gpu)] == [task.id]


async def test_higher_priority_then_older_first() -> None:
    rig = Rig()
    old = await rig.submit(priority=0)
    rig.clock.advance(1)
    urgent = await rig.submit(priority=5)
    rig.clock.advance(1)
    newer = await rig.submit(priority=0)
    gpu = await rig.agent("gpu-1", capacity=3)
    await rig.engine.dispatcher.round()
    assert [d.task_id for d in dispatches(gpu)] == [urgent.id, old.id, newer.id]


async def test_another_teams_agent_never_gets_the_task() -> None:
    rig = Rig()
    theirs = await rig.agent("gpu-9", team="team-b")
    await rig.submit()
    await rig.engine.dispatcher.round()
    assert dispatches(theirs) == []


# -- fencing ---------------------------------------------------------------------------------


async def test_messages_of_a_stale_attempt_are_refused() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit()
    [dispatch] = dispatches(gpu)
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=dispatch.attempt + 1))
    [cancel] = sent(gpu)
    assert isinstance(cancel, v1.Cancel) and cancel.reason == "stale attempt"
    assert rig.task(task).status is TaskStatus.QUEUED
    # Another agent cannot complete it either.
    other = await rig.agent("gpu-2")
    await rig.frame(other, v1.Complete(task_id=task.id, attempt=1, output={}))
    assert isinstance(sent(other)[0], v1.Cancel)
    assert rig.task(task).status is TaskStatus.QUEUED


async def test_a_full_lifecycle_with_progress() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit()
    [dispatch] = dispatches(gpu)
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=dispatch.attempt))
    await rig.frame(gpu, v1.Progress(task_id=task.id, attempt=1, progress=0.5, step_current=5))
    await rig.frame(gpu, v1.Complete(task_id=task.id, attempt=1, output={"image_count": 1}))
    done = rig.task(task)
    assert done.status is TaskStatus.COMPLETED
    assert done.task_output == {"image_count": 1}
    assert [e for e, _ in done.events] == ["status", "status", "status", "progress", "completed"]
    assert gpu.free_slots() == 1
    assert sent(gpu) == []


# -- retries ---------------------------------------------------------------------------------


async def test_a_retryable_failure_is_retried_after_its_backoff() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit(max_retries=1)
    [first] = dispatches(gpu)
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=1))
    await rig.frame(gpu, v1.Fail(task_id=task.id, attempt=1, error="CUDA OOM", retryable=True))
    waiting = rig.task(task)
    assert (waiting.status, waiting.retry_count) == (TaskStatus.WAITING, 1)
    # Not before its backoff (8 to 12 s with jitter).
    await rig.engine.dispatcher.round()
    assert dispatches(gpu) == []
    rig.clock.advance(13)
    await rig.engine.dispatcher.round()
    [second] = dispatches(gpu)
    assert (second.task_id, second.attempt) == (first.task_id, 2)
    # The second failure is the last: failed, saying which attempt.
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=2))
    await rig.frame(gpu, v1.Fail(task_id=task.id, attempt=2, error="CUDA OOM", retryable=True))
    failed = rig.task(task)
    assert (failed.status, failed.task_error) == (TaskStatus.FAILED, "CUDA OOM (attempt 2)")


async def test_a_failure_that_would_happen_again_is_not_retried() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit(max_retries=3)
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=1))
    await rig.frame(gpu, v1.Fail(task_id=task.id, attempt=1, error="bad graph", retryable=False))
    assert (rig.task(task).status, rig.task(task).task_error) == (TaskStatus.FAILED, "bad graph")


async def test_a_handed_back_attempt_waits_again_without_counting_a_retry() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit()
    assert len(dispatches(gpu)) == 1
    await rig.frame(gpu, v1.Fail(task_id=task.id, attempt=1, error="stopping", handback=True))
    assert (rig.task(task).status, rig.task(task).retry_count) == (TaskStatus.WAITING, 0)
    # No new work for the agent until its next heartbeat says what it runs.
    await rig.engine.dispatcher.round()
    assert dispatches(gpu) == []
    await rig.frame(gpu, v1.Heartbeat())
    await rig.engine.dispatcher.round()
    assert [(d.task_id, d.attempt) for d in dispatches(gpu)] == [(task.id, 2)]


# -- timeouts and leases -----------------------------------------------------------------------


async def test_a_task_that_runs_too_long_is_stopped_and_retried() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit(task_timeout=60, max_retries=1)
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=1))
    sent(gpu)
    rig.clock.advance(30)
    await rig.engine.leases.renew()  # the agent is alive: its lease goes on
    rig.clock.advance(31)
    await rig.engine.leases.reap()
    await rig.settle()
    [cancel] = sent(gpu)
    assert isinstance(cancel, v1.Cancel) and cancel.reason == "timed out"
    retried = rig.task(task)
    assert (retried.status, retried.retry_count) == (TaskStatus.WAITING, 1)
    assert "timed out after 60 s" in str(retried.events[-1][1]["reason"])


async def test_an_unacknowledged_dispatch_goes_back_to_waiting() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit()
    sent(gpu)
    rig.clock.advance(31)
    await rig.engine.leases.reap()
    await rig.settle()
    assert isinstance(sent(gpu)[0], v1.Cancel)
    back = rig.task(task)
    assert (back.status, back.retry_count) == (TaskStatus.WAITING, 0)


async def test_a_lapsed_lease_of_a_vanished_agent_is_retried() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit(max_retries=2)
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=1))
    await rig.engine.agent_disconnected(gpu)
    rig.clock.advance(29)
    await rig.engine.leases.reap()
    assert rig.task(task).status is TaskStatus.RUNNING  # it may come back in time
    rig.clock.advance(2)
    await rig.engine.leases.reap()
    lost = rig.task(task)
    assert (lost.status, lost.retry_count) == (TaskStatus.WAITING, 1)
    assert rig.store.attempts[(task.id, 1)].outcome == "lost"


async def test_an_agent_that_reconnects_in_time_keeps_its_attempt() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit()
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=1))
    await rig.engine.agent_disconnected(gpu)
    hello = v1.Hello(
        agent_id="gpu-1", labels=["gpu"], running=[v1.AttemptRef(task_id=task.id, attempt=1)]
    )
    again = AgentConnection(team_id=TEAM, credential_id="c", hello=hello, connected_at=rig.clock())
    keep, abort = await rig.engine.agent_connected(again)
    assert ([k.task_id for k in keep], abort) == ([task.id], [])
    rig.clock.advance(31)
    await rig.engine.leases.reap()  # alive here: not lost
    assert rig.task(task).status is TaskStatus.RUNNING
    await rig.frame(again, v1.Complete(task_id=task.id, attempt=1, output={}))
    assert rig.task(task).status is TaskStatus.COMPLETED


# -- cancel ----------------------------------------------------------------------------------


async def test_cancelling_tells_the_agent_and_ignores_what_it_sends_later() -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1")
    task = await rig.submit()
    await rig.frame(gpu, v1.Ack(task_id=task.id, attempt=1))
    sent(gpu)
    await rig.store.cancel(task.id, rig.clock())
    await rig.settle()
    [cancel] = sent(gpu)
    assert (cancel.task_id, cancel.attempt, cancel.reason) == (task.id, 1, "cancelled")
    await rig.frame(gpu, v1.Complete(task_id=task.id, attempt=1, output={"image_count": 1}))
    assert rig.task(task).status is TaskStatus.CANCELLED
    assert rig.task(task).task_output is None
    await rig.frame(gpu, v1.Cancelled(task_id=task.id, attempt=1))
    assert rig.store.attempts[(task.id, 1)].outcome == "cancelled"
    assert gpu.free_slots() == 1


async def test_a_cancelled_waiting_task_leaves_the_queue() -> None:
    rig = Rig()
    task = await rig.submit()
    await rig.engine.dispatcher.round()
    assert task.id in rig.engine.dispatcher
    await rig.store.cancel(task.id, rig.clock())
    await rig.settle()
    assert task.id not in rig.engine.dispatcher
    gpu = await rig.agent("gpu-1")
    await rig.engine.dispatcher.round()
    assert dispatches(gpu) == []


@pytest.mark.parametrize("capacity", [1, 3])
async def test_a_claim_that_does_not_commit_frees_the_slot(capacity: int) -> None:
    rig = Rig()
    gpu = await rig.agent("gpu-1", capacity=capacity)

    async def claim_then_fail(tx: Any) -> None:
        await rig.engine.claim_at_submit(tx)
        raise RuntimeError("the commit failed")

    with pytest.raises(RuntimeError):
        await rig.store.submit(TEAM, rig.clock(), claim=claim_then_fail, labels=frozenset({"gpu"}))
    assert gpu.free_slots() == capacity
    assert dispatches(gpu) == []


# -- tasks that could never start ------------------------------------------------------------


async def test_a_task_too_large_for_the_agent_fails_at_once() -> None:
    rig = Rig()
    hello = v1.Hello(agent_id="small-1", labels=["gpu"], max_frame_bytes=64 * 1024)
    small = AgentConnection(team_id=TEAM, credential_id="c", hello=hello, connected_at=rig.clock())
    await rig.engine.agent_connected(small)
    task = await rig.submit(parameters={"prompt": "x" * 100_000})
    failed = rig.task(task)
    assert failed.status is TaskStatus.FAILED
    assert "over agent small-1's limit of 65,536 bytes" in str(failed.task_error)
    assert dispatches(small) == [] and small.free_slots() == 1


async def test_a_task_dropped_at_every_dispatch_fails_instead_of_looping() -> None:
    rig = Rig(retry_backoff_base_seconds=0)
    gpu = await rig.agent("gpu-1")
    task = await rig.submit(max_retries=3)
    for attempt in range(1, 11):
        [dispatch] = dispatches(gpu)
        assert dispatch.attempt == attempt
        rig.clock.advance(31)  # never acknowledged
        await rig.engine.leases.reap()
        await rig.settle()
        await rig.engine.dispatcher.round()
    gave_up = rig.task(task)
    assert gave_up.status is TaskStatus.FAILED
    assert "10 dispatches of this task never started" in str(gave_up.task_error)
    assert gave_up.retry_count == 0
