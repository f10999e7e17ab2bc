"""Event stream benchmark: 1,000 concurrent SSE streams on one ``runyard server`` process.

    .venv/bin/python bench/events.py --db sqlite|postgresql [--pg-url URL] [--quick]

Two scenarios, each with 1,000 open ``GET /r/tasks/{taskId}/events`` streams:

A. 100 running tasks x 10 watchers each; protocol-level agents send progress frames for them
   at a steady total rate (``--rate-spread`` frames/s, round robin over the tasks);
B. 1 running task x 1,000 watchers; its agent sends ``--rate-single`` frames/s.

The server runs with ``RUNYARD_SCHEDULER_PROGRESS_INTERVAL_SECONDS=0`` so every frame becomes an
event. Each frame carries its send time (wall clock; everything runs on one machine) in
``message``; the figure is the time from the agent sending the frame to each watcher having
parsed the event (the client is one process, so this includes its own scheduling delay), split
at the event's ``timestamp`` (when the server began writing it). Also measured: submit →
dispatch latency of a new task (an idle probe agent, one task at a time) with nothing else going
on; while the same events flow with no streams open (the control); with the 1,000 streams open
and idle; and with them open while events flow — whether watchers slow dispatch. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Shared with the dispatch benchmark: the server process, databases, the team, the agent, the
# machine.
from _common import (
    ProtocolAgent,
    ServerProcess,
    Team,
    add_database_options,
    machine,
    own_cpu,
    percentile,
    run_task,
    say,
    served,
    setup_team,
    wait_for,
    work_folder,
)
from _common import server_env as base_env

TERMINAL = (b"completed", b"failed", b"cancelled")


@dataclass(frozen=True)
class Plan:
    tasks: int = 100
    watchers_per_task: int = 10
    single_watchers: int = 1000
    agents: int = 10
    rate_spread: float = 200.0
    rate_single: float = 10.0
    drive_seconds: float = 10.0
    probes: int = 40
    open_concurrency: int = 100


FULL = Plan()
QUICK = Plan(drive_seconds=4.0, probes=15)


# -- Server-Sent Events over a raw HTTP/1.1 connection ------------------------------------------


@dataclass
class Deliveries:
    """Latencies (seconds) of progress events, as the watchers parsed them: in all, and split
    at the event's ``timestamp`` (when the server began writing it) into the frame's wait to be
    handled and the write, commit, announcement, read and send to this watcher."""

    latencies: list[float] = field(default_factory=list)
    ingest: list[float] = field(default_factory=list)
    fanout: list[float] = field(default_factory=list)
    recording: bool = False


class Watcher:
    """One ``GET …/events`` stream on its own connection: a minimal HTTP/1.1 client (chunked
    transfer coding) so the client's cost per event stays small next to the server's."""

    def __init__(self, base_url: str, task_id: str, auth: str, sink: Deliveries) -> None:
        self.url = urlsplit(base_url)
        self.task_id = task_id
        self.auth = auth
        self.sink = sink
        self.progress = 0
        self.statuses: list[str] = []
        self.terminal = ""
        self.caught_up = asyncio.Event()
        self.closed = asyncio.Event()
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        writer = None
        try:
            host, port = self.url.hostname or "127.0.0.1", self.url.port or 80
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                (
                    f"GET /api/v1/r/tasks/{self.task_id}/events HTTP/1.1\r\n"
                    f"Host: {host}:{port}\r\nAuthorization: {self.auth}\r\n"
                    "Accept: text/event-stream\r\n\r\n"
                ).encode()
            )
            status = await reader.readline()
            if b" 200 " not in status:
                raise RuntimeError(f"stream refused: {status!r}")
            while (await reader.readline()).strip():
                pass  # the response headers (uvicorn streams with chunked coding)
            buffer = b""
            while True:
                size = int((await reader.readline()).strip(), 16)
                if size == 0:
                    break
                buffer += (await reader.readexactly(size + 2))[:-2]
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    self._message(block)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if not self.terminal:
                self.error = exc
        except Exception as exc:
            self.error = exc
        finally:
            self.closed.set()
            if writer is not None:
                writer.close()

    def _message(self, block: bytes) -> None:
        received = time.time()  # wall clock: the server's timestamps are compared with it
        event, data = b"", b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                event = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if event == b"progress":
            self.progress += 1
            if self.sink.recording:
                payload = json.loads(data)
                sent = float(payload["message"])
                written = datetime.fromisoformat(payload["timestamp"]).timestamp()
                self.sink.latencies.append(received - sent)
                self.sink.ingest.append(written - sent)
                self.sink.fanout.append(received - written)
        elif event == b"status":
            status = json.loads(data)["status"]
            self.statuses.append(status)
            if status == "running":
                self.caught_up.set()
        elif event in TERMINAL:
            self.terminal = event.decode()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# -- protocol-level agents ---------------------------------------------------------------------


class Agent(ProtocolAgent):
    """Holds every dispatch (the watched tasks) and sends progress frames for it on demand;
    the probe agent completes at once instead (``hold=False``)."""

    async def progress(self, task_id: str, step: int) -> None:
        frame = {
            "type": "progress",
            "task_id": task_id,
            "attempt": self.running[task_id],
            "progress": min(step / 1000, 1.0),
            "step_current": step,
            "message": repr(time.time()),
        }
        await self.send(frame)

    async def complete_all(self) -> None:
        for task_id, attempt in list(self.running.items()):
            frame = {"type": "complete", "task_id": task_id, "attempt": attempt, "output": {}}
            await self.send(frame)
            del self.running[task_id]


#: The team's workflows. Separate labels: the probe agent never gets a watched task, nor the
#: reverse.
WORKFLOWS = {"bench-events": ["events"], "bench-probe": ["probe"]}


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Latency:
    samples: list[float]

    def text(self) -> str:
        if not self.samples:
            return "no samples"
        p50, p99 = percentile(self.samples, 50), percentile(self.samples, 99)
        worst = max(self.samples)
        return f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms"


async def probe_dispatch(
    client: httpx.AsyncClient, team: Team, probe: Agent, count: int, until: float = 0.0
) -> Latency:
    """Submit → dispatch of a new task, one at a time: ``count`` samples, and more until
    ``until`` (``perf_counter``) if given."""
    taken: list[float] = []
    while len(taken) < count or time.perf_counter() < until:
        started = time.perf_counter()
        task_id = await run_task(client, team, "bench-probe")
        taken.append(await probe.dispatched(task_id) - started)

        async def done(task_id: str = task_id) -> bool:
            body = (await client.get(f"/r/tasks/{task_id}", headers=team.runtime)).json()
            return bool(body["task_status"] == "completed")

        await wait_for(done, 30, "the probe task to complete", pause=0.05)
        await asyncio.sleep(0.02)
    return Latency(taken)


def server_rss_mb(server: ServerProcess) -> float:
    return server.rss_mb()


@dataclass
class Scenario:
    name: str
    watchers: int
    opened_seconds: float = 0.0
    rss_before: float = 0.0
    rss_open: float = 0.0
    frames: int = 0
    expected: int = 0
    delivered: int = 0
    delivery: Latency = field(default_factory=lambda: Latency([]))
    ingest: Latency = field(default_factory=lambda: Latency([]))
    fanout: Latency = field(default_factory=lambda: Latency([]))
    dispatch_control: Latency = field(default_factory=lambda: Latency([]))
    dispatch_idle: Latency = field(default_factory=lambda: Latency([]))
    dispatch_busy: Latency = field(default_factory=lambda: Latency([]))
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    closed_seconds: float = 0.0
    closed_ok: int = 0
    errors: int = 0


async def open_watchers(
    server: ServerProcess, team: Team, task_ids: list[str], plan: Plan, sink: Deliveries
) -> list[Watcher]:
    watchers = [Watcher(server.url, t, team.runtime["Authorization"], sink) for t in task_ids]
    for start in range(0, len(watchers), plan.open_concurrency):
        batch = watchers[start : start + plan.open_concurrency]
        for watcher in batch:
            watcher.start()
        await asyncio.gather(*(asyncio.wait_for(w.caught_up.wait(), 60) for w in batch))
    return watchers


async def scenario(
    name: str,
    client: httpx.AsyncClient,
    server: ServerProcess,
    team: Team,
    probe: Agent,
    plan: Plan,
    tasks: int,
    watchers_per_task: int,
    rate: float,
) -> Scenario:
    result = Scenario(name, tasks * watchers_per_task)
    agents_needed = min(plan.agents, tasks)
    per_agent = -(-tasks // agents_needed)
    agents = [
        Agent(
            server.ws_url,
            team.agent_key,
            f"{name[0].lower()}-{n}",
            ["events"],
            per_agent,
            hold=True,
        )
        for n in range(agents_needed)
    ]
    for agent in agents:
        await agent.start()
    task_ids = [await run_task(client, team, "bench-events") for _ in range(tasks)]

    async def all_running() -> bool:
        return sum(len(agent.running) for agent in agents) == tasks

    await wait_for(all_running, 60, "the watched tasks to be dispatched", pause=0.05)
    owner = {task_id: agent for agent in agents for task_id in agent.running}
    sent: dict[str, int] = dict.fromkeys(task_ids, 0)
    period = 1 / rate
    total = round(rate * plan.drive_seconds)

    async def drive() -> None:
        began = time.perf_counter()
        for n in range(total):
            delay = began + n * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task_id = task_ids[n % tasks]
            sent[task_id] += 1
            await owner[task_id].progress(task_id, sent[task_id])

    async def drive_and_probe() -> Latency:
        driving = time.perf_counter()
        driver = asyncio.create_task(drive())
        latency = await probe_dispatch(
            client, team, probe, plan.probes, until=driving + plan.drive_seconds - 0.5
        )
        await driver
        return latency

    # The control: the same events, nobody watching.
    say(f"    control: {rate:g} progress frames/s for {plan.drive_seconds:g} s, no streams")
    result.dispatch_control = await drive_and_probe()
    say(f"    dispatch, events flowing, no streams: {result.dispatch_control.text()}")

    sink = Deliveries()
    result.rss_before = server_rss_mb(server)
    started = time.perf_counter()
    watchers = await open_watchers(
        server, team, [t for t in task_ids for _ in range(watchers_per_task)], plan, sink
    )

    async def replayed() -> bool:  # the control's events too
        return sum(w.progress for w in watchers) >= sum(sent[w.task_id] for w in watchers)

    await wait_for(replayed, 120, "the streams to replay what they missed", pause=0.05)
    result.opened_seconds = time.perf_counter() - started
    await asyncio.sleep(1.0)
    result.rss_open = server_rss_mb(server)
    say(f"    {len(watchers)} streams open in {result.opened_seconds:.1f} s; probing dispatch")
    result.dispatch_idle = await probe_dispatch(client, team, probe, plan.probes)
    say(f"    dispatch, streams idle: {result.dispatch_idle.text()}")

    say(f"    driving {rate:g} progress frames/s for {plan.drive_seconds:g} s")
    base = {id(w): w.progress for w in watchers}
    cpu_before, own_before = server.cpu_seconds(), own_cpu()
    sink.recording = True
    driving = time.perf_counter()
    before = dict(sent)
    result.dispatch_busy = await drive_and_probe()
    # Let the last events arrive (bounded), then stop counting.
    expected = sum(sent[w.task_id] - before[w.task_id] for w in watchers)
    deadline = time.perf_counter() + 15
    while time.perf_counter() < deadline:
        if sum(w.progress - base[id(w)] for w in watchers) >= expected:
            break
        await asyncio.sleep(0.05)
    sink.recording = False
    elapsed = time.perf_counter() - driving
    result.server_cpu = (server.cpu_seconds() - cpu_before) / elapsed
    result.client_cpu = (own_cpu() - own_before) / elapsed
    result.frames = total
    result.expected = expected
    result.delivered = sum(w.progress - base[id(w)] for w in watchers)
    result.delivery = Latency(sink.latencies)
    result.ingest = Latency(sink.ingest)
    result.fanout = Latency(sink.fanout)
    say(f"    delivery: {result.delivery.text()}; {result.delivered}/{expected} events")
    say(f"    dispatch, events flowing: {result.dispatch_busy.text()}")

    closing = time.perf_counter()
    for agent in agents:
        await agent.complete_all()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(w.closed.wait() for w in watchers)), 60)
    result.closed_seconds = time.perf_counter() - closing
    result.closed_ok = sum(1 for w in watchers if w.closed.is_set() and w.terminal == "completed")
    result.errors = sum(1 for w in watchers if w.error is not None)
    for watcher in watchers:
        await watcher.stop()
    for agent in agents:
        await agent.close()
    say(f"    completed: {result.closed_ok}/{len(watchers)} streams closed after `completed`")
    return result


# -- report ------------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    plan: Plan,
    db_version: str,
    load: float,
    base: Latency,
    runs: list[Scenario],
) -> str:
    lines = [
        *machine(
            args.db,
            args.sqlite_synchronous,
            db_version,
            load,
            "server, agents and the 1,000 clients share it",
        ),
        "",
    ]
    lines.append(f"dispatch, nothing else going on (n={len(base.samples)}): {base.text()}")
    for run in runs:

        def row(label: str, value: str) -> str:
            return f"  {label:<32}{value}"

        def n(latency: Latency) -> str:
            return f"{latency.text()} (n={len(latency.samples)})"

        lines += [
            "",
            f"{run.name}: {run.watchers:,} streams",
            row(
                "opened, replay caught up",
                f"{run.opened_seconds:.2f} s; server RSS {run.rss_before:.0f} → "
                f"{run.rss_open:.0f} MB",
            ),
            row(
                "progress frames",
                f"{run.frames:,} in {plan.drive_seconds:g} s "
                f"({run.frames / plan.drive_seconds:g}/s)",
            ),
            row(
                "events delivered",
                f"{run.delivered:,} of {run.expected:,} "
                f"({run.delivered / plan.drive_seconds:,.0f}/s)",
            ),
            row("delivery latency", run.delivery.text()),
            row("  frame → server writes it", run.ingest.text()),
            row("  writes it → watcher has it", run.fanout.text()),
            row(
                "CPU while driving",
                f"server {run.server_cpu:.2f} cores, this client {run.client_cpu:.2f}",
            ),
            row("dispatch: events, no streams", n(run.dispatch_control)),
            row("dispatch: streams idle", n(run.dispatch_idle)),
            row("dispatch: streams + events", n(run.dispatch_busy)),
            row(
                "closed after `completed`",
                f"{run.closed_ok:,}/{run.watchers:,} in {run.closed_seconds:.2f} s; "
                f"stream errors {run.errors}",
            ),
        ]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def server_env(args: argparse.Namespace) -> dict[str, str]:
    # Every progress frame becomes an event: the stream, not the coalescing, is measured.
    return base_env(
        args.db, args.sqlite_synchronous, RUNYARD_SCHEDULER_PROGRESS_INTERVAL_SECONDS="0"
    )


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    plan = QUICK if args.quick else FULL
    overrides = {
        "rate_spread": args.rate_spread,
        "rate_single": args.rate_single,
        "tasks": args.tasks,
        "watchers_per_task": args.watchers,
        "drive_seconds": args.seconds,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v})
    load = os.getloadavg()[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    runs: list[Scenario] = []
    async with served(args, workdir, server_env(args)) as run:
        server, db_version = run.server, run.db_version
        say(f"server up at {server.url}")
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", timeout=60) as client:
            team = await setup_team(client, WORKFLOWS)
            probe = Agent(server.ws_url, team.agent_key, "probe", ["probe"], 1)
            await probe.start()
            await run_task(client, team, "bench-probe")  # warm up
            await asyncio.sleep(0.5)
            probe.arrivals.clear()
            say(f"dispatch latency without streams, {plan.probes} samples")
            base = await probe_dispatch(client, team, probe, plan.probes)
            say(f"    {base.text()}")
            spread = plan.tasks * plan.watchers_per_task
            if args.scenario in ("all", "spread"):
                say(f"A: {plan.tasks} tasks x {plan.watchers_per_task} watchers = {spread:,}")
                runs.append(
                    await scenario(
                        f"A. {plan.tasks} tasks x {plan.watchers_per_task} watchers",
                        client,
                        server,
                        team,
                        probe,
                        plan,
                        plan.tasks,
                        plan.watchers_per_task,
                        plan.rate_spread,
                    )
                )
            if args.scenario in ("all", "single"):
                say(f"B: 1 task x {plan.single_watchers:,} watchers")
                runs.append(
                    await scenario(
                        f"B. 1 task x {plan.single_watchers:,} watchers",
                        client,
                        server,
                        team,
                        probe,
                        plan,
                        1,
                        plan.single_watchers,
                        plan.rate_single,
                    )
                )
            await probe.close()
    print(report(args, plan, db_version, load, base, runs))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_database_options(parser)
    parser.add_argument("--scenario", choices=("all", "spread", "single"), default="all")
    parser.add_argument("--rate-spread", type=float, help="frames/s over the tasks of A (200)")
    parser.add_argument("--rate-single", type=float, help="frames/s of the one task of B (10)")
    parser.add_argument("--tasks", type=int, help="tasks of A (100)")
    parser.add_argument("--watchers", type=int, help="watchers per task of A (10)")
    parser.add_argument("--seconds", type=float, help="how long events are driven (10; 4 quick)")
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer samples")
    args = parser.parse_args()
    with work_folder("runyard-bench-events-", args.keep) as workdir:
        try:
            import uvloop  # the client's own overhead is part of every latency figure
        except ImportError:
            return asyncio.run(bench(args, workdir))
        return uvloop.run(bench(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
