"""The engine's storage port: the few operations the engine needs of a store.

Each operation is one unit of work (its own transaction, or, where it takes ``tx``, part of
the caller's), and applies the shared rules of :mod:`runyard.domain.attempts` — fencing,
retries — so every implementation behaves the same. Implementations: ``store/engine_store.py``
(SQL, SQLite and PostgreSQL) and ``store/memory.py`` (in memory, for the engine's unit
tests). What an operation changed that others must hear of goes into the transaction's
``Changes`` (``store/changes.py``), which the store hands to its commit listener.

This module imports nothing of Runyard but ``domain``: the engine and both implementations
import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from runyard.domain.attempts import (
    AgentKey,
    AttemptEnd,
    Claimed,
    EndPlan,
    RetryPolicy,
    TaskState,
    Verdict,
    WaitingTask,
)
from runyard.domain.tasks import TaskStatus


@dataclass(frozen=True)
class AttemptRef:
    task_id: str
    attempt: int


@dataclass(frozen=True)
class AgentInfo:
    """An agent as it introduced itself (``hello``), for its row in the agents list."""

    key: AgentKey
    credential_id: str
    status: str
    labels: frozenset[str]
    pools: frozenset[str]
    capacity: int
    agent_version: str = ""
    tool: str = "comfyui"
    tool_version: str | None = None
    comfyui_version: str | None = None
    platform_arch: str | None = None
    system_stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentStatus:
    status: str
    sync_phase: str | None = None
    sync_detail: str | None = None
    sync_percent: float | None = None


@dataclass(frozen=True)
class Resumed:
    """A running attempt an agent reported at connect that it still holds."""

    task_id: str
    attempt: int
    task_timeout: int | None
    running: bool


@dataclass(frozen=True)
class Pick:
    """A task the dispatcher chose for an agent, to claim."""

    task: WaitingTask
    agent: AgentKey
    labels: tuple[str, ...]
    gpu_type: str | None


@dataclass
class ClaimResult:
    won: list[Claimed] = field(default_factory=list)
    #: Picks that were not due yet (a retry's backoff): task id → when they are.
    not_due: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Checked:
    """The fencing verdict on a message about an attempt, and the task's status."""

    verdict: Verdict
    status: TaskStatus | None = None


@dataclass(frozen=True)
class Ended:
    """An attempt ended by :meth:`EngineStore.end_attempt`: the task as it was, and what
    became of it."""

    task: TaskState
    end: AttemptEnd
    plan: EndPlan


@dataclass(frozen=True)
class InputFile:
    """An uploaded file a ``file`` parameter of a task names (``file`` None: gone)."""

    param: str
    key: str
    content_type: str | None
    file_name: str | None
    present: bool = True


@dataclass(frozen=True)
class OutputSlot:
    """A file an attempt was given an upload link for."""

    storage_key: str
    name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Attach:
    """An uploaded output attached to the completed task, in manifest order."""

    storage_key: str
    position: int
    node_id: str
    kind: str


class EngineStore(Protocol):
    # -- this server (gateway) and its agents -----------------------------------------------

    async def gateway_started(self, gateway_id: str, now: datetime, leases_until: datetime) -> int:
        """Register the gateway; extend every unfinished attempt's lease to at least
        ``leases_until`` (agents get time to reconnect after a restart). Returns how many."""

    async def gateway_alive(
        self, gateway_id: str, agents: Sequence[AgentKey], now: datetime, dead_before: datetime
    ) -> None:
        """Heartbeat of the gateway and its live agents; release agents of gateways not
        seen since ``dead_before``."""

    async def gateway_stopped(self, gateway_id: str) -> None: ...

    async def agent_connected(
        self,
        agent: AgentInfo,
        gateway_id: str,
        now: datetime,
        running: Sequence[AttemptRef],
        lease_until: datetime,
    ) -> list[Resumed]:
        """Record the agent as connected here; of the attempts it says it runs, keep those
        it holds (their running leases extended to ``lease_until``)."""

    async def agent_disconnected(
        self, agent: AgentKey, gateway_id: str, connected_at: datetime
    ) -> None:
        """Unlist the agent if its row is still the one the connection made at
        ``connected_at``: a newer connection of the same agent keeps its row, whichever
        write commits first."""

    async def agent_status(self, agent: AgentKey, status: AgentStatus) -> None: ...

    async def credential_states(
        self, credential_ids: Sequence[str]
    ) -> dict[str, tuple[datetime | None, datetime | None]]:
        """credential id → (revoked_at, expires_at)."""

    # -- the queue --------------------------------------------------------------------------

    async def waiting_page(self, limit: int, after: str) -> list[WaitingTask]:
        """Tasks waiting for an agent, by id, after ``after``."""

    async def waiting_task(self, task_id: str) -> WaitingTask | None: ...

    async def claim(
        self,
        picks: Sequence[Pick],
        now: datetime,
        ack_deadline: datetime,
        gateway_id: str,
        tx: Any = None,
    ) -> ClaimResult:
        """``pending|waiting → queued`` with the next attempt number for each pick that
        still waits and is due — in ``tx`` (a submit's transaction) or one of its own. The
        claims go into the transaction's changes (dispatched once it commits)."""

    async def mark_waiting(
        self, tasks: Sequence[WaitingTask], now: datetime, reasons: dict[str, str]
    ) -> list[str]:
        """``pending → waiting`` for those still pending, each with why it waits (task id →
        reason); returns their ids."""

    async def task_inputs(self, task_id: str) -> list[InputFile]: ...

    # -- attempts ---------------------------------------------------------------------------

    async def task_state(self, task_id: str) -> TaskState | None: ...

    async def start(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        now: datetime,
        lease_until: datetime,
        timeout: int | None,
    ) -> Checked:
        """ACK: ``queued → running`` if the agent holds the attempt (``HOLDS`` also for a
        repeated ACK). ``timeout``: the task's, when the caller knows it."""

    async def append_event(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        event: str,
        payload: dict[str, Any],
        now: datetime,
        statuses: frozenset[TaskStatus],
    ) -> bool:
        """A progress or log event, if the agent holds the attempt and the task is in one
        of ``statuses``."""

    async def complete(
        self,
        ref: AttemptRef,
        agent: AgentKey,
        now: datetime,
        output: dict[str, Any],
        attach: Sequence[Attach],
    ) -> Checked:
        """``running → completed`` (``queued`` counts as started now) with the output and
        the attached files, if the agent holds the attempt."""

    async def end_attempt(
        self,
        task_id: str,
        decide: Callable[[TaskState], AttemptEnd | None],
        policy: RetryPolicy,
        now: datetime,
    ) -> Ended | None:
        """Lock the task, ask ``decide`` how its current attempt ended (``None``: leave
        it), and apply :func:`~runyard.domain.attempts.plan_end`."""

    async def close_attempt(self, ref: AttemptRef, now: datetime, outcome: str) -> None:
        """Record how an attempt ended, unless it already has an end."""

    async def expired(self, now: datetime, limit: int) -> list[TaskState]:
        """Held tasks whose lease, ACK deadline or task timeout has passed."""

    async def renew_leases(self, task_ids: Sequence[str], until: datetime) -> None: ...

    # -- outputs ----------------------------------------------------------------------------

    async def record_outputs(
        self, ref: AttemptRef, outputs: Sequence[OutputSlot], now: datetime
    ) -> None: ...

    async def attempt_outputs(self, ref: AttemptRef) -> dict[str, OutputSlot]: ...
