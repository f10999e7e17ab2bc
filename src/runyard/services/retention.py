"""The retention sweeper: deletes what object storage should no longer hold.

* inputs past ``input_retention_days`` (counted from the upload request), unless an unfinished
  task still names them (then they go once it ends); unfinished multipart uploads are aborted;
* outputs of tasks completed more than ``output_retention_days`` ago (0 keeps them); their rows
  stay, marked deleted, so the task's result can say ``expired``;
* orphans: files uploaded by attempts that did not complete their task (superseded, failed,
  cancelled, or not listed in the winning manifest), once their upload links have expired;
  and, on local storage, partial uploads a crash left behind;
* purges: everything a deleted team stored (its inputs, unfinished multipart uploads, every
  task's files), from the ``storage_purges`` rows its deletion wrote. Each purge is swept once
  at once and once more after every link signed before the deletion has expired (a PUT
  through such a link may land later); then its row goes.

Every replica may run it: each deletion is idempotent, and a row is removed (or marked) only
after its object is gone, so a failed delete is retried on the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from runyard.context import ServiceContext
from runyard.logging import get_logger
from runyard.objects.local import LocalObjectStore
from runyard.services.files import objects
from runyard.store.files import FileRepos

log = get_logger("runyard.retention")

BATCH = 500


#: After its links' lifetime, how much longer a purge waits for uploads still in flight.
PURGE_GRACE = timedelta(minutes=5)


@dataclass
class SweepReport:
    inputs: int = 0
    outputs: int = 0
    orphans: int = 0
    purged: int = 0

    @property
    def total(self) -> int:
        return self.inputs + self.outputs + self.orphans + self.purged


async def sweep(ctx: ServiceContext) -> SweepReport:
    """One pass over everything due (in batches, until nothing is left)."""
    report = SweepReport()
    while (count := await _sweep_inputs(ctx)) > 0:
        report.inputs += count
        if count < BATCH:
            break
    while (count := await _sweep_outputs(ctx)) > 0:
        report.outputs += count
        if count < BATCH:
            break
    while (count := await _sweep_orphans(ctx)) > 0:
        report.orphans += count
        if count < BATCH:
            break
    report.purged = await _sweep_purges(ctx)
    store = objects(ctx)
    if isinstance(store, LocalObjectStore):
        ttl = timedelta(seconds=ctx.settings.storage.link_ttl_seconds)
        report.orphans += await store.clean_temp(ctx.now() - ttl)
    if report.total:
        log.info(
            "storage_swept",
            inputs=report.inputs,
            outputs=report.outputs,
            orphans=report.orphans,
            purged=report.purged,
        )
    return report


async def _sweep_inputs(ctx: ServiceContext) -> int:
    store = objects(ctx)
    async with ctx.db.read() as session:
        due = await FileRepos(session).expired_files(ctx.now(), BATCH)
    for row in due:
        if row.multipart_upload_id is not None:
            await store.abort_multipart(row.file_key, row.multipart_upload_id)
        await store.delete(row.file_key)
        async with ctx.db.write() as session:
            await FileRepos(session).delete_file(row.file_key)
    return len(due)


async def _sweep_outputs(ctx: ServiceContext) -> int:
    days = ctx.settings.storage.output_retention_days
    if days <= 0:
        return 0
    store = objects(ctx)
    now = ctx.now()
    async with ctx.db.read() as session:
        due = await FileRepos(session).expired_outputs(now - timedelta(days=days), BATCH)
    for row in due:
        await store.delete(row.storage_key)
        async with ctx.db.write() as session:
            await FileRepos(session).mark_output_deleted(row, now)
    return len(due)


async def _sweep_orphans(ctx: ServiceContext) -> int:
    store = objects(ctx)
    issued_before = ctx.now() - timedelta(seconds=ctx.settings.storage.link_ttl_seconds)
    async with ctx.db.read() as session:
        due = await FileRepos(session).orphan_outputs(issued_before, BATCH)
    for row in due:
        await store.delete(row.storage_key)
        async with ctx.db.write() as session:
            await FileRepos(session).delete_output(row)
    return len(due)


async def _sweep_purges(ctx: ServiceContext) -> int:
    """Delete what each due purge names; returns how many objects went. A crash part-way
    leaves the row, so the next pass lists and deletes whatever is left (idempotent)."""
    store = objects(ctx)
    now = ctx.now()
    ttl = timedelta(seconds=ctx.settings.storage.link_ttl_seconds)
    settled_before = now - ttl - PURGE_GRACE
    removed = 0
    after = 0
    while True:
        async with ctx.db.read() as session:
            due = await FileRepos(session).purges(after, settled_before, BATCH)
        for row in due:
            after = row.id
            if row.upload_id is not None:
                await store.abort_multipart(row.prefix, row.upload_id)
            for info in await store.list_prefix(row.prefix):
                await store.delete(info.key)
                removed += 1
            async with ctx.db.write() as session:
                if row.created_at <= settled_before:
                    await FileRepos(session).delete_purge(row.id)
                else:
                    await FileRepos(session).purge_swept(row.id, now)
        if len(due) < BATCH:
            return removed


class RetentionSweeper:
    """Runs :func:`sweep` every ``RUNYARD_STORAGE_SWEEP_INTERVAL_SECONDS``."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="retention_sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.settings.storage.sweep_interval_seconds)
            try:
                await sweep(self.ctx)
            except Exception:
                log.exception("storage_sweep_failed")
