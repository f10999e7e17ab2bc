"""The WebSocket agents dial: ``/api/v1/agent/ws`` with ``Authorization: Bearer ak-…``.

Only the endpoint: it authenticates, reads ``hello``, then moves frames between the socket
and the engine (``engine.handle``; what the engine sends goes through the connection's
queue). What an agent holds lives in the engine's registry.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from runyard.context import ServiceContext
from runyard.domain import limits
from runyard.domain.errors import RunyardError
from runyard.engine.engine import Engine
from runyard.engine.registry import AgentConnection
from runyard.logging import get_logger
from runyard.protocol import v1
from runyard.services.auth import authenticate_agent

log = get_logger("runyard.gateway")
router = APIRouter()

HELLO_TIMEOUT_SECONDS = 10.0
#: Malformed frames tolerated before the gateway hangs up.
MAX_BAD_FRAMES = 20
#: A frame whose handling fails (the database unreachable, say) is tried again after these
#: pauses; the agent's later frames wait meanwhile, so their order is kept.
RETRY_DELAYS_SECONDS = (0.05, 0.25, 1.0)
#: Close code when a result could not be recorded even so: the agent reconnects and sends
#: its recent results again (as after any connection loss), and the attempt is not lost.
CLOSE_RETRY = 1011
#: Frames the agent sends again after a reconnect: results. A lost progress tick or log line
#: is answered with an ``error`` frame instead.
RESULT_FRAMES = (v1.Ack, v1.Complete, v1.Fail, v1.Cancelled)


def _bearer(websocket: WebSocket) -> str:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


@router.websocket("/api/v1/agent/ws")
async def agent_socket(websocket: WebSocket) -> None:
    ctx: ServiceContext = websocket.app.state.ctx
    engine: Engine = websocket.app.state.engine
    # Accept first, so a refusal can carry a close code and a reason the agent can log.
    await websocket.accept()
    try:
        team_id, credential_id = await authenticate_agent(ctx, _bearer(websocket))
    except RunyardError as exc:
        code = v1.CLOSE_FORBIDDEN if exc.status_code == 403 else v1.CLOSE_UNAUTHORIZED
        await websocket.close(code=code, reason=exc.message)
        return
    try:
        raw = await asyncio.wait_for(websocket.receive_text(), HELLO_TIMEOUT_SECONDS)
        hello = v1.parse_agent_frame(raw)
    except (TimeoutError, ValidationError, WebSocketDisconnect, KeyError) as exc:
        if not isinstance(exc, WebSocketDisconnect):
            await websocket.close(code=v1.CLOSE_PROTOCOL, reason="expected a hello frame first")
        return
    if not isinstance(hello, v1.Hello):
        await websocket.close(code=v1.CLOSE_PROTOCOL, reason="expected a hello frame first")
        return
    if hello.protocol != v1.PROTOCOL_VERSION:
        await websocket.close(
            code=v1.CLOSE_PROTOCOL,
            reason=f"unsupported protocol {hello.protocol}; this server speaks "
            f"{v1.PROTOCOL_VERSION}",
        )
        return

    conn = AgentConnection(
        team_id=team_id, credential_id=credential_id, hello=hello, connected_at=ctx.now()
    )
    keep, abort = await engine.agent_connected(conn)
    settings = ctx.settings.scheduler
    conn.send(
        v1.Welcome(
            gateway_id=engine.gateway_id,
            heartbeat_interval=settings.heartbeat_interval_seconds,
            lease_ttl=settings.lease_ttl_seconds,
            keep=keep,
            abort=abort,
            uploads=True,
            # What uvicorn accepts by default (its ws_max_size), which every server runs with.
            max_frame_bytes=limits.FRAME_MAX_BYTES,
        )
    )
    writer = asyncio.create_task(_write(websocket, conn))
    reader = asyncio.create_task(_read(websocket, conn, engine))
    try:
        await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writer, reader):
            task.cancel()
        await asyncio.gather(writer, reader, return_exceptions=True)
        await engine.agent_disconnected(conn)
        with contextlib.suppress(Exception):
            await websocket.close(code=conn.close_code or 1000, reason=conn.close_reason)


async def _write(websocket: WebSocket, conn: AgentConnection) -> None:
    while True:
        item = await conn.queue.get()
        if item is None:
            await websocket.close(code=conn.close_code or 1000, reason=conn.close_reason)
            return
        await websocket.send_text(item)


async def _read(websocket: WebSocket, conn: AgentConnection, engine: Engine) -> None:
    bad = 0
    while True:
        try:
            raw = await websocket.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            return
        try:
            frame = v1.parse_agent_frame(raw)
        except ValidationError as exc:
            bad += 1
            conn.send(v1.Error(message=f"invalid frame: {exc.errors()[0]['msg']}"))
            if bad >= MAX_BAD_FRAMES:
                conn.close(v1.CLOSE_PROTOCOL, "too many invalid frames")
            continue
        if conn.closing:
            # Being closed (a result that could not be recorded, a replaced connection):
            # what the agent sent after that is for its next connection, where it reports
            # its attempts again. Handling it here could, say, read a heartbeat that no
            # longer lists the attempt whose completion failed as the attempt being lost.
            return
        await handle_frame(conn, engine, frame)


async def handle_frame(conn: AgentConnection, engine: Engine, frame: v1.Frame) -> None:
    kind = str(getattr(frame, "type", "frame"))
    """Hand one frame to the engine; never drop it silently.

    A failure is logged and the frame tried again; if it still fails, a result (the agent
    resends those) closes the connection so the agent reconnects and sends it again, and
    anything else is answered with an ``error`` frame.
    """
    for attempt, delay in enumerate((*RETRY_DELAYS_SECONDS, None), start=1):
        try:
            await engine.handle(conn, frame)
            return
        except Exception:
            log.exception(
                "agent_frame_failed",
                agent_id=conn.agent_id,
                type=kind,
                attempt=attempt,
                will_retry=delay is not None,
            )
        if delay is None or conn.closing:
            break
        await asyncio.sleep(delay)
    if isinstance(frame, RESULT_FRAMES):
        conn.close(CLOSE_RETRY, f"could not record {kind}; reconnect and send it again")
    else:
        conn.send(v1.Error(message=f"could not handle {kind}; the server had an error"))
