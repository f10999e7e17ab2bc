"""Secrets at rest with real processes, as operators run them: ``runyard server`` keeps its data
dir, database and key file private under any umask and tightens loose modes with a warning; a
server without its database's secret refuses to start with one line; ``runyard admin
rotate-secret`` refuses while a server runs and then rotates."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import RUNYARD, free_port, runyard_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


@contextlib.contextmanager
def running_server(env: dict[str, str], data: Path, log: Path) -> Iterator[str]:
    """``runyard server`` on a free port until it answers ``/readyz``; stopped on the way out,
    also when the test fails."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out, umask(0):  # the child inherits the umask
        proc = subprocess.Popen(
            [*RUNYARD, "server", "--port", str(port), "--data-dir", str(data)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not become ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def events(log: Path) -> list[dict[str, object]]:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUNYARD, *args], env=env, capture_output=True, text=True, timeout=60)


def test_server_keeps_its_files_private_and_tightens_loose_modes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = runyard_env("")  # the default: SQLite in the data dir
    del env["RUNYARD_DATABASE_URL"]
    database = data / "runyard.db"
    with running_server(env, data, tmp_path / "first.log"):
        assert mode(data) == 0o700
        assert mode(data / "secret.key") == 0o600
        for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
            assert mode(path) == 0o600, path
    secret = (data / "secret.key").read_text().strip()

    for path in (data, database, data / "secret.key"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    log = tmp_path / "second.log"
    with running_server(env, data, log):
        pass
    fixed = {str(e["event"]): e for e in events(log) if str(e["event"]).endswith("_fixed")}
    assert fixed["data_dir_permissions_fixed"]["was"] == "0755"
    assert fixed["data_dir_permissions_fixed"]["now"] == "0700"
    assert fixed["database_permissions_fixed"]["path"] == str(database)
    assert fixed["database_permissions_fixed"]["now"] == "0600"
    assert fixed["secret_key_file_permissions_fixed"]["now"] == "0600"
    assert all(e["level"] == "warning" for e in fixed.values())
    assert (mode(data), mode(database), mode(data / "secret.key")) == (0o700, 0o600, 0o600)
    assert secret not in log.read_text()


def test_a_server_without_the_databases_secret_refuses_and_rotation_waits_for_servers(
    db_url: str, tmp_path: Path
) -> None:
    env = runyard_env(db_url)
    first = tmp_path / "first"
    owner = ["--email", "o@example.com", "--password", "p" * 12, "--team-name", "T"]
    boot = run(["admin", "bootstrap", *owner, "--json", "--data-dir", str(first)], env)
    assert boot.returncode == 0, boot.stderr
    key_file = first / "secret.key"
    assert mode(key_file) == 0o600

    # Another machine without the key file: one line naming the settings, exit 2.
    refused = run(["server", "--port", str(free_port()), "--data-dir", str(tmp_path / "b")], env)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no signing secret at ")
    assert "RUNYARD_SERVER_SECRET_KEY_FILE" in lines[-1]
    assert "Traceback" not in refused.stderr
    wrong = run(
        ["server", "--port", str(free_port()), "--data-dir", str(tmp_path / "b")],
        {**env, "RUNYARD_SERVER_SECRET_KEY": "x" * 64},
    )
    assert wrong.returncode == 2
    assert "is not this database's" in wrong.stderr

    # Given the same key file, it starts; rotation waits until it is stopped.
    shared = {**env, "RUNYARD_SERVER_SECRET_KEY_FILE": str(key_file)}
    old = key_file.read_text()
    with running_server(shared, tmp_path / "b", tmp_path / "server.log"):
        busy = run(["admin", "rotate-secret", "--data-dir", str(first)], env)
        assert busy.returncode == 1
        assert "stop every server" in busy.stderr
        assert key_file.read_text() == old
    rotated = run(["admin", "rotate-secret", "--data-dir", str(first)], env)
    assert rotated.returncode == 0, rotated.stderr
    assert f"new signing secret written to {key_file}" in rotated.stdout
    assert key_file.read_text() != old
    assert key_file.read_text().strip() not in rotated.stdout + rotated.stderr
    assert mode(key_file) == 0o600
    with running_server(shared, tmp_path / "b", tmp_path / "again.log"):
        pass
