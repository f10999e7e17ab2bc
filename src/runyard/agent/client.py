"""The agent's side of protocol v1: one WebSocket to the gateway, kept up for as long as it runs.

``GatewayClient`` dials ``ws(s)://<server>/api/v1/agent/ws``, says ``hello``, follows the
``welcome`` (heartbeat interval, lease TTL, which reported attempts to keep or abort), sends
heartbeats, and hands every ``dispatch`` and ``cancel`` to a :class:`Runner`. A runner reports
what an attempt does through its :class:`Reporter`, which fences itself: once the gateway has
cancelled an attempt, nothing but ``cancelled`` goes out for it.

The connection can drop at any moment. Attempts keep running; their ``ack`` and result frames
wait for the next connection, whose ``hello`` lists them so the gateway can say keep or abort.
A result sent shortly before a connection died may not have arrived, so it is listed too and
sent again if the gateway keeps the attempt (the gateway ignores an attempt's second result).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import secrets
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from runyard import __version__
from runyard.agent import transfer
from runyard.domain import limits
from runyard.logging import get_logger
from runyard.observability import LoopMonitor
from runyard.protocol import v1

GATEWAY_PATH = "/api/v1/agent/ws"
SHUTDOWN_ERROR = "agent shutting down"
CAPACITY_ERROR = "agent at capacity"
_MAX_ERROR = limits.ERROR_MAX
_MAX_FRAME_BYTES = limits.FRAME_MAX_BYTES
_MAX_RESEND = 1000

#: websockets logs handshake headers (the key among them) at debug level: keep it quieter.
_WS_LOGGER = logging.getLogger("runyard.agent.websockets")
_WS_LOGGER.setLevel(logging.INFO)

AttemptKey = tuple[str, int]
CancelKind = Literal["cancel", "abort", "shutdown"]
_RANK: dict[CancelKind, int] = {"shutdown": 0, "cancel": 1, "abort": 2}


class UploadError(Exception):
    """Output upload links could not be had, or an upload failed (the message says why)."""


class AgentReplaced(Exception):
    """The gateway closed with 4409: another agent connected with the same agent id."""


def websocket_url(base: str) -> str:
    """The gateway's WebSocket address for a server base URL.

    ``http://host:8080`` → ``ws://host:8080/api/v1/agent/ws``, ``https`` → ``wss``; a path
    prefix is kept (a server behind ``https://example.com/runyard``). A ``ws(s)://`` URL with a
    path is taken as the exact address.
    """
    parts = urlsplit(base.strip())
    scheme = parts.scheme.lower()
    mapped = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme)
    if mapped is None or not parts.hostname:
        raise ValueError(f"the gateway must be an http(s):// base URL, not {base!r}")
    path = parts.path.rstrip("/")
    if scheme in ("ws", "wss") and path:
        return urlunsplit((mapped, parts.netloc, parts.path, parts.query, ""))
    if not path.endswith(GATEWAY_PATH):
        path += GATEWAY_PATH
    return urlunsplit((mapped, parts.netloc, path, parts.query, ""))


_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def platform_arch() -> str:
    """``os/arch`` as container images name it, e.g. ``linux/amd64``."""
    system = platform.system().lower() or "unknown"
    machine = platform.machine().lower()
    return f"{system}/{_ARCHES.get(machine, machine or 'unknown')}"


def backoff_delay(
    failures: int, base: float = 0.5, cap: float = 30.0, jitter: float = 0.2
) -> float:
    """Seconds to wait before reconnect number ``failures + 1``: doubling, capped, ± jitter."""
    delay = min(cap, base * 2 ** min(failures, 32))
    return float(delay * random.uniform(1 - jitter, 1 + jitter))


def _dump(frame: v1.Frame) -> str:
    return frame.model_dump_json(exclude_none=True)


class Runner(abc.ABC):
    """What runs attempts: ComfyUI, Nerfstudio, or the simulator.

    ``start`` runs one attempt to its end and reports through ``reporter`` (``ack`` as soon as
    the work really starts, then ``progress``/``log``, then exactly one of ``complete``,
    ``fail`` or ``cancelled``). It runs as its own asyncio task; the attempt holds a slot until
    its end is reported. ``cancel`` asks a running attempt to stop; the runner then stops and
    calls ``reporter.cancelled()``. A runner that does not stop within the client's
    ``cancel_timeout`` has its ``start`` task cancelled. An exception from ``start`` fails the
    attempt (retryable); a ``start`` that returns without a result fails it too.
    """

    @abc.abstractmethod
    async def start(self, dispatch: v1.Dispatch, reporter: Reporter) -> None: ...

    @abc.abstractmethod
    async def cancel(self, task_id: str, attempt: int) -> None: ...


class Reporter:
    """Sends the frames of one attempt; made by the client for each dispatch.

    Fencing: after a gateway ``cancel`` nothing more is sent for the attempt except
    ``cancelled`` (a ``complete`` or ``fail`` that races the cancel becomes ``cancelled``);
    after an ``abort`` (the gateway no longer wants the attempt) nothing at all; after a
    shutdown, the result is ``fail`` retryable "agent shutting down". Only the first result
    counts. Calls never raise because the connection is down: ``ack`` and the result wait for
    the next connection, ``progress`` and ``log`` are dropped.
    """

    def __init__(self, client: GatewayClient, dispatch: v1.Dispatch) -> None:
        self._client = client
        self.dispatch = dispatch
        self.task_id = dispatch.task_id
        self.attempt = dispatch.attempt
        self._acked = False
        self._done = False
        self._cancel_kind: CancelKind | None = None
        self._cancel_reason: str | None = None
        self._cancel_event = asyncio.Event()

    @property
    def key(self) -> AttemptKey:
        return (self.task_id, self.attempt)

    @property
    def cancel_requested(self) -> bool:
        """The attempt should stop (gateway cancel or abort, or the agent shutting down)."""
        return self._cancel_kind is not None

    @property
    def cancel_kind(self) -> CancelKind | None:
        return self._cancel_kind

    @property
    def cancel_reason(self) -> str | None:
        return self._cancel_reason

    @property
    def done(self) -> bool:
        """The attempt's result has been decided (sent, queued or suppressed)."""
        return self._done

    async def wait_cancel_requested(self) -> None:
        await self._cancel_event.wait()

    def _request_cancel(self, kind: CancelKind, reason: str) -> None:
        # An abort (the gateway wants nothing more) beats a cancel (the gateway wants
        # ``cancelled``), which beats a shutdown (the agent hands the attempt back).
        if self._cancel_kind is None or _RANK[kind] > _RANK[self._cancel_kind]:
            self._cancel_kind = kind
            self._cancel_reason = reason
        self._cancel_event.set()

    def _ref(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "attempt": self.attempt}

    async def ack(self) -> None:
        if self._acked or self._done or self._cancel_kind is not None:
            return
        self._acked = True
        await self._client._deliver(self, v1.Ack(**self._ref()), important=True)

    async def progress(
        self,
        progress: float | None = None,
        *,
        current_node: str | None = None,
        step_current: int | None = None,
        step_total: int | None = None,
        stage: str | None = None,
        message: str | None = None,
    ) -> None:
        if self._done or self._cancel_kind is not None:
            return
        if progress is not None:
            progress = min(1.0, max(0.0, progress))
        frame = v1.Progress(
            **self._ref(),
            progress=progress,
            current_node=current_node,
            step_current=step_current,
            step_total=step_total,
            stage=stage,
            message=message,
        )
        await self._client._deliver(self, frame, important=False)

    async def log(self, *lines: str) -> None:
        if self._done or self._cancel_kind is not None or not lines:
            return
        # Long lines are cut, so a log frame always fits the gateway's frame limit.
        cut = [line[: limits.LOG_LINE_MAX] for line in lines]
        step = limits.MAX_LOG_LINES
        for start in range(0, len(cut), step):
            frame = v1.Log(**self._ref(), lines=cut[start : start + step])
            await self._client._deliver(self, frame, important=False)

    async def complete(self, output: dict[str, Any]) -> None:
        frame = v1.Complete(**self._ref(), output=output)
        welcome = self._client.welcome
        limit = (welcome.max_frame_bytes if welcome else None) or limits.FRAME_MAX_BYTES
        size = len(_dump(frame).encode("utf-8", "surrogatepass"))
        if size > limit:
            # The gateway would drop the connection for it, and the agent send it again on
            # every reconnect: the attempt fails instead, saying why.
            await self.fail(
                f"the output manifest is {size:,} bytes, over the gateway's limit of "
                f"{limit:,} bytes",
                retryable=False,
            )
            return
        await self._finish(frame)

    async def fail(self, error: str, *, retryable: bool = True) -> None:
        await self._finish(v1.Fail(**self._ref(), error=error[:_MAX_ERROR], retryable=retryable))

    async def cancelled(self) -> None:
        if self._cancel_kind is None:
            # Stopped on the agent's own account (e.g. interrupted in ComfyUI's UI).
            await self.fail("attempt interrupted on the agent", retryable=True)
            return
        await self._finish(v1.Cancelled(**self._ref()))

    async def drop_connection(self) -> None:
        """Cut the gateway connection without a close frame (simulating a network loss)."""
        await self._client.drop_connection()

    @property
    def uploads_supported(self) -> bool:
        """The gateway hands out output upload links (it said so in ``welcome``)."""
        welcome = self._client.welcome
        return welcome is not None and welcome.uploads

    async def upload_links(
        self, files: Sequence[v1.UploadFile], *, timeout: float = 30.0
    ) -> list[v1.UploadLink]:
        """Signed upload links for this attempt's outputs (``upload_request``); raises
        :class:`UploadError` if the gateway refuses (bad name, stale attempt) or is silent."""
        if self._done or self._cancel_kind is not None:
            raise UploadError("the attempt is stopping")
        return await self._client._request_upload_links(self, files, timeout)

    async def upload(
        self,
        name: str,
        source: bytes | Path,
        content_type: str = "application/octet-stream",
        *,
        node_id: str = "",
        kind: str = "files",
    ) -> dict[str, Any]:
        """Upload one output; returns its entry for the ``complete`` manifest."""
        if isinstance(source, bytes):
            size = len(source)
        else:
            size = (await asyncio.to_thread(source.stat)).st_size
        spec = v1.UploadFile(name=name, content_type=content_type, size=size)
        (link,) = await self.upload_links([spec])
        try:
            await transfer.put(link, source)
        except transfer.TransferError as exc:
            raise UploadError(str(exc)) from exc
        return {
            "node_id": node_id,
            "kind": kind,
            "file_name": name.rsplit("/", 1)[-1],
            "content_type": content_type,
            "size": size,
            "storage_key": link.key,
        }

    async def _finish(self, frame: v1.Frame) -> None:
        if self._done:
            return
        self._done = True
        outgoing: v1.Frame | None = frame
        if self._cancel_kind == "abort":
            outgoing = None
        elif self._cancel_kind == "cancel":
            outgoing = v1.Cancelled(**self._ref())
        elif self._cancel_kind == "shutdown":
            outgoing = v1.Fail(**self._ref(), error=SHUTDOWN_ERROR, retryable=True, handback=True)
        await self._client._finished(self, outgoing)


@dataclass(eq=False)
class _Attempt:
    reporter: Reporter
    task: asyncio.Task[None] | None = None
    pending: list[v1.Frame] = field(default_factory=list)
    forced: bool = False
    finished: bool = False

    @property
    def active(self) -> bool:
        """Running from the gateway's point of view (holds a slot, renewed by heartbeats)."""
        return not self.reporter.done and self.reporter.cancel_kind != "abort"


@dataclass(frozen=True)
class _Outcome:
    welcomed: bool
    code: int | None
    reason: str


class GatewayClient:
    """Keeps one agent connected to the gateway and feeds its runner.

    Run it with ``await client.run()`` (returns after ``stop``; raises :class:`AgentReplaced`
    when another agent takes over the same agent id) and stop it with
    ``await client.stop(grace_seconds)``.
    """

    def __init__(
        self,
        gateway: str,
        key: str,
        runner: Runner,
        *,
        agent_id: str,
        labels: Iterable[str] = (),
        capacity: int = 1,
        pools: Iterable[v1.Pool] = ("team",),
        tool: str = "comfyui",
        tool_version: str | None = None,
        comfyui_version: str | None = None,
        system_stats: v1.SystemStats | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
        cancel_timeout: float = 10.0,
    ) -> None:
        self.url = websocket_url(gateway)
        self._headers = {"Authorization": f"Bearer {key}"}
        self._runner = runner
        self._identity: dict[str, Any] = {
            "agent_id": agent_id,
            "agent_version": __version__,
            "labels": list(dict.fromkeys(labels)),
            "capacity": capacity,
            "pools": list(dict.fromkeys(pools)),
            "tool": tool,
            "tool_version": tool_version,
            "comfyui_version": comfyui_version,
            "platform_arch": platform_arch(),
        }
        v1.Hello(**self._identity)  # fail now, not at every connection, on a bad id or label
        self.agent_id = agent_id
        self.capacity = capacity
        self._system_stats = system_stats or v1.SystemStats(os_type=os.name)
        self._stats_dirty = False
        self._status: v1.ReportedStatus = "idle"
        self._status_frame: v1.StatusUpdate | None = None
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._open_timeout = open_timeout
        self._cancel_timeout = cancel_timeout
        self._log = get_logger("runyard.agent")

        self._attempts: dict[AttemptKey, _Attempt] = {}
        self._upload_waiters: dict[str, asyncio.Future[v1.UploadLinks]] = {}
        self._recent: dict[AttemptKey, tuple[v1.Frame, float]] = {}
        self._resend: dict[AttemptKey, v1.Frame] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._conn: ClientConnection | None = None  # the open connection, welcomed or not
        self._ws: ClientConnection | None = None  # set once welcomed and caught up
        self._welcome: v1.Welcome | None = None
        self._heartbeat_interval = 30.0
        self._lease_ttl = 90.0
        self._connected = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._force = asyncio.Event()
        self._run_done = asyncio.Event()
        self._running = False
        self._draining = False
        self._closing = False
        self._reconnect_now = False

    # -- public --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def welcome(self) -> v1.Welcome | None:
        """The last welcome received."""
        return self._welcome

    @property
    def running(self) -> list[v1.AttemptRef]:
        """Attempts that hold a slot (what the next heartbeat lists)."""
        return [
            v1.AttemptRef(task_id=a.reporter.task_id, attempt=a.reporter.attempt)
            for a in self._attempts.values()
            if a.active
        ]

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def update_system_stats(self, stats: v1.SystemStats) -> None:
        """Report new system stats with the next heartbeat."""
        self._system_stats = stats
        self._stats_dirty = True

    @property
    def labels(self) -> list[str]:
        """The labels the next ``hello`` announces."""
        return list(self._identity["labels"])

    async def update_identity(
        self,
        *,
        labels: Iterable[str] | None = None,
        tool_version: str | EllipsisType | None = ...,
        comfyui_version: str | EllipsisType | None = ...,
    ) -> bool:
        """Announce new labels or tool versions (the tool was re-detected).

        The protocol has no frame for a changed identity, so when something changed an open
        connection is closed and the client reconnects at once with a new ``hello``; running
        attempts are listed in it and kept, as after any reconnect. Returns whether anything
        changed. A label list that would not make a valid ``hello`` raises ``ValueError``.
        """
        identity = dict(self._identity)
        if labels is not None:
            identity["labels"] = list(dict.fromkeys(labels))
        if tool_version is not ...:
            identity["tool_version"] = tool_version
        if comfyui_version is not ...:
            identity["comfyui_version"] = comfyui_version
        if identity == self._identity:
            return False
        try:
            v1.Hello(**identity)
        except ValidationError as exc:
            raise ValueError(f"invalid agent identity: {exc.errors()[0]['msg']}") from None
        self._log.info(
            "agent_identity_changed",
            labels=identity["labels"],
            tool_version=identity["tool_version"],
            comfyui_version=identity["comfyui_version"],
        )
        self._identity = identity
        conn = self._conn
        if conn is not None and not self._closing:
            self._reconnect_now = True
            self._ws = None
            self._connected.clear()
            await conn.close(1000, "agent identity changed")
        return True

    async def set_status(
        self,
        status: v1.ReportedStatus,
        *,
        phase: str | None = None,
        detail: str | None = None,
        percent: float | None = None,
    ) -> None:
        """Report idle, syncing or unhealthy; while not idle the agent refuses new work."""
        frame = v1.StatusUpdate(
            agent_status=status, sync_phase=phase, sync_detail=detail, sync_percent=percent
        )
        changed = frame != self._status_frame
        self._status = status
        self._status_frame = frame
        if changed:
            self._log.info("agent_status", agent_status=status, phase=phase)
            await self._send_now(frame)

    async def drop_connection(self) -> None:
        """Abort the TCP connection without a close frame (tests and the simulator)."""
        conn = self._conn
        self._ws = None
        self._connected.clear()
        if conn is not None:
            self._log.warning("gateway_connection_dropped_on_purpose")
            conn.transport.abort()

    async def run(self) -> None:
        """Stay connected until :meth:`stop`; reconnect with capped backoff and jitter."""
        if self._running:
            raise RuntimeError("GatewayClient.run() is already running")
        self._running = True
        self._run_done.clear()
        failures = 0
        try:
            while not self._closing:
                outcome = await self._connect_once()
                if self._closing:
                    break
                if outcome.welcomed:
                    failures = 0
                if outcome.code == v1.CLOSE_REPLACED:
                    self._log.error(
                        "agent_replaced",
                        agent_id=self.agent_id,
                        detail="another agent connected with the same agent id; stopping",
                    )
                    await self._abandon_all("replaced by another agent with the same id")
                    raise AgentReplaced(self.agent_id)
                if self._reconnect_now:  # closed on purpose, to say a new hello
                    self._reconnect_now = False
                    self._log.info("gateway_reconnecting", reason="agent identity changed")
                    continue
                delay = backoff_delay(failures, self._backoff_base, self._backoff_max)
                failures += 1
                self._log_refusal(outcome, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), timeout=delay)
        finally:
            await self._cancel_leftovers()
            self._running = False
            self._run_done.set()

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Take no new work, let running attempts finish for up to ``grace_seconds``, then
        cancel them (each reports ``fail`` retryable "agent shutting down") and disconnect.

        A second call while the first is waiting ends the grace period at once.
        """
        if self._draining:
            self._force.set()
            if self._running:
                await self._run_done.wait()
            return
        self._draining = True
        running = [a for a in self._attempts.values() if a.task is not None and a.active]
        self._log.info("agent_stopping", running=len(running), grace_seconds=grace_seconds)
        await self._wait_attempts(grace_seconds)
        leftover = [a for a in self._attempts.values() if a.active]
        for att in leftover:
            self._request_cancel(att, "shutdown", SHUTDOWN_ERROR)
        if leftover:
            self._log.warning("attempts_handed_back", count=len(leftover))
            await self._wait_attempts(self._cancel_timeout + 1.0, forceable=False)
        self._closing = True
        self._stop_requested.set()
        conn = self._conn
        if conn is not None:
            await conn.close(1000, "agent stopping")
        if self._running:
            try:
                await asyncio.wait_for(self._run_done.wait(), timeout=self._open_timeout + 5)
            except TimeoutError:
                self._log.warning("agent_stop_timeout")
        self._log.info("agent_stopped")

    # -- connection ----------------------------------------------------------------------

    async def _connect_once(self) -> _Outcome:
        self._log.info("gateway_connecting", url=self.url, agent_id=self.agent_id)
        try:
            async with connect(
                self.url,
                additional_headers=self._headers,
                user_agent_header=f"runyard-agent/{__version__}",
                open_timeout=self._open_timeout,
                close_timeout=2,
                max_size=_MAX_FRAME_BYTES,
                logger=_WS_LOGGER,
            ) as ws:
                self._conn = ws
                try:
                    welcomed = await self._session(ws)
                finally:
                    self._conn = None
                    self._ws = None
                    self._connected.clear()
                    self._connection_lost()
            rcvd = ws.protocol.close_rcvd
            if rcvd is None:
                return _Outcome(welcomed, None, "connection lost")
            return _Outcome(welcomed, rcvd.code, rcvd.reason)
        except InvalidStatus as exc:
            status = exc.response.status_code
            code = {401: v1.CLOSE_UNAUTHORIZED, 403: v1.CLOSE_FORBIDDEN}.get(status)
            return _Outcome(False, code, f"HTTP {status}")
        except InvalidURI:
            raise
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            return _Outcome(False, None, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug must not kill the agent: log it, reconnect
            self._log.exception("gateway_session_error")
            return _Outcome(False, None, f"{type(exc).__name__}: {exc}")

    def _log_refusal(self, outcome: _Outcome, delay: float) -> None:
        fields = {"code": outcome.code, "reason": outcome.reason, "retry_in": round(delay, 2)}
        if outcome.code in (v1.CLOSE_UNAUTHORIZED, v1.CLOSE_FORBIDDEN):
            self._log.error(
                "agent_key_refused",
                detail="the gateway refused the agent key (wrong, revoked or not an agent "
                "key); check --key / RUNYARD_AGENT_KEY",
                **fields,
            )
        elif outcome.code == v1.CLOSE_PROTOCOL:
            self._log.error("gateway_protocol_error", **fields)
        elif outcome.code == v1.CLOSE_SHUTDOWN:
            self._log.info("gateway_restarting", **fields)
        else:
            self._log.warning("gateway_disconnected", **fields)

    async def _session(self, ws: ClientConnection) -> bool:
        if self._closing:
            return False
        try:
            hello = self._hello()
            await ws.send(_dump(hello))
            try:
                first = await asyncio.wait_for(ws.recv(), timeout=self._open_timeout)
            except TimeoutError:
                await ws.close(v1.CLOSE_PROTOCOL, "no welcome")
                return False
            try:
                welcome = v1.parse_gateway_frame(first)
            except ValidationError:
                welcome = None
            if not isinstance(welcome, v1.Welcome):
                self._log.error("gateway_protocol_error", detail="first frame is not a welcome")
                await ws.close(v1.CLOSE_PROTOCOL, "expected welcome")
                return False
            await self._apply_welcome(ws, welcome, hello.status)
        except ConnectionClosed:
            return False
        heartbeat = asyncio.create_task(self._heartbeat_loop(ws))
        try:
            async for message in ws:
                await self._handle(message)
        except ConnectionClosed:
            pass
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        return True

    def _hello(self) -> v1.Hello:
        return v1.Hello(
            **self._identity,
            system_stats=self._system_stats,
            status=self._status,
            running=self._reported_refs(),
            max_frame_bytes=_MAX_FRAME_BYTES,
        )

    def _reported_refs(self) -> list[v1.AttemptRef]:
        keys = [k for k, a in self._attempts.items() if a.active or a.pending]
        keys += [k for k in self._resend if k not in self._attempts]
        return [v1.AttemptRef(task_id=t, attempt=n) for t, n in keys]

    async def _apply_welcome(
        self, ws: ClientConnection, welcome: v1.Welcome, hello_status: v1.ReportedStatus
    ) -> None:
        self._welcome = welcome
        self._heartbeat_interval = max(0.01, welcome.heartbeat_interval)
        self._lease_ttl = max(1.0, welcome.lease_ttl)
        aborted = {(ref.task_id, ref.attempt) for ref in welcome.abort}
        for key in aborted:
            self._resend.pop(key, None)
            att = self._attempts.get(key)
            if att is not None:
                att.pending.clear()
                self._request_cancel(att, "abort", "aborted by the gateway")
                self._forget_if_finished(att)
        self._log.info(
            "gateway_connected",
            gateway_id=welcome.gateway_id,
            heartbeat_interval=welcome.heartbeat_interval,
            lease_ttl=welcome.lease_ttl,
            kept=len(welcome.keep),
            aborted=len(welcome.abort),
        )
        resend, self._resend = self._resend, {}
        for key, frame in resend.items():
            await ws.send(_dump(frame))
            self._remember_result(key, frame)
        # Frames queued while disconnected, in order per attempt; runners may add more
        # while this awaits, so loop until everything is out before going live.
        while True:
            att = next((a for a in self._attempts.values() if a.pending), None)
            if att is None:
                break
            frame = att.pending.pop(0)
            try:
                await ws.send(_dump(frame))
            except ConnectionClosed:
                att.pending.insert(0, frame)
                raise
            if _is_result(frame):
                self._remember_result(att.reporter.key, frame)
                self._forget_if_finished(att)
        said = None
        if self._status_frame is not None and self._status != "idle":
            said = self._status_frame
            await ws.send(_dump(said))
        self._ws = ws
        self._connected.set()
        # A status set while the hello was on its way could not be sent then: send it now
        # (e.g. ``idle`` once ComfyUI answers, right after a reconnect for new labels).
        status = self._status_frame
        if status is not None and status != said and status.agent_status != hello_status:
            await self._send_now(status)

    def _connection_lost(self) -> None:
        """Results sent within the last lease may not have arrived: offer them again."""
        horizon = time.monotonic() - self._lease_ttl
        for key, (frame, sent_at) in self._recent.items():
            if sent_at >= horizon:
                self._resend[key] = frame
        self._recent.clear()
        while len(self._resend) > _MAX_RESEND:
            self._resend.pop(next(iter(self._resend)))

    def _remember_result(self, key: AttemptKey, frame: v1.Frame) -> None:
        self._recent.pop(key, None)
        self._recent[key] = (frame, time.monotonic())
        horizon = time.monotonic() - self._lease_ttl
        while self._recent:
            oldest = next(iter(self._recent))
            if len(self._recent) <= _MAX_RESEND and self._recent[oldest][1] >= horizon:
                break
            del self._recent[oldest]

    async def _heartbeat_loop(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        interval = self._heartbeat_interval
        next_at = loop.time() + interval
        try:
            while True:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at = max(next_at + interval, loop.time())
                stats = self._system_stats if self._stats_dirty else None
                self._stats_dirty = False
                await ws.send(_dump(v1.Heartbeat(running=self.running, system_stats=stats)))
        except ConnectionClosed:
            return

    async def _send_now(self, frame: v1.Frame) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(_dump(frame))
        except ConnectionClosed:
            return False
        return True

    # -- frames from the gateway -----------------------------------------------------------

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            return
        try:
            frame = v1.parse_gateway_frame(message)
        except ValidationError as exc:
            await self._malformed(message, exc)
            return
        if isinstance(frame, v1.Dispatch):
            await self._on_dispatch(frame)
        elif isinstance(frame, v1.Cancel):
            self._on_cancel(frame)
        elif isinstance(frame, v1.UploadLinks):
            waiter = self._upload_waiters.pop(frame.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
        elif isinstance(frame, v1.Error):
            self._log.warning("gateway_error", message=frame.message)
        else:
            self._log.warning("gateway_unexpected_frame", type=frame.type)

    async def _malformed(self, message: str, exc: ValidationError) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            data = None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in ("welcome", "dispatch", "cancel", "error"):
            # Newer frame types (upload links, tunnels) reach older agents: skip them.
            self._log.debug("gateway_frame_ignored", type=kind)
            return
        self._log.error("gateway_frame_invalid", type=kind, errors=exc.error_count())
        task_id, attempt = (data or {}).get("task_id"), (data or {}).get("attempt")
        if kind != "dispatch" or not isinstance(task_id, str) or not task_id:
            return
        if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 1:
            error = f"the agent could not read the dispatch: {exc.errors()[0]['msg']}"
            fail = v1.Fail(task_id=task_id, attempt=attempt, error=error, retryable=False)
            await self._send_now(fail)

    async def _on_dispatch(self, dispatch: v1.Dispatch) -> None:
        key = (dispatch.task_id, dispatch.attempt)
        if key in self._attempts:
            self._log.warning("dispatch_duplicate", task_id=key[0], attempt=key[1])
            return
        for att in list(self._attempts.values()):
            older = att.reporter
            if older.task_id == dispatch.task_id and older.attempt < dispatch.attempt:
                self._request_cancel(att, "abort", "superseded by a newer attempt")
        refusal = None
        if self._draining or self._closing:
            refusal = SHUTDOWN_ERROR
        elif self._status != "idle":
            refusal = f"agent {self._status}"
        elif sum(1 for a in self._attempts.values() if a.active) >= self.capacity:
            refusal = CAPACITY_ERROR
        if refusal is not None:
            self._log.warning("dispatch_refused", task_id=key[0], attempt=key[1], reason=refusal)
            fail = v1.Fail(
                task_id=key[0], attempt=key[1], error=refusal, retryable=True, handback=True
            )
            await self._send_now(fail)
            return
        att = _Attempt(Reporter(self, dispatch))
        self._attempts[key] = att
        att.task = asyncio.create_task(
            self._run_attempt(att), name=f"attempt {dispatch.task_id}#{dispatch.attempt}"
        )

    def _on_cancel(self, cancel: v1.Cancel) -> None:
        att = self._attempts.get((cancel.task_id, cancel.attempt))
        if att is None or not att.active:
            self._log.debug("cancel_ignored", task_id=cancel.task_id, attempt=cancel.attempt)
            return
        self._log.info(
            "attempt_cancel", task_id=cancel.task_id, attempt=cancel.attempt, reason=cancel.reason
        )
        self._request_cancel(att, "cancel", cancel.reason)

    async def _request_upload_links(
        self, reporter: Reporter, files: Sequence[v1.UploadFile], timeout: float
    ) -> list[v1.UploadLink]:
        """Ask until answered, the attempt is cancelled, or ``timeout`` passes; a request
        lost with a dropped connection is asked again on the next one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        cancelled: asyncio.Future[Any] = asyncio.ensure_future(reporter.wait_cancel_requested())
        try:
            while (remaining := deadline - loop.time()) > 0:
                request_id = secrets.token_hex(8)
                waiter: asyncio.Future[v1.UploadLinks] = loop.create_future()
                self._upload_waiters[request_id] = waiter
                frame = v1.UploadRequest(
                    task_id=reporter.task_id,
                    attempt=reporter.attempt,
                    request_id=request_id,
                    files=list(files),
                )
                try:
                    if not await self._send_now(frame):
                        connected: asyncio.Future[Any] = asyncio.ensure_future(
                            self._connected.wait()
                        )
                        await asyncio.wait(
                            {connected, cancelled},
                            timeout=min(remaining, 1.0),
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        connected.cancel()
                    else:
                        answered: set[asyncio.Future[Any]] = {waiter, cancelled}
                        await asyncio.wait(
                            answered,
                            timeout=min(remaining, 5.0),
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                finally:
                    self._upload_waiters.pop(request_id, None)
                if cancelled.done():
                    raise UploadError("the attempt was cancelled")
                if waiter.done():
                    reply = waiter.result()
                    if reply.error:
                        raise UploadError(f"the gateway refused the upload: {reply.error}")
                    return reply.links
            raise UploadError(f"no upload links from the gateway within {timeout:g} s")
        finally:
            cancelled.cancel()

    # -- attempts --------------------------------------------------------------------------

    async def _run_attempt(self, att: _Attempt) -> None:
        reporter = att.reporter
        log = self._log.bind(task_id=reporter.task_id, attempt=reporter.attempt)
        log.info("attempt_started", workflow_id=reporter.dispatch.workflow_id)
        try:
            await self._runner.start(reporter.dispatch, reporter)
        except asyncio.CancelledError:
            if not att.forced:
                att.finished = True
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:
            log.exception("runner_error")
            await reporter.fail(f"agent runner error: {type(exc).__name__}: {exc}")
        if not reporter.done:
            if reporter.cancel_requested:
                await reporter.cancelled()
            else:
                await reporter.fail("the runner ended without reporting a result")
        att.finished = True
        log.info("attempt_finished", cancel=reporter.cancel_kind)
        self._forget_if_finished(att)

    def _request_cancel(self, att: _Attempt, kind: CancelKind, reason: str) -> None:
        reporter = att.reporter
        if reporter.done or att.finished:
            if kind == "abort":
                att.pending.clear()
            return
        already = reporter.cancel_requested
        reporter._request_cancel(kind, reason)
        if kind == "abort":
            att.pending.clear()
        if not already:
            self._spawn(self._cancel_runner(att))

    async def _cancel_runner(self, att: _Attempt) -> None:
        reporter = att.reporter
        try:
            await self._runner.cancel(reporter.task_id, reporter.attempt)
        except Exception:
            self._log.exception(
                "runner_cancel_error", task_id=reporter.task_id, attempt=reporter.attempt
            )
        task = att.task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait({task}, timeout=self._cancel_timeout)
        if not done:
            self._log.warning(
                "runner_ignored_cancel", task_id=reporter.task_id, attempt=reporter.attempt
            )
            att.forced = True
            task.cancel()

    async def _deliver(self, reporter: Reporter, frame: v1.Frame, *, important: bool) -> None:
        att = self._attempts.get(reporter.key)
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(_dump(frame))
            except ConnectionClosed:
                pass
            else:
                if _is_result(frame):
                    self._remember_result(reporter.key, frame)
                return
        if important and att is not None and reporter.cancel_kind != "abort":
            att.pending.append(frame)

    async def _finished(self, reporter: Reporter, frame: v1.Frame | None) -> None:
        if frame is not None:
            await self._deliver(reporter, frame, important=True)
        att = self._attempts.get(reporter.key)
        if att is not None:
            self._forget_if_finished(att)

    def _forget_if_finished(self, att: _Attempt) -> None:
        key = att.reporter.key
        if att.finished and not att.pending and self._attempts.get(key) is att:
            del self._attempts[key]

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _wait_attempts(self, seconds: float, *, forceable: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            tasks = {a.task for a in self._attempts.values() if a.task and not a.task.done()}
            remaining = deadline - loop.time()
            if not tasks or remaining <= 0 or (forceable and self._force.is_set()):
                return
            waiters: set[asyncio.Task[Any]] = set(tasks)
            force = asyncio.create_task(self._force.wait()) if forceable else None
            if force is not None:
                waiters.add(force)
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if force is not None:
                    force.cancel()
                    await asyncio.gather(force, return_exceptions=True)

    async def _abandon_all(self, reason: str) -> None:
        for att in list(self._attempts.values()):
            self._request_cancel(att, "abort", reason)
        await self._wait_attempts(self._cancel_timeout + 1.0, forceable=False)

    async def _cancel_leftovers(self) -> None:
        leftovers = [a.task for a in self._attempts.values() if a.task and not a.task.done()]
        leftovers += list(self._background)
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)


def _is_result(frame: v1.Frame) -> bool:
    return isinstance(frame, v1.Complete | v1.Fail | v1.Cancelled)


async def run_until_signalled(client: GatewayClient, grace_seconds: float = 30.0) -> int:
    """Run ``client`` until SIGTERM or SIGINT, then stop it gracefully; a second signal ends
    the grace period at once. Returns a process exit code (1 when replaced by another agent).
    """
    loop = asyncio.get_running_loop()
    log = get_logger("runyard.agent")
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("agent_signal", signal=signal.Signals(signum).name)
        if stopping:
            stopping.append(asyncio.create_task(client.stop(0)))
        else:
            stopping.append(asyncio.create_task(client.stop(grace_seconds)))

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
            pass
    # A blocked loop delays heartbeats and lets the server's lease lapse: make it visible.
    monitor = LoopMonitor()
    monitor.start()
    try:
        await client.run()
    except AgentReplaced:
        return 1
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        if stopping:
            await asyncio.gather(*stopping, return_exceptions=True)
        await monitor.stop()
    return 0
