"""``GET /r/tasks/{taskId}/events``: Server-Sent Events with replay (``Last-Event-ID``)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse

from runyard.api.deps import Ctx, RuntimeScope
from runyard.domain.errors import BadRequest
from runyard.events.bus import Bus
from runyard.events.hub import EventHub, stream_task_events
from runyard.services import tasks

router = APIRouter(prefix="/r", tags=["task"])


def _sequence(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    value = value.strip()
    # ASCII digits only: ``str.isdigit`` also accepts "²", which ``int`` then refuses.
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{name} must be an event sequence number (a non-negative integer)")
    return int(value)


@router.get(
    "/tasks/{taskId}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def task_events(
    ctx: Ctx,
    scope: RuntimeScope,
    request: Request,
    taskId: Annotated[UUID, Path(description="The task's id")],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
    after: Annotated[
        str | None,
        Query(max_length=20, description="Like Last-Event-ID, for clients without headers"),
    ] = None,
) -> StreamingResponse:
    """Events of a task: ``status``, ``progress``, ``log``, then ``completed`` | ``failed`` |
    ``cancelled``, each with ``id:`` = its sequence number. Replays what came after
    ``Last-Event-ID`` (or ``?after=``), follows live, sends a keep-alive comment every 15 s and
    closes after the terminal event (at once for a finished task)."""
    since = _sequence(last_event_id, "Last-Event-ID")
    if since is None:
        since = _sequence(after, "after") or 0
    task = await tasks.get_task(ctx, scope, str(taskId))
    hub = getattr(request.app.state, "events", None)
    if hub is None:  # no lifespan (in-process API tests): streams re-read on each keep-alive
        hub = request.app.state.events = EventHub(Bus())
    return StreamingResponse(
        stream_task_events(ctx, hub, task.id, since, ctx.settings.events.keep_alive_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
