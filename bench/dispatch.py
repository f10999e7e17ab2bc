"""Dispatch benchmark: a real ``runyard server`` process, protocol-level agents, HTTP clients.

    .venv/bin/python bench/dispatch.py --db sqlite|postgresql [--pg-url URL] [--quick]

Prints the machine and three figures (targets from issue 4; recorded, never asserted):

1. submit → dispatch latency p50/p99 with one idle agent: from sending ``POST …/run`` to the
   ``dispatch`` frame arriving at the agent, one task at a time (target on SQLite: p50 ≤ 5 ms,
   p99 ≤ 25 ms);
2. whole-lifecycle throughput with 50 agents of capacity 1 that ack and complete at once:
   tasks/s from the first submit to the last completion seen by the server (target ≥ 500/s);
3. the latency of (1) again with 10,000 waiting tasks that no agent can match (ten label sets
   the agents lack, same team), against a control measured after a restart without them
   (target: the backlog changes the per-dispatch cost by less than 20 %).

The backlog of (3) is inserted through the service layer (``runyard.services.tasks.submit``)
while the server is stopped; the restarted server loads it like any other waiting work.
``--profile FILE`` samples the server with py-spy (``--gil``: where its CPU goes) during (2).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
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
    server_env,
    setup_team,
    wait_for,
    work_folder,
)

#: Label sets of the unmatched backlog: the agents have ``gpu`` only.
UNMATCHED_LABEL_SETS = 10
#: The team's workflows (slug → required labels).
WORKFLOWS = {
    "bench-latency": ["gpu"],
    "bench-throughput": ["gpu"],
    **{f"bench-unmatched-{n}": ["gpu", f"unobtainium-{n}"] for n in range(UNMATCHED_LABEL_SETS)},
}


@dataclass(frozen=True)
class Plan:
    latency_samples: int
    throughput_tasks: int
    throughput_agents: int = 50
    submitters: int = 16
    backlog: int = 10_000
    warmup: int = 10


FULL = Plan(latency_samples=300, throughput_tasks=2000)
QUICK = Plan(latency_samples=50, throughput_tasks=300)


# -- a protocol-level agent --------------------------------------------------------------------


@dataclass
class Tally:
    """Completions sent by all agents; ``reached`` fires at ``target``."""

    count: int = 0
    target: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self) -> None:
        self.count += 1
        if self.target and self.count >= self.target:
            self.reached.set()

    def expect(self, target: int) -> None:
        self.target = target
        if self.count >= target:
            self.reached.set()


def bench_agent(server: ServerProcess, team: Team, agent_id: str, tally: Tally) -> ProtocolAgent:
    """Capacity 1, label ``gpu``: ``ack`` and ``complete`` every dispatch at once."""
    return ProtocolAgent(
        server.ws_url, team.agent_key, agent_id, ["gpu"], 1, pools=["team"], on_complete=tally.add
    )


# -- the team, over HTTP -----------------------------------------------------------------------


async def run_batch(client: httpx.AsyncClient, team: Team, slug: str, count: int) -> list[str]:
    """``count`` runs in one request (``POST …/runs``)."""
    response = await client.post(
        f"/r/workflows/slug/{slug}/runs", headers=team.runtime, json={"runs": [{}] * count}
    )
    if response.status_code != 202:
        raise RuntimeError(f"runs refused: {response.status_code} {response.text}")
    task_ids: list[str] = response.json()["task_ids"]
    return task_ids


async def count_tasks(
    client: httpx.AsyncClient, team: Team, status: str, workflow_id: str | None = None
) -> int:
    params = {"status": status, "per_page": "1"}
    if workflow_id is not None:
        params["workflow_id"] = workflow_id
    response = await client.get("/r/tasks", headers=team.runtime, params=params)
    response.raise_for_status()
    return int(response.json()["page_meta"]["total_count"])


# -- the figures -------------------------------------------------------------------------------


@dataclass
class Latency:
    samples: list[float]
    #: From sending the ``POST`` to its answer (the dispatch may arrive before or after).
    answered: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 99)

    @property
    def worst(self) -> float:
        return max(self.samples)


async def measure_latency(
    client: httpx.AsyncClient,
    team: Team,
    server: ServerProcess,
    samples: int,
    warmup: int,
    profile: Path | None = None,
) -> Latency:
    """One idle agent; one task at a time; the agent is idle again before the next submit."""
    agent = bench_agent(server, team, "bench-latency", Tally())
    await agent.start()
    profiler: subprocess.Popen[bytes] | None = None
    if profile is not None and server.proc is not None:
        profiler = start_profiler(server.proc.pid, profile)
    workflow_id = team.workflows["bench-latency"]
    done_before = await count_tasks(client, team, "completed", workflow_id)
    taken: list[float] = []
    answered: list[float] = []
    try:
        for n in range(warmup + samples):
            started = time.perf_counter()
            task_id = await run_task(client, team, "bench-latency")
            posted = time.perf_counter()
            arrived = await agent.dispatched(task_id)
            if n >= warmup:
                taken.append((arrived - started) * 1000)
                answered.append((posted - started) * 1000)
            expected = done_before + n + 1

            async def settled(expected: int = expected) -> bool:
                return await count_tasks(client, team, "completed", workflow_id) >= expected

            await wait_for(settled, 30, "completion", pause=0.002)
            await asyncio.sleep(0.005)  # let the freed slot settle: the agent is idle again
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        await agent.close()
    return Latency(taken, answered)


@dataclass
class Throughput:
    tasks: int
    #: Submits the server refused (HTTP 5xx or a dropped connection); not in ``tasks``.
    refused: list[str]
    seconds: float
    submit_seconds: float
    server_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling the server; collapsed stacks to ``output``."""
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("--profile needs py-spy on PATH (pip install py-spy)")
    command = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--gil"]
    proc = subprocess.Popen([*command, "--output", str(output)], stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return proc


async def measure_throughput(
    client: httpx.AsyncClient,
    team: Team,
    server: ServerProcess,
    plan: Plan,
    profile: Path | None = None,
    batch: int = 1,
) -> Throughput:
    """``batch`` > 1: each submit is one ``POST …/runs`` of up to ``batch`` runs."""
    tally = Tally()
    agents = [
        bench_agent(server, team, f"bench-{n:02d}", tally) for n in range(plan.throughput_agents)
    ]
    for agent in agents:
        await agent.start()
    workflow_id = team.workflows["bench-throughput"]
    todo = iter(range(plan.throughput_tasks))
    refused: list[str] = []

    async def submitter() -> None:
        for _ in todo:
            # This one, and up to batch - 1 more.
            count = 1 + len(list(itertools.islice(todo, batch - 1)))
            try:
                if batch == 1:
                    await run_task(client, team, "bench-throughput")
                else:
                    await run_batch(client, team, "bench-throughput", count)
            except (RuntimeError, httpx.HTTPError) as exc:
                refused.extend([f"{type(exc).__name__}: {exc}"[:160]] * count)

    profiler: subprocess.Popen[bytes] | None = None
    done_before = await count_tasks(client, team, "completed", workflow_id)
    try:
        await asyncio.sleep(0.5)  # all agents registered and idle
        if profile is not None and server.proc is not None:
            profiler = start_profiler(server.proc.pid, profile)
        cpu_server, cpu_client = server.cpu_seconds(), own_cpu()
        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(plan.submitters)))
        submitted = time.perf_counter()
        tally.expect(plan.throughput_tasks - len(refused))
        await asyncio.wait_for(tally.reached.wait(), 600)

        async def all_completed() -> bool:
            done = await count_tasks(client, team, "completed", workflow_id)
            return done - done_before >= tally.target

        await wait_for(all_completed, 120, "completions", pause=0.005)
        finished = time.perf_counter()
        cpu_server, cpu_client = server.cpu_seconds() - cpu_server, own_cpu() - cpu_client
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        await asyncio.gather(*(agent.close() for agent in agents))
    for refusal in refused:
        say(f"    a submit failed: {refusal}")
    return Throughput(
        tally.target,
        refused,
        finished - started,
        submitted - started,
        cpu_server / (finished - started),
        cpu_client / (finished - started),
    )


