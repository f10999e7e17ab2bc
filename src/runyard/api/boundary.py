"""What every API request passes before its route runs (``boundary_check``, a dependency of
every route under ``/api/v1``), and which methods a path allows (``allowed_methods``, for the
``Allow`` header of every ``405``).

Text: every string of a JSON body (keys too), every query and path parameter and every header
must be storable (``domain.text``: no NUL, no unpaired surrogate). PostgreSQL refuses NUL in
``text`` and no encoder can write a lone surrogate, so such a value would otherwise fail deep
inside a service (a 500) or, in a task parameter, at every dispatch. Refused here once, with
``400 {"error_message": "<where>: text must not contain …"}``, on every route and database.

Methods: a path is served by its most specific route templates — ``/invitations/accept``
before ``/invitations/{invitationId}`` — whatever order the routers list them in. A method
none of them has is a ``405`` whose ``Allow`` names every method they have together (Starlette
alone would name the first route's only, or hand ``DELETE /invitations/accept`` to the
``{invitationId}`` route, which then refuses ``accept`` as a UUID with a ``400``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from runyard.domain.errors import BadRequest
from runyard.domain.text import UNSTORABLE_TEXT, find_unstorable, first_unstorable

# -- methods -----------------------------------------------------------------------------------


def _segments(path: str) -> tuple[str | None, ...] | None:
    """A template's segments, ``None`` standing for a parameter; ``None`` overall for a
    template that a parameter may span several segments of (``{key:path}``)."""
    parts: list[str | None] = []
    for part in path.strip("/").split("/"):
        if "{" in part:
            if ":path}" in part:
                return None
            parts.append(None)
        else:
            parts.append(part)
    return tuple(parts)


def dominates(a: Sequence[str | None], b: Sequence[str | None]) -> bool:
    """True when template ``a`` is more specific than ``b`` for every path both match: a
    literal wherever ``b`` has one (the same), and at least one where ``b`` has a parameter."""
    if len(a) != len(b) or a == b:
        return False
    return all(y is None or x == y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class _Template:
    context: RouteContext
    segments: tuple[str | None, ...] | None
    methods: frozenset[str]


@dataclass(frozen=True)
class RouteTable:
    templates: tuple[_Template, ...]
    #: For each route (by identity) with a parameter, the more specific templates that a
    #: path it matches may belong to.
    shadowed_by: dict[int, tuple[_Template, ...]]


def route_table(app: FastAPI) -> RouteTable:
    """Built on first use and kept on ``app.state`` (the routes do not change once serving)."""
    table: RouteTable | None = getattr(app.state, "route_table", None)
    if table is None:
        table = _build_table(app.routes)
        app.state.route_table = table
    return table


def _build_table(routes: Sequence[BaseRoute]) -> RouteTable:
    templates: list[_Template] = []
    for context in iter_route_contexts(routes):
        methods = context.methods
        path = context.path
        if not methods or not isinstance(path, str):
            continue  # mounts and WebSocket routes have no methods
        templates.append(_Template(context, _segments(path), frozenset(methods)))
    shadowed_by: dict[int, tuple[_Template, ...]] = {}
    for template in templates:
        if template.segments is None or None not in template.segments:
            continue
        mine = template.segments
        over = tuple(t for t in templates if t.segments is not None and dominates(t.segments, mine))
        if over:
            shadowed_by[id(template.context.original_route)] = over
    return RouteTable(tuple(templates), shadowed_by)


def _matching(templates: Iterable[_Template], scope: Scope) -> list[_Template]:
    return [t for t in templates if t.context.matches(scope)[0] is not Match.NONE]


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method of the most specific templates that match this path, sorted."""
    found = _matching(route_table(app).templates, scope)
    best = [
        t
        for t in found
        if not any(
            o.segments is not None and t.segments is not None and dominates(o.segments, t.segments)
            for o in found
        )
    ]
    return sorted({m for t in best for m in t.methods})


def method_not_allowed() -> StarletteHTTPException:
    """A ``405``; the error handler fills ``Allow`` from ``allowed_methods``."""
    return StarletteHTTPException(405)


def _refuse_shadowed(request: Request) -> None:
    route = request.scope.get("route")
    if route is None:
        return
    over = route_table(request.app).shadowed_by.get(id(route))
    if over and _matching(over, request.scope):
        # A more specific template owns this path; it has no route for this method (else
        # the router would have chosen it: tests/unit/test_api_boundary.py checks the order).
        raise method_not_allowed()


# -- text --------------------------------------------------------------------------------------


def _is_json(content_type: str | None) -> bool:
    # The same test FastAPI applies before it decodes a body as JSON.
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def _json_body(request: Request) -> Any:
    """The body FastAPI decoded for the route (``Request.json`` keeps it), or None when the
    route takes none or it was not JSON (the route's own validation answers that)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return None
    if not _is_json(request.headers.get("content-type")):
        return None
    try:
        return await request.json()
    except ValueError:
        return None  # empty or malformed: FastAPI has answered (or will answer) 400


def _refuse(where: str) -> BadRequest:
    return BadRequest(f"{where}: {UNSTORABLE_TEXT}")


async def boundary_check(request: Request) -> None:
    """The dependency every ``/api/v1`` route runs first (before authentication)."""
    _refuse_shadowed(request)
    path_params = ((k, v) for k, v in request.path_params.items() if isinstance(v, str))
    for fields in (path_params, request.query_params.multi_items(), request.headers.items()):
        bad = first_unstorable(fields)
        if bad is not None:
            raise _refuse(bad)
    body = await _json_body(request)
    if body is not None:
        where = find_unstorable(body)
        if where is not None:
            raise _refuse(where)
