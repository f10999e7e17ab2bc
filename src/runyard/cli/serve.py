"""The uvicorn server every Runyard server command runs (``runyard server``, ``runyard up``).

uvicorn stops by waiting for open connections to close before the app's shutdown runs, and
an event stream (SSE) never closes on its own: one ``runyard tasks watch`` kept a server up
for minutes after Ctrl-C. This server first tells the app's event streams to end (each tells
its client to reconnect, which resumes with ``Last-Event-ID`` — elsewhere, or here once back),
and bounds the wait for anything else that is still open.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import typer
import uvicorn

from runyard.cli.common import err

#: Longest wait for open requests (uploads, downloads) once a stop was asked for.
GRACEFUL_SHUTDOWN_SECONDS = 10


def check_port(host: str, port: int) -> None:
    """Exit with one clear line when the port cannot be listened on, before anything starts
    (uvicorn would only find out after the engine had started against the database)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As uvicorn binds: a port in TIME_WAIT from a previous run is free to take.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "is in use (another Runyard, or another program); choose one with --port"
            else:
                why = f"cannot be used: {exc.strerror or exc}"
            err.print(f"error: port {port} on {host} {why}", markup=False)
            raise typer.Exit(2) from None


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
