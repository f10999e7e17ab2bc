"""Dependencies shared by the routers: the service context, the caller, the team scope, pages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runyard.context import ServiceContext
from runyard.domain import limits
from runyard.domain.errors import Forbidden, Unauthorized
from runyard.domain.limits import PER_PAGE
from runyard.domain.pages import Page
from runyard.services import auth, web_sessions
from runyard.services import credentials as cached_callers
from runyard.services.auth import Caller, Surface, TeamScope


def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


async def _ctx(request: Request) -> ServiceContext:
    # ``async``: FastAPI runs a plain ``def`` dependency on a worker thread (a thread
    # hand-off and back on every request, ~1 ms of latency on a busy VM).
    return get_ctx(request)


Ctx = Annotated[ServiceContext, Depends(_ctx)]

_bearer = HTTPBearer(auto_error=False, description="A session JWT or an sk-/dk- key")


async def get_caller(
    ctx: Ctx,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None:
        cookie = request.cookies.get(web_sessions.SESSION_COOKIE)
        if cookie:
            return await _cookie_caller(ctx, request, cookie)
        raise Unauthorized("missing bearer token (Authorization: Bearer …)")
    # Integration keys (the submit path) are remembered for up to a second (revocation
    # bound: services/credentials.py, CALLER_CACHE_SECONDS).
    return await cached_callers.authenticate_cached(ctx, credentials.credentials)


async def _cookie_caller(ctx: ServiceContext, request: Request, cookie: str) -> Caller:
    """The dashboard's own calls: its session cookie, with the CSRF header on unsafe methods
    and, when the browser sends one, this server's Origin. A bearer token always wins."""
    caller = await web_sessions.caller_of(ctx, cookie)
    if request.method not in web_sessions.SAFE_METHODS:
        if not web_sessions.origin_allowed(
            request.headers.get("origin"),
            request.headers.get("host"),
            request.url.scheme,
            ctx.settings.public_url(),
        ):
            raise Forbidden("cross-origin request refused")
        if not web_sessions.csrf_valid(cookie, request.headers.get(web_sessions.CSRF_HEADER)):
            raise Forbidden(
                f"a request with the dashboard's session cookie needs its "
                f"{web_sessions.CSRF_HEADER} header"
            )
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]

TeamHeader = Annotated[
    str | None,
    Header(
        alias="X-Team-ID",
        description="Team to act on. Required with a session JWT; ignored for sk-/dk- keys.",
    ),
]


def _scope(surface: Surface) -> Callable[..., Awaitable[TeamScope]]:
    async def dependency(
        ctx: Ctx, caller: CallerDep, request: Request, x_team_id: TeamHeader = None
    ) -> TeamScope:
        if x_team_id is None and "authorization" not in request.headers:
            # A dashboard session (cookie): the team chosen in the team switcher.
            x_team_id = request.cookies.get(web_sessions.TEAM_COOKIE)
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


async def _client_address(request: Request) -> str | None:
    """The client's address as the ASGI server saw it (``request.client.host``), for
    throttling. Behind a reverse proxy that is the proxy's address: X-Forwarded-For is not
    read (see docs/operations.md, "Sign-in throttling")."""
    return request.client.host if request.client else None


#: The calling client's address (throttle keys).
ClientAddress = Annotated[str | None, Depends(_client_address)]


async def _page(  # async: see ``_ctx``
    current_page: Annotated[int, Query(ge=1, le=limits.MAX_PAGE, description="1-based page")] = 1,
    per_page: Annotated[
        int, Query(ge=PER_PAGE.low, le=PER_PAGE.high, description="items per page")
    ] = limits.PER_PAGE_DEFAULT,
) -> Page:
    return Page(current_page, per_page)


PageDep = Annotated[Page, Depends(_page)]
