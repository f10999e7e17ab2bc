"""The agent's gateway client and simulated worker against a fake gateway on loopback.

The fake speaks protocol v1 over real WebSocket connections (``websockets`` server on
127.0.0.1, port 0): it records every connection's headers, hello and frames, answers with a
welcome whose ``abort`` list the test chooses, and can refuse, drop or close connections.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
import structlog
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

import runyard
from runyard.agent import (
    AgentReplaced,
    GatewayClient,
    Reporter,
    Runner,
    SimulatedRunner,
    backoff_delay,
)
from runyard.agent.client import CAPACITY_ERROR, SHUTDOWN_ERROR
from runyard.agent.simulate import simulated_manifest
from runyard.protocol import v1

KEY = "ak-test_" + "k" * 32
WAIT = 3.0


@dataclass(eq=False)
class Conn:
    index: int
    ws: ServerConnection
    headers: Headers
    hello: v1.Hello | None = None
    frames: list[Any] = field(default_factory=list)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def results(self) -> list[Any]:
        return [f for f in self.frames if isinstance(f, v1.Complete | v1.Fail | v1.Cancelled)]


class FakeGateway:
    def __init__(self) -> None:
        self.url = ""
        self.heartbeat_interval = 0.05
        self.lease_ttl = 5.0
        #: Close codes for the next connections, one per connection, before any hello.
        self.refuse: list[int] = []
        #: HTTP statuses to refuse the next handshakes with.
        self.refuse_http: list[int] = []
        #: Attempts the next welcomes tell the agent to abort.
        self.abort: set[tuple[str, int]] = set()
        #: Cut the connection (no close frame) right after a frame this matches arrives.
        self.drop_on: Callable[[Any], bool] | None = None
        #: While set, the next welcome waits for it (after the hello was received).
        self.hold_welcome: asyncio.Event | None = None
        self.hellos: asyncio.Queue[Conn] = asyncio.Queue()
        self.conns: list[Conn] = []
        self.welcomed: asyncio.Queue[Conn] = asyncio.Queue()
        self.frames: asyncio.Queue[tuple[Conn, Any]] = asyncio.Queue()
        self.heartbeats: list[tuple[float, Conn, v1.Heartbeat]] = []

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.refuse_http:
            return conn.respond(HTTPStatus(self.refuse_http.pop(0)), "refused\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = Conn(len(self.conns), ws, ws.request.headers)
        self.conns.append(conn)
        try:
            if self.refuse:
                await ws.close(self.refuse.pop(0), "refused by the test")
                return
            hello = v1.parse_agent_frame(await ws.recv())
            assert isinstance(hello, v1.Hello)
            conn.hello = hello
            self.hellos.put_nowait(conn)
            if self.hold_welcome is not None:
                await self.hold_welcome.wait()
                self.hold_welcome = None
            reported = [(r.task_id, r.attempt) for r in hello.running]
            welcome = v1.Welcome(
                gateway_id="gw-test",
                heartbeat_interval=self.heartbeat_interval,
                lease_ttl=self.lease_ttl,
                keep=[ref(*k) for k in reported if k not in self.abort],
                abort=[ref(*k) for k in reported if k in self.abort],
            )
            await ws.send(welcome.model_dump_json())
            self.welcomed.put_nowait(conn)
            async for raw in ws:
                frame = v1.parse_agent_frame(raw)
                conn.frames.append(frame)
                if isinstance(frame, v1.Heartbeat):
                    self.heartbeats.append((time.monotonic(), conn, frame))
                    continue
                self.frames.put_nowait((conn, frame))
                if self.drop_on is not None and self.drop_on(frame):
                    self.drop_on = None
                    ws.transport.abort()
                    return
        except ConnectionClosed:
            pass
        finally:
            conn.close_code = ws.close_code
            conn.closed.set()

    @property
    def current(self) -> Conn:
        return [c for c in self.conns if c.hello is not None][-1]

    async def next_conn(self) -> Conn:
        return await asyncio.wait_for(self.welcomed.get(), WAIT)

    async def next(self, timeout: float = WAIT) -> Any:
        """The next frame that is not a heartbeat."""
        _conn, frame = await asyncio.wait_for(self.frames.get(), timeout)
        return frame

    async def next_where(self, match: Callable[[Any], bool]) -> tuple[Conn, Any]:
        async def find() -> tuple[Conn, Any]:
            while True:
                conn, frame = await self.frames.get()
                if match(frame):
                    return conn, frame

        return await asyncio.wait_for(find(), WAIT)

    async def result(self, task_id: str, attempt: int = 1) -> Any:
        _conn, frame = await self.next_where(
            lambda f: (
                isinstance(f, v1.Complete | v1.Fail | v1.Cancelled)
                and (f.task_id, f.attempt) == (task_id, attempt)
            )
        )
        return frame

    async def quiet_for(self, seconds: float) -> list[Any]:
        """Frames (other than heartbeats) that arrive within ``seconds``."""
        await asyncio.sleep(seconds)
        seen = []
        while not self.frames.empty():
            seen.append(self.frames.get_nowait()[1])
        return seen

    async def send(self, frame: v1.Frame) -> None:
        await self.current.ws.send(frame.model_dump_json())

    async def dispatch(self, task_id: str, attempt: int = 1, **parameters: Any) -> None:
        await self.send(
            v1.Dispatch(
                task_id=task_id,
                attempt=attempt,
                workflow_id="wf-1",
                tool_type="comfyui",
                workflow={"1": {"class_type": "SaveImage", "inputs": {}}},
                parameters=parameters,
            )
        )

    async def cancel(self, task_id: str, attempt: int = 1) -> None:
        await self.send(v1.Cancel(task_id=task_id, attempt=attempt, reason="cancelled"))

    def last_heartbeat(self, conn: Conn | None = None) -> v1.Heartbeat:
        beats = [hb for _t, c, hb in self.heartbeats if conn is None or c is conn]
        assert beats, "no heartbeat yet"
        return beats[-1]

    async def heartbeat_after(self, moment: float) -> v1.Heartbeat:
        async def wait() -> v1.Heartbeat:
            while True:
                for at, _conn, hb in reversed(self.heartbeats):
                    if at > moment:
                        return hb
                await asyncio.sleep(0.01)

        return await asyncio.wait_for(wait(), WAIT)


def ref(task_id: str, attempt: int = 1) -> v1.AttemptRef:
    return v1.AttemptRef(task_id=task_id, attempt=attempt)


def running(hb: v1.Heartbeat | v1.Hello) -> set[tuple[str, int]]:
    return {(r.task_id, r.attempt) for r in hb.running}


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    async with serve(gw.handler, "127.0.0.1", 0, process_request=gw.process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gw.url = f"http://127.0.0.1:{port}"
        yield gw


StartAgent = Callable[..., Awaitable[tuple[GatewayClient, "asyncio.Task[None]"]]]


@pytest.fixture
async def start_agent(gateway: FakeGateway) -> AsyncIterator[StartAgent]:
    started: list[tuple[GatewayClient, asyncio.Task[None]]] = []

    async def start(
        runner: Runner | None = None, **options: Any
    ) -> tuple[GatewayClient, asyncio.Task[None]]:
        options.setdefault("agent_id", "agent-1")
        options.setdefault("backoff_base", 0.02)
        options.setdefault("backoff_max", 0.2)
        options.setdefault("cancel_timeout", 1.0)
        client = GatewayClient(gateway.url, KEY, runner or SimulatedRunner(), **options)
        task = asyncio.create_task(client.run())
        started.append((client, task))
        return client, task

    yield start
    for client, task in started:
        if not task.done():
            await client.stop(0)
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), WAIT)


# -- connection and hello ----------------------------------------------------------------------


async def test_hello_carries_identity_running_attempts_and_the_bearer_key(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, _ = await start_agent(
        agent_id="gpu-box-1",
        labels=["gpu", "comfyui", "gpu"],
        capacity=3,
        pools=["team", "community"],
        tool_version="simulated",
    )
    conn = await gateway.next_conn()
    assert conn.headers["Authorization"] == f"Bearer {KEY}"
    assert conn.headers["User-Agent"] == f"runyard-agent/{runyard.__version__}"
    assert conn.ws.request is not None and conn.ws.request.path == "/api/v1/agent/ws"
    hello = conn.hello
    assert hello is not None
    assert hello.protocol == v1.PROTOCOL_VERSION
    assert hello.agent_id == "gpu-box-1"
    assert hello.labels == ["gpu", "comfyui"]
    assert hello.capacity == 3
    assert hello.pools == ["team", "community"]
    assert hello.agent_version == runyard.__version__
    assert hello.tool == "comfyui" and hello.tool_version == "simulated"
    assert hello.platform_arch is not None
    assert re.fullmatch(r"[a-z0-9]+/[a-z0-9_/]+", hello.platform_arch)
    assert hello.system_stats.os_type == os.name
    assert hello.status == "idle"
    assert hello.running == []
    await asyncio.wait_for(client.wait_connected(), WAIT)
    assert client.connected
    assert client.welcome is not None and client.welcome.gateway_id == "gw-test"


@pytest.mark.parametrize("interval", [0.04, 0.1])
async def test_heartbeats_follow_the_welcome_interval(
    gateway: FakeGateway, start_agent: StartAgent, interval: float
) -> None:
    gateway.heartbeat_interval = interval
    await start_agent()
    conn = await gateway.next_conn()
    await asyncio.sleep(interval * 8.5)
    times = [at for at, c, _hb in gateway.heartbeats if c is conn]
    assert 6 <= len(times) <= 10, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert abs(sum(gaps) / len(gaps) - interval) < interval * 0.25
    assert all(hb.running == [] for _t, _c, hb in gateway.heartbeats)


# -- the simulated behaviours ---------------------------------------------------------------


async def test_dispatch_is_acked_and_completed_with_the_simulated_manifest(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent(SimulatedRunner(run_seconds=0.06))
    await gateway.next_conn()
    await gateway.dispatch("t-1")
    frames = [await gateway.next() for _ in range(6)]
    assert [f.type for f in frames] == [
        "ack",
        "log",
        "progress",
        "progress",
        "progress",
        "complete",
    ]
    assert all((f.task_id, f.attempt) == ("t-1", 1) for f in frames)
    assert [f.progress for f in frames[2:5]] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert frames[4].step_current == 3 and frames[4].step_total == 3
    complete = frames[-1]
    assert complete.output == simulated_manifest("t-1", 1)
    assert complete.output["simulated"] is True and complete.output["outputs"]
    assert await gateway.quiet_for(0.1) == []
    assert running(await gateway.heartbeat_after(time.monotonic())) == set()


@pytest.mark.parametrize(("behaviour", "retryable"), [("fail", True), ("fail-permanent", False)])
async def test_failing_behaviours(
    gateway: FakeGateway, start_agent: StartAgent, behaviour: str, retryable: bool
) -> None:
    await start_agent()
    await gateway.next_conn()
    await gateway.dispatch("t-1", simulate=behaviour)
    assert (await gateway.next()).type == "ack"
    result = await gateway.result("t-1")
    assert isinstance(result, v1.Fail)
    assert result.retryable is retryable
    assert "simulated" in result.error


async def test_agent_default_behaviour_applies_when_the_task_does_not_choose(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent(SimulatedRunner("fail-permanent"), capacity=2)
    await gateway.next_conn()
    await gateway.dispatch("t-1")
    await gateway.dispatch("t-2", simulate="succeed")
    assert isinstance(await gateway.result("t-1"), v1.Fail)
    assert isinstance(await gateway.result("t-2"), v1.Complete)


async def test_stall_acks_then_stays_in_heartbeats(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    await gateway.next_conn()
    await gateway.dispatch("t-1", simulate="stall")
    assert (await gateway.next()).type == "ack"
    since = time.monotonic()
    assert await gateway.quiet_for(0.3) == []
    beats = [hb for at, _c, hb in gateway.heartbeats if at > since]
    assert len(beats) >= 4
    assert all(running(hb) == {("t-1", 1)} for hb in beats)


async def test_no_ack_never_acks_but_is_running_and_cancellable(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    await gateway.next_conn()
    await gateway.dispatch("t-1", simulate="no-ack")
    assert await gateway.quiet_for(0.25) == []
    assert running(gateway.last_heartbeat()) == {("t-1", 1)}
    await gateway.cancel("t-1")
    assert isinstance(await gateway.next(), v1.Cancelled)


async def test_unknown_simulate_value_fails_permanently(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    await gateway.next_conn()
    await gateway.dispatch("t-1", simulate="explode")
    result = await gateway.next()
    assert isinstance(result, v1.Fail)
    assert not result.retryable and "explode" in result.error


async def test_unreadable_dispatch_fails_permanently(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    conn = await gateway.next_conn()
    await conn.ws.send('{"type": "dispatch", "task_id": "t-1", "attempt": 1}')
    await conn.ws.send('{"type": "tunnel_open", "port": 8188}')  # a future frame: ignored
    result = await gateway.next()
    assert isinstance(result, v1.Fail)
    assert not result.retryable and "could not read the dispatch" in result.error
    assert await gateway.quiet_for(0.1) == []


async def test_slow_takes_ten_times_as_long(gateway: FakeGateway, start_agent: StartAgent) -> None:
    await start_agent(SimulatedRunner(run_seconds=0.03), capacity=2)
    await gateway.next_conn()
    started = time.monotonic()
    await gateway.dispatch("t-fast")
    await gateway.dispatch("t-slow", simulate="slow")
    assert isinstance(await gateway.result("t-fast"), v1.Complete)
    fast = time.monotonic() - started
    assert isinstance(await gateway.result("t-slow"), v1.Complete)
    slow = time.monotonic() - started
    assert fast < 0.2
    assert slow >= 0.27


async def test_status_and_system_stats_are_reported(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, _ = await start_agent()
    first = await gateway.next_conn()
    await asyncio.wait_for(client.wait_connected(), WAIT)
    await client.set_status("syncing", phase="models", detail="sdxl.safetensors", percent=40)
    status = await gateway.next()
    assert isinstance(status, v1.StatusUpdate)
    assert (status.agent_status, status.sync_phase, status.sync_percent) == (
        "syncing",
        "models",
        40,
    )
    await gateway.dispatch("t-1")
    refused = await gateway.next()
    assert isinstance(refused, v1.Fail) and refused.error == "agent syncing" and refused.retryable
    first.ws.transport.abort()
    second = await gateway.next_conn()
    assert second.hello is not None and second.hello.status == "syncing"
    assert (await gateway.next()).sync_detail == "sdxl.safetensors"  # details follow the hello
    gpu = v1.GpuDevice(device_name="NVIDIA RTX 4090", device_type="cuda", vram_total=24 << 30)
    client.update_system_stats(v1.SystemStats(gpu_devices=[gpu]))
    beat = await gateway.heartbeat_after(time.monotonic())
    assert beat.system_stats is not None and beat.system_stats.gpu_devices == [gpu]
    assert (await gateway.heartbeat_after(time.monotonic())).system_stats is None
    await client.set_status("idle")
    assert (await gateway.next()).agent_status == "idle"
    await gateway.dispatch("t-2")
    assert isinstance(await gateway.result("t-2"), v1.Complete)


async def test_a_status_set_before_the_welcome_is_sent_after_it(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    """The hello said ``unhealthy``; ``idle`` set before the welcome must still reach it."""
    gateway.hold_welcome = release = asyncio.Event()
    client, _ = await start_agent()
    await client.set_status("unhealthy", detail="ComfyUI does not answer")
    conn = await asyncio.wait_for(gateway.hellos.get(), WAIT)
    assert conn.hello is not None and conn.hello.status == "unhealthy"
    await client.set_status("idle")  # not connected yet: nowhere to send it
    release.set()
    status = await gateway.next()
    assert isinstance(status, v1.StatusUpdate) and status.agent_status == "idle"
    await gateway.dispatch("t-1")
    assert isinstance(await gateway.result("t-1"), v1.Complete)


async def test_run_twice_is_refused(gateway: FakeGateway, start_agent: StartAgent) -> None:
    client, _ = await start_agent()
    await gateway.next_conn()
    with pytest.raises(RuntimeError, match="already running"):
        await client.run()


# -- cancel and fencing ----------------------------------------------------------------------


async def test_cancel_mid_run_reports_cancelled_and_nothing_after(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, _ = await start_agent(SimulatedRunner(run_seconds=2.0))
    await gateway.next_conn()
    await gateway.dispatch("t-1")
    assert (await gateway.next()).type == "ack"
    started = time.monotonic()
    await gateway.cancel("t-1")
    result = await gateway.result("t-1")
    assert isinstance(result, v1.Cancelled)
    assert time.monotonic() - started < 0.5
    assert await gateway.quiet_for(0.3) == []
    assert client.running == []
    assert running(await gateway.heartbeat_after(time.monotonic())) == set()


class StubbornRunner(Runner):
    """Ignores cancel, then reports progress and a completion anyway (or never returns)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.cancel_calls: list[tuple[str, int]] = []
        self.release = asyncio.Event()

    async def start(self, dispatch: v1.Dispatch, reporter: Reporter) -> None:
        await reporter.ack()
        if self.hang:
            await asyncio.Event().wait()
        await self.release.wait()
        await reporter.progress(0.9)
        await reporter.log("late line")
        await reporter.complete({"outputs": []})
        await reporter.fail("and a late failure")

    async def cancel(self, task_id: str, attempt: int) -> None:
        self.cancel_calls.append((task_id, attempt))


