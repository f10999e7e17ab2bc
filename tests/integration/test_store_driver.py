"""The database layer's delivery rules: SQLite runs on the event loop yet never freezes it
while another process holds the write lock; PostgreSQL bus messages leave with their
transaction's commit and never without it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from runyard.config import DatabaseSettings
from runyard.events.bus import PostgresBus
from runyard.store.db import Database
from runyard.store.tables import InstanceSetting


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, DatabaseSettings(sqlite_busy_timeout_ms=30_000))
    try:
        yield database
    finally:
        await database.dispose()


async def _settings_count(db: Database) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(InstanceSetting)) or 0)


async def test_a_writer_waiting_for_another_process_leaves_the_server_serving(
    db: Database, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("the SQLite driver's own behaviour")
    assert db.sqlite_inline
    # Another process (a `runyard admin` command, say) takes the write lock and keeps it.
    other = sqlite3.connect(str(db.url.database), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO instance_settings (key, value) VALUES ('other', '1')")

    async def write() -> None:
        async with db.write() as session:
            session.add(InstanceSetting(key="ours", value="2"))

    writer = asyncio.create_task(write())
    await asyncio.sleep(0.05)
    assert not writer.done()  # waiting for the lock …
    # … without holding up anyone else: reads are served meanwhile.
    assert await _settings_count(db) == 0
    assert not writer.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(writer, 30)
    assert await _settings_count(db) == 2


async def test_a_writer_gives_up_after_the_busy_timeout(db_url: str, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("the SQLite driver's own behaviour")
    db = Database(db_url, DatabaseSettings(sqlite_busy_timeout_ms=100))
    other = sqlite3.connect(str(db.url.database), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            async with db.write() as session:
                session.add(InstanceSetting(key="ours", value="2"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with db.write() as session:  # the lock is free again: writes go through
        session.add(InstanceSetting(key="ours", value="2"))
    assert await _settings_count(db) == 1
    await db.dispose()


async def test_bus_messages_leave_with_the_commit_only(db: Database, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's")
    bus = PostgresBus(db)
    heard: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(payload: str) -> None:
        await heard.put(payload)

    bus.subscribe("driver_test", on_message)

    async def send(session_payload: str) -> None:
        async with db.write() as session:
            await bus.publish_in(session, [("driver_test", session_payload)])
            if session_payload == "rolled back":
                raise RuntimeError("the write failed")

    await bus.start()
    try:
        with pytest.raises(RuntimeError):
            await send("rolled back")
        await send("committed")
        assert await asyncio.wait_for(heard.get(), 10) == "committed"
        # Nothing of the rolled-back transaction arrives, even later: a marker sent after
        # it is the next thing heard.
        async with db.write() as session:
            await bus.publish_in(session, [("driver_test", "marker")])
            await session.execute(text("SELECT 1"))
        assert await asyncio.wait_for(heard.get(), 10) == "marker"
        assert heard.empty()
    finally:
        await bus.stop()


async def test_the_aiosqlite_fallback_still_reads_and_writes(db_url: str, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("a SQLite driver setting")
    db = Database(db_url, DatabaseSettings(sqlite_driver="aiosqlite"))
    try:
        assert not db.sqlite_inline
        async with db.write() as session:
            session.add(InstanceSetting(key="fallback", value="1"))
        assert await _settings_count(db) >= 1
    finally:
        await db.dispose()
