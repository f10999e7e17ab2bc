"""Integration (sk-) and agent (ak-) keys. Session JWT only, admins and owners."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from runyard.api.deps import Ctx, PageDep, SessionScope
from runyard.domain.credentials import CredentialKind
from runyard.schemas.identity import (
    CredentialCreated,
    CredentialCreateRequest,
    CredentialItem,
    CredentialListResponse,
    PageMeta,
)
from runyard.services import credentials

router = APIRouter(tags=["credential"])

CredentialId = Annotated[
    UUID, Path(description="The credential's id (never the secret or its prefix)")
]


@router.post("/credentials", response_model=CredentialCreated)
async def create(ctx: Ctx, scope: SessionScope, body: CredentialCreateRequest) -> CredentialCreated:
    """Issue a key. ``raw_key`` is shown in this response only."""
    issued = await credentials.create_credential(
        ctx, scope, body.kind, body.display_name, body.expires_in_days
    )
    return CredentialCreated(
        id=issued.row.id,
        kind=CredentialKind(issued.row.kind),
        key_prefix=issued.row.key_prefix,
        raw_key=issued.raw_key,
        expires_at=issued.row.expires_at,
    )


@router.get("/credentials", response_model=CredentialListResponse)
async def list_(
    ctx: Ctx,
    scope: SessionScope,
    page: PageDep,
    kind: Annotated[CredentialKind | None, Query()] = None,
) -> CredentialListResponse:
    rows, total = await credentials.list_credentials(ctx, scope, kind, page)
    now = ctx.now()
    return CredentialListResponse(
        credentials=[
            CredentialItem(
                id=row.id,
                kind=CredentialKind(row.kind),
                display_name=row.display_name,
                key_prefix=row.key_prefix,
                user_id=row.user_id,
                key_status=credentials.key_status(row, now),
                created_at=row.created_at,
                last_used_at=row.last_used_at,
                expires_at=row.expires_at,
            )
            for row in rows
        ],
        page_meta=PageMeta.of(page, total),
    )


@router.delete("/credentials/{credentialId}", status_code=204, response_class=Response)
async def revoke(ctx: Ctx, scope: SessionScope, credentialId: CredentialId) -> Response:
    """Revoke a key for good; requests using it fail from the next one on."""
    await credentials.revoke_credential(ctx, scope, str(credentialId))
    return Response(status_code=204)
