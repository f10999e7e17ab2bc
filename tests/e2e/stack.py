"""A running Runyard for SDK and CLI tests: a server process, a simulated agent process, an
owner (session), an integration key and a ``sim`` workflow whose parameters steer the agent.

Module-scoped (one stack per test module and database) to keep the suite fast; tests use
their own tasks and never depend on the team being empty.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from runyard.client import Runyard
from runyard.client._core import ROUTES, Route
from tests.e2e.conftest import RUNYARD, free_port, runyard_env

FAST = {
    "RUNYARD_SCHEDULER_HEARTBEAT_INTERVAL_SECONDS": "0.5",
    "RUNYARD_SCHEDULER_REAPER_INTERVAL_SECONDS": "0.2",
    "RUNYARD_SCHEDULER_SWEEP_INTERVAL_SECONDS": "0.5",
    "RUNYARD_SCHEDULER_PROGRESS_INTERVAL_SECONDS": "0.05",
    "RUNYARD_WEBHOOKS_ALLOW_HTTP_LOOPBACK": "true",
    # Small parts, so a multipart upload of a few MiB has several.
    "RUNYARD_STORAGE_MULTIPART_PART_MB": "5",
}

SIM_GRAPH: dict[str, Any] = {
    "1": {"class_type": "Noop", "inputs": {"mode": "succeed", "seconds": 0.0, "text": ""}}
}
SIM_PARAMETERS: list[dict[str, Any]] = [
    {"key": "simulate", "type": "string", "node_id": "1", "field": "mode"},
    {"key": "simulate_seconds", "type": "number", "node_id": "1", "field": "seconds"},
    {"key": "prompt", "type": "string", "node_id": "1", "field": "text"},
]
#: ``sim`` plus an image input: a ``file`` parameter ``image`` (LoadImage.image). The
#: simulated agent downloads it and logs ``input image: N bytes``.
SIM_IMAGE_GRAPH: dict[str, Any] = {
    **SIM_GRAPH,
    "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
}
SIM_IMAGE_PARAMETERS: list[dict[str, Any]] = [
    *SIM_PARAMETERS,
    {"key": "image", "type": "file", "node_id": "2", "field": "image"},
]
#: Timings for tests that kill servers and agents: leases and ACK deadlines of seconds, so a
#: lost attempt comes back quickly, and short retry backoffs.
KILL_TIMINGS = {
    "RUNYARD_SCHEDULER_HEARTBEAT_INTERVAL_SECONDS": "0.2",
    "RUNYARD_SCHEDULER_LEASE_TTL_SECONDS": "2",
    "RUNYARD_SCHEDULER_ACK_TIMEOUT_SECONDS": "2",
    "RUNYARD_SCHEDULER_REAPER_INTERVAL_SECONDS": "0.2",
    "RUNYARD_SCHEDULER_SWEEP_INTERVAL_SECONDS": "0.5",
    "RUNYARD_SCHEDULER_RETRY_BACKOFF_BASE_SECONDS": "0.1",
    "RUNYARD_SCHEDULER_RETRY_BACKOFF_CAP_SECONDS": "0.5",
}


def sim_workflow(slug: str, max_retries: int) -> dict[str, Any]:
    """The ``sim`` graph and parameters as an import body (the simulated agent runs it)."""
    return {
        "workflow_slug": slug,
        "display_name": slug.capitalize(),
        "workflow_json": SIM_GRAPH,
        "parameters": SIM_PARAMETERS,
        "max_retries": max_retries,
    }


EMAIL = "owner@example.com"
PASSWORD = "owner-password"


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not become ready:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclass
class Stack:
    url: str
    sk: str
    team_id: str
    workdir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def session(self, **options: Any) -> Runyard:
        return Runyard(self.url, email=EMAIL, password=PASSWORD, **options)

    def client(self, **options: Any) -> Runyard:
        return Runyard(self.url, api_key=self.sk, **options)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))


def start_server(env: dict[str, str], workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """``runyard server`` on a free port (log: ``workdir/server.log``), ready, with the owner
    (``EMAIL``) registered; returns its URL and process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*RUNYARD, "server", "--port", str(port), "--data-dir", str(workdir / "data")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(url, proc, log)
        registered = httpx.post(
            f"{url}/api/v1/auth/register",
            json={"email_address": EMAIL, "user_password": PASSWORD},
        )
        assert registered.status_code == 200, registered.text
    except BaseException:
        stop(proc)
        raise
    return url, proc


def start_stack(db_url: str, workdir: Path) -> Iterator[Stack]:
    env = runyard_env(db_url, **FAST)
    url, server = start_server(env, workdir)
    stack = Stack(url, "", "", workdir, env, [server])
    try:
        with stack.session() as owner:
            owner.login()
            assert owner.team_id is not None
            stack.team_id = owner.team_id
            stack.sk = owner.create_key("e2e").raw_key
            agent_key = owner.create_key("e2e agent", kind="agent").raw_key
            owner.import_workflow(
                SIM_GRAPH,
                slug="sim",
                parameters=SIM_PARAMETERS,
                display_name="Simulated",
            )
            owner.import_workflow(
                SIM_IMAGE_GRAPH,
                slug="sim-img",
                parameters=SIM_IMAGE_PARAMETERS,
                display_name="Simulated img2img",
            )
        agent_log = workdir / "agent.log"
        with agent_log.open("wb") as out:
            stack.procs.append(
                subprocess.Popen(
                    [
                        *RUNYARD,
                        "agent",
                        "--simulate",
                        "--gateway",
                        url,
                        "--agent-id",
                        "sim-agent",
                        "--capacity",
                        "8",
                        "--grace",
                        "1",
                    ],
                    env={**env, "RUNYARD_AGENT_KEY": agent_key},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        with stack.client() as client:
            deadline = time.monotonic() + 20
            while not any(a.agent_status != "offline" for a in client.list_agents()):
                assert time.monotonic() < deadline, stack.logs()
                time.sleep(0.05)
        yield stack
    finally:
        for proc in reversed(stack.procs):
            stop(proc)


class RecordingTransport(httpx.BaseTransport):
    """Passes requests through and remembers (method, path) of each."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def route_of(method: str, path: str) -> Route | None:
    """The SDK route a request went to (``None`` for anything else, e.g. a download link)."""
    import re

    for route in ROUTES:
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape("/api/v1" + route.template))
        if route.method == method and re.fullmatch(pattern, path):
            return route
    return None
