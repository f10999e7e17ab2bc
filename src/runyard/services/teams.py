"""Teams, members and invitations."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import timedelta

from runyard.context import ServiceContext
from runyard.domain.credentials import hash_secret
from runyard.domain.errors import BadRequest, Conflict, Forbidden, NotFound
from runyard.domain.ids import new_id
from runyard.domain.roles import ASSIGNABLE_ROLES, Permission, Role
from runyard.services import throttle
from runyard.services.accounts import create_team_in, normalise_email
from runyard.services.auth import TeamScope
from runyard.services.credentials import forget_cached_callers
from runyard.services.files import record_team_purge
from runyard.services.tasks import cancel_team_tasks
from runyard.store.repos import Page, Repos
from runyard.store.tables import Invitation, Membership, Team, User


async def create_team(ctx: ServiceContext, user_id: str, display_name: str) -> Team:
    async with ctx.db.write() as session:
        repos = Repos(session)
        user = await repos.user_by_id(user_id)
        if user is None:
            raise NotFound("user not found")
        return await create_team_in(repos, user, display_name, ctx.now())


async def list_teams(
    ctx: ServiceContext, user_id: str, page: Page
) -> tuple[list[tuple[Team, Membership]], int]:
    async with ctx.db.read() as session:
        return await Repos(session).teams_of_user(user_id, page)


async def get_team(ctx: ServiceContext, scope: TeamScope) -> tuple[Team, int]:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        repos = Repos(session)
        team = await repos.team_by_id(scope.team_id)
        if team is None:
            raise NotFound("team not found")
        return team, await repos.member_count(team.id)


async def update_team(ctx: ServiceContext, scope: TeamScope, display_name: str) -> Team:
    scope.require(Permission.MANAGE_TEAM)
    async with ctx.db.write() as session:
        team = await Repos(session).team_by_id(scope.team_id)
        if team is None:
            raise NotFound("team not found")
        team.display_name = display_name
        team.updated_at = ctx.now()
        return team


async def transfer_ownership(ctx: ServiceContext, scope: TeamScope, new_owner_id: str) -> None:
    scope.require(Permission.OWN_TEAM)
    async with ctx.db.write() as session:
        repos = Repos(session)
        team = await repos.team_by_id(scope.team_id)
        if team is None:
            raise NotFound("team not found")
        if new_owner_id == team.owner_id:
            raise BadRequest("you already own this team")
        new_owner = await repos.membership(team.id, new_owner_id)
        if new_owner is None:
            raise NotFound("the new owner must already be a member of this team")
        old_owner = await repos.membership(team.id, team.owner_id)
        if old_owner is not None:
            old_owner.member_role = Role.ADMIN
        new_owner.member_role = Role.OWNER
        team.owner_id = new_owner_id
        team.updated_at = ctx.now()


async def delete_team(ctx: ServiceContext, scope: TeamScope) -> None:
    """Delete the team and everything it owns; its keys stop working at once. Its stored
    files (inputs, task outputs) are deleted by the retention sweeper, from purges recorded
    in this same transaction."""
    scope.require(Permission.OWN_TEAM)
    async with ctx.db.write() as session:
        repos = Repos(session)
        # Unfinished work is cancelled first (agents are told to abort as this commits),
        # then everything goes.
        await cancel_team_tasks(session, scope.team_id, ctx.now())
        await repos.revoke_team_credentials(scope.team_id, ctx.now())
        await record_team_purge(session, scope.team_id, ctx.now())
        await repos.delete_team(scope.team_id)
    forget_cached_callers(ctx.db)


async def leave_team(ctx: ServiceContext, scope: TeamScope) -> None:
    if scope.role is Role.OWNER:
        raise Conflict("the owner cannot leave the team; transfer ownership first")
    assert scope.user_id is not None
    async with ctx.db.write() as session:
        await Repos(session).delete_membership(scope.team_id, scope.user_id)


# -- members ---------------------------------------------------------------------------------


async def list_members(
    ctx: ServiceContext, scope: TeamScope, page: Page
) -> tuple[list[tuple[Membership, User]], int]:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        return await Repos(session).members_of_team(scope.team_id, page)


async def get_member(ctx: ServiceContext, scope: TeamScope, user_id: str) -> Membership:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        member = await Repos(session).membership(scope.team_id, user_id)
    if member is None:
        raise NotFound("member not found")
    return member


async def change_role(ctx: ServiceContext, scope: TeamScope, user_id: str, new_role: Role) -> None:
    scope.require(Permission.MANAGE_MEMBERS)
    if new_role is Role.OWNER:
        raise BadRequest("cannot set the owner role; use POST /teams/current/transfer")
    if user_id == scope.user_id:
        raise Forbidden("you cannot change your own role")
    async with ctx.db.write() as session:
        member = await Repos(session).membership(scope.team_id, user_id)
        if member is None:
            raise NotFound("member not found")
        if member.member_role == Role.OWNER:
            raise Forbidden("the owner's role changes only by transferring ownership")
        member.member_role = new_role


async def remove_member(ctx: ServiceContext, scope: TeamScope, user_id: str) -> None:
    """Remove a member. Keys they created stay valid (they belong to the team)."""
    scope.require(Permission.MANAGE_MEMBERS)
    if user_id == scope.user_id:
        raise Forbidden("you cannot remove yourself; leave the team instead")
    async with ctx.db.write() as session:
        repos = Repos(session)
        member = await repos.membership(scope.team_id, user_id)
        if member is None:
            raise NotFound("member not found")
        if member.member_role == Role.OWNER:
            raise Forbidden("the owner cannot be removed")
        await repos.delete_membership(scope.team_id, user_id)


# -- invitations -----------------------------------------------------------------------------


async def invite(
    ctx: ServiceContext, scope: TeamScope, email: str, role: Role
) -> tuple[Invitation, str]:
    """Create an invitation; returns it with its one-time token."""
    scope.require(Permission.MANAGE_MEMBERS)
    if role not in ASSIGNABLE_ROLES:
        raise BadRequest("invitation_role must be admin, member or viewer")
    email = normalise_email(email)
    now = ctx.now()
    token = "inv-" + secrets.token_urlsafe(32)
    async with ctx.db.write() as session:
        repos = Repos(session)
        user = await repos.user_by_email(email)
        if user is not None and await repos.membership(scope.team_id, user.id) is not None:
            raise Conflict("this user is already a member of the team")
        pending = await repos.invitation_for_email(scope.team_id, email)
        if pending is not None:
            if pending.expires_at > now:
                raise Conflict("an invitation for this email address is already pending")
            await repos.delete_invitation(pending.id)
        invitation = Invitation(
            id=new_id(),
            team_id=scope.team_id,
            email_address=email,
            invitation_role=role,
            token_hash=hash_secret(token),
            invited_by=scope.user_id,
            created_at=now,
            expires_at=now + timedelta(seconds=ctx.settings.auth.invitation_ttl_seconds),
        )
        await repos.add(invitation)
    return invitation, token


async def list_invitations(
    ctx: ServiceContext, scope: TeamScope, page: Page
) -> tuple[Sequence[Invitation], int]:
    scope.require(Permission.READ)
    async with ctx.db.read() as session:
        return await Repos(session).invitations_of_team(scope.team_id, ctx.now(), page)


async def cancel_invitation(ctx: ServiceContext, scope: TeamScope, invitation_id: str) -> None:
    scope.require(Permission.MANAGE_MEMBERS)
    async with ctx.db.write() as session:
        repos = Repos(session)
        if await repos.invitation(scope.team_id, invitation_id) is None:
            raise NotFound("invitation not found")
        await repos.delete_invitation(invitation_id)


async def accept_invitation(
    ctx: ServiceContext, user_id: str, token: str, address: str | None = None
) -> Membership:
    """Join the invitation's team. Failures (unknown or expired token, another address's
    invitation) are throttled per user and client ``address``: over the limit, 429."""
    await throttle.check_invitation(ctx, user_id, address)
    try:
        return await _accept_invitation(ctx, user_id, token)
    except (NotFound, Forbidden):
        await throttle.invitation_failed(ctx, user_id, address)
        raise


async def _accept_invitation(ctx: ServiceContext, user_id: str, token: str) -> Membership:
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = Repos(session)
        invitation = await repos.invitation_by_token_hash(hash_secret(token))
        if invitation is None or invitation.expires_at <= now:
            raise NotFound("invitation not found or expired")
        user = await repos.user_by_id(user_id)
        if user is None:
            raise NotFound("user not found")
        if user.email_address != invitation.email_address:
            raise Forbidden("this invitation is for a different email address")
        if await repos.membership(invitation.team_id, user_id) is not None:
            raise Conflict("you are already a member of this team")
        membership = Membership(
            team_id=invitation.team_id,
            user_id=user_id,
            member_role=invitation.invitation_role,
            created_at=now,
        )
        await repos.add(membership)
        await repos.delete_invitation(invitation.id)
        return membership
