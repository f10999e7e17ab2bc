"""A tiny publish/subscribe bus carrying ids only.

On SQLite (one server process) messages go straight to the local subscribers. On PostgreSQL
they travel through ``NOTIFY`` so every replica hears them (its own included); receivers
re-read the rows they care about, so a lost message costs latency, never correctness (each
subscriber also has a periodic sweep). If the listening connection drops (a database restart,
a failover), it is opened again and ``on_resync`` callbacks run: messages sent meanwhile were
not heard.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from runyard.logging import get_logger
from runyard.store.db import Database
from runyard.store.notify import pg_notify, pg_notify_in

log = get_logger("runyard.bus")

Handler = Callable[[str], Awaitable[None]]
CHANNEL_PREFIX = "runyard_"

# The channels, all in one place (what each carries: ``engine/publish.py``).
#: A task has new events (payload: task id): event streams wake up.
TASK_EVENT = "task_event"
#: Webhook deliveries were queued: deliverers wake up.
WEBHOOK_OUTBOX = "webhook_outbox"
#: A task entered the queue (payload: ``<origin gateway> <task id>``): other servers' dispatchers.
TASK_READY = "task_ready"
#: An attempt to stop or a cancelled task (payload: JSON): the server holding the agent.
AGENT_COMMAND = "agent_command"


class Bus:
    """In-process bus (SQLite, tests)."""

    #: Whether messages of a write transaction go out inside it (:meth:`publish_in`) rather
    #: than after its commit (:meth:`publish`).
    transactional = False

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()
        self._resync: list[Callable[[], None]] = []

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel].append(handler)

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when messages may have been lost (the bus reconnected)."""
        self._resync.append(callback)

    async def publish(self, channel: str, payload: str) -> None:
        self._deliver(channel, payload)

    async def publish_in(self, session: AsyncSession, messages: Sequence[tuple[str, str]]) -> None:
        """Send messages with ``session``'s transaction (only where ``transactional``)."""
        raise NotImplementedError

    def _deliver(self, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, ()):
            task = asyncio.get_running_loop().create_task(self._call(handler, channel, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, handler: Handler, channel: str, payload: str) -> None:
        try:
            await handler(payload)
        except Exception:
            log.exception("bus_handler_failed", channel=channel)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class PostgresBus(Bus):
    """Bus over PostgreSQL ``LISTEN/NOTIFY``: every replica sharing the database hears it.

    Messages of a write transaction are sent in it, just before it commits (one statement
    for all of them): ``NOTIFY`` is transactional, so listeners hear them exactly when the
    rows are visible and never for a rolled-back transaction.
    """

    transactional = True

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db
        self._listener: Any = None
        self._stopping = False
        self._reconnecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._listen()

    async def _listen(self) -> None:
        import asyncpg

        url = self._db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        listener = await asyncpg.connect(url)
        try:
            for channel in list(self._handlers):
                await listener.add_listener(CHANNEL_PREFIX + channel, self._on_notify)
        except BaseException:
            await listener.close()
            raise
        listener.add_termination_listener(self._on_lost)
        self._listener = listener

    def _on_lost(self, _conn: Any) -> None:
        """The listening connection closed (database restart, failover, killed backend):
        without it this replica would hear nothing more, so connect again."""
        self._listener = None
        if self._stopping or self._reconnecting is not None:
            return
        log.warning("bus_listener_lost")
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.1
        try:
            while not self._stopping:
                try:
                    await self._listen()
                except Exception as exc:
                    log.warning("bus_listener_reconnect_failed", error=type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                log.info("bus_listener_reconnected")
                for callback in self._resync:  # what was sent meanwhile was not heard
                    try:
                        callback()
                    except Exception:
                        log.exception("bus_resync_failed")
                return
        finally:
            self._reconnecting = None

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self._deliver(channel.removeprefix(CHANNEL_PREFIX), payload)

    async def publish(self, channel: str, payload: str) -> None:
        # Called after a commit: a failure here must not make the committed write look failed
        # to its caller. Receivers sweep periodically, so a lost message only costs latency.
        try:
            await pg_notify(self._db, CHANNEL_PREFIX + channel, payload)
        except Exception:
            log.exception("bus_publish_failed", channel=channel)

    async def publish_in(self, session: AsyncSession, messages: Sequence[tuple[str, str]]) -> None:
        await pg_notify_in(session, [(CHANNEL_PREFIX + c, p) for c, p in messages])

    async def stop(self) -> None:
        self._stopping = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.gather(self._reconnecting, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await super().stop()


def make_bus(db: Database) -> Bus:
    return Bus() if db.is_sqlite else PostgresBus(db)