@dataclass
class Probes:
    """Submits made while the restarted server marks its backlog ``waiting``."""

    accepted: int = 0
    refused: list[str] = field(default_factory=list)
    slowest: float = 0.0


async def insert_backlog(db_url: str, team: Team, count: int, concurrency: int) -> float:
    """Submit ``count`` unmatched tasks through the service layer (server stopped)."""
    from runyard.config import Settings
    from runyard.context import build_context
    from runyard.services import tasks
    from runyard.services.auth import Caller, CallerKind, TeamScope
    from runyard.store.db import Database

    settings = Settings()
    settings.database.url = db_url
    # Setup only: the server under test keeps its own synchronous setting.
    settings.database.sqlite_synchronous = "NORMAL"
    db = Database(db_url, settings.database)
    started = time.perf_counter()
    try:
        ctx = await build_context(db, settings)
        caller = Caller(CallerKind.INTEGRATION, None, team.team_id, team.integration_key_id)
        scope = TeamScope(caller, team.team_id, None)
        todo = iter(range(count))

        async def worker() -> None:
            for n in todo:
                ref = f"bench-unmatched-{n % UNMATCHED_LABEL_SETS}"
                await tasks.submit(ctx, scope, tasks.RunRequest(parameters={}), ref=ref)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await db.dispose()
    return time.perf_counter() - started


