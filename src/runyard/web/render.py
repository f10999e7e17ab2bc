"""Templates, security headers, and how page errors are shown (HTML, not JSON)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape

from runyard.domain.errors import RunyardError, Unauthorized
from runyard.schemas.errors import describe_errors
from runyard.services import web_sessions
from runyard.web.session import (
    Account,
    SignInRequired,
    TeamRequired,
    Viewer,
    login_url,
    set_team_cookie,
    signed_in,
    viewer,
    wanted_path,
)

HERE = Path(__file__).parent

#: Scripts and styles come only from this server; images, video and audio may come from object
#: storage (signed S3 links), and uploads go to it (``connect-src``).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob: https: http:; "
    "media-src 'self' blob: https: http:; connect-src 'self' https: http:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def _size(value: int | float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when
templates.filters["iso"] = _iso
templates.filters["size"] = _size


def _num(value: int | float | None) -> str:
    """A bound as people write it: ``150``, not ``150.0`` (JSON keeps numbers as floats)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _shown(value: Any) -> str:
    """A parameter's value as a person reads it: text as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


templates.filters["num"] = _num
templates.filters["shown"] = _shown
templates.globals["csrf_field"] = web_sessions.CSRF_FIELD


def page(
    name: str,
    who: Account | None,
    *,
    status: int = 200,
    nav: str = "",
    **values: Any,
) -> HTMLResponse:
    html = templates.get_template(name).render(who=who, nav=nav, **values)
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    if isinstance(who, Viewer) and who.team_cookie_stale:
        set_team_cookie(response, who.scope.team_id, who.secure_cookies)
    return response


def redirect(path: str, **query: str) -> RedirectResponse:
    target = path + ("?" + urlencode(query) if query else "")
    # 303: after a POST the browser follows with a GET.
    return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})


def error_page(status: int, message: str, who: Account | None = None) -> HTMLResponse:
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict"}
    return page(
        "error.html",
        who,
        status=status,
        title=titles.get(status, "Something went wrong"),
        message=message,
    )


async def _who(request: Request) -> Account | None:
    """The signed-in user for an error page's navigation, if there is one (never raises)."""
    try:
        return await viewer(request)
    except TeamRequired:
        with contextlib.suppress(SignInRequired, RunyardError):
            return await signed_in(request)
    except (SignInRequired, RunyardError):
        pass
    return None


class PageRoute(APIRoute):
    """Dashboard routes: a missing session redirects to the sign-in page; any other error is
    an HTML page with the right status and the message (never a traceback)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as exc:
                return redirect(login_url(exc.next_path))
            except TeamRequired:
                return redirect("/teams")
            except Unauthorized:
                return redirect(login_url(wanted_path(request)))
            except RunyardError as exc:
                return error_page(exc.status_code, exc.message, await _who(request))
            except RequestValidationError as exc:
                return error_page(400, describe_errors(exc.errors()), await _who(request))

        return wrapped
