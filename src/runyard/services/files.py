"""Files: input uploads (single and multipart), the inputs a task names, task results with
fresh signed links. (The files of attempts — dispatch inputs, output upload links, the
``complete`` manifest — are the engine's: ``engine/outputs.py``.)

Nothing here moves file bytes: callers get signed links and talk to the object store
directly. Every key is built by :mod:`runyard.objects.keys`; every query is in
:mod:`runyard.store.files`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from runyard.context import ServiceContext
from runyard.domain import limits
from runyard.domain.errors import BadRequest, Gone, NotFound, PayloadTooLarge, PreconditionFailed
from runyard.domain.ids import new_id
from runyard.domain.roles import Permission
from runyard.domain.tasks import TaskStatus
from runyard.domain.workflows import accepts
from runyard.logging import get_logger
from runyard.objects import (
    InvalidUpload,
    ObjectExists,
    ObjectStore,
    PartSpec,
    SignedLink,
    UploadedPart,
)
from runyard.objects.keys import (
    TASKS_PREFIX,
    BadName,
    check_content_type,
    check_file_name,
    input_key,
    input_prefix,
)
from runyard.services.auth import TeamScope
from runyard.store.files import FileRepos
from runyard.store.tables import StoredFile, Task, TaskOutput

log = get_logger("runyard.files")

MIB = 1024 * 1024
#: S3's limit on the number of parts of one multipart upload.
MAX_PARTS = limits.MAX_PARTS


def objects(ctx: ServiceContext) -> ObjectStore:
    if ctx.objects is None:
        raise RuntimeError("the service context has no object store")
    return ctx.objects


def _ttl(ctx: ServiceContext) -> int:
    return ctx.settings.storage.link_ttl_seconds


def _describe(size: int) -> str:
    return f"{size // MIB} MB" if size % MIB == 0 else f"{size:,} bytes"


# -- single uploads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PresignedUpload:
    file_key: str
    link: SignedLink


def _checked_upload(file_name: str, content_type: str) -> tuple[str, str]:
    try:
        return check_file_name(file_name), check_content_type(content_type)
    except BadName as exc:
        raise BadRequest(str(exc)) from exc


def _new_file(
    ctx: ServiceContext, team_id: str, file_name: str, content_type: str, size: int
) -> StoredFile:
    now = ctx.now()
    days = ctx.settings.storage.input_retention_days
    return StoredFile(
        file_key=input_key(team_id, new_id(), file_name),
        team_id=team_id,
        file_name=file_name,
        content_type=content_type,
        file_size=size,
        created_at=now,
        expires_at=now + timedelta(days=days) if days > 0 else None,
    )


async def presign_upload(
    ctx: ServiceContext, scope: TeamScope, file_name: str, file_size: int, content_type: str
) -> PresignedUpload:
    """Reserve an input key of the team and sign one ``PUT`` of exactly ``file_size`` bytes."""
    scope.require(Permission.RUN)
    file_name, content_type = _checked_upload(file_name, content_type)
    limit = ctx.settings.storage.max_upload_mb * MIB
    if file_size > limit:
        raise PayloadTooLarge(
            f"file_size {file_size:,} is over the {_describe(limit)} limit of one upload; "
            "use a multipart upload (POST /uploads/multipart/initiate)"
        )
    row = _new_file(ctx, scope.team_id, file_name, content_type, file_size)
    link = await objects(ctx).presign_put(
        row.file_key, size=file_size, content_type=content_type, ttl=_ttl(ctx)
    )
    async with ctx.db.write() as session:
        await FileRepos(session).add(row)
    return PresignedUpload(row.file_key, link)


# -- multipart uploads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Multipart:
    storage_key: str
    upload_id: str
    file_size: int
    part_size: int
    part_count: int
    expires_at: datetime | None


def plan_parts(file_size: int, preferred: int) -> tuple[int, int]:
    """``(part_size, part_count)``: the preferred size, grown to stay within 10,000 parts."""
    part_size = max(preferred, math.ceil(file_size / MAX_PARTS))
    return part_size, max(1, math.ceil(file_size / part_size))


def _multipart_of(row: StoredFile) -> Multipart:
    assert row.multipart_upload_id is not None and row.part_size is not None
    _, count = plan_parts(row.file_size, row.part_size)
    return Multipart(
        row.file_key, row.multipart_upload_id, row.file_size, row.part_size, count, row.expires_at
    )


async def initiate_multipart(
    ctx: ServiceContext,
    scope: TeamScope,
    *,
    file_size: int,
    storage_key: str | None = None,
    file_name: str | None = None,
    content_type: str | None = None,
) -> Multipart:
    """Start a multipart upload: to a key reserved by ``POST /r/files/presign`` (the
    reference's way) or to a new input key for ``file_name`` and ``content_type``."""
    scope.require(Permission.RUN)
    storage = ctx.settings.storage
    limit = storage.max_multipart_gb * 1024 * MIB
    if file_size < 1:
        raise BadRequest("file_size must be at least 1 byte")
    if file_size > limit:
        raise PayloadTooLarge(f"file_size {file_size:,} is over the {_describe(limit)} limit")
    if storage_key is not None:
        async with ctx.db.read() as session:
            row = await _team_file(FileRepos(session), scope.team_id, storage_key)
        if row.multipart_upload_id is not None:
            raise PreconditionFailed("a multipart upload to this storage_key is already started")
        if row.uploaded_at is not None or await objects(ctx).exists(row.file_key):
            raise PreconditionFailed("this storage_key has already been uploaded")
        if row.file_size != file_size:
            raise BadRequest(
                f"file_size {file_size} differs from the {row.file_size} declared at presign"
            )
        is_new = False
    else:
        if file_name is None or content_type is None:
            raise BadRequest("give storage_key, or file_name and content_type")
        file_name, content_type = _checked_upload(file_name, content_type)
        row = _new_file(ctx, scope.team_id, file_name, content_type, file_size)
        is_new = True
    part_size, _ = plan_parts(file_size, storage.multipart_part_mb * MIB)
    upload_id = await objects(ctx).initiate_multipart(row.file_key, content_type=row.content_type)
    async with ctx.db.write() as session:
        repos = FileRepos(session)
        if is_new:
            current: StoredFile | None = row
            session.add(row)
        else:
            current = await repos.file(row.file_key)
        if current is None or current.multipart_upload_id is not None:
            await objects(ctx).abort_multipart(row.file_key, upload_id)
            raise PreconditionFailed("a multipart upload to this storage_key is already started")
        current.multipart_upload_id = upload_id
        current.part_size = part_size
        await session.flush()
    return _multipart_of(current)


async def _team_file(repos: FileRepos, team_id: str, key: str) -> StoredFile:
    row = await repos.file(key)
    if row is None or row.team_id != team_id:
        # Another team's key answers exactly like a key that does not exist.
        raise BadRequest("storage_key is not an input file of this team")
    return row


async def _upload_of(
    ctx: ServiceContext, scope: TeamScope, storage_key: str, upload_id: str
) -> StoredFile:
    scope.require(Permission.RUN)
    async with ctx.db.read() as session:
        row = await _team_file(FileRepos(session), scope.team_id, storage_key)
    if row.multipart_upload_id is None or row.multipart_upload_id != upload_id:
        raise NotFound("no such multipart upload")
    return row


async def part_links(
    ctx: ServiceContext,
    scope: TeamScope,
    storage_key: str,
    upload_id: str,
    part_numbers: Sequence[int] | None = None,
) -> tuple[Multipart, list[tuple[int, SignedLink]]]:
    """Signed ``PUT`` links for the parts asked for (all of them by default)."""
    row = await _upload_of(ctx, scope, storage_key, upload_id)
    upload = _multipart_of(row)
    numbers = list(part_numbers) if part_numbers else list(range(1, upload.part_count + 1))
    bad = [n for n in numbers if not 1 <= n <= upload.part_count]
    if bad:
        raise BadRequest(f"part numbers go from 1 to {upload.part_count}, not {bad[0]}")
    specs = []
    for n in dict.fromkeys(numbers):
        offset = (n - 1) * upload.part_size
        specs.append(PartSpec(n, min(upload.part_size, upload.file_size - offset), offset))
    links = await objects(ctx).presign_parts(row.file_key, upload_id, specs, ttl=_ttl(ctx))
    return upload, [(spec.number, link) for spec, link in zip(specs, links, strict=True)]


async def complete_multipart(
    ctx: ServiceContext,
    scope: TeamScope,
    storage_key: str,
    upload_id: str,
    parts: Sequence[UploadedPart],
) -> str:
    """Assemble the parts; returns the ``file_key`` to pass as a ``file`` parameter."""
    row = await _upload_of(ctx, scope, storage_key, upload_id)
    upload = _multipart_of(row)
    if [p.number for p in parts] != list(range(1, upload.part_count + 1)):
        raise BadRequest(f"list every part, in order, from 1 to {upload.part_count}")
    store = objects(ctx)
    try:
        await store.complete_multipart(row.file_key, upload_id, parts)
    except ObjectExists as exc:
        raise PreconditionFailed("this storage_key has already been uploaded") from exc
    except InvalidUpload as exc:
        raise BadRequest(str(exc)) from exc
    info = await store.head(row.file_key)
    if info is None or info.size != row.file_size:
        await store.delete(row.file_key)
        raise BadRequest("the uploaded parts do not add up to file_size; upload again")
    async with ctx.db.write() as session:
        current = await FileRepos(session).file(row.file_key)
        if current is not None:
            current.multipart_upload_id = None
            current.uploaded_at = ctx.now()
    return row.file_key


async def abort_multipart(
    ctx: ServiceContext, scope: TeamScope, storage_key: str, upload_id: str
) -> None:
    row = await _upload_of(ctx, scope, storage_key, upload_id)
    await objects(ctx).abort_multipart(row.file_key, upload_id)
    async with ctx.db.write() as session:
        await FileRepos(session).delete_file(row.file_key)


async def record_team_purge(session: AsyncSession, team_id: str, now: datetime) -> None:
    """In the transaction that deletes a team: the retention sweeper is to delete its inputs,
    its unfinished multipart uploads and every task's files (see ``retention``)."""
    await FileRepos(session).record_team_purge(team_id, input_prefix(team_id), TASKS_PREFIX, now)


# -- inputs of tasks ---------------------------------------------------------------------------


def is_team_input(team_id: str, key: str) -> bool:
    """``key`` names a file under this team's input prefix, with no ``..`` to climb out."""
    prefix = input_prefix(team_id)
    if not key.startswith(prefix):
        return False
    parts = key[len(prefix) :].split("/")
    return all(part not in ("", ".", "..") for part in parts) and "\\" not in key


async def check_inputs(
    ctx: ServiceContext,
    team_id: str,
    inputs: Mapping[str, Any],
    accept: Mapping[str, tuple[str, ...] | None] | None = None,
) -> None:
    """Every ``file`` parameter names an uploaded, unexpired input of the team, of a type its
    ``accept`` list allows."""
    if not inputs:
        return  # most runs: no file parameter, no read
    keys = [v for v in inputs.values() if isinstance(v, str)]
    async with ctx.db.read() as session:
        rows = await FileRepos(session).files(keys)
    now = ctx.now()
    confirmed: list[str] = []
    for param, key in inputs.items():
        where = f"parameter {param!r}"
        row = rows.get(key) if isinstance(key, str) else None
        if row is None or row.team_id != team_id or not is_team_input(team_id, key):
            raise BadRequest(f"{where}: {key!r} is not an input file of this team")
        if row.expires_at is not None and row.expires_at <= now:
            raise BadRequest(f"{where}: {key!r} has expired; upload it again")
        allowed = (accept or {}).get(param)
        if not accepts(allowed, row.file_name, row.content_type):
            raise BadRequest(
                f"{where}: {row.file_name} ({row.content_type}) is not one of the accepted "
                f"types: {', '.join(allowed or ())}"
            )
        if row.uploaded_at is not None:
            continue
        if row.multipart_upload_id is not None:
            raise BadRequest(f"{where}: the multipart upload of {key!r} is not complete")
        info = await objects(ctx).head(key)
        if info is None:
            raise BadRequest(f"{where}: {key!r} has not been uploaded yet")
        if info.size != row.file_size:
            await objects(ctx).delete(key)
            raise BadRequest(
                f"{where}: {key!r} has {info.size} bytes, not the {row.file_size} declared"
            )
        confirmed.append(key)
    if confirmed:
        async with ctx.db.write() as session:
            for key in confirmed:
                current = await FileRepos(session).file(key)
                if current is not None and current.uploaded_at is None:
                    current.uploaded_at = now


async def record_task_inputs(
    session: AsyncSession, task_id: str, inputs: Mapping[str, str]
) -> None:
    """In the submit transaction: which file each ``file`` parameter of the task names."""
    if inputs:
        await FileRepos(session).add_task_inputs(task_id, inputs)


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultLinks:
    task_output: dict[str, Any] | None
    download_url: str | None = None
    download_urls: dict[str, str] | None = None
    expires_at: datetime | None = None


async def result(ctx: ServiceContext, task: Task) -> ResultLinks:
    """The task's output with fresh links (or, once retention removed it, ``expired``)."""
    if task.task_status != TaskStatus.COMPLETED.value or task.task_output is None:
        return ResultLinks(None)
    async with ctx.db.read() as session:
        rows = await FileRepos(session).task_outputs(task.id)
    if not rows:
        return ResultLinks(task.task_output)
    if any(row.deleted_at is not None for row in rows):
        return ResultLinks({**task.task_output, "expired": True})
    urls: dict[str, str] = {}
    first: str | None = None
    expires_at: datetime | None = None
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        link = await _output_link(ctx, row)
        group = (row.node_id or "", row.kind or "files")
        index = seen.get(group, 0)
        seen[group] = index + 1
        urls[f"{group[0]}.{group[1]}.{index}"] = link.url
        first = first or link.url
        expires_at = link.expires_at
    return ResultLinks(task.task_output, first, urls, expires_at)


async def _output_link(ctx: ServiceContext, row: TaskOutput) -> SignedLink:
    return await objects(ctx).presign_get(
        row.storage_key,
        ttl=_ttl(ctx),
        content_type=row.content_type,
        file_name=row.name.rsplit("/", 1)[-1],
    )


async def output_link(ctx: ServiceContext, task: Task, index: int) -> str:
    """A fresh link to output ``index`` of a completed task (``404``; ``410`` once swept)."""
    if task.task_status != TaskStatus.COMPLETED.value:
        raise NotFound("the task has no outputs (it has not completed)")
    async with ctx.db.read() as session:
        rows = await FileRepos(session).task_outputs(task.id)
    if not 0 <= index < len(rows):
        raise NotFound(f"the task has {len(rows)} output(s); there is no output {index}")
    row = rows[index]
    if row.deleted_at is not None:
        raise Gone("this output was removed by the retention policy")
    return (await _output_link(ctx, row)).url
