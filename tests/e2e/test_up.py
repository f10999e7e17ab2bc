"""``runyard up`` as a process: the README's tour against the fake ComfyUI; first start
bootstraps (bootstrap.json, mode 0600) and runs a local agent; SIGTERM stops both; a second
start reuses the same credentials; a stale bootstrap.json is renewed."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from runyard.client import Runyard
from tests.e2e.conftest import RUNYARD, free_port
from tests.e2e.stack import SIM_GRAPH, SIM_PARAMETERS, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    env.update(
        RUNYARD_LOGGER_FORMAT="json",
        RUNYARD_AUTH_ARGON2_TIME_COST="1",
        RUNYARD_AUTH_ARGON2_MEMORY_COST_KIB="64",
        RUNYARD_AUTH_ARGON2_PARALLELISM="1",
        RUNYARD_SCHEDULER_HEARTBEAT_INTERVAL_SECONDS="0.5",
        COLUMNS="200",
    )
    return env


def _start(
    data: Path | None, port: int, log: Path, *extra: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    where = ["--data-dir", str(data)] if data is not None else []
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*RUNYARD, "up", *where, "--port", str(port), *extra],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    wait_ready(f"http://127.0.0.1:{port}", proc, log)
    return proc


@pytest.fixture
def fake_comfyui(tmp_path: Path) -> Iterator[str]:
    """``runyard dev fake-comfyui`` (what the README starts for a try without a GPU)."""
    port = free_port()
    log = tmp_path / "fake-comfyui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*RUNYARD, "dev", "fake-comfyui", "--port", str(port), "--step-delay", "0.01"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/system_stats", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield url
    stop(proc)


def test_the_readme_tour_against_the_fake_comfyui(tmp_path: Path, fake_comfyui: str) -> None:
    """The README, in a fresh folder: `runyard up --with-agent` on the fake ComfyUI, then login
    from bootstrap.json, import the example, `run --wait --out` gives a PNG on disk; and the
    SDK example script does the same."""
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    port = free_port()
    log = tmp_path / "up.log"
    proc = _start(None, port, log, "--with-agent", "--comfyui-url", fake_comfyui, cwd=tmp_path)
    try:
        env = {**_env(), "XDG_CONFIG_HOME": str(tmp_path / "config")}

        def runyard(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*RUNYARD, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
            )

        login = runyard("login", "--bootstrap", "runyard-data/bootstrap.json")
        assert login.returncode == 0, login.stderr
        imported = runyard(
            "workflows",
            "import",
            "examples/text-to-image.json",
            "--slug",
            "text-to-image",
            "--params",
            "examples/text-to-image.params.json",
        )
        assert imported.returncode == 0, imported.stderr
        ran = runyard("run", "text-to-image", "-p", "prompt=a red fox", "--wait", "--out", "out/")
        assert ran.returncode == 0, ran.stderr + log.read_text()
        assert "completed" in ran.stdout
        images = list((tmp_path / "out").iterdir())
        assert [p.suffix for p in images] == [".png"]
        assert images[0].read_bytes().startswith(b"\x89PNG")
        script = subprocess.run(
            [sys.executable, "examples/sdk_run.py"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert script.returncode == 0, script.stderr
        assert "completed; 1 file(s)" in script.stdout
    finally:
        stop(proc)
    assert "Agent        ComfyUI at " + fake_comfyui in log.read_text()


def test_up_with_a_simulated_agent_stops_both_and_reuses_credentials(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    first_log = tmp_path / "first.log"
    proc = _start(data, port, first_log, "--with-agent", "--simulate", "--run-seconds", "0.1")
    try:
        boot_file = data / "bootstrap.json"
        assert stat.S_IMODE(boot_file.stat().st_mode) == 0o600
        boot = json.loads(boot_file.read_text())
        assert set(boot) == {"email", "password", "team_id", "api_key", "agent_key", "server_url"}
        assert boot["api_key"].startswith("sk-") and boot["agent_key"].startswith("ak-")
        assert boot["server_url"] == url
        assert (data / "runyard.db").exists()
        with Runyard(url, email=boot["email"], password=boot["password"]) as owner:
            owner.import_workflow(SIM_GRAPH, slug="sim", parameters=SIM_PARAMETERS)
            assert owner.team_id == boot["team_id"]
        with Runyard(url, api_key=boot["api_key"]) as client:
            assert client.run("sim", {"prompt": "x"}, wait=True, timeout=30).ok

        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the local agent process is missing"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, "the local agent outlived runyard up"
    finally:
        stop(proc)
    first = first_log.read_text()
    assert "Runyard is up" in first and boot["password"] in first  # shown on first start
    assert f"Dashboard    http://127.0.0.1:{port}/" in first
    assert "not built yet" not in first
    assert f"runyard login --bootstrap {data}/bootstrap.json" in first
    assert '"event": "agent_stopped"' in first

    second_log = tmp_path / "second.log"
    proc = _start(data, port, second_log)
    try:
        assert json.loads((data / "bootstrap.json").read_text()) == boot
        with Runyard(url, api_key=boot["api_key"]) as client:
            assert [w.workflow_slug for w in client.list_workflows()] == ["sim"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
    second = second_log.read_text()
    assert "Credentials" in second and boot["password"] not in second
    assert boot["api_key"] not in second


def test_up_renews_keys_when_bootstrap_json_does_not_match_the_database(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    data.mkdir()
    stale = {
        "email": "me@example.com",
        "password": "kept-password",
        "team_id": "01a00000-0000-7000-8000-000000000000",
        "api_key": "sk-from-a-database-that-is-gone",
        "agent_key": "ak-from-a-database-that-is-gone",
        "server_url": "http://old:1",
    }
    (data / "bootstrap.json").write_text(json.dumps(stale))
    proc = _start(data, port, tmp_path / "up.log")
    try:
        renewed = json.loads((data / "bootstrap.json").read_text())
        assert (renewed["email"], renewed["password"]) == (stale["email"], stale["password"])
        assert renewed["api_key"] != stale["api_key"]
        assert renewed["server_url"] == f"http://127.0.0.1:{port}"
        assert stat.S_IMODE((data / "bootstrap.json").stat().st_mode) == 0o600
        with Runyard(renewed["server_url"], api_key=renewed["api_key"]) as client:
            client.list_workflows()
    finally:
        stop(proc)
    assert "Renewed" in (tmp_path / "up.log").read_text()


def test_simulate_goes_with_an_agent(tmp_path: Path) -> None:
    result = subprocess.run(
        [*RUNYARD, "up", "--data-dir", str(tmp_path), "--simulate"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--simulate goes with --with-agent" in result.stderr
    assert not (tmp_path / "bootstrap.json").exists()


def test_a_local_agent_that_dies_is_started_again(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    log = tmp_path / "up.log"
    proc = _start(data, port, log, "--with-agent", "--simulate", "--run-seconds", "0.1")
    try:
        boot = json.loads((data / "bootstrap.json").read_text())
        [first] = psutil.Process(proc.pid).children()
        first.kill()  # as the OOM killer would
        first.wait(timeout=10)
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            again = [c for c in psutil.Process(proc.pid).children() if c.pid != first.pid]
            if again:
                break
            time.sleep(0.1)
        with Runyard(url, email=boot["email"], password=boot["password"]) as owner:
            owner.import_workflow(SIM_GRAPH, slug="sim", parameters=SIM_PARAMETERS)
        with Runyard(url, api_key=boot["api_key"]) as client:
            assert client.run("sim", {"prompt": "x"}, wait=True, timeout=30).ok  # on the new one
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        _, alive = psutil.wait_procs(again, timeout=10)
        assert not alive, "the restarted agent outlived runyard up"
    finally:
        stop(proc)
    text = log.read_text()
    assert "the local agent exited (code -9); restarting it in 1 s" in text
    assert "the local agent is running again" in text
