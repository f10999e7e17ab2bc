"""Teams, members and invitations."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Response

from runyard.api.deps import ClientAddress, Ctx, ManagementScope, PageDep, UserId
from runyard.domain.errors import BadRequest
from runyard.domain.ids import parse_id
from runyard.domain.roles import Role
from runyard.schemas.identity import (
    IdResponse,
    InvitationAccepted,
    InvitationAcceptRequest,
    InvitationCreated,
    InvitationCreateRequest,
    InvitationItem,
    InvitationListResponse,
    MemberItem,
    MemberListResponse,
    PageMeta,
    RoleUpdateRequest,
    SuccessResponse,
    TeamCreateRequest,
    TeamDetail,
    TeamItem,
    TeamListResponse,
    TeamUpdateRequest,
    TransferRequest,
)
from runyard.services import teams

router = APIRouter()

UserPath = Annotated[UUID, Path(description="The member's user id")]
InvitationPath = Annotated[UUID, Path(description="The invitation's id")]


@router.post("/teams", tags=["team"], response_model=IdResponse)
async def create_team(ctx: Ctx, user_id: UserId, body: TeamCreateRequest) -> IdResponse:
    """Create a team; the caller becomes its owner."""
    team = await teams.create_team(ctx, user_id, body.display_name)
    return IdResponse(id=team.id)


@router.get("/teams", tags=["team"], response_model=TeamListResponse)
async def list_teams(ctx: Ctx, user_id: UserId, page: PageDep) -> TeamListResponse:
    """The caller's teams, with the caller's role in each."""
    rows, total = await teams.list_teams(ctx, user_id, page)
    return TeamListResponse(
        team_list=[
            TeamItem(
                id=team.id,
                display_name=team.display_name,
                owner_id=team.owner_id,
                member_role=Role(m.member_role),
                created_at=team.created_at,
                updated_at=team.updated_at,
            )
            for team, m in rows
        ],
        page_meta=PageMeta.of(page, total),
    )


@router.get("/teams/current", tags=["team"], response_model=TeamDetail)
async def get_current(ctx: Ctx, scope: ManagementScope) -> TeamDetail:
    team, count = await teams.get_team(ctx, scope)
    assert scope.role is not None
    return TeamDetail(
        id=team.id,
        display_name=team.display_name,
        owner_id=team.owner_id,
        member_role=scope.role,
        created_at=team.created_at,
        updated_at=team.updated_at,
        member_count=count,
    )


@router.put("/teams/current", tags=["team"], response_model=IdResponse)
async def update_current(ctx: Ctx, scope: ManagementScope, body: TeamUpdateRequest) -> IdResponse:
    team = await teams.update_team(ctx, scope, body.display_name)
    return IdResponse(id=team.id)


@router.post("/teams/current/transfer", tags=["team"], response_model=SuccessResponse)
async def transfer(ctx: Ctx, scope: ManagementScope, body: TransferRequest) -> SuccessResponse:
    """Owner only: hand the team to another member; the old owner becomes admin."""
    new_owner = parse_id(body.new_owner_id)
    if new_owner is None:
        raise BadRequest("new_owner_id must be a user UUID")
    await teams.transfer_ownership(ctx, scope, new_owner)
    return SuccessResponse()


@router.delete("/teams/current", tags=["team"], status_code=204, response_class=Response)
async def delete_current(ctx: Ctx, scope: ManagementScope) -> Response:
    """Owner only: delete the team and everything it owns. Its keys stop working at once."""
    await teams.delete_team(ctx, scope)
    return Response(status_code=204)


@router.post("/teams/current/leave", tags=["team"], response_model=SuccessResponse)
async def leave(ctx: Ctx, scope: ManagementScope) -> SuccessResponse:
    """Leave the team (the owner must transfer ownership first)."""
    await teams.leave_team(ctx, scope)
    return SuccessResponse()


@router.get("/members", tags=["member"], response_model=MemberListResponse)
async def list_members(ctx: Ctx, scope: ManagementScope, page: PageDep) -> MemberListResponse:
    rows, total = await teams.list_members(ctx, scope, page)
    return MemberListResponse(
        member_list=[
            MemberItem(
                user_id=user.id,
                email_address=user.email_address,
                display_name=user.display_name,
                member_role=Role(m.member_role),
                joined_at=m.created_at,
            )
            for m, user in rows
        ],
        page_meta=PageMeta.of(page, total),
    )


@router.put("/members/{userId}", tags=["member"], response_model=SuccessResponse)
async def update_member(
    ctx: Ctx,
    scope: ManagementScope,
    userId: UserPath,
    body: RoleUpdateRequest,
) -> SuccessResponse:
    """Set a member's role to admin, member or viewer (not owner, not your own)."""
    await teams.change_role(ctx, scope, str(userId), Role(body.member_role))
    return SuccessResponse()


@router.delete("/members/{userId}", tags=["member"], status_code=204, response_class=Response)
async def remove_member(ctx: Ctx, scope: ManagementScope, userId: UserPath) -> Response:
    await teams.remove_member(ctx, scope, str(userId))
    return Response(status_code=204)


@router.post("/invitations", tags=["invitation"], response_model=InvitationCreated)
async def invite(
    ctx: Ctx, scope: ManagementScope, body: InvitationCreateRequest
) -> InvitationCreated:
    """Invite an email address. With email sending off, the token comes back here."""
    invitation, token = await teams.invite(
        ctx, scope, str(body.email_address), Role(body.invitation_role)
    )
    return InvitationCreated(
        id=invitation.id, invitation_token=None if ctx.settings.email.enabled else token
    )


@router.get("/invitations", tags=["invitation"], response_model=InvitationListResponse)
async def list_invitations(
    ctx: Ctx, scope: ManagementScope, page: PageDep
) -> InvitationListResponse:
    rows, total = await teams.list_invitations(ctx, scope, page)
    return InvitationListResponse(
        invitation_list=[
            InvitationItem(
                id=row.id,
                email_address=row.email_address,
                invitation_role=Role(row.invitation_role),
                created_at=row.created_at,
                expires_at=row.expires_at,
            )
            for row in rows
        ],
        page_meta=PageMeta.of(page, total),
    )


@router.delete(
    "/invitations/{invitationId}", tags=["invitation"], status_code=204, response_class=Response
)
async def cancel_invitation(
    ctx: Ctx,
    scope: ManagementScope,
    invitationId: InvitationPath,
) -> Response:
    await teams.cancel_invitation(ctx, scope, str(invitationId))
    return Response(status_code=204)


@router.post("/invitations/accept", tags=["invitation"], response_model=InvitationAccepted)
async def accept_invitation(
    ctx: Ctx, user_id: UserId, body: InvitationAcceptRequest, address: ClientAddress
) -> InvitationAccepted:
    """Join the team of an invitation addressed to the caller's email. Failures are
    throttled per user and client address (429 with Retry-After)."""
    membership = await teams.accept_invitation(ctx, user_id, body.invitation_token, address)
    return InvitationAccepted(team_id=membership.team_id, member_role=Role(membership.member_role))
