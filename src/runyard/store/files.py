"""Queries for object storage: uploaded inputs, the inputs of tasks, attempt outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import delete, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from runyard.domain.tasks import TERMINAL
from runyard.store.port import Attach
from runyard.store.tables import StoragePurge, StoredFile, Task, TaskInput, TaskOutput
from runyard.store.types import UTCDateTime

_TERMINAL = [s.value for s in TERMINAL]


class FileRepos:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- uploaded inputs ---------------------------------------------------------------------

    async def add(self, row: object) -> None:
        self.session.add(row)
        await self.session.flush()

    async def file(self, file_key: str) -> StoredFile | None:
        return await self.session.get(StoredFile, file_key)

    async def files(self, keys: Sequence[str]) -> dict[str, StoredFile]:
        if not keys:
            return {}
        rows = await self.session.execute(select(StoredFile).where(StoredFile.file_key.in_(keys)))
        return {row.file_key: row for row in rows.scalars()}

    async def delete_file(self, file_key: str) -> None:
        await self.session.execute(delete(StoredFile).where(StoredFile.file_key == file_key))

    async def expired_files(self, now: datetime, limit: int) -> Sequence[StoredFile]:
        """Inputs past their retention that no unfinished task names."""
        in_use = (
            select(TaskInput.file_key)
            .join(Task, Task.id == TaskInput.task_id)
            .where(Task.task_status.not_in(_TERMINAL))
        )
        rows = await self.session.execute(
            select(StoredFile)
            .where(StoredFile.expires_at <= now, StoredFile.file_key.not_in(in_use))
            .order_by(StoredFile.expires_at)
            .limit(limit)
        )
        return rows.scalars().all()

    # -- task inputs -------------------------------------------------------------------------

    async def add_task_inputs(self, task_id: str, inputs: Mapping[str, str]) -> None:
        for param_key, file_key in inputs.items():
            self.session.add(TaskInput(task_id=task_id, param_key=param_key, file_key=file_key))
        await self.session.flush()

    async def task_inputs(self, task_id: str) -> list[tuple[str, StoredFile | None, str]]:
        """``(param_key, file row or None if gone, file_key)`` for each file parameter."""
        rows = await self.session.execute(
            select(TaskInput, StoredFile)
            .outerjoin(StoredFile, StoredFile.file_key == TaskInput.file_key)
            .where(TaskInput.task_id == task_id)
            .order_by(TaskInput.param_key)
        )
        return [(row[0].param_key, row[1], row[0].file_key) for row in rows.all()]

    # -- outputs -----------------------------------------------------------------------------

    async def record_output(self, row: TaskOutput) -> None:
        """Record (or refresh) a file an attempt got an upload link for."""
        existing = await self.session.get(TaskOutput, (row.task_id, row.attempt, row.storage_key))
        if existing is None:
            self.session.add(row)
        else:
            existing.name = row.name
            existing.content_type = row.content_type
            existing.size = row.size
            existing.created_at = row.created_at
        await self.session.flush()

    async def attempt_outputs(self, task_id: str, attempt: int) -> dict[str, TaskOutput]:
        rows = await self.session.execute(
            select(TaskOutput).where(TaskOutput.task_id == task_id, TaskOutput.attempt == attempt)
        )
        return {row.storage_key: row for row in rows.scalars()}

    async def attach(self, task_id: str, attempt: int, outputs: Sequence[Attach]) -> None:
        for out in outputs:
            await self.session.execute(
                update(TaskOutput)
                .where(
                    TaskOutput.task_id == task_id,
                    TaskOutput.attempt == attempt,
                    TaskOutput.storage_key == out.storage_key,
                )
                .values(position=out.position, node_id=out.node_id, kind=out.kind)
            )

    async def task_outputs(self, task_id: str) -> Sequence[TaskOutput]:
        """The completed task's outputs, in manifest order."""
        rows = await self.session.execute(
            select(TaskOutput)
            .where(TaskOutput.task_id == task_id, TaskOutput.position.is_not(None))
            .order_by(TaskOutput.position)
        )
        return rows.scalars().all()

    async def expired_outputs(self, completed_before: datetime, limit: int) -> Sequence[TaskOutput]:
        rows = await self.session.execute(
            select(TaskOutput)
            .join(Task, Task.id == TaskOutput.task_id)
            .where(
                TaskOutput.position.is_not(None),
                TaskOutput.deleted_at.is_(None),
                Task.completed_at <= completed_before,
            )
            .limit(limit)
        )
        return rows.scalars().all()

    async def orphan_outputs(self, issued_before: datetime, limit: int) -> Sequence[TaskOutput]:
        """Files of attempts that did not complete their task, whose links have expired."""
        rows = await self.session.execute(
            select(TaskOutput)
            .join(Task, Task.id == TaskOutput.task_id)
            .where(
                TaskOutput.position.is_(None),
                TaskOutput.created_at <= issued_before,
                or_(Task.attempt > TaskOutput.attempt, Task.task_status.in_(_TERMINAL)),
            )
            .limit(limit)
        )
        return rows.scalars().all()

    async def mark_output_deleted(self, row: TaskOutput, now: datetime) -> None:
        await self.session.execute(
            update(TaskOutput)
            .where(
                TaskOutput.task_id == row.task_id,
                TaskOutput.attempt == row.attempt,
                TaskOutput.storage_key == row.storage_key,
            )
            .values(deleted_at=now)
        )

    async def delete_output(self, row: TaskOutput) -> None:
        await self.session.execute(
            delete(TaskOutput).where(
                TaskOutput.task_id == row.task_id,
                TaskOutput.attempt == row.attempt,
                TaskOutput.storage_key == row.storage_key,
            )
        )

    # -- purges (objects of deleted teams) ---------------------------------------------------

    async def record_team_purge(
        self, team_id: str, input_prefix: str, task_prefix: str, now: datetime
    ) -> None:
        """In the transaction that deletes the team: one purge for its inputs, one for each
        unfinished multipart upload, one per task (``<task_prefix><task id>/``)."""
        at = literal(now, UTCDateTime())
        self.session.add(StoragePurge(prefix=input_prefix, created_at=now))
        await self.session.execute(
            insert(StoragePurge).from_select(
                ["prefix", "upload_id", "created_at"],
                select(StoredFile.file_key, StoredFile.multipart_upload_id, at).where(
                    StoredFile.team_id == team_id, StoredFile.multipart_upload_id.is_not(None)
                ),
            )
        )
        await self.session.execute(
            insert(StoragePurge).from_select(
                ["prefix", "created_at"],
                select(literal(task_prefix) + Task.id + literal("/"), at).where(
                    Task.team_id == team_id
                ),
            )
        )
        await self.session.flush()

    async def purges(
        self, after_id: int, settled_before: datetime, limit: int
    ) -> Sequence[StoragePurge]:
        """Purges due, in id order from ``after_id``: never swept yet, or settled (every link
        signed before them has expired) and ready for the last sweep."""
        rows = await self.session.execute(
            select(StoragePurge)
            .where(
                StoragePurge.id > after_id,
                or_(
                    StoragePurge.swept_at.is_(None),
                    StoragePurge.created_at <= settled_before,
                ),
            )
            .order_by(StoragePurge.id)
            .limit(limit)
        )
        return rows.scalars().all()

    async def purge_swept(self, purge_id: int, now: datetime) -> None:
        await self.session.execute(
            update(StoragePurge).where(StoragePurge.id == purge_id).values(swept_at=now)
        )

    async def delete_purge(self, purge_id: int) -> None:
        await self.session.execute(delete(StoragePurge).where(StoragePurge.id == purge_id))
