"""Group commit: write jobs that arrive together share one transaction.

Agents' ``ack`` and ``complete`` frames arrive on many connections at once. Each costs a
transaction of its own otherwise — BEGIN, COMMIT, an ``fsync`` on SQLite, the session's
overhead — which is most of what a lifecycle costs. Here jobs queue up; one worker takes
everything queued (up to ``max_batch``) and runs it in one write transaction. While that
commits, the next jobs queue for the next turn, so batches grow with the load and a lone job
waits for nobody.

A job gets the transaction's session and must keep every other effect (frames to agents,
in-memory state) for after the commit, when its caller gets the result: if a job raises, the
whole batch is rolled back and every job runs again alone, so one bad frame never costs
the others their writes.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from runyard.logging import get_logger
from runyard.store.changes import Changes
from runyard.store.db import Database, Session

log = get_logger("runyard.store")

T = TypeVar("T")
Job = Callable[[Session], Awaitable[Any]]


class GroupCommit:
    def __init__(self, db: Database, max_batch: int = 100, workers: int = 1) -> None:
        self._db = db
        self._max_batch = max_batch
        #: Transactions in flight at once: one on SQLite (one writer anyway); a few on
        #: PostgreSQL, where a batch spends most of its time waiting for round trips.
        self._max_workers = workers
        self._queue: list[tuple[Job, asyncio.Future[Any]]] = []
        self._workers: set[asyncio.Task[None]] = set()
        self._announcing: set[asyncio.Task[None]] = set()
        #: Batches committed and jobs in them (for tests and logs).
        self.batches = 0
        self.jobs = 0

    async def run(self, job: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``job`` in the next shared write transaction; its result once committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((job, future))
        # (A worker that found the queue empty has returned, so it counts as done at once.)
        if sum(1 for w in self._workers if not w.done()) < self._max_workers:
            # A fresh context: the worker must not inherit its first caller's transaction state.
            worker = asyncio.create_task(
                self._drain(), name="group_commit", context=contextvars.Context()
            )
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return await future

    async def stop(self) -> None:
        await asyncio.gather(*self._workers, return_exceptions=True)
        await asyncio.gather(*self._announcing, return_exceptions=True)

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            deferred: list[Changes] = []
            try:
                results: list[Any] = []
                async with self._db.write(deferred=deferred) as session:
                    for job, _ in batch:
                        results.append(await job(session))
            except Exception:
                if len(batch) > 1:
                    log.warning("group_commit_split", jobs=len(batch))
                await self._one_by_one(batch)
                continue
            self.batches += 1
            self.jobs += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            # Announce what the batch wrote (NOTIFY on PostgreSQL: round trips) without
            # holding up the next batch.
            for changes in deferred:
                announcing = asyncio.create_task(self._announce(changes))
                self._announcing.add(announcing)
                announcing.add_done_callback(self._announcing.discard)

    async def _announce(self, changes: Changes) -> None:
        try:
            await self._db.announce(changes)
        except Exception:
            log.exception("group_commit_announce_failed")

    async def _one_by_one(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        for job, future in batch:
            try:
                async with self._db.write() as session:
                    result = await job(session)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)