# -- report ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(
    args: argparse.Namespace,
    plan: Plan,
    db_version: str,
    idle: Latency,
    flow: Throughput,
    batched: Throughput | None,
    control: Latency,
    backlog: Latency,
    probes: Probes,
    load_seconds: float,
    load_at_start: float,
) -> str:
    sqlite = args.db == "sqlite"
    latency_target = "(SQLite)" if not sqlite else ""
    p50_change = backlog.p50 / control.p50 - 1
    p99_change = backlog.p99 / control.p99 - 1
    rows = [
        ("figure", "value", "target", "met"),
        (
            f"(1) submit→dispatch p50, 1 idle agent, n={len(idle.samples)}",
            f"{idle.p50:.2f} ms",
            f"≤ 5 ms {latency_target}".strip(),
            verdict(idle.p50 <= 5),
        ),
        (
            "    submit→dispatch p99",
            f"{idle.p99:.2f} ms",
            f"≤ 25 ms {latency_target}".strip(),
            verdict(idle.p99 <= 25),
        ),
        ("    submit→dispatch max", f"{idle.worst:.2f} ms", "", ""),
        (
            "    POST answered p50 / p99",
            f"{percentile(idle.answered, 50):.2f} / {percentile(idle.answered, 99):.2f} ms",
            "",
            "",
        ),
        (
            f"(2) lifecycles/s, {plan.throughput_agents} agents, {flow.tasks} tasks",
            f"{flow.rate:.0f} /s",
            "≥ 500 /s",
            verdict(flow.rate >= 500),
        ),
        (
            f"    submits/s alone ({plan.submitters} HTTP clients)",
            f"{flow.tasks / flow.submit_seconds:.0f} /s",
            "",
            "",
        ),
        (
            "    submits refused by the server",
            f"{len(flow.refused)} of {flow.tasks + len(flow.refused)}",
            "",
            "",
        ),
        (
            "    server CPU / bench CPU (cores)",
            f"{flow.server_cpu:.2f} / {flow.client_cpu:.2f}",
            "",
            "",
        ),
        ("    server CPU per lifecycle", f"{flow.server_cpu / flow.rate * 1000:.1f} ms", "", ""),
    ]
    if batched is not None:
        rows += [
            (
                f"    the same, {args.batch} runs per request",
                f"{batched.rate:.0f} /s",
                "≥ 500 /s",
                verdict(batched.rate >= 500),
            ),
            (
                "    … refused; server / bench CPU (cores)",
                f"{len(batched.refused)}; {batched.server_cpu:.2f} / {batched.client_cpu:.2f}",
                "",
                "",
            ),
            (
                "    … server CPU per lifecycle",
                f"{batched.server_cpu / batched.rate * 1000:.1f} ms",
                "",
                "",
            ),
        ]
    rows += [
        (
            "(3) control: p50 / p99 after a restart",
            f"{control.p50:.2f} / {control.p99:.2f} ms",
            "",
            "",
        ),
        (
            f"    p50 / p99 with {plan.backlog:,} unmatched waiting",
            f"{backlog.p50:.2f} / {backlog.p99:.2f} ms",
            "",
            "",
        ),
        ("    max with the backlog", f"{backlog.worst:.2f} ms", "", ""),
        ("    backlog 'waiting' after the restart", f"{load_seconds:.1f} s", "", ""),
        (
            "    submits meanwhile: slowest, failed",
            f"{probes.slowest * 1000:.0f} ms, {len(probes.refused)} of "
            f"{probes.accepted + len(probes.refused)}",
            "",
            "",
        ),
        (
            "    backlog vs control, p50",
            f"{p50_change:+.0%}",
            "within ±20 %",
            verdict(abs(p50_change) < 0.2),
        ),
        ("    backlog vs control, p99", f"{p99_change:+.0%}", "", ""),
        (
            "    backlog vs (1), p50 / p99",
            f"{backlog.p50 / idle.p50 - 1:+.0%} / {backlog.p99 / idle.p99 - 1:+.0%}",
            "",
            "",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [*machine(args.db, args.sqlite_synchronous, db_version, load_at_start), ""]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, workdir: Path) -> int:
    plan = QUICK if args.quick else FULL
    if args.backlog is not None:
        plan = dataclasses.replace(plan, backlog=args.backlog)
    load_at_start = os.getloadavg()[0]
    if load_at_start > 0.5:
        say(f"warning: load average {load_at_start:.2f}: other work will skew the figures")
    extra = {"RUNYARD_DATABASE_SQLITE_DRIVER": args.sqlite_driver} if args.db == "sqlite" else {}
    env = server_env(args.db, args.sqlite_synchronous, **extra)
    async with served(args, workdir, env) as run:
        server, db_url, db_version = run.server, run.db_url, run.db_version
        say(f"server up at {server.url} (pid {server.proc.pid if server.proc else '?'})")
        async with httpx.AsyncClient(
            base_url=server.url + "/api/v1",
            timeout=60,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        ) as client:
            team = await setup_team(client, WORKFLOWS)

            say(f"1/3 latency with one idle agent, {plan.latency_samples} samples")
            idle = await measure_latency(
                client, team, server, plan.latency_samples, plan.warmup, args.profile_latency
            )
            say(f"    p50 {idle.p50:.2f} ms, p99 {idle.p99:.2f} ms")

            say(f"2/3 throughput: {plan.throughput_tasks} tasks, {plan.throughput_agents} agents")
            flow = await measure_throughput(client, team, server, plan, args.profile)
            say(f"    {flow.rate:.0f} lifecycles/s")
            batched: Throughput | None = None
            if args.batch > 1:
                say(f"    again, {args.batch} runs per request")
                batched = await measure_throughput(
                    client, team, server, plan, args.profile_batch, batch=args.batch
                )
                say(f"    {batched.rate:.0f} lifecycles/s")

        # Control for (3): the same history and a restart, without the backlog.
        say("3/3 restarting the server: latency again without a backlog (control)")
        server.stop()
        server.start()
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", timeout=60) as client:
            control = await measure_latency(client, team, server, plan.latency_samples, plan.warmup)
        say(f"    p50 {control.p50:.2f} ms, p99 {control.p99:.2f} ms")
        say(f"    stopping the server to insert {plan.backlog:,} unmatched tasks")
        server.stop()
        took = await insert_backlog(db_url, team, plan.backlog, 8)
        say(f"    inserted in {took:.1f} s; restarting")
        server.start()
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", timeout=60) as client:
            started = time.monotonic()
            # Meanwhile, can clients still write? Submit one more unmatched task per probe.
            probes = Probes()

            async def loaded() -> bool:
                asked = time.perf_counter()
                try:
                    await run_task(client, team, "bench-unmatched-0")
                    probes.accepted += 1
                except RuntimeError as exc:
                    probes.refused.append(str(exc)[:120])
                except httpx.HTTPError as exc:
                    probes.refused.append(f"{type(exc).__name__}: {exc}"[:120])
                probes.slowest = max(probes.slowest, time.perf_counter() - asked)
                try:
                    waiting = await count_tasks(client, team, "waiting")
                except httpx.HTTPError as exc:  # a 500 here is a failed write too
                    probes.refused.append(f"listing: {type(exc).__name__}: {exc}"[:120])
                    return False
                return waiting >= plan.backlog + probes.accepted

            await wait_for(loaded, 300, "backlog marked waiting", pause=0.2)
            load_seconds = time.monotonic() - started
            say(f"    backlog waiting {load_seconds:.1f} s after the restart; measuring")
            for refusal in probes.refused:
                say(f"    a submit during the restart failed: {refusal}")
            backlog = await measure_latency(client, team, server, plan.latency_samples, plan.warmup)
            say(f"    p50 {backlog.p50:.2f} ms, p99 {backlog.p99:.2f} ms")
            if await count_tasks(client, team, "waiting") < plan.backlog + probes.accepted:
                say("warning: some unmatched tasks left 'waiting' during the run")
    print(
        report(
            args,
            plan,
            db_version,
            idle,
            flow,
            batched,
            control,
            backlog,
            probes,
            load_seconds,
            load_at_start,
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_options(parser)
    parser.add_argument(
        "--sqlite-driver",
        choices=("inline", "aiosqlite"),
        default="inline",
        help="RUNYARD_DATABASE_SQLITE_DRIVER for the server: statements on the event loop (the "
        "default) or on aiosqlite's thread (as before; for comparisons)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples and tasks")
    parser.add_argument(
        "--backlog",
        type=int,
        metavar="N",
        help="unmatched tasks for (3) (default 10,000; fewer for a faster look at (1)-(2))",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record the server with py-spy during the throughput run (collapsed stacks)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=50,
        metavar="N",
        help="(2) again with N runs per request (POST …/runs; default 50, 1 to skip)",
    )
    parser.add_argument(
        "--profile-batch",
        type=Path,
        metavar="FILE",
        help="record the server with py-spy during the batched throughput run",
    )
    parser.add_argument(
        "--profile-latency",
        type=Path,
        metavar="FILE",
        help="record the server with py-spy (--gil) during (1) into FILE (collapsed stacks)",
    )
    args = parser.parse_args()
    with work_folder("runyard-bench-", args.keep) as workdir:
        return asyncio.run(bench(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
