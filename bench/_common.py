"""What the benchmarks share: the server process, databases, the team, a protocol-level agent,
timing and the report.

Imported by ``dispatch.py`` and ``events.py`` (run as scripts: ``bench/`` is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench-password-1"
#: A one-node API-format graph: rendering stays out of the figures.
NOOP_GRAPH = {"1": {"class_type": "Noop", "inputs": {}}}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the server process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(db: str, sqlite_synchronous: str, **extra: str) -> dict[str, str]:
    """The server's environment: quiet logs, cheap password hashing (only the setup logins
    use it), and ``synchronous`` on SQLite."""
    env = {
        "RUNYARD_LOGGER_LEVEL": "warn",
        "RUNYARD_LOGGER_FORMAT": "json",
        "RUNYARD_AUTH_ARGON2_TIME_COST": "1",
        "RUNYARD_AUTH_ARGON2_MEMORY_COST_KIB": "64",
        "RUNYARD_AUTH_ARGON2_PARALLELISM": "1",
        **extra,
    }
    if db == "sqlite":
        env["RUNYARD_DATABASE_SQLITE_SYNCHRONOUS"] = sqlite_synchronous
    return env


class ServerProcess:
    """``python -m runyard.cli.main server`` on a free port, as an operator starts it."""

    def __init__(self, db_url: str, data_dir: Path, env: dict[str, str]) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.env = env
        self.log_path = data_dir.parent / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
        env.update(self.env, RUNYARD_DATABASE_URL=self.db_url)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runyard.cli.main",
                    "server",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not become ready; log:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        if self.proc is None:
            return 0.0
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/api/v1/agent/ws"


# -- databases ---------------------------------------------------------------------------------


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """``--db``, ``--pg-url``, ``--sqlite-synchronous`` and ``--keep``: read by :func:`served`
    and :func:`work_folder`."""
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
        help="an existing PostgreSQL database to connect to; the benchmark creates (and drops) "
        "its own database next to it",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="RUNYARD_DATABASE_SQLITE_SYNCHRONOUS for the server (default: the server's FULL)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log)")


async def create_pg_database(admin_url: str) -> tuple[str, str, str]:
    """A fresh database next to ``admin_url``'s → (its name, its URL, the server version)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"runyard_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return name, url, version


async def drop_pg_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Served:
    server: ServerProcess
    #: The server's database (SQLite file or a fresh PostgreSQL database) and its version.
    db_url: str
    db_version: str


@contextlib.asynccontextmanager
async def served(
    args: argparse.Namespace, workdir: Path, env: dict[str, str]
) -> AsyncIterator[Served]:
    """A started server on a database of its own (``args`` from :func:`add_database_options`);
    on the way out the server is stopped, its log tail said on an error, and a PostgreSQL
    database dropped."""
    pg_name = ""
    if args.db == "postgresql":
        pg_name, db_url, db_version = await create_pg_database(args.pg_url)
        say(f"created database {pg_name}")
    else:
        db_url = f"sqlite:///{workdir / 'data' / 'runyard.db'}"
        db_version = sqlite3.sqlite_version
    server = ServerProcess(db_url, workdir / "data", env)
    try:
        server.start()
        yield Served(server, db_url, db_version)
    except BaseException:
        say(f"server log tail:\n{server.log_tail()}")
        raise
    finally:
        server.stop()
        if pg_name:
            await drop_pg_database(args.pg_url, pg_name)
            say(f"dropped database {pg_name}")


