"""Engine and transactions for SQLite (aiosqlite) and PostgreSQL (asyncpg).

Reads use ``Database.read()``; anything that writes uses ``Database.write()``. On SQLite a
write transaction starts with ``BEGIN IMMEDIATE`` so it takes the write lock up front: a
deferred transaction that reads and then writes can otherwise fail with ``SQLITE_BUSY`` when
another writer got there first, and ``busy_timeout`` cannot help with that case.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from runyard.config import DatabaseSettings
from runyard.logging import get_logger
from runyard.security.filemodes import (
    PRIVATE_FILE,
    create_private_file,
    make_private_dir,
    tighten,
)
from runyard.store import sqlite_inline
from runyard.store.changes import Changes, CommitListener, Unheard

log = get_logger("runyard.store")

_write_mode: contextvars.ContextVar[bool] = contextvars.ContextVar("runyard_write", default=False)
#: The databases whose in-process SQLite write lock this task holds (a nested write must not
#: wait for itself).
_holds_lock: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "runyard_lock", default=frozenset()
)


class Session(AsyncSession):
    """A session that carries its transaction's change record (see ``store/changes.py``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changes = Changes()


def async_url(url: str) -> URL:
    """Map a user-facing URL (``sqlite:///…``, ``postgresql://…``) to its async driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(
        f"unsupported database URL scheme {parsed.drivername!r}: use sqlite or postgresql"
    )


def private_sqlite_file(path: Path) -> None:
    """The database file readable by this user only: created 0600 before SQLite opens it
    (SQLite gives its ``-wal`` and ``-shm`` files the database's mode), and an existing one,
    with its ``-wal``/``-shm``, tightened to 0600 with a warning. It holds password hashes,
    refresh-token hashes and sealed webhook secrets."""
    make_private_dir(path.parent)
    if create_private_file(path):
        return
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        fixed = tighten(file, PRIVATE_FILE)
        if fixed is not None:
            log.warning("database_permissions_fixed", **fixed.fields())


class Database:
    def __init__(self, url: str, settings: DatabaseSettings | None = None) -> None:
        self.settings = settings or DatabaseSettings()
        self.url = async_url(url)
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": self.settings.echo}
        #: SQLite statements run on the event loop (``sqlite_inline``), not aiosqlite's thread.
        self.sqlite_inline = False
        if self.dialect == "sqlite":
            database = self.url.database or ""
            if database and database != ":memory:" and not self.url.query.get("uri"):
                private_sqlite_file(Path(database))
            if self.settings.sqlite_driver == "inline":
                self.sqlite_inline = True
                kwargs["async_creator"] = sqlite_inline.creator(
                    database or ":memory:",
                    self.settings.sqlite_busy_timeout_ms,
                    uri=bool(self.url.query.get("uri")),
                )
        else:
            kwargs.update(pool_size=self.settings.pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            self._tune_sqlite()
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False, class_=Session)
        #: Who hears what write transactions changed (their ``Changes``): the server's
        #: publisher (``engine/publish.py``); nobody in CLI processes.
        self.listener: CommitListener = Unheard()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _tune_sqlite(self) -> None:
        synchronous = self.settings.sqlite_synchronous
        # Inline: SQLite's busy handler would sleep on the event loop; ``sqlite_inline``
        # retries with asyncio.sleep instead, within the same budget.
        busy_timeout = 0 if self.sqlite_inline else int(self.settings.sqlite_busy_timeout_ms)

        @event.listens_for(self.engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let us emit BEGIN ourselves (see module docstring).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer and vice versa.
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: fsync the WAL at each commit, so an acknowledged write survives power loss.
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            # SQLite ignores foreign keys unless asked, per connection.
            cursor.execute("PRAGMA foreign_keys=ON")
            # Wait for a competing writer instead of failing at once.
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout}")
            cursor.close()

        @event.listens_for(self.engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if _write_mode.get() else "BEGIN")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Session]:
        """A session for reads; rolled back at the end."""
        async with self._sessions() as session:
            yield session

    def _write_lock(self) -> asyncio.Lock | None:
        """SQLite: one FIFO queue of writers in this process (``None``: no lock needed).

        SQLite does not queue writers: one that finds the lock taken sleeps and retries
        (1, 2, 5 … 100 ms) until ``busy_timeout``, so under load the lock sits free while
        every waiter sleeps, and an unlucky writer starves past the timeout (``database is
        locked``). Queuing them here hands the lock over at once, in arrival order;
        ``busy_timeout`` then only matters against other processes (CLI commands).
        """
        if not self.is_sqlite or id(self) in _holds_lock.get():
            return None
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    @asynccontextmanager
    async def write(self, *, deferred: list[Changes] | None = None) -> AsyncIterator[Session]:
        """A short write transaction: committed on success, rolled back on any error.

        The listener hears of its changes just before the commit and once it committed (or,
        if it did not, that it rolled back). ``deferred``: instead of the after-commit call,
        append the changes to this list; the caller passes them on later with
        :meth:`announce` (the group commit does, so announcing one batch never holds up
        the next).
        """
        lock = self._write_lock()
        if lock is not None:
            await lock.acquire()
        # Per database: two Database objects on one file in a process (replicas in tests)
        # each queue their own writers.
        held = _holds_lock.set(
            _holds_lock.get() | {id(self)} if lock is not None else _holds_lock.get()
        )
        token = _write_mode.set(True)
        changes: Changes | None = None
        try:
            async with self._sessions() as session:
                changes = session.changes
                async with session.begin():
                    yield session
                    await self.listener.before_commit(session)
        except BaseException:
            if changes:
                self.listener.rolled_back(changes)
            raise
        finally:
            _write_mode.reset(token)
            _holds_lock.reset(held)
            if lock is not None:
                lock.release()
        if changes:
            if deferred is not None:
                deferred.append(changes)
            else:
                await self.announce(changes)

    async def announce(self, changes: Changes) -> None:
        """Tell the listener about a committed transaction's changes."""
        await self.listener.after_commit(changes)

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
