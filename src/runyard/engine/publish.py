"""What a commit publishes, and to whom: the one place that reads a transaction's changes.

Every write transaction's :class:`~runyard.store.changes.Changes` comes here (the database's
commit listener):

* **this server's engine**, from memory, once the transaction committed: claims become
  ``dispatch`` frames, tasks that entered the queue go into the dispatcher's index (no read
  back); if the transaction did not commit, the slots its claims reserved are freed;
* **every server** through the bus — on PostgreSQL a ``NOTIFY`` sent inside the transaction,
  delivered with its commit (never for a rollback), on SQLite after the commit in-process:
  tasks with new events (event streams), queued webhook deliveries (deliverers), attempts
  to stop (the server holding the agent);
* **the other servers** (PostgreSQL only: only there are there others): tasks that entered
  the queue, tagged with this server's id so its own dispatcher, which already has them,
  skips the echo.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Protocol

from runyard.domain.attempts import Claimed, Stop, WaitingTask
from runyard.events.bus import AGENT_COMMAND, TASK_EVENT, TASK_READY, WEBHOOK_OUTBOX, Bus
from runyard.store.changes import Changes
from runyard.store.db import Session


class LocalEngine(Protocol):
    """What the publisher tells this server's engine (its dispatcher)."""

    async def claims_committed(self, claims: list[Claimed]) -> None: ...

    def claims_rolled_back(self, claims: list[Claimed]) -> None: ...

    def entered_queue(self, entries: list[WaitingTask]) -> None: ...


def stop_message(stop: Stop) -> str:
    return json.dumps(dataclasses.asdict(stop))


def parse_stop(payload: str) -> Stop:
    return Stop(**json.loads(payload))


def ready_message(origin: str, task_id: str) -> str:
    return f"{origin} {task_id}"


def parse_ready(payload: str) -> tuple[str, str]:
    origin, _, task_id = payload.partition(" ")
    return origin, task_id


class Publisher:
    def __init__(self, bus: Bus, engine: LocalEngine, origin: str) -> None:
        self.bus = bus
        self.engine = engine
        self.origin = origin

    def messages(self, changes: Changes) -> list[tuple[str, str]]:
        out = [(TASK_EVENT, task_id) for task_id in changes.events]
        if changes.outbox:
            out.append((WEBHOOK_OUTBOX, ""))
        out.extend((AGENT_COMMAND, stop_message(stop)) for stop in changes.stops)
        if self.bus.transactional:  # other servers exist only on a shared database
            out.extend((TASK_READY, ready_message(self.origin, t)) for t in changes.waiting)
        return out

    async def before_commit(self, session: Session) -> None:
        if self.bus.transactional:
            messages = self.messages(session.changes)
            if messages:
                await self.bus.publish_in(session, messages)

    async def after_commit(self, changes: Changes) -> None:
        # This server first: a claimed task's dispatch frame leaves before anything else.
        if changes.claims:
            await self.engine.claims_committed(changes.claims)
        if changes.waiting:
            self.engine.entered_queue(list(changes.waiting.values()))
        if not self.bus.transactional:
            for channel, payload in self.messages(changes):
                await self.bus.publish(channel, payload)

    def rolled_back(self, changes: Changes) -> None:
        if changes.claims:
            self.engine.claims_rolled_back(changes.claims)
