"""Sign-up, sign-in, token refresh, the caller's profile, and desktop pairing."""

from __future__ import annotations

from fastapi import APIRouter

from runyard.api.deps import CallerDep, ClientAddress, Ctx, SessionScope, UserId
from runyard.domain.roles import Role
from runyard.schemas.identity import (
    FeatureFlags,
    IdResponse,
    LoginRequest,
    PairConfirmRequest,
    PairPollRequest,
    PairPollResponse,
    PairStartResponse,
    PasswordChangeRequest,
    RefreshRequest,
    RegisterRequest,
    SuccessResponse,
    TeamRef,
    TokenResponse,
    UserProfile,
)
from runyard.services import accounts, credentials
from runyard.services.accounts import TokenPair

router = APIRouter()


def _tokens(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


@router.post("/auth/register", tags=["auth"], response_model=IdResponse)
async def register(ctx: Ctx, body: RegisterRequest) -> IdResponse:
    """Create an account (when registration is on, or with an invitation token)."""
    user = await accounts.register(
        ctx,
        email=str(body.email_address),
        password=body.user_password,
        first_name=body.first_name,
        last_name=body.last_name,
        display_name=body.display_name,
        invitation_token=body.invitation_token,
    )
    return IdResponse(id=user.id)


@router.post("/auth/login", tags=["auth"], response_model=TokenResponse)
async def login(ctx: Ctx, body: LoginRequest, address: ClientAddress) -> TokenResponse:
    """Sign in. Failed attempts are throttled per account and client address (429 with
    Retry-After)."""
    return _tokens(await accounts.login(ctx, body.email_address, body.user_password, address))


@router.post("/auth/refresh", tags=["auth"], response_model=TokenResponse)
async def refresh(ctx: Ctx, body: RefreshRequest) -> TokenResponse:
    """Exchange a refresh token for a new pair; the old refresh token stops working."""
    return _tokens(await accounts.refresh(ctx, body.refresh_token))


@router.post("/auth/logout", tags=["auth"], response_model=SuccessResponse)
async def logout(ctx: Ctx, body: RefreshRequest) -> SuccessResponse:
    """End a sign-in: its refresh tokens and its access tokens stop working."""
    await accounts.logout(ctx, body.refresh_token)
    return SuccessResponse()


@router.post("/auth/device/revoke", tags=["auth"], response_model=SuccessResponse)
async def revoke_device(ctx: Ctx, caller: CallerDep) -> SuccessResponse:
    """A device credential (dk-) revokes itself and its companion agent key."""
    await credentials.revoke_device(ctx, caller)
    return SuccessResponse()


@router.put("/users/me/password", tags=["user"], response_model=SuccessResponse)
async def change_password(
    ctx: Ctx, caller: CallerDep, body: PasswordChangeRequest, address: ClientAddress
) -> SuccessResponse:
    """Change your password (session only). Every other sign-in of yours ends at once; this
    one stays. Wrong current passwords are throttled like sign-ins."""
    await accounts.change_password(ctx, caller, body.current_password, body.new_password, address)
    return SuccessResponse()


@router.get("/users/me", tags=["user"], response_model=UserProfile)
async def me(ctx: Ctx, user_id: UserId) -> UserProfile:
    profile = await accounts.profile(ctx, user_id)
    user = profile.user
    settings = ctx.settings
    return UserProfile(
        id=user.id,
        first_name=user.first_name,
        last_name=user.last_name,
        display_name=user.display_name,
        email_address=user.email_address,
        created_at=user.created_at,
        team_list=[
            TeamRef(id=team.id, display_name=team.display_name, member_role=Role(m.member_role))
            for team, m in profile.teams
        ],
        feature_flags=FeatureFlags(
            global_={
                "features": {
                    "registration": settings.auth.registration,
                    "oauth": False,
                    "email": settings.email.enabled,
                    "oidc_provider": False,
                    "mcp_server": False,
                    "auto_team": settings.auth.auto_team,
                    "notifications": False,
                },
                # -1 means unlimited, as in the reference.
                "quotas": {
                    "max_users": -1,
                    "max_teams": -1,
                    "max_agents": -1,
                    "max_concurrent_tasks": -1,
                },
            },
            account={
                "features": {"manual_team_creation": True, "team_invitation_accept": True},
                "quotas": {"max_owned_teams": -1},
            },
            teams={},
        ),
    )


@router.post("/desktop/pair/start", tags=["devicepair"], response_model=PairStartResponse)
async def pair_start(ctx: Ctx) -> PairStartResponse:
    """Anonymous: begin pairing a desktop or CLI; show ``user_code`` to the user, poll."""
    start = await credentials.start_pairing(ctx)
    return PairStartResponse(
        device_code=start.device_code,
        user_code=start.user_code,
        verification_uri=start.verification_uri,
        expires_in=start.expires_in,
        interval=start.interval,
    )


@router.post("/desktop/pair/poll", tags=["devicepair"], response_model=PairPollResponse)
async def pair_poll(ctx: Ctx, body: PairPollRequest, address: ClientAddress) -> PairPollResponse:
    """``pending`` until confirmed; then the keys, exactly once (later polls get 404). Polls
    are throttled per client address (429 with Retry-After)."""
    result = await credentials.poll_pairing(ctx, body.device_code, address)
    return PairPollResponse(
        status="approved" if result.status == "approved" else "pending",
        raw_key=result.raw_key,
        agent_key=result.agent_key,
    )


@router.post("/desktop/pair/confirm", tags=["devicepair"], response_model=SuccessResponse)
async def pair_confirm(ctx: Ctx, scope: SessionScope, body: PairConfirmRequest) -> SuccessResponse:
    """A signed-in user approves the code shown by the device, for the team in X-Team-ID."""
    await credentials.confirm_pairing(ctx, scope, body.user_code, body.device_name)
    return SuccessResponse()