async def test_after_cancel_only_cancelled_is_sent(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    runner = StubbornRunner()
    await start_agent(runner)
    await gateway.next_conn()
    await gateway.dispatch("t-1")
    assert (await gateway.next()).type == "ack"
    await gateway.cancel("t-1")
    await asyncio.sleep(0.05)
    assert runner.cancel_calls == [("t-1", 1)]
    runner.release.set()
    assert [f.type for f in await gateway.quiet_for(0.2)] == ["cancelled"]


async def test_runner_that_ignores_cancel_is_stopped_after_the_cancel_timeout(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, _ = await start_agent(StubbornRunner(hang=True), cancel_timeout=0.2)
    await gateway.next_conn()
    await gateway.dispatch("t-1")
    assert (await gateway.next()).type == "ack"
    await gateway.cancel("t-1")
    assert await gateway.quiet_for(0.1) == []
    assert isinstance(await gateway.next(timeout=1.0), v1.Cancelled)
    assert client.running == []


class CrashingRunner(Runner):
    async def start(self, dispatch: v1.Dispatch, reporter: Reporter) -> None:
        await reporter.ack()
        raise RuntimeError("out of VRAM")

    async def cancel(self, task_id: str, attempt: int) -> None:
        pass


async def test_runner_exception_fails_the_attempt_retryably(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    with structlog.testing.capture_logs():
        await start_agent(CrashingRunner())
        await gateway.next_conn()
        await gateway.dispatch("t-1")
        assert (await gateway.next()).type == "ack"
        result = await gateway.next()
    assert isinstance(result, v1.Fail)
    assert result.retryable and "out of VRAM" in result.error


async def test_a_newer_attempt_of_the_same_task_supersedes_the_older(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, _ = await start_agent(capacity=1)
    await gateway.next_conn()
    await gateway.dispatch("t-1", 1, simulate="stall")
    assert (await gateway.next()).type == "ack"
    await gateway.dispatch("t-1", 2, simulate="stall")
    frame = await gateway.next()
    assert (frame.type, frame.attempt) == ("ack", 2)
    assert await gateway.quiet_for(0.1) == []  # the old attempt stops silently
    assert running(await gateway.heartbeat_after(time.monotonic())) == {("t-1", 2)}
    assert client.running == [ref("t-1", 2)]


# -- capacity ----------------------------------------------------------------------------------


async def test_capacity_is_respected(gateway: FakeGateway, start_agent: StartAgent) -> None:
    await start_agent(capacity=2)
    await gateway.next_conn()
    for task_id in ("t-1", "t-2", "t-3"):
        await gateway.dispatch(task_id, simulate="stall")
    frames = [await gateway.next() for _ in range(3)]
    by_task = {f.task_id: f for f in frames}
    assert by_task["t-1"].type == "ack" and by_task["t-2"].type == "ack"
    refused = by_task["t-3"]
    assert isinstance(refused, v1.Fail)
    assert refused.retryable and refused.error == CAPACITY_ERROR
    assert running(await gateway.heartbeat_after(time.monotonic())) == {("t-1", 1), ("t-2", 1)}
    await gateway.cancel("t-1")
    assert isinstance(await gateway.result("t-1"), v1.Cancelled)
    await gateway.dispatch("t-4", simulate="stall")
    assert (await gateway.next()).type == "ack"
    assert running(await gateway.heartbeat_after(time.monotonic())) == {("t-2", 1), ("t-4", 1)}


# -- reconnects ----------------------------------------------------------------------------------


async def test_reconnect_reports_the_running_attempt_and_keeps_it(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    first = await gateway.next_conn()
    await gateway.dispatch("t-1", simulate="stall")
    assert (await gateway.next()).type == "ack"
    first.ws.transport.abort()
    second = await gateway.next_conn()
    assert second.hello is not None and running(second.hello) == {("t-1", 1)}
    assert running(await gateway.heartbeat_after(time.monotonic())) == {("t-1", 1)}
    await gateway.cancel("t-1")
    conn, _ = await gateway.next_where(lambda f: isinstance(f, v1.Cancelled))
    assert conn is second


async def test_a_changed_identity_reconnects_with_a_new_hello_and_keeps_running_work(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, _ = await start_agent(labels=["comfyui", "special"])
    first = await gateway.next_conn()
    assert first.hello is not None and first.hello.comfyui_version is None
    await gateway.dispatch("t-1", simulate="stall")
    assert (await gateway.next()).type == "ack"

    assert await client.update_identity(labels=["comfyui", "gpu", "special"])
    second = await gateway.next_conn()
    await asyncio.wait_for(first.closed.wait(), WAIT)
    assert first.close_code == 1000  # a clean close, not a lost connection
    assert second.hello is not None
    assert second.hello.labels == ["comfyui", "gpu", "special"]
    assert running(second.hello) == {("t-1", 1)}
    assert client.labels == ["comfyui", "gpu", "special"]

    # Versions alone change it too; the same identity again changes nothing.
    assert await client.update_identity(comfyui_version="0.3.66", tool_version="0.3.66")
    third = await gateway.next_conn()
    assert third.hello is not None and third.hello.comfyui_version == "0.3.66"
    assert third.hello.tool_version == "0.3.66" and third.hello.labels == client.labels
    assert not await client.update_identity(labels=client.labels, comfyui_version="0.3.66")
    await gateway.cancel("t-1")
    conn, _ = await gateway.next_where(lambda f: isinstance(f, v1.Cancelled))
    assert conn is third and len(gateway.conns) == 3
    with pytest.raises(ValueError, match="invalid agent identity"):
        await client.update_identity(labels=[""])


async def test_welcome_abort_stops_the_attempt_silently(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    runner = SimulatedRunner()
    client, _ = await start_agent(runner, capacity=2)
    first = await gateway.next_conn()
    await gateway.dispatch("t-1", simulate="stall")
    await gateway.dispatch("t-2", simulate="stall")
    assert {(await gateway.next()).task_id for _ in range(2)} == {"t-1", "t-2"}
    gateway.abort = {("t-1", 1)}
    await first.ws.close(v1.CLOSE_SHUTDOWN, "server restarting")
    second = await gateway.next_conn()
    assert second.hello is not None and running(second.hello) == {("t-1", 1), ("t-2", 1)}
    assert await gateway.quiet_for(0.2) == []
    assert running(await gateway.heartbeat_after(time.monotonic())) == {("t-2", 1)}
    assert client.running == [ref("t-2")]
    assert list(runner._cancels) == [("t-2", 1)]


async def test_disconnect_behaviour_finishes_on_the_next_connection(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    first = await gateway.next_conn()
    await gateway.dispatch("t-1", simulate="disconnect")
    second = await gateway.next_conn()
    await asyncio.wait_for(first.closed.wait(), WAIT)
    assert first.close_code == 1006  # no close frame: a cut, not a goodbye
    assert second.hello is not None and running(second.hello) == {("t-1", 1)}
    conn, result = await gateway.next_where(lambda f: isinstance(f, v1.Complete))
    assert conn is second and result.output["simulated"] is True
    assert any(isinstance(f, v1.Ack) for f in first.frames + second.frames)


async def test_a_result_lost_with_the_connection_is_sent_again_if_kept(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    first = await gateway.next_conn()
    gateway.drop_on = lambda f: isinstance(f, v1.Complete)
    await gateway.dispatch("t-1")
    assert (await gateway.result("t-1")).type == "complete"
    second = await gateway.next_conn()
    assert second.hello is not None and running(second.hello) == {("t-1", 1)}
    conn, again = await gateway.next_where(lambda f: isinstance(f, v1.Complete))
    assert conn is second and (again.task_id, again.attempt) == ("t-1", 1)
    assert len(first.results()) == 1


async def test_a_result_lost_with_the_connection_is_dropped_if_aborted(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent()
    await gateway.next_conn()
    gateway.drop_on = lambda f: isinstance(f, v1.Complete)
    gateway.abort = {("t-1", 1)}
    await gateway.dispatch("t-1")
    assert (await gateway.result("t-1")).type == "complete"
    second = await gateway.next_conn()
    assert second.hello is not None and running(second.hello) == {("t-1", 1)}
    assert await gateway.quiet_for(0.2) == []
    assert second.results() == []


async def test_server_restart_close_reconnects(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    await start_agent(backoff_base=0.05)
    first = await gateway.next_conn()
    await first.ws.close(v1.CLOSE_SHUTDOWN, "server restarting")
    started = time.monotonic()
    await gateway.next_conn()
    assert time.monotonic() - started < 0.5


# -- refusals ----------------------------------------------------------------------------------


async def test_refused_key_is_logged_and_retried_with_growing_backoff(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    gateway.refuse = [v1.CLOSE_UNAUTHORIZED, v1.CLOSE_UNAUTHORIZED, v1.CLOSE_UNAUTHORIZED]
    gateway.refuse_http = []
    with structlog.testing.capture_logs() as logs:
        client, _ = await start_agent(backoff_base=0.04, backoff_max=1.0)
        await gateway.next_conn()
        await asyncio.wait_for(client.wait_connected(), WAIT)
    refusals = [e for e in logs if e["event"] == "agent_key_refused"]
    assert len(refusals) == 3
    assert all(e["log_level"] == "error" and e["code"] == 4401 for e in refusals)
    assert [e["retry_in"] for e in refusals] == sorted(e["retry_in"] for e in refusals)
    assert refusals[-1]["retry_in"] >= 0.04 * 4 * 0.8
    assert KEY not in repr(logs)
    assert len(gateway.conns) == 4


async def test_http_401_at_the_handshake_counts_as_a_refused_key(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    gateway.refuse_http = [401]
    with structlog.testing.capture_logs() as logs:
        await start_agent()
        await gateway.next_conn()
    assert [e["code"] for e in logs if e["event"] == "agent_key_refused"] == [4401]
    assert KEY not in repr(logs)


async def test_replaced_agent_stops(gateway: FakeGateway, start_agent: StartAgent) -> None:
    with structlog.testing.capture_logs() as logs:
        _client, task = await start_agent()
        first = await gateway.next_conn()
        await gateway.dispatch("t-1", simulate="stall")
        assert (await gateway.next()).type == "ack"
        await first.ws.close(v1.CLOSE_REPLACED, "replaced")
        with pytest.raises(AgentReplaced):
            await asyncio.wait_for(task, WAIT)
    assert any(e["event"] == "agent_replaced" for e in logs)
    assert len(gateway.conns) == 1


def test_backoff_doubles_is_capped_and_jittered() -> None:
    for failures in range(12):
        expected = min(30.0, 0.5 * 2**failures)
        delays = [backoff_delay(failures) for _ in range(50)]
        assert all(expected * 0.8 <= d <= expected * 1.2 for d in delays)
    assert len({backoff_delay(3) for _ in range(20)}) > 1
    assert backoff_delay(10_000) <= 36.0


# -- graceful stop -------------------------------------------------------------------------------


async def test_graceful_stop_lets_running_work_finish_and_refuses_new_work(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, task = await start_agent(SimulatedRunner(run_seconds=0.3), capacity=4)
    conn = await gateway.next_conn()
    await gateway.dispatch("t-1")
    assert (await gateway.next()).type == "ack"
    stopping = asyncio.create_task(client.stop(grace_seconds=5))
    await asyncio.sleep(0.05)
    await gateway.dispatch("t-2")
    refused = await gateway.result("t-2")
    assert isinstance(refused, v1.Fail) and refused.retryable
    assert refused.error == SHUTDOWN_ERROR
    assert isinstance(await gateway.result("t-1"), v1.Complete)
    await asyncio.wait_for(stopping, WAIT)
    assert stopping.done() and task.done()
    await asyncio.wait_for(conn.closed.wait(), WAIT)
    assert conn.close_code == 1000
    assert len(gateway.conns) == 1


async def test_graceful_stop_hands_back_what_outlives_the_grace(
    gateway: FakeGateway, start_agent: StartAgent
) -> None:
    client, task = await start_agent(capacity=2)
    conn = await gateway.next_conn()
    await gateway.dispatch("t-1", simulate="stall")
    await gateway.dispatch("t-2", simulate="no-ack")
    assert (await gateway.next()).type == "ack"
    started = time.monotonic()
    await asyncio.wait_for(client.stop(grace_seconds=0.2), WAIT)
    assert 0.2 <= time.monotonic() - started < 1.5
    results = {f.task_id: f for f in conn.results()}
    assert set(results) == {"t-1", "t-2"}
    for result in results.values():
        assert isinstance(result, v1.Fail)
        assert result.retryable and result.error == SHUTDOWN_ERROR
    assert task.done()


async def test_simulated_agent_process_runs_and_stops_on_sigterm(
    gateway: FakeGateway,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env.update(RUNYARD_AGENT_KEY=KEY, RUNYARD_LOGGER_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runyard.cli.main",
        "agent",
        "--simulate",
        "--gateway",
        gateway.url,
        "--agent-id",
        "sim-1",
        "--labels",
        "gpu,comfyui",
        "--capacity",
        "2",
        "--run-seconds",
        "0.05",
        "--grace",
        "0.3",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        conn = await asyncio.wait_for(gateway.welcomed.get(), 15)
        assert conn.hello is not None
        assert (conn.hello.agent_id, conn.hello.labels, conn.hello.capacity) == (
            "sim-1",
            ["gpu", "comfyui"],
            2,
        )
        await gateway.dispatch("t-1")
        assert isinstance(await gateway.result("t-1"), v1.Complete)
        await gateway.dispatch("t-2", simulate="stall")
        assert (await gateway.next_where(lambda f: f.type == "ack"))[1].task_id == "t-2"
        proc.send_signal(signal.SIGTERM)
        result = await gateway.result("t-2")
        assert isinstance(result, v1.Fail) and result.error == SHUTDOWN_ERROR
        _out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert KEY not in err.decode()
    assert b"agent_stopped" in err
