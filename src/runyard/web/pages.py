"""Sign-in, sign-out, the team switcher, agents, device pairing approval, static files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from runyard.domain.errors import NotFound, RunyardError, TooManyRequests, Unauthorized
from runyard.domain.pages import first_page
from runyard.domain.roles import Role
from runyard.services import agents, auth, credentials, web_sessions
from runyard.services.auth import Surface
from runyard.web.render import HERE, PageRoute, error_page, page, redirect
from runyard.web.session import (
    LOGIN_COOKIE,
    check_origin,
    get_ctx,
    new_login_nonce,
    posted_form,
    read_form,
    safe_next,
    secure_cookies,
    set_team_cookie,
    viewer,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)

STATIC_FILES = {"app.css": "text/css", "app.js": "text/javascript"}


def set_session_cookie(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        web_sessions.SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/",
    )


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The dashboard's own stylesheet and script (nothing else is served from here)."""
    if name not in STATIC_FILES:
        return error_page(404, "no such file")
    return FileResponse(
        HERE / "static" / name,
        media_type=STATIC_FILES[name],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/")
async def home(request: Request) -> Response:
    await viewer(request)
    return redirect("/agents")


def _with_login_nonce(request: Request, response: Response, nonce: str) -> Response:
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request),
    )
    return response


@router.get("/login")
async def login_form(
    request: Request, next: Annotated[str | None, Query(max_length=2000)] = None
) -> Response:
    nonce = new_login_nonce()
    response = page("login.html", None, next=safe_next(next), nonce=nonce, title="Sign in")
    return _with_login_nonce(request, response, nonce)


@router.post("/login")
async def login(request: Request) -> Response:
    check_origin(request)
    form = await read_form(request)
    next_path = safe_next(form.get("next"))
    email = form.get("email", "").strip()
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or form.get("nonce") != nonce:
        message = "the sign-in form expired; please try again"
        return _login_again(request, next_path, email, message, 403)
    ctx = get_ctx(request)
    try:
        address = request.client.host if request.client else None
        session = await web_sessions.sign_in(ctx, email, form.get("password", ""), address)
    except (Unauthorized, TooManyRequests) as exc:
        return _login_again(request, next_path, email, exc.message, exc.status_code)
    response = redirect(next_path)
    set_session_cookie(response, request, session.token, session.max_age)
    response.delete_cookie(LOGIN_COOKIE)
    return response


def _login_again(
    request: Request, next_path: str, email: str, message: str, status: int
) -> Response:
    nonce = new_login_nonce()
    response = page(
        "login.html",
        None,
        status=status,
        next=next_path,
        nonce=nonce,
        email=email,
        error=message,
        title="Sign in",
    )
    return _with_login_nonce(request, response, nonce)


@router.post("/logout")
async def logout(request: Request) -> Response:
    who = await viewer(request)
    await posted_form(request, who)
    await web_sessions.sign_out(get_ctx(request), who.session_token)
    response = redirect("/login")
    response.delete_cookie(web_sessions.SESSION_COOKIE, path="/")
    response.delete_cookie(web_sessions.TEAM_COOKIE, path="/")
    return response


@router.post("/team")
async def switch_team(request: Request) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    team_id = form.get("team_id", "")
    if team_id not in {t.id for t in who.teams}:
        raise NotFound("you are not a member of that team")
    response = redirect(safe_next(form.get("next")))
    set_team_cookie(response, team_id, who.secure_cookies)
    return response


# -- agents ------------------------------------------------------------------------------------


@router.get("/agents")
async def agents_page(request: Request) -> Response:
    who = await viewer(request)
    views, total = await agents.list_agents(who.ctx, who.scope, first_page())
    return page("agents.html", who, nav="agents", agents=views, total=total, title="Agents")


# -- device pairing ----------------------------------------------------------------------------


@router.get("/desktop/pair")
async def pair_page(
    request: Request, user_code: Annotated[str, Query(max_length=40)] = ""
) -> Response:
    """Where ``runyard login`` sends the user (``verification_uri``): approve or deny."""
    who = await viewer(request)
    code = credentials.normalise_user_code(user_code) if user_code else ""
    return page(
        "pair.html",
        who,
        user_code=code or user_code,
        bad_code=bool(user_code) and not code,
        title="Approve a device",
    )


@router.post("/desktop/pair")
async def pair_decide(request: Request) -> Response:
    who = await viewer(request)
    form = await posted_form(request, who)
    team_id = form.get("team_id") or who.scope.team_id
    if team_id not in {t.id for t in who.teams}:
        raise NotFound("you are not a member of that team")
    # The scope of the team chosen on the form (membership checked again).
    scope = await auth.team_scope(who.ctx, who.scope.caller, team_id, Surface.SESSION_ONLY)
    code = form.get("user_code", "")
    decision = form.get("decision", "")
    device_name = form.get("device_name", "").strip()[:100] or None
    try:
        if decision == "approve":
            await credentials.confirm_pairing(who.ctx, scope, code, device_name)
        elif decision == "deny":
            await credentials.deny_pairing(who.ctx, scope, code)
        else:
            return error_page(400, "choose approve or deny", who)
    except RunyardError as exc:
        return page(
            "pair.html",
            who,
            status=exc.status_code,
            user_code=code,
            error=exc.message,
            title="Approve a device",
        )
    team = next(t for t in who.teams if t.id == team_id)
    return page(
        "pair_done.html",
        who,
        approved=decision == "approve",
        team=team,
        agent_key=Role(team.role).rank >= Role.MEMBER.rank,
        title="Device approved" if decision == "approve" else "Device denied",
    )
