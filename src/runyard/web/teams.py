"""Teams: the teams you belong to, creating one, joining one with an invitation token.

This page works without a team (a new account on a server without personal teams, or someone
removed from their last team): every other page leads here then."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from runyard.domain.errors import RunyardError
from runyard.services import teams
from runyard.web.render import PageRoute, page, redirect
from runyard.web.session import (
    Account,
    posted_form,
    set_team_cookie,
    signed_in,
    viewer_of,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)

NOTICES = {
    "team-created": "Team created. It is now the team every page shows.",
    "joined": "You joined the team. It is now the team every page shows.",
}


async def _teams_page(
    request: Request,
    account: Account,
    *,
    status: int = 200,
    notice: str | None = None,
    **values: Any,
) -> Response:
    # With a team, the usual header (team switcher); without, the account alone.
    who, current = account, ""
    if account.teams:
        acting = await viewer_of(request, account)
        who, current = acting, acting.scope.team_id
    return page(
        "teams.html",
        who,
        status=status,
        nav="teams",
        notice=notice,
        errors=values.pop("errors", {}),
        form=values.pop("form", {}),
        current=current,
        title="Teams",
        **values,
    )


@router.get("/teams")
async def teams_page(
    request: Request, notice: Annotated[str, Query(max_length=40)] = ""
) -> Response:
    account = await signed_in(request)
    return await _teams_page(request, account, notice=NOTICES.get(notice))


@router.post("/teams")
async def create_team(request: Request) -> Response:
    account = await signed_in(request)
    form = await posted_form(request, account)
    name = form.get("display_name", "").strip()
    if not 1 <= len(name) <= 100:
        errors = {"team_name": "give the team a name (1-100 characters)"}
        return await _teams_page(request, account, status=400, errors=errors, form=form)
    team = await teams.create_team(account.ctx, account.user.id, name)
    response = redirect("/teams", notice="team-created")
    set_team_cookie(response, team.id, account.secure_cookies)
    return response


@router.post("/teams/join")
async def join_team(request: Request) -> Response:
    account = await signed_in(request)
    form = await posted_form(request, account)
    token = form.get("invitation_token", "").strip()
    if not token.startswith("inv-") or len(token) > 200:
        errors = {"invitation_token": "paste the invitation token (it starts with inv-)"}
        return await _teams_page(request, account, status=400, errors=errors, form=form)
    try:
        address = request.client.host if request.client else None
        membership = await teams.accept_invitation(account.ctx, account.user.id, token, address)
    except RunyardError as exc:
        # Not found or expired, for another email address, already a member: next to the field.
        errors = {"invitation_token": exc.message}
        return await _teams_page(request, account, status=exc.status_code, errors=errors, form=form)
    response = redirect("/teams", notice="joined")
    set_team_cookie(response, membership.team_id, account.secure_cookies)
    return response
