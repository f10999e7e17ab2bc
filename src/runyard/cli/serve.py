"""The uvicorn server every Runyard server command runs (``runyard server``, ``runyard up``).

uvicorn stops by waiting for open connections to close before the app's shutdown runs, and
an event stream (SSE) never closes on its own: one ``runyard tasks watch`` kept a server up
for minutes after Ctrl-C. This server first tells the app's event streams to end (each tells
its client to reconnect, which resumes with ``Last-Event-ID`` — elsewhere, or here once back),
and bounds the wait for anything else that is still open.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

#: Longest wait for open requests (uploads, downloads) once a stop was asked for.
GRACEFUL_SHUTDOWN_SECONDS = 10


def server_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hub = getattr(getattr(self.config.app, "state", None), "events", None)
        if hub is not None:
            hub.drain()
        await super().shutdown(sockets=sockets)
