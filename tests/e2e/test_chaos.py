"""Chaos while a few hundred tasks run: every accepted task ends ``completed``, exactly once.

Real processes: a server (``runyard server``) and simulated agents (``runyard agent
--simulate``), on SQLite and PostgreSQL. While 300 tasks (submitted 100 at a time with
``POST …/runs``) run, in this order, each once the farm has made some progress:

1. ``kill -9`` an agent and start it again under the same agent id (a machine that rebooted);
2. ``kill -9`` the server and start it again on the same database and port; half the tasks are
   submitted only after that;
3. ``kill -9`` another agent and start a new one in its place (a machine replaced);
4. ``SIGTERM`` a third agent (its running work may finish within its grace, the rest is handed
   back) and start a new one.

Then every accepted task must be ``completed`` within a bound (else: lost or stuck, listed
with its status and error), with exactly one ``completed`` event and exactly one attempt whose
outcome is ``completed``. Every process the test starts is stopped, also when it fails, and
none is left running afterwards.

``bench/chaos.py`` runs the same with more tasks and more rounds of kills.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import select

from runyard.store.db import Database
from runyard.store.tables import Task, TaskAttempt, TaskEvent
from tests.e2e.conftest import RUNYARD, free_port, runyard_env
from tests.e2e.stack import KILL_TIMINGS, sim_workflow

FAST = {**KILL_TIMINGS, "RUNYARD_SCHEDULER_PROGRESS_INTERVAL_SECONDS": "0.2"}
# Each kill may cost a running attempt; no task may fail for want of retries here.
WORKFLOW = sim_workflow("chaos", max_retries=10)
TERMINAL = {"completed", "failed", "cancelled"}
AGENTS = 4
CAPACITY = 4


class Farm:
    """The processes of one test: one server (restartable on its port) and agents."""

    def __init__(self, tmp: Path, db_url: str) -> None:
        self.tmp = tmp
        self.env = runyard_env(db_url, **FAST)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []
        self.agent_key = ""
        self.logs = 0

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.logs += 1
        with (self.tmp / f"{self.logs:02d}-{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                [*RUNYARD, *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append(proc)
        return proc

    def start_server(self) -> None:
        self.server = self._spawn(
            "server",
            ["server", "--port", str(self.port), "--data-dir", str(self.tmp / "data")],
            self.env,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.server.poll() is None, f"server exited:\n{self.all_logs()}"
            assert time.monotonic() < deadline, f"server not ready in 60 s:\n{self.all_logs()}"
            time.sleep(0.05)

    def start_agent(self, agent_id: str) -> None:
        args = ["agent", "--simulate", "--gateway", self.url, "--agent-id", agent_id]
        args += ["--capacity", str(CAPACITY), "--run-seconds", "0.3", "--grace", "1"]
        self.agents[agent_id] = self._spawn(
            agent_id, args, {**self.env, "RUNYARD_AGENT_KEY": self.agent_key}
        )

    def kill_server(self) -> None:
        assert self.server is not None
        os.kill(self.server.pid, signal.SIGKILL)
        self.server.wait(timeout=10)

    def kill_agent(self, agent_id: str, sig: signal.Signals) -> subprocess.Popen[bytes]:
        proc = self.agents.pop(agent_id)
        proc.send_signal(sig)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    def leftovers(self) -> list[str]:
        """Processes still running that this test started (children included)."""
        mine = {p.pid for p in self.started}
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] in mine or (
                "runyard" in cmdline and (self.url in cmdline or str(self.tmp) in cmdline)
            ):
                try:
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found.append(f"{proc.info['pid']}: {cmdline}")
                except psutil.NoSuchProcess:
                    pass
        return found

    def all_logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


@pytest.fixture
def farm(tmp_path: Path, db_url: str) -> Iterator[Farm]:
    processes = Farm(tmp_path, db_url)
    try:
        yield processes
    finally:
        processes.stop_all()
        left = processes.leftovers()
        assert not left, f"processes left running: {left}"


def _setup(farm: Farm) -> dict[str, str]:
    """An owner, an sk- for the tasks, an ak- for the agents and the workflow."""
    account = {"email_address": "chaos@example.com", "user_password": "chaos-password"}
    with httpx.Client(base_url=f"{farm.url}/api/v1", timeout=30) as c:
        assert c.post("/auth/register", json=account).status_code == 200
        jwt = c.post("/auth/login", json=account).json()["access_token"]
        me = c.get("/users/me", headers={"Authorization": f"Bearer {jwt}"}).json()
        owner = {"Authorization": f"Bearer {jwt}", "X-Team-ID": me["team_list"][0]["id"]}
        keys = {
            kind: c.post(
                "/credentials", headers=owner, json={"kind": kind, "display_name": f"chaos {kind}"}
            ).json()["raw_key"]
            for kind in ("integration", "agent")
        }
        imported = c.post("/workflows/import", headers=owner, json=WORKFLOW)
        assert imported.status_code == 200, imported.text
    farm.agent_key = keys["agent"]
    return {"Authorization": f"Bearer {keys['integration']}"}


def _submit(farm: Farm, headers: dict[str, str], count: int, offset: int) -> list[str]:
    """``count`` runs, 100 per request; every request must be accepted whole."""
    accepted: list[str] = []
    with httpx.Client(base_url=farm.url, headers=headers, timeout=60) as c:
        for start in range(0, count, 100):
            runs = [
                {"parameters": {"simulate_seconds": 0.2 + ((offset + i) % 3) * 0.2}}
                for i in range(start, min(count, start + 100))
            ]
            response = c.post("/api/v1/r/workflows/slug/chaos/runs", json={"runs": runs})
            assert response.status_code == 202, response.text
            accepted += response.json()["task_ids"]
    return accepted


def _count(farm: Farm, headers: dict[str, str], status: str) -> int:
    response = httpx.get(
        f"{farm.url}/api/v1/r/tasks",
        params={"status": status, "per_page": 1},
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    total: int = response.json()["page_meta"]["total_count"]
    return total


def _wait_for(what: str, farm: Farm, ready: Callable[[], bool], seconds: float = 60) -> None:
    """A bound for "stuck", not a timing: the farm normally gets there in a few seconds."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, (
            f"stuck: not {what} after {seconds} s\n{farm.all_logs()}"
        )
        time.sleep(0.2)


