"""Live task events: who is watching which task, and waking them when it has new events.

Events are rows (``task_events``) with a per-task sequence number. Writers announce "task X has
new events" after committing (through the bus: in-process, or ``NOTIFY`` so every replica hears
it); each open stream of task X then re-reads the rows after the last sequence it sent. A lost
announcement costs at most one keep-alive period: streams re-read on every keep-alive too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from runyard.events.bus import Bus
from runyard.logging import get_logger
from runyard.services.context import ServiceContext
from runyard.store.work import WorkRepos

log = get_logger("runyard.events")

TASK_EVENT = "task_event"
TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})
KEEP_ALIVE_SECONDS = 15.0


class EventHub:
    def __init__(self, bus: Bus) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        bus.subscribe(TASK_EVENT, self._on_task_event)

    @property
    def watching(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    async def _on_task_event(self, task_id: str) -> None:
        for waiter in self._watchers.get(task_id, ()):
            waiter.set()

    def watch(self, task_id: str) -> asyncio.Event:
        waiter = asyncio.Event()
        self._watchers.setdefault(task_id, set()).add(waiter)
        return waiter

    def unwatch(self, task_id: str, waiter: asyncio.Event) -> None:
        waiters = self._watchers.get(task_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._watchers[task_id]


def sse(seq: int, event: str, data: dict[str, Any]) -> bytes:
    return (
        f"id: {seq}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    )


async def stream_task_events(
    ctx: ServiceContext,
    hub: EventHub,
    task_id: str,
    after: int,
    keep_alive: float = KEEP_ALIVE_SECONDS,
) -> AsyncIterator[bytes]:
    """Replay events after ``after``, then follow live ones; end after the terminal event."""
    waiter = hub.watch(task_id)
    last = after
    try:
        yield b"retry: 2000\n\n"
        while True:
            waiter.clear()
            try:
                async with ctx.db.read() as session:
                    rows = await WorkRepos(session).events(task_id, after=last, limit=500)
            except Exception:
                log.exception("event_read_failed", task_id=task_id)
                yield sse(last, "error", {"task_id": task_id, "error": "could not read events"})
                await asyncio.sleep(1.0)
                continue
            for row in rows:
                last = row.seq
                yield sse(row.seq, row.event_type, row.payload)
                if row.event_type in TERMINAL_EVENTS:
                    return
            if len(rows) == 500:
                continue
            try:
                await asyncio.wait_for(waiter.wait(), keep_alive)
            except TimeoutError:
                yield b": keep-alive\n\n"
    finally:
        hub.unwatch(task_id, waiter)