@contextlib.contextmanager
def work_folder(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder for the server's data and log, removed afterwards unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# -- the team, over HTTP -----------------------------------------------------------------------


async def register_owner(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A new user with their personal team → (team id, owner headers: JWT + X-Team-ID)."""
    email = f"bench-{secrets.token_hex(4)}@example.com"
    creds = {"email_address": email, "user_password": PASSWORD}
    (await client.post("/auth/register", json=creds)).raise_for_status()
    login = await client.post("/auth/login", json=creds)
    login.raise_for_status()
    jwt = {"Authorization": f"Bearer {login.json()['access_token']}"}
    me = await client.get("/users/me", headers=jwt)
    me.raise_for_status()
    team_id: str = me.json()["team_list"][0]["id"]
    return team_id, {**jwt, "X-Team-ID": team_id}


async def create_key(client: httpx.AsyncClient, owner: dict[str, str], kind: str) -> dict[str, str]:
    """A new credential of the owner's team (its ``id`` and ``raw_key`` among others)."""
    response = await client.post(
        "/credentials", headers=owner, json={"kind": kind, "display_name": f"bench {kind}"}
    )
    response.raise_for_status()
    body: dict[str, str] = response.json()
    return body


async def import_workflow(
    client: httpx.AsyncClient, owner: dict[str, str], slug: str, labels: list[str]
) -> str:
    """A one-node workflow needing ``labels``; returns its id."""
    body = {
        "workflow_slug": slug,
        "display_name": slug,
        "workflow_json": NOOP_GRAPH,
        "required_labels": labels,
    }
    response = await client.post("/workflows/import", headers=owner, json=body)
    response.raise_for_status()
    workflow_id: str = response.json()["id"]
    return workflow_id


@dataclass
class Team:
    team_id: str
    #: The owner's JWT and ``X-Team-ID``.
    owner: dict[str, str]
    #: The integration key's ``Authorization`` header (the ``/r/…`` runtime API).
    runtime: dict[str, str]
    agent_key: str
    integration_key_id: str
    #: Workflow ids by slug.
    workflows: dict[str, str] = field(default_factory=dict)


async def setup_team(client: httpx.AsyncClient, workflows: dict[str, list[str]]) -> Team:
    """A new owner and team, an integration key and an agent key, and one-node ``workflows``
    (slug → required labels)."""
    team_id, owner = await register_owner(client)
    sk = await create_key(client, owner, "integration")
    ak = await create_key(client, owner, "agent")
    team = Team(
        team_id, owner, {"Authorization": f"Bearer {sk['raw_key']}"}, ak["raw_key"], sk["id"]
    )
    for slug, labels in workflows.items():
        team.workflows[slug] = await import_workflow(client, owner, slug, labels)
    return team


async def run_task(client: httpx.AsyncClient, team: Team, slug: str) -> str:
    response = await client.post(f"/r/workflows/slug/{slug}/run", headers=team.runtime, json={})
    if response.status_code != 202:
        raise RuntimeError(f"run refused: {response.status_code} {response.text}")
    task_id: str = response.json()["task_id"]
    return task_id


async def wait_for(
    probe: Callable[[], Awaitable[bool]], timeout: float, what: str, pause: float = 0.02
) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await probe():  # noqa: ASYNC110 (polls the server over HTTP)
                await asyncio.sleep(pause)
    except TimeoutError:
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}") from None


# -- a protocol-level agent --------------------------------------------------------------------


class ProtocolAgent:
    """Speaks protocol v1 frame by frame (raw JSON), with no runner behind it: heartbeats every
    interval, ``ack``s every dispatch and notes when its frame arrived. With ``hold`` it keeps
    the task running (``running``: task id → attempt) for the caller to finish; without, it
    sends ``complete`` at once and calls ``on_complete``."""

    def __init__(
        self,
        ws_url: str,
        key: str,
        agent_id: str,
        labels: list[str],
        capacity: int,
        *,
        hold: bool = False,
        pools: list[str] | None = None,
        on_complete: Callable[[], None] | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.key = key
        self.agent_id = agent_id
        self.labels = labels
        self.capacity = capacity
        self.hold = hold
        self.pools = pools
        self.on_complete = on_complete
        self.running: dict[str, int] = {}
        self.arrivals: dict[str, float] = {}
        self._arrived = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        ws = await connect(self.ws_url, additional_headers={"Authorization": f"Bearer {self.key}"})
        hello = {"type": "hello", "protocol": 1, "agent_id": self.agent_id, "labels": self.labels}
        hello["capacity"] = self.capacity
        if self.pools is not None:
            hello["pools"] = self.pools
        hello |= {"agent_version": "bench", "status": "idle"}
        await ws.send(json.dumps(hello))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        self._ws = ws
        self._tasks = [
            asyncio.create_task(self._read(ws)),
            asyncio.create_task(self._beat(ws, float(welcome["heartbeat_interval"]))),
        ]

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                arrived = time.perf_counter()
                frame = json.loads(raw)
                if frame["type"] != "dispatch":
                    continue
                task_id, attempt = frame["task_id"], frame["attempt"]
                self.arrivals[task_id] = arrived
                self._arrived.set()
                ref = {"task_id": task_id, "attempt": attempt}
                if self.hold:
                    await ws.send(json.dumps({"type": "ack", **ref}))
                    # Only once acked: progress frames for it may follow from now on.
                    self.running[task_id] = attempt
                    continue
                self.running[task_id] = attempt
                await ws.send(json.dumps({"type": "ack", **ref}))
                del self.running[task_id]
                await ws.send(json.dumps({"type": "complete", **ref, "output": {}}))
                if self.on_complete is not None:
                    self.on_complete()

    async def _beat(self, ws: ClientConnection, interval: float) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(interval)
                running = [{"task_id": t, "attempt": a} for t, a in self.running.items()]
                await ws.send(json.dumps({"type": "heartbeat", "running": running}))

    async def send(self, frame: dict[str, object]) -> None:
        assert self._ws is not None, "start() first"
        await self._ws.send(json.dumps(frame))

    async def dispatched(self, task_id: str, timeout: float = 30.0) -> float:
        """When the dispatch frame of this task arrived (``perf_counter`` seconds)."""
        async with asyncio.timeout(timeout):
            while task_id not in self.arrivals:
                self._arrived.clear()
                await self._arrived.wait()
        return self.arrivals.pop(task_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()


# -- figures and the report --------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine(
    db: str, sqlite_synchronous: str, db_version: str, load_at_start: float, python_note: str = ""
) -> list[str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    database = f"{db} {db_version}"
    if db == "sqlite":
        database += f" (WAL, synchronous={sqlite_synchronous})"
    python = f"{platform.python_version()} ({platform.python_implementation()})"
    return [
        f"date     {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine  {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}",
        f"python   {python}{'; ' + python_note if python_note else ''}",
        f"database {database}",
        f"load     {load_at_start:.2f} at start, {os.getloadavg()[0]:.2f} at the end (1-min avg;"
        " other processes on the machine skew every figure)",
    ]
