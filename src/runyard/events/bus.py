"""A tiny publish/subscribe bus carrying ids only.

On SQLite (one server process) messages go straight to the local subscribers. On PostgreSQL
they travel through ``NOTIFY`` so every replica hears them (its own included); receivers
re-read the rows they care about, so a lost message costs latency, never correctness (each
subscriber also has a periodic sweep).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from runyard.logging import get_logger
from runyard.store.db import Database

log = get_logger("runyard.bus")

Handler = Callable[[str], Awaitable[None]]
CHANNEL_PREFIX = "runyard_"


class Bus:
    """In-process bus (SQLite, tests)."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers[channel].append(handler)

    async def publish(self, channel: str, payload: str) -> None:
        self._deliver(channel, payload)

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
    """Bus over PostgreSQL ``LISTEN/NOTIFY``: every replica sharing the database hears it."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db
        self._listener: Any = None

    async def start(self) -> None:
        import asyncpg

        url = self._db.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._listener = await asyncpg.connect(url)
        for channel in list(self._handlers):
            await self._listener.add_listener(CHANNEL_PREFIX + channel, self._on_notify)

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self._deliver(channel.removeprefix(CHANNEL_PREFIX), payload)

    async def publish(self, channel: str, payload: str) -> None:
        async with self._db.engine.connect() as conn:
            await conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL_PREFIX + channel, "payload": payload},
            )
            await conn.commit()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        await super().stop()


def make_bus(db: Database) -> Bus:
    return Bus() if db.is_sqlite else PostgresBus(db)
