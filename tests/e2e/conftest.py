"""Real processes: the ``runyard`` command started as users start it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

RUNYARD = [sys.executable, "-m", "runyard.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def runyard_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env.update(
        RUNYARD_DATABASE_URL=db_url,
        RUNYARD_LOGGER_FORMAT="json",
        RUNYARD_AUTH_ARGON2_TIME_COST="1",
        RUNYARD_AUTH_ARGON2_MEMORY_COST_KIB="64",
        RUNYARD_AUTH_ARGON2_PARALLELISM="1",
        **extra,
    )
    return env


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*RUNYARD, "server", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            env=runyard_env(db_url),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not become ready:\n{log.read_text()}")
        time.sleep(0.1)
    server = ServerProcess(proc, url, log)
    yield server
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
