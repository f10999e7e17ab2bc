"""One connected agent as the server sees it: identity, capacity, attempts, send queue."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime

from runyard.protocol.v1 import Frame, Hello
from runyard.scheduler.index import AgentSlot


@dataclass
class AttemptState:
    task_id: str
    attempt: int
    dispatched_at: float = field(default_factory=time.monotonic)
    acked_at: float | None = None
    #: The task was cancelled or timed out; waiting for the agent to stop it.
    stopping: bool = False
    #: The task's ``task_timeout`` when known (from the claim): lets the ACK set the
    #: deadline without reading the task.
    task_timeout: int | None = None


class AgentConnection:
    """Frames to the agent go through a queue drained by one writer task, so a slow agent
    never blocks the dispatcher or other agents."""

    def __init__(
        self,
        *,
        team_id: str,
        credential_id: str,
        hello: Hello,
        connected_at: datetime,
    ) -> None:
        self.team_id = team_id
        self.agent_id = hello.agent_id
        self.credential_id = credential_id
        self.hello = hello
        self.labels = frozenset(hello.labels)
        self.pools = frozenset(hello.pools)
        self.capacity = hello.capacity
        self.status: str = hello.status
        self.sync_phase: str | None = None
        self.sync_detail: str | None = None
        self.sync_percent: float | None = None
        self.system_stats = hello.system_stats
        self.connected_at = connected_at
        self.last_seen = time.monotonic()
        self.last_heartbeat_at = connected_at
        self.attempts: dict[tuple[str, int], AttemptState] = {}
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.close_code: int | None = None
        #: The agent handed an attempt back (shutting down, or sent more than it can take):
        #: no new work for it until its next heartbeat says what it runs.
        self.held = False
        self.close_reason = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.team_id, self.agent_id)

    @property
    def gpu_type(self) -> str | None:
        devices = self.system_stats.gpu_devices
        return devices[0].device_name if devices else None

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def free_slots(self) -> int:
        if self.closing or self.held or self.status != "idle":
            return 0
        return max(0, self.capacity - len(self.attempts))

    def slot(self) -> AgentSlot:
        return AgentSlot(team_id=self.team_id, labels=self.labels, pools=self.pools)

    def send(self, frame: Frame) -> None:
        if not self.closing:
            self.queue.put_nowait(frame.model_dump_json())

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.close_code = code
        self.close_reason = reason
        self.queue.put_nowait(None)