def _agents_online(farm: Farm, headers: dict[str, str], count: int) -> bool:
    response = httpx.get(f"{farm.url}/api/v1/r/agents", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    agents: list[dict[str, Any]] = response.json()["agent_list"]
    return sum(1 for a in agents if a["agent_status"] != "offline") >= count


History = tuple[dict[str, Task], Counter[str], Counter[str], Counter[str | None]]


def _history(db_url: str) -> History:
    """Every task; per task the number of ``completed`` events and of attempts that
    completed; and how many attempts ended in each way."""

    async def read() -> History:
        db = Database(db_url)
        try:
            async with db.read() as session:
                tasks = {t.id: t for t in (await session.execute(select(Task))).scalars()}
                events = Counter(
                    (
                        await session.execute(
                            select(TaskEvent.task_id).where(TaskEvent.event_type == "completed")
                        )
                    ).scalars()
                )
                rows = (await session.execute(select(TaskAttempt))).scalars().all()
        finally:
            await db.dispose()
        attempts = Counter(a.task_id for a in rows if a.outcome == "completed")
        return tasks, events, attempts, Counter(a.outcome for a in rows)

    return asyncio.run(read())


def test_kills_under_load_lose_nothing_and_complete_nothing_twice(farm: Farm, db_url: str) -> None:
    farm.start_server()
    sk = _setup(farm)
    for i in range(AGENTS):
        farm.start_agent(f"chaos-{i}")
    _wait_for("every agent online", farm, lambda: _agents_online(farm, sk, AGENTS))

    def completed_at_least(n: int) -> Callable[[], bool]:
        return lambda: _count(farm, sk, "completed") >= n

    accepted = _submit(farm, sk, 150, 0)

    # 1. An agent dies with attempts in hand and comes back under the same id.
    _wait_for("30 completed", farm, completed_at_least(30))
    farm.kill_agent("chaos-0", signal.SIGKILL).wait(timeout=10)
    farm.start_agent("chaos-0")

    # 2. The server dies mid-load; it comes back on the same database and port.
    _wait_for("60 completed", farm, completed_at_least(60))
    farm.kill_server()
    farm.start_server()
    accepted += _submit(farm, sk, 150, 150)

    # 3. Another agent dies; a new machine takes its place.
    _wait_for("180 completed", farm, completed_at_least(180))
    farm.kill_agent("chaos-1", signal.SIGKILL).wait(timeout=10)
    farm.start_agent("chaos-4")

    # 4. A third agent is asked to stop (as systemd does); a new one takes its place.
    _wait_for("200 completed", farm, completed_at_least(200))
    stopped = farm.kill_agent("chaos-2", signal.SIGTERM)
    farm.start_agent("chaos-5")
    assert stopped.wait(timeout=30) == 0, farm.all_logs()

    assert len(accepted) == len(set(accepted)) == 300

    def all_terminal() -> bool:
        return sum(_count(farm, sk, s) for s in TERMINAL) >= len(accepted)

    _wait_for("every task terminal", farm, all_terminal, seconds=120)

    tasks, completed_events, completed_attempts, outcomes = _history(db_url)
    print(f"\n{len(tasks)} tasks; attempts by outcome: {dict(outcomes)}")
    lost = [t for t in accepted if t not in tasks]
    assert not lost, f"{len(lost)} accepted tasks are gone: {lost[:5]}"
    not_completed = {
        t: (tasks[t].task_status, tasks[t].task_error)
        for t in accepted
        if tasks[t].task_status != "completed"
    }
    assert not not_completed, f"{len(not_completed)} tasks did not complete: {not_completed}"
    twice = {
        t: (completed_events[t], completed_attempts[t])
        for t in accepted
        if completed_events[t] != 1 or completed_attempts[t] != 1
    }
    assert not twice, f"tasks not completed exactly once (events, attempts): {twice}"
