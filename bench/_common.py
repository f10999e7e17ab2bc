"""What the benchmarks share: the server process, databases, the team, timing and the report.

Imported by ``dispatch.py`` and ``events.py`` (run as scripts: ``bench/`` is on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

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


async def run_task(client: httpx.AsyncClient, runtime: dict[str, str], slug: str) -> str:
    response = await client.post(f"/r/workflows/slug/{slug}/run", headers=runtime, json={})
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
