"""Users: registration, login, refresh-token rotation, logout, profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from runyard.context import ServiceContext
from runyard.domain.credentials import hash_secret
from runyard.domain.errors import BadRequest, Conflict, Forbidden, Unauthorized
from runyard.domain.ids import new_id
from runyard.domain.roles import Role
from runyard.services import throttle
from runyard.services.auth import Caller, CallerKind, forget_sessions
from runyard.store.repos import Repos
from runyard.store.tables import Membership, RefreshToken, Team, User

INVALID_LOGIN = "invalid email or password"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def normalise_email(email: str) -> str:
    return email.strip().lower()


def default_display_name(first_name: str, last_name: str, email: str) -> str:
    name = f"{first_name} {last_name}".strip()
    # Two 100-character names must still fit the 200-character column.
    return (name or email.split("@", 1)[0])[:200].rstrip()


async def register(
    ctx: ServiceContext,
    *,
    email: str,
    password: str,
    first_name: str = "",
    last_name: str = "",
    display_name: str = "",
    invitation_token: str | None = None,
    personal_team: bool | None = None,
    by_operator: bool = False,
) -> User:
    """Create an account. Closed registration still admits holders of a valid invitation,
    and the operator (``runyard admin bootstrap``) may always create accounts."""
    email = normalise_email(email)
    now = ctx.now()
    password_hash = ctx.passwords.hash(password)
    async with ctx.db.write() as session:
        repos = Repos(session)
        invitation = None
        if invitation_token:
            invitation = await repos.invitation_by_token_hash(hash_secret(invitation_token))
            if invitation is None or invitation.expires_at <= now:
                raise Forbidden("invitation not found or expired")
            if invitation.email_address != email:
                raise Forbidden("this invitation is for a different email address")
        elif not ctx.settings.auth.registration and not by_operator:
            raise Forbidden("registration is disabled on this server; ask for an invitation")
        if await repos.user_by_email(email) is not None:
            raise Conflict("an account with this email address already exists")
        user = User(
            id=new_id(),
            email_address=email,
            password_hash=password_hash,
            first_name=first_name,
            last_name=last_name,
            display_name=display_name or default_display_name(first_name, last_name, email),
            is_active=True,
            created_at=now,
            updated_at=now,
        )
        await repos.add(user)
        if invitation is not None:
            await repos.add(
                Membership(
                    team_id=invitation.team_id,
                    user_id=user.id,
                    member_role=invitation.invitation_role,
                    created_at=now,
                )
            )
            await repos.delete_invitation(invitation.id)
        elif ctx.settings.auth.auto_team if personal_team is None else personal_team:
            await create_team_in(repos, user, f"{user.display_name}'s Team", now)
        return user


async def create_team_in(repos: Repos, owner: User, display_name: str, now: datetime) -> Team:
    team = Team(
        id=new_id(),
        display_name=display_name[:100],
        owner_id=owner.id,
        created_at=now,
        updated_at=now,
    )
    await repos.add(team)
    await repos.add(
        Membership(team_id=team.id, user_id=owner.id, member_role=Role.OWNER, created_at=now)
    )
    return team


async def _issue_pair(ctx: ServiceContext, repos: Repos, user_id: str, family_id: str) -> TokenPair:
    now = ctx.now()
    auth = ctx.settings.auth
    refresh_id = new_id()
    await repos.add(
        RefreshToken(
            id=refresh_id,
            user_id=user_id,
            family_id=family_id,
            created_at=now,
            expires_at=now + timedelta(seconds=auth.refresh_token_ttl_seconds),
        )
    )
    return TokenPair(
        access_token=ctx.signer.issue(
            user_id, "access", new_id(), now, auth.access_token_ttl_seconds, session_id=family_id
        ),
        refresh_token=ctx.signer.issue(
            user_id, "refresh", refresh_id, now, auth.refresh_token_ttl_seconds
        ),
        expires_in=auth.access_token_ttl_seconds,
    )


async def login(
    ctx: ServiceContext, email: str, password: str, address: str | None = None
) -> TokenPair:
    """One 401 for every failure; unknown emails cost the same argon2 verify as known ones.

    Throttled per account and client ``address`` (``services/throttle.py``): a blocked key is
    a 429 before the password is looked at."""
    email = normalise_email(email)
    keys = throttle.signin_keys(ctx, email, address)
    await throttle.check_signin(ctx, keys)
    async with ctx.db.read() as session:
        user = await Repos(session).user_by_email(email)
    ok = ctx.passwords.verify(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        await throttle.signin_failed(ctx, keys)
        raise Unauthorized(INVALID_LOGIN)
    async with ctx.db.write() as session:
        repos = Repos(session)
        await throttle.signin_succeeded(ctx, repos, keys)
        return await _issue_pair(ctx, repos, user.id, new_id())


async def refresh(ctx: ServiceContext, refresh_token: str) -> TokenPair:
    """Rotate: the presented token is spent; presenting a spent one revokes its family."""
    claims = ctx.signer.verify(refresh_token, "refresh", ctx.now())
    now = ctx.now()
    reused = False
    async with ctx.db.write() as session:
        repos = Repos(session)
        row = await repos.refresh_token(claims.token_id)
        if row is None or row.user_id != claims.user_id:
            raise Unauthorized("invalid refresh token")
        if row.revoked_at is not None:
            raise Unauthorized("refresh token revoked")
        if row.expires_at <= now:
            raise Unauthorized("refresh token expired")
        if await repos.family_revoked(row.family_id):
            # A token rotated in by a refresh that raced the family's revocation.
            raise Unauthorized("refresh token revoked")
        if await repos.mark_refresh_used(row.id, now):
            user = await repos.user_by_id(row.user_id)
            if user is None or not user.is_active:
                raise Unauthorized("invalid refresh token")
            return await _issue_pair(ctx, repos, row.user_id, row.family_id)
        # Already used: someone replayed it. Kill the whole chain (committed below).
        await repos.revoke_refresh_family(row.family_id, now)
        reused = True
    assert reused
    # Its access tokens stop working too (at once here; on other servers within the cache).
    forget_sessions(ctx.db)
    raise Unauthorized("refresh token already used; sign in again")


async def logout(ctx: ServiceContext, refresh_token: str) -> None:
    """End the sign-in: its refresh tokens and its access tokens."""
    claims = ctx.signer.verify(refresh_token, "refresh", ctx.now())
    async with ctx.db.write() as session:
        repos = Repos(session)
        row = await repos.refresh_token(claims.token_id)
        if row is not None and row.user_id == claims.user_id:
            await repos.revoke_refresh_family(row.family_id, ctx.now())
    forget_sessions(ctx.db)


async def change_password(
    ctx: ServiceContext,
    caller: Caller,
    current_password: str,
    new_password: str,
    address: str | None = None,
) -> None:
    """Set a new password after checking the current one (throttled like a sign-in). Every
    other sign-in of the user ends, its access tokens with it; the one making the change
    stays signed in. Device keys (``dk-``) are not touched: revoke them on their own."""
    if caller.kind is not CallerKind.SESSION or caller.user_id is None:
        raise Forbidden("this endpoint accepts only a user session (JWT)")
    async with ctx.db.read() as session:
        user = await Repos(session).user_by_id(caller.user_id)
    if user is None or not user.is_active:
        raise Unauthorized("invalid access token")
    keys = throttle.signin_keys(ctx, user.email_address, address)
    await throttle.check_signin(ctx, keys)
    if not ctx.passwords.verify(user.password_hash, current_password):
        await throttle.signin_failed(ctx, keys)
        raise Forbidden("current_password is not your password")
    if new_password == current_password:
        raise BadRequest("new_password must differ from current_password")
    password_hash = ctx.passwords.hash(new_password)
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = Repos(session)
        row = await repos.user_by_id(user.id)
        if row is None:
            raise Unauthorized("invalid access token")
        row.password_hash = password_hash
        row.updated_at = now
        await repos.revoke_user_sessions(user.id, now, keep_family=caller.session_id)
    forget_sessions(ctx.db)


@dataclass(frozen=True)
class Profile:
    user: User
    teams: list[tuple[Team, Membership]]


async def profile(ctx: ServiceContext, user_id: str) -> Profile:
    async with ctx.db.read() as session:
        repos = Repos(session)
        user = await repos.user_by_id(user_id)
        if user is None:
            raise Unauthorized("invalid access token")
        teams, _ = await repos.teams_of_user(user_id)
    return Profile(user, teams)
