"""`kill -9` of the server mid-load, then a restart: every accepted task ends exactly once.

Real processes: the server, three simulated agents (`runyard agent --simulate`) and this test
as the client. Nothing is held only in the server's memory, so nothing may be lost with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from runyard.store.db import Database
from runyard.store.tables import Task, TaskAttempt
from tests.e2e.conftest import RUNYARD, free_port, runyard_env
from tests.e2e.stack import KILL_TIMINGS, sim_workflow

FAST = KILL_TIMINGS
WORKFLOW = sim_workflow("sim", max_retries=5)


class Processes:
    def __init__(self, tmp: Path, db_url: str) -> None:
        self.tmp = tmp
        self.env = runyard_env(db_url, **FAST)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: list[subprocess.Popen[bytes]] = []
        self.starts = 0

    def start_server(self) -> None:
        self.starts += 1
        log = (self.tmp / f"server-{self.starts}.log").open("wb")
        self.server = subprocess.Popen(
            [*RUNYARD, "server", "--port", str(self.port), "--data-dir", str(self.tmp)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not start")

    def start_agent(self, key: str, agent_id: str) -> None:
        log = (self.tmp / f"{agent_id}.log").open("wb")
        self.agents.append(
            subprocess.Popen(
                [
                    *RUNYARD,
                    "agent",
                    "--simulate",
                    "--gateway",
                    self.url,
                    "--agent-id",
                    agent_id,
                    "--capacity",
                    "2",
                    "--run-seconds",
                    "0.3",
                ],
                env={**self.env, "RUNYARD_AGENT_KEY": key},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def stop_all(self) -> None:
        for proc in [*self.agents, self.server]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def procs(tmp_path: Path, db_url: str) -> Iterator[Processes]:
    processes = Processes(tmp_path, db_url)
    yield processes
    processes.stop_all()


def _setup(url: str, tmp: Path, env: dict[str, str]) -> tuple[dict[str, str], str]:
    boot = subprocess.run(
        [
            *RUNYARD,
            "admin",
            "bootstrap",
            "--email",
            "ops@example.com",
            "--password",
            "ops-password",
            "--team-name",
            "Farm",
            "--json",
            "--data-dir",
            str(tmp),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    import json

    sk = json.loads(boot.stdout)["api_key"]
    team_id = json.loads(boot.stdout)["team_id"]
    tokens = httpx.post(
        f"{url}/api/v1/auth/login",
        json={"email_address": "ops@example.com", "user_password": "ops-password"},
    ).json()
    owner = {"Authorization": f"Bearer {tokens['access_token']}", "X-Team-ID": team_id}
    ak = httpx.post(
        f"{url}/api/v1/credentials", headers=owner, json={"kind": "agent", "display_name": "sims"}
    ).json()["raw_key"]
    imported = httpx.post(f"{url}/api/v1/workflows/import", headers=owner, json=WORKFLOW)
    assert imported.status_code == 200, imported.text
    return {"Authorization": f"Bearer {sk}"}, ak


async def _submit(url: str, headers: dict[str, str], count: int, accepted: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5) as client:
        for i in range(count):
            body: dict[str, Any] = {"parameters": {"simulate_seconds": 0.2 + (i % 3) * 0.2}}
            try:
                response = await client.post("/api/v1/r/workflows/slug/sim/run", json=body)
            except httpx.TransportError:
                await asyncio.sleep(0.05)  # the server is down: this one was never accepted
                continue
            if response.status_code == 202:
                accepted.append(response.json()["task_id"])


def test_kill_9_mid_load_then_restart_loses_nothing(
    procs: Processes, db_url: str, tmp_path: Path
) -> None:
    procs.start_server()
    sk_headers, ak = _setup(procs.url, tmp_path, procs.env)
    for i in range(3):
        procs.start_agent(ak, f"sim-{i}")

    accepted: list[str] = []

    async def load_then_crash() -> None:
        submitting = asyncio.create_task(_submit(procs.url, sk_headers, 60, accepted))
        while len(accepted) < 30:
            assert not submitting.done(), "submissions were refused before the crash"
            await asyncio.sleep(0.01)
        assert procs.server is not None
        os.kill(procs.server.pid, signal.SIGKILL)  # no shutdown, no flush, no goodbye
        procs.server.wait(timeout=10)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(procs.start_server)
        await submitting

    asyncio.run(load_then_crash())
    assert len(accepted) >= 30

    deadline = time.monotonic() + 90
    statuses: dict[str, str] = {}
    with httpx.Client(base_url=procs.url, headers=sk_headers, timeout=5) as client:
        while time.monotonic() < deadline:
            statuses = {
                t: client.get(f"/api/v1/r/tasks/{t}").json()["task_status"] for t in accepted
            }
            if all(s in ("completed", "failed", "cancelled") for s in statuses.values()):
                break
            time.sleep(0.5)
    assert set(statuses.values()) == {"completed"}, statuses

    async def attempts() -> dict[str, list[str | None]]:
        db = Database(db_url)
        try:
            async with db.read() as session:
                tasks = (await session.execute(select(Task.id))).scalars().all()
                rows = (await session.execute(select(TaskAttempt))).scalars().all()
        finally:
            await db.dispose()
        assert set(accepted) <= set(tasks)  # every accepted task is still there
        outcomes: dict[str, list[str | None]] = {}
        for row in rows:
            outcomes.setdefault(row.task_id, []).append(row.outcome)
        return outcomes

    outcomes = asyncio.run(attempts())
    for task_id in accepted:
        assert outcomes[task_id].count("completed") == 1, outcomes[task_id]
