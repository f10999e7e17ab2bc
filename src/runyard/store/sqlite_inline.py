"""SQLite on the event loop: an ``aiosqlite``-shaped connection that calls ``sqlite3`` inline.

SQLAlchemy's ``sqlite+aiosqlite`` dialect talks to ``aiosqlite``, which runs every call
(cursor, execute, fetch, close, commit) on a thread of its own and hands the result back
through the event loop: four or more thread switches and loop wake-ups per statement, about
3.5 ms of wall time per one-statement read on a busy 2-core VM, for work that takes SQLite
tens of microseconds (an ``fsync`` at commit: 0.15 ms here). This module gives the same
dialect (``async_creator``) a connection whose methods are coroutines that call ``sqlite3``
directly and return without suspending, so a statement costs its own time and nothing else.

Blocking is the price: while SQLite works, the loop waits. In-process that is short (writers
already queue in ``Database.write()``, so no statement here waits for a lock held by this
process). Another *process* (a CLI command) can hold the write lock for longer, so SQLite's
own busy handler is off (``busy_timeout`` 0: it would sleep on the loop) and a statement that
meets ``SQLITE_BUSY`` is retried here with ``asyncio.sleep`` in between — the same backoff
SQLite uses — until the configured ``busy_timeout`` is spent; then the error is raised as
before (``database is locked``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_SQLITE_BUSY = 5
_SQLITE_BUSY_SNAPSHOT = 517  # the read snapshot is stale: retrying the statement cannot help
#: SQLite's own busy-handler steps (``sqliteDefaultBusyCallback``), in seconds.
_DELAYS = (0.001, 0.002, 0.005, 0.010, 0.015, 0.020, 0.025, 0.025, 0.025, 0.050, 0.050, 0.100)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:  # (older Pythons) only the message
        return "database is locked" in str(error)
    return bool(code & 0xFF == _SQLITE_BUSY and code != _SQLITE_BUSY_SNAPSHOT)


class _Tx:
    """What SQLAlchemy's adapter uses of aiosqlite's work queue (the ``isolation_level``
    setter puts ``(future, function)`` on it): run the function now."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the awaiting caller
            future.set_exception(exc)
        else:
            future.set_result(result)


class InlineCursor:
    def __init__(self, connection: InlineConnection) -> None:
        self._owner = connection
        self._cursor = connection._conn.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        await self._owner._retry(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Any) -> InlineCursor:
        await self._owner._retry(self._cursor.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        if size is None:
            return self._cursor.fetchmany()
        return self._cursor.fetchmany(size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def setinputsizes(self, *_sizes: Any) -> None:
        return None

    async def nextset(self) -> None:
        return None


class InlineConnection:
    """The parts of ``aiosqlite.Connection`` SQLAlchemy's aiosqlite dialect uses."""

    def __init__(self, conn: sqlite3.Connection, busy_timeout_ms: float) -> None:
        self._conn = conn
        #: Truthy while open (the dialect checks ``_connection`` before commit/rollback).
        self._connection: sqlite3.Connection | None = conn
        self._tx = _Tx()
        self._busy_timeout = busy_timeout_ms / 1000

    async def _retry(self, call: Callable[..., T], *args: Any) -> T:
        started: float | None = None
        attempt = 0
        while True:
            try:
                return call(*args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                left = self._busy_timeout - (now - started)
                if left <= 0:
                    raise
                delay = _DELAYS[min(attempt, len(_DELAYS) - 1)]
                attempt += 1
                await asyncio.sleep(min(delay, left))

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        cursor = InlineCursor(self)
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        # A COMMIT that meets SQLITE_BUSY leaves the transaction open: it can be retried.
        await self._retry(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        """Force-close (the dialect's ``terminate``)."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)


def creator(path: str, busy_timeout_ms: float, *, uri: bool = False) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine`` opening ``path`` inline."""

    async def connect() -> InlineConnection:
        # timeout=0: SQLite's busy handler would sleep on the event loop; see the docstring.
        conn = sqlite3.connect(
            path, timeout=0, isolation_level=None, check_same_thread=False, uri=uri
        )
        return InlineConnection(conn, busy_timeout_ms)

    return connect
