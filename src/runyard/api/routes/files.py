"""Input uploads (``/r/files/presign``, ``/uploads/multipart/…``) and output downloads.

Uploads are runtime calls (session + ``X-Team-ID``, ``sk-`` or ``dk-``; member and up): the
answer is a signed link, and the bytes go straight to object storage.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path
from fastapi.responses import RedirectResponse

from runyard.api.deps import Ctx, RuntimeScope
from runyard.objects import UploadedPart
from runyard.schemas.files import (
    MultipartAbortIn,
    MultipartCompleteIn,
    MultipartCompleteOut,
    MultipartInitiateIn,
    MultipartOut,
    PartLink,
    PartLinksIn,
    PartLinksOut,
    PresignIn,
    PresignOut,
)
from runyard.schemas.identity import SuccessResponse
from runyard.services import files, tasks

router = APIRouter()


@router.post("/r/files/presign", tags=["file"], response_model=PresignOut)
async def presign(ctx: Ctx, scope: RuntimeScope, body: PresignIn) -> PresignOut:
    """A signed PUT link for one input file (up to ``RUNYARD_STORAGE_MAX_UPLOAD_MB``).

    PUT the bytes to ``upload_url`` with every header of ``upload_headers``; then pass
    ``file_key`` as the value of a ``file`` parameter."""
    upload = await files.presign_upload(
        ctx, scope, body.file_name, body.file_size, body.content_type
    )
    return PresignOut(
        file_key=upload.file_key,
        upload_url=upload.link.url,
        upload_headers=upload.link.headers,
        expires_at=upload.link.expires_at,
    )


def _multipart_out(upload: files.Multipart) -> MultipartOut:
    return MultipartOut(
        upload_id=upload.upload_id,
        storage_key=upload.storage_key,
        file_size=upload.file_size,
        part_size=upload.part_size,
        part_count=upload.part_count,
    )


@router.post("/uploads/multipart/initiate", tags=["upload"], response_model=MultipartOut)
async def initiate_multipart(
    ctx: Ctx, scope: RuntimeScope, body: MultipartInitiateIn
) -> MultipartOut:
    """Start a multipart upload, for a ``storage_key`` from ``POST /r/files/presign`` or for
    a new file (``file_name``, ``content_type``); larger than one PUT allows."""
    upload = await files.initiate_multipart(
        ctx,
        scope,
        file_size=body.file_size,
        storage_key=body.storage_key,
        file_name=body.file_name,
        content_type=body.content_type,
    )
    return _multipart_out(upload)


@router.post("/uploads/multipart/parts", tags=["upload"], response_model=PartLinksOut)
async def part_links(ctx: Ctx, scope: RuntimeScope, body: PartLinksIn) -> PartLinksOut:
    """Signed PUT links for parts (all by default); each takes exactly its size. Keep the
    ``ETag`` header of each part's answer for ``complete``."""
    upload, links = await files.part_links(
        ctx, scope, body.storage_key, body.upload_id, body.part_numbers
    )
    return PartLinksOut(
        upload_id=upload.upload_id,
        storage_key=upload.storage_key,
        part_size=upload.part_size,
        part_count=upload.part_count,
        parts=[
            PartLink(part_number=n, upload_url=link.url, upload_headers=link.headers)
            for n, link in links
        ],
        expires_at=links[0][1].expires_at,
    )


@router.post("/uploads/multipart/complete", tags=["upload"], response_model=MultipartCompleteOut)
async def complete_multipart(
    ctx: Ctx, scope: RuntimeScope, body: MultipartCompleteIn
) -> MultipartCompleteOut:
    """Assemble the parts (every part, in order, with its ETag) into the file."""
    file_key = await files.complete_multipart(
        ctx,
        scope,
        body.storage_key,
        body.upload_id,
        [UploadedPart(p.part_number, p.etag) for p in body.parts],
    )
    return MultipartCompleteOut(file_key=file_key)


@router.post("/uploads/multipart/abort", tags=["upload"], response_model=SuccessResponse)
async def abort_multipart(ctx: Ctx, scope: RuntimeScope, body: MultipartAbortIn) -> SuccessResponse:
    """Drop an unfinished multipart upload and its parts."""
    await files.abort_multipart(ctx, scope, body.storage_key, body.upload_id)
    return SuccessResponse()


@router.get(
    "/r/tasks/{taskId}/outputs/{index}",
    tags=["task"],
    status_code=302,
    response_class=RedirectResponse,
    responses={302: {"description": "Redirect to a fresh signed download link"}},
)
async def output(
    ctx: Ctx,
    scope: RuntimeScope,
    taskId: Annotated[UUID, Path(description="The task's id")],
    index: Annotated[int, Path(ge=0, le=100_000, description="Position in task_output.outputs")],
) -> RedirectResponse:
    """Redirect to a fresh signed link for one output, so ``curl -L`` or a browser gets it."""
    task = await tasks.get_task(ctx, scope, str(taskId))
    return RedirectResponse(await files.output_link(ctx, task, index), status_code=302)
