"""Who is looking at a dashboard page: the session cookie, the chosen team, CSRF checks."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from fastapi import Request, Response

from runyard.context import ServiceContext
from runyard.domain.errors import BadRequest, Forbidden, NotFound, Unauthorized
from runyard.domain.ids import parse_id
from runyard.domain.roles import Permission, Role
from runyard.domain.text import UNSTORABLE_TEXT, first_unstorable
from runyard.services import accounts, auth, web_sessions
from runyard.services.auth import Caller, Surface, TeamScope
from runyard.store.tables import User

#: Double-submit cookie for the sign-in form (there is no session yet to bind a token to).
LOGIN_COOKIE = "runyard_login"


class SignInRequired(Exception):
    """Raised by pages when there is no valid session: the page answers with a redirect."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class TeamChoice:
    id: str
    display_name: str
    role: Role


class TeamRequired(Exception):
    """Raised by pages when the user belongs to no team: they are sent to ``/teams``, where
    they can create a team or accept an invitation."""


@dataclass(frozen=True)
class Account:
    """The signed-in user and their teams (the ``/teams`` page needs no team)."""

    ctx: ServiceContext
    user: User
    caller: Caller
    teams: list[TeamChoice]
    csrf: str
    session_token: str
    secure_cookies: bool = False


@dataclass(frozen=True, kw_only=True)
class Viewer(Account):
    """The signed-in user, their teams, and the team the page acts on."""

    scope: TeamScope
    #: The team cookie is missing or names a team the user left: pages set it again, so
    #: the page scripts' API calls (EventSource, images) act on the team the page shows.
    team_cookie_stale: bool = False

    @property
    def team(self) -> TeamChoice:
        return next(t for t in self.teams if t.id == self.scope.team_id)

    def can(self, permission: Permission | str) -> bool:
        return self.scope.can(Permission(permission))


def get_ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def wanted_path(request: Request) -> str:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    return path


def safe_next(value: str | None) -> str:
    """Only paths of this site: ``/tasks`` yes, ``//evil.example`` or ``https://…`` no."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def login_url(next_path: str) -> str:
    return "/login" if next_path in ("", "/") else f"/login?next={quote(next_path, safe='')}"


async def signed_in(request: Request) -> Account:
    """The signed-in user of this request, or ``SignInRequired``."""
    ctx = get_ctx(request)
    token = request.cookies.get(web_sessions.SESSION_COOKIE)
    if not token:
        raise SignInRequired(wanted_path(request))
    try:
        caller = await web_sessions.caller_of(ctx, token)
    except Unauthorized:
        raise SignInRequired(wanted_path(request)) from None
    assert caller.user_id is not None
    profile = await accounts.profile(ctx, caller.user_id)
    teams = [
        TeamChoice(team.id, team.display_name, Role(member.member_role))
        for team, member in profile.teams
    ]
    return Account(
        ctx,
        profile.user,
        caller,
        teams,
        web_sessions.csrf_token(token),
        token,
        secure_cookies=secure_cookies(request),
    )


async def viewer(request: Request, *, team_id: str | None = None) -> Viewer:
    """The page's viewer, or ``SignInRequired`` (or ``TeamRequired``)."""
    return await viewer_of(request, await signed_in(request), team_id=team_id)


async def viewer_of(request: Request, account: Account, *, team_id: str | None = None) -> Viewer:
    """``account`` acting on a team: ``team_id``, else the team cookie, else the user's first
    team; membership is checked on every request."""
    if not account.teams:
        raise TeamRequired()
    cookie = request.cookies.get(web_sessions.TEAM_COOKIE)
    wanted = team_id or cookie
    if wanted not in {t.id for t in account.teams}:
        wanted = account.teams[0].id
    scope = await auth.team_scope(account.ctx, account.caller, wanted, Surface.SESSION_ONLY)
    return Viewer(
        ctx=account.ctx,
        user=account.user,
        caller=account.caller,
        teams=account.teams,
        csrf=account.csrf,
        session_token=account.session_token,
        secure_cookies=account.secure_cookies,
        scope=scope,
        team_cookie_stale=cookie != wanted,
    )


def secure_cookies(request: Request) -> bool:
    """``Secure`` cookies when the dashboard is reached over HTTPS (or published as such)."""
    return request.url.scheme == "https" or get_ctx(request).settings.public_url().startswith(
        "https://"
    )


def set_team_cookie(response: Response, team_id: str, secure: bool) -> None:
    response.set_cookie(
        web_sessions.TEAM_COOKIE,
        team_id,
        max_age=365 * 24 * 3600,
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the dashboard's forms); the last value
    of a repeated field wins."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", "application/x-www-form-urlencoded"):
        raise BadRequest("forms must be sent as application/x-www-form-urlencoded")
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = parse_qsl(body, keep_blank_values=True, max_num_fields=1000)
    # The API's text rule (api/boundary.py): a NUL (%00) would reach PostgreSQL as a 500.
    bad = first_unstorable(fields)
    if bad is not None:
        raise BadRequest(f"{bad}: {UNSTORABLE_TEXT}")
    return dict(fields)


def check_origin(request: Request) -> None:
    ctx = get_ctx(request)
    if not web_sessions.origin_allowed(
        request.headers.get("origin"),
        request.headers.get("host"),
        request.url.scheme,
        ctx.settings.public_url(),
    ):
        raise Forbidden("cross-origin form refused")


async def posted_form(request: Request, who: Account) -> dict[str, str]:
    """A dashboard form of ``who``: same origin and this session's CSRF token, or 403."""
    check_origin(request)
    form = await read_form(request)
    if not web_sessions.csrf_valid(who.session_token, form.get(web_sessions.CSRF_FIELD)):
        raise Forbidden("this form has expired or did not come from this dashboard; reload it")
    return form


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def resource_id(value: str, what: str) -> str:
    """A path id that is not a UUID names nothing: 404, like one of another team."""
    parsed = parse_id(value)
    if parsed is None:
        raise NotFound(f"{what} not found")
    return parsed
