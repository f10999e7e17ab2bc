"""Live task events: who is watching which task, and waking them when it has new events.

Events are rows (``task_events``) with a per-task sequence number. Writers announce "task X has
new events" after committing (through the bus: in-process, or ``NOTIFY`` so every replica hears
it). Each followed task has one ``Feed`` on this server: on an announcement it reads the new rows
once, keeps the latest few in memory (encoded once) and wakes its watchers, who take what they
have not sent yet from there. So an event costs one query per server however many clients
watch the task: a thousand watchers must not turn one progress tick into a thousand reads that
crowd out the scheduler's writes. A stream reads the database itself only to replay (its first
read, or when it fell behind the feed's window). A lost announcement costs at most one
keep-alive period: a stream that stays idle that long asks its feed to re-read.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from runyard.context import ServiceContext
from runyard.domain.tasks import TaskStatus
from runyard.events.bus import TASK_EVENT, Bus
from runyard.logging import get_logger
from runyard.store.db import Database
from runyard.store.tables import TaskEvent
from runyard.store.work import WorkRepos

log = get_logger("runyard.events")

TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})
KEEP_ALIVE_SECONDS = 15.0
#: Rows per query.
READ_BATCH = 500
#: Latest events a feed keeps in memory for watchers that are (nearly) caught up. A watcher
#: more than this far behind (a slow client) reads from the database instead. Small, because
#: every followed task on the server keeps one.
FEED_WINDOW = 32


def sse(seq: int, event: str, data: dict[str, Any]) -> bytes:
    return (
        f"id: {seq}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    )


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    event_type: str
    #: The whole SSE message, encoded once for every watcher.
    message: bytes

    @classmethod
    def of(cls, row: TaskEvent) -> Event:
        return cls(row.seq, row.event_type, sse(row.seq, row.event_type, row.payload))

    @property
    def terminal(self) -> bool:
        return self.event_type in TERMINAL_EVENTS


class Feed:
    """One followed task on this server: its latest events, read once for all its watchers.

    ``events`` holds consecutive sequence numbers ending at ``top``: everything after ``base``
    up to ``top`` is in memory. ``top`` is ``None`` until a watcher has read the task itself
    (the feed never reads a task's whole history).
    """

    def __init__(self, db: Database, task_id: str) -> None:
        self.db = db
        self.task_id = task_id
        self.waiters: set[asyncio.Event] = set()
        self.events: deque[Event] = deque(maxlen=FEED_WINDOW)
        self.top: int | None = None
        #: The terminal event was read: nothing follows ``top``.
        self.ended = False
        #: Announced since the current read began: read again.
        self.stale = False
        self.reader: asyncio.Task[None] | None = None

    @property
    def base(self) -> int | None:
        if self.top is None:
            return None
        return self.events[0].seq - 1 if self.events else self.top

    def since(self, after: int) -> list[Event] | None:
        """What came after ``after``, from memory; ``None`` if memory does not reach back."""
        base = self.base
        if self.top is None or base is None or after < base:
            return None
        return [self.events[-n] for n in range(self.top - after, 0, -1)]

    def caught_up(self, last: int, ended: bool) -> bool:
        """A watcher read the database up to ``last``: the feed continues from there if it
        had no position yet (returns whether it took this one)."""
        if self.top is not None:
            return False
        self.top = last
        self.ended = ended
        return True

    def append(self, rows: Sequence[TaskEvent]) -> None:
        for row in rows:
            event = Event.of(row)
            self.events.append(event)
            self.top = event.seq
            self.ended = self.ended or event.terminal

    def wake(self) -> None:
        for waiter in self.waiters:
            waiter.set()


class EventHub:
    def __init__(self, bus: Bus) -> None:
        self._feeds: dict[str, Feed] = {}
        #: The server is stopping: every stream ends, telling its client to reconnect.
        self.draining = False
        bus.subscribe(TASK_EVENT, self._on_task_event)
        bus.on_resync(self._refresh_all)

    @property
    def watching(self) -> int:
        return sum(len(feed.waiters) for feed in self._feeds.values())

    async def _on_task_event(self, task_id: str) -> None:
        feed = self._feeds.get(task_id)
        if feed is not None:
            self.refresh(feed)

    def drain(self) -> None:
        """End every stream now (the server is stopping); later ones end at once too."""
        self.draining = True
        for feed in list(self._feeds.values()):
            for waiter in list(feed.waiters):
                waiter.set()

    def _refresh_all(self) -> None:
        for feed in list(self._feeds.values()):
            self.refresh(feed)

    def watch(self, db: Database, task_id: str) -> tuple[Feed, asyncio.Event]:
        feed = self._feeds.get(task_id)
        if feed is None:
            feed = self._feeds[task_id] = Feed(db, task_id)
        waiter = asyncio.Event()
        feed.waiters.add(waiter)
        return feed, waiter

    def unwatch(self, feed: Feed, waiter: asyncio.Event) -> None:
        feed.waiters.discard(waiter)
        if not feed.waiters and self._feeds.get(feed.task_id) is feed:
            del self._feeds[feed.task_id]

    def refresh(self, feed: Feed) -> None:
        """Read the feed's new events soon (one read at a time; announcements coalesce)."""
        feed.stale = True
        if feed.reader is None:
            feed.reader = asyncio.get_running_loop().create_task(self._read(feed))

    async def _read(self, feed: Feed) -> None:
        try:
            # Without a position (no watcher has caught up yet) the announcement stays pending:
            # the first watcher to catch up starts the read (``stream_task_events``).
            while feed.stale and feed.waiters and feed.top is not None:
                feed.stale = False
                try:
                    rows = await _read_rows(feed.db, feed.task_id, feed.top)
                except Exception:
                    log.exception("event_feed_read_failed", task_id=feed.task_id)
                    feed.stale = True
                    await asyncio.sleep(1.0)
                    continue
                if rows:
                    feed.append(rows)
                    feed.wake()
                if len(rows) == READ_BATCH:
                    feed.stale = True
        finally:
            feed.reader = None


async def _read_rows(db: Database, task_id: str, after: int) -> Sequence[TaskEvent]:
    async with db.read() as session:
        return await WorkRepos(session).events(task_id, after=after, limit=READ_BATCH)


async def _read_events(db: Database, task_id: str, after: int) -> tuple[list[Event], bool]:
    """Events after ``after`` from the database, and whether the task has ended (or is gone).

    The status is read first: a task seen ended has all its events committed, so the events
    read next include the terminal one (unless it is at or before ``after``).
    """
    async with db.read() as session:
        repos = WorkRepos(session)
        status = await repos.task_status(task_id)
        rows = await repos.events(task_id, after=after, limit=READ_BATCH)
    ended = status is None or TaskStatus(status).is_terminal
    return [Event.of(row) for row in rows], ended


async def stream_task_events(
    ctx: ServiceContext,
    hub: EventHub,
    task_id: str,
    after: int,
    keep_alive: float = KEEP_ALIVE_SECONDS,
) -> AsyncIterator[bytes]:
    """Replay events after ``after``, then follow live ones; end after the terminal event, or
    at once when the task has ended and nothing is left after ``after``."""
    feed, waiter = hub.watch(ctx.db, task_id)
    last = after
    replaying = True
    try:
        yield b"retry: 2000\n\n"
        while True:
            if hub.draining:
                # Reconnect soon: to another server, or to this one once it is back.
                yield b"retry: 1000\n: the server is stopping; reconnect\n\n"
                return
            waiter.clear()
            events = None if replaying else feed.since(last)
            ended = False
            if events is None:
                try:
                    events, ended = await _read_events(ctx.db, task_id, last)
                except Exception:
                    log.exception("event_read_failed", task_id=task_id)
                    yield sse(last, "error", {"task_id": task_id, "error": "could not read events"})
                    await asyncio.sleep(1.0)
                    continue
                replaying = len(events) == READ_BATCH
                if (
                    not replaying
                    and feed.caught_up(events[-1].seq if events else last, ended)
                    and feed.stale
                ):
                    hub.refresh(feed)  # announced while the feed had no position
            for event in events:
                last = event.seq
                yield event.message
                if event.terminal:
                    return
            if replaying:
                continue
            if ended or (feed.ended and feed.top is not None and last >= feed.top):
                return  # ended before ``after``: nothing more will come
            try:
                # ``asyncio.timeout`` rather than ``wait_for``: no task per wait (on Python
                # 3.11), which adds up with a thousand watchers woken per event.
                async with asyncio.timeout(keep_alive):
                    await waiter.wait()
            except TimeoutError:
                yield b": keep-alive\n\n"
                hub.refresh(feed)  # in case an announcement was lost
    finally:
        hub.unwatch(feed, waiter)
