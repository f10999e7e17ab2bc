"""The agents connected to this server: identity, capacity, attempts, send queues.

The registry is the engine's memory of its agents; the gateway endpoint only moves frames
between a WebSocket and an :class:`AgentConnection`'s queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from runyard.domain import limits
from runyard.domain.attempts import AgentKey
from runyard.engine.index import AgentSlot
from runyard.protocol.v1 import Frame, Hello
from runyard.store.port import AgentInfo


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
        #: Frames larger than this would make the agent drop the connection: never sent.
        self.max_frame_bytes = hello.max_frame_bytes or limits.FRAME_MAX_BYTES
        self.status: str = hello.status
        self.sync_phase: str | None = None
        self.sync_detail: str | None = None
        self.sync_percent: float | None = None
        self.system_stats = hello.system_stats
        self.connected_at = connected_at
        self.last_seen = time.monotonic()
        self.last_heartbeat_at = connected_at
        self.attempts: dict[tuple[str, int], AttemptState] = {}
        #: Tasks being claimed for this agent (slots taken until the claim commits or not).
        self.reserved: set[str] = set()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.close_code: int | None = None
        #: The agent handed an attempt back (shutting down, or sent more than it can take):
        #: no new work for it until its next heartbeat says what it runs.
        self.held = False
        self.close_reason = ""

    @property
    def key(self) -> AgentKey:
        return AgentKey(self.team_id, self.agent_id)

    def info(self) -> AgentInfo:
        hello = self.hello
        return AgentInfo(
            key=self.key,
            credential_id=self.credential_id,
            status=self.status,
            labels=self.labels,
            pools=self.pools,
            capacity=self.capacity,
            agent_version=hello.agent_version,
            tool=hello.tool,
            tool_version=hello.tool_version,
            comfyui_version=hello.comfyui_version,
            platform_arch=hello.platform_arch,
            system_stats=hello.system_stats.model_dump(),
        )

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
        return max(0, self.capacity - len(self.attempts) - len(self.reserved))

    def slot(self) -> AgentSlot:
        return AgentSlot(team_id=self.team_id, labels=self.labels, pools=self.pools)

    def send(self, frame: Frame) -> None:
        if not self.closing:
            self.queue.put_nowait(frame.model_dump_json())

    def send_encoded(self, text: str) -> None:
        """A frame already encoded (and checked against :attr:`max_frame_bytes`)."""
        if not self.closing:
            self.queue.put_nowait(text)

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.close_code = code
        self.close_reason = reason
        self.queue.put_nowait(None)


class AgentRegistry:
    """The connections of this server, one per agent (a newer one replaces an older)."""

    def __init__(self) -> None:
        self._conns: dict[AgentKey, AgentConnection] = {}

    def __iter__(self) -> Iterator[AgentConnection]:
        return iter(list(self._conns.values()))

    def get(self, key: AgentKey) -> AgentConnection | None:
        return self._conns.get(key)

    def add(self, conn: AgentConnection) -> AgentConnection | None:
        """Register ``conn``; returns the connection it replaces, if any."""
        previous = self._conns.get(conn.key)
        self._conns[conn.key] = conn
        return previous if previous is not conn else None

    def remove(self, conn: AgentConnection) -> bool:
        """Forget ``conn`` unless a newer connection of its agent replaced it."""
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
            return True
        return False

    def find(self, agent_id: str, team_id: str = "") -> AgentConnection | None:
        """The agent's connection by team and id, or (community tasks run on agents of
        other teams) by id alone."""
        conn = self._conns.get(AgentKey(team_id, agent_id))
        if conn is None:
            conn = next((c for c in self._conns.values() if c.agent_id == agent_id), None)
        return conn

    def with_free_slots(self) -> list[AgentConnection]:
        return [c for c in self._conns.values() if c.free_slots() > 0]
