"""Dependencies shared by the routers: the service context, the caller, the team scope, pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runyard.domain.errors import Unauthorized
from runyard.services import auth
from runyard.services.auth import Caller, Surface, TeamScope
from runyard.services.context import ServiceContext
from runyard.store.repos import Page


def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServiceContext, Depends(get_ctx)]

_bearer = HTTPBearer(auto_error=False, description="A session JWT or an sk-/dk- key")


async def get_caller(
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None:
        raise Unauthorized("missing bearer token (Authorization: Bearer …)")
    return await auth.authenticate(ctx, credentials.credentials)


CallerDep = Annotated[Caller, Depends(get_caller)]

TeamHeader = Annotated[
    str | None,
    Header(
        alias="X-Team-ID",
        description="Team to act on. Required with a session JWT; ignored for sk-/dk- keys.",
    ),
]


def _scope(surface: Surface) -> Callable[..., Awaitable[TeamScope]]:
    async def dependency(ctx: Ctx, caller: CallerDep, x_team_id: TeamHeader = None) -> TeamScope:
        return await auth.team_scope(ctx, caller, x_team_id, surface)

    return dependency


#: Team resources: session JWT + X-Team-ID, or dk-.
ManagementScope = Annotated[TeamScope, Depends(_scope(Surface.MANAGEMENT))]
#: Runtime (/r/) routes: session JWT + X-Team-ID, sk- or dk-.
RuntimeScope = Annotated[TeamScope, Depends(_scope(Surface.RUNTIME))]
#: Credential management: session JWT + X-Team-ID only.
SessionScope = Annotated[TeamScope, Depends(_scope(Surface.SESSION_ONLY))]


async def _user_id(caller: CallerDep) -> str:
    return auth.require_user(caller)


#: Per-user routes: a session JWT or a dk-, never sk-.
UserId = Annotated[str, Depends(_user_id)]


def _page(
    current_page: Annotated[int, Query(ge=1, le=1_000_000, description="1-based page")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100, description="items per page")] = 20,
) -> Page:
    return Page(current_page, per_page)


PageDep = Annotated[Page, Depends(_page)]
