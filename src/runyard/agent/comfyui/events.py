"""ComfyUI's ``/ws`` event stream, shared by every attempt of one agent.

One socket per agent, opened with the agent's ``clientId`` (ComfyUI sends a prompt's
execution events only to the socket whose id is the prompt's ``client_id``). Messages are
routed by ``prompt_id`` to the attempt following that prompt. Quirks handled:

- binary frames (previews, text) are skipped;
- on reconnect ComfyUI sends a catch-up ``executing {node}`` *without* ``prompt_id``: it is
  routed to the prompt the socket last saw running;
- when a replaced socket with the same ``clientId`` closes, ComfyUI unregisters the newer one
  too: the old socket is always closed before a new one is opened, and the reconnect waits a
  moment so the server has finished with the old one. Because a socket may still miss events,
  every attempt falls back to ``/history`` polling after any socket loss (it receives
  ``socket_lost``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from runyard.logging import get_logger

SOCKET_LOST = "socket_lost"
_WS_LOGGER = logging.getLogger("runyard.agent.comfyui.websockets")
_WS_LOGGER.setLevel(logging.INFO)


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]


class EventSocket:
    def __init__(
        self,
        ws_url: str,
        client_id: str,
        *,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        open_timeout: float = 5.0,
    ) -> None:
        self.url = f"{ws_url}?clientId={quote(client_id, safe='')}"
        self.client_id = client_id
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._open_timeout = open_timeout
        self._subscribers: dict[str, asyncio.Queue[Event]] = {}
        self._last_running: str | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self.connections = 0
        self._log = get_logger("runyard.agent.comfyui")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="comfyui-events")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_connected(self, timeout: float) -> bool:
        self.start()
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def subscribe(self, prompt_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers[prompt_id] = queue
        return queue

    def unsubscribe(self, prompt_id: str) -> None:
        self._subscribers.pop(prompt_id, None)
        if self._last_running == prompt_id:
            self._last_running = None

    async def _run(self) -> None:
        delay = self._reconnect_min
        while True:
            try:
                async with connect(
                    self.url,
                    open_timeout=self._open_timeout,
                    close_timeout=1,
                    max_size=64 * 1024 * 1024,
                    ping_interval=10,
                    ping_timeout=10,
                    logger=_WS_LOGGER,
                ) as ws:
                    self._ws = ws
                    self.connections += 1
                    self._connected.set()
                    delay = self._reconnect_min
                    self._log.debug("comfyui_socket_connected", url=self.url)
                    try:
                        async for message in ws:
                            if isinstance(message, str):
                                self._route(message)
                    except ConnectionClosed:
                        pass
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                pass
            except InvalidURI:
                self._log.error("comfyui_socket_bad_url", url=self.url)
                return
            finally:
                self._ws = None
                was_connected = self._connected.is_set()
                self._connected.clear()
                if was_connected:
                    self._log.warning("comfyui_socket_lost")
                    self._broadcast(Event(SOCKET_LOST, {}))
            await asyncio.sleep(delay)
            delay = min(self._reconnect_max, delay * 2)

    def _broadcast(self, event: Event) -> None:
        for queue in self._subscribers.values():
            queue.put_nowait(event)

    def _route(self, message: str) -> None:
        try:
            frame = json.loads(message)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        data = frame.get("data")
        if not isinstance(kind, str) or not isinstance(data, dict):
            return
        prompt_id = data.get("prompt_id")
        if prompt_id is None and kind == "executing":
            prompt_id = self._last_running  # the reconnect catch-up carries no prompt_id
        if not isinstance(prompt_id, str):
            return
        if kind in ("execution_start", "executing", "progress"):
            self._last_running = prompt_id
        queue = self._subscribers.get(prompt_id)
        if queue is not None:
            queue.put_nowait(Event(kind, data))
