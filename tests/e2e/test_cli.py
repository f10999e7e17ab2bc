"""The CLI against a real server and simulated agent: real ``runyard`` processes for exit codes
and the stored login, Typer's runner for the rest. (SQLite only: the CLI does not see the
database; the SDK tests cover both.)"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runyard.cli.main import app
from runyard.client import Runyard, RunyardError
from tests.conftest import database_url
from tests.e2e.conftest import RUNYARD
from tests.e2e.stack import (
    EMAIL,
    PASSWORD,
    SIM_GRAPH,
    SIM_PARAMETERS,
    Stack,
    start_stack,
)


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("cli")
    yield from start_stack(database_url(request, "sqlite", workdir), workdir)


@pytest.fixture
def env(stack: Stack, tmp_path: Path) -> dict[str, str]:
    """A clean environment: the stack's server and key, a private config folder."""
    values = {k: v for k, v in os.environ.items() if not k.startswith("RUNYARD_")}
    values.update(
        RUNYARD_SERVER_URL=stack.url,
        RUNYARD_API_KEY=stack.sk,
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        COLUMNS="200",
    )
    return values


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUNYARD, *args], env=env, capture_output=True, text=True, timeout=60)


def invoke(env: dict[str, str], *args: str) -> Any:
    names = [k for k in os.environ if k.startswith("RUNYARD_")]
    overrides: dict[str, str | None] = {k: None for k in names}
    overrides.update(env)
    return CliRunner().invoke(app, list(args), env=overrides)


def one_error_line(stderr: str, expected: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], stderr
    assert "Traceback" not in stderr


def test_run_wait_json_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    ok = cli(
        env,
        "run",
        "sim",
        "-p",
        "prompt=a red fox",
        "-p",
        "simulate_seconds=0.2",
        "--wait",
        "--out",
        str(tmp_path / "out"),
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["task"]["task_status"] == "completed"
    assert body["result"]["task_output"]["simulated"] is True
    assert len(body["files"]) == len(body["result"]["download_urls"] or {})
    for name in body["files"]:
        assert Path(name).read_bytes().startswith(b"simulated output")

    failed = cli(env, "run", "sim", "-p", "simulate=fail-permanent", "--wait", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["task"]["task_error"] == "simulated permanent failure"

    shown = cli(env, "run", "sim", "-p", "simulate=fail-permanent", "--wait")
    assert shown.returncode == 1
    one_error_line(shown.stderr, "failed: simulated permanent failure")

    submitted = cli(env, "run", "sim", "-p", "simulate_seconds=0")
    assert submitted.returncode == 0 and len(submitted.stdout.strip()) == 36

    # A string parameter takes what was typed, even when it reads as JSON (42, true).
    typed = cli(
        env, "run", "sim", "-p", "prompt=42", "-p", "simulate_seconds=0", "--wait", "--json"
    )
    assert typed.returncode == 0, typed.stderr
    assert json.loads(typed.stdout)["task"]["task_status"] == "completed"


@pytest.mark.parametrize(
    ("args", "extra_env", "code", "message"),
    [
        (["run", "sim", "-p", "novalue"], {}, 2, "use -p key=value"),
        (["run", "no-such-slug", "--wait"], {}, 1, "workflow not found"),
        (["run", "sim", "-p", "nope=1"], {}, 1, "nope"),
        (["run", "sim", "--count", "2", "-p", "nope=1"], {}, 1, "runs[0]: "),
        (["run", "sim", "--count", "3", "--wait"], {}, 2, "follow one run, not --count 3"),
        (["run", "sim", "--count", "0"], {}, 2, "--count must be a whole number from 1 to"),
        (["run", "sim", "--count", "2", "--idempotency-key", "k"], {}, 2, "is for one run"),
        (["tasks", "show", "not-a-uuid"], {}, 1, "taskId"),
        (["agents", "list", "--api-key", "sk-wrong"], {}, 1, "invalid credential"),
        (["--api-key", "sk-wrong", "agents", "list"], {}, 1, "invalid credential"),
        (["agents", "list"], {"RUNYARD_SERVER_URL": "http://127.0.0.1:9"}, 1, "cannot reach"),
        (["agents", "list"], {"RUNYARD_API_KEY": ""}, 2, "no credentials"),
        (["workflows", "import", "missing.json", "--slug", "x"], {}, 2, "no such file"),
        (["workflows", "import", "--slug", "x", "graph.json"], {}, 1, "runtime routes"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    env: dict[str, str],
    tmp_path: Path,
    args: list[str],
    extra_env: dict[str, str],
    code: int,
    message: str,
) -> None:
    (tmp_path / "graph.json").write_text(json.dumps(SIM_GRAPH))
    result = invoke(
        {**env, **extra_env}, *[str(tmp_path / a) if a.endswith(".json") else a for a in args]
    )
    assert result.exit_code == code, result.output
    one_error_line(result.stderr, message)


def test_run_count_submits_several_runs_at_once(stack: Stack, env: dict[str, str]) -> None:
    as_json = invoke(env, "run", "sim", "-p", "simulate_seconds=0", "--count", "3", "--json")
    assert as_json.exit_code == 0, as_json.output
    task_ids = json.loads(as_json.stdout)["task_ids"]
    assert len(set(task_ids)) == 3
    with stack.client() as client:
        for task_id in task_ids:
            assert client.wait(task_id, timeout=30).ok

    plain = invoke(env, "run", "sim", "-p", "simulate_seconds=0", "--count", "2")
    assert plain.exit_code == 0, plain.output
    lines = plain.stdout.split()
    assert len(lines) == 2 and all(len(line) == 36 for line in lines)

    none = invoke(env, "run", "sim", "--count", "0")
    assert none.exit_code == 2 and "--count" in none.output


def test_login_stores_a_device_key_used_by_later_commands(
    stack: Stack, env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in env.items() if k != "RUNYARD_API_KEY"}
    login = cli(
        {**env, "RUNYARD_PASSWORD": PASSWORD}, "login", "--email", EMAIL, "--name", "ci box"
    )
    assert login.returncode == 0, login.stderr
    config = tmp_path / "config" / "runyard" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    stored = json.loads(config.read_text())
    assert stored["server_url"] == stack.url and stored["api_key"].startswith("dk-")

    (tmp_path / "graph.json").write_text(json.dumps(SIM_GRAPH))
    (tmp_path / "params.json").write_text(json.dumps(SIM_PARAMETERS))
    imported = cli(
        env,
        "workflows",
        "import",
        str(tmp_path / "graph.json"),
        "--slug",
        "cli-sim",
        "--params",
        str(tmp_path / "params.json"),
        "--labels",
        "a, b",
        "--json",
    )
    assert imported.returncode == 0, imported.stderr
    body = json.loads(imported.stdout)
    assert body["required_labels"] == ["a", "b"]
    assert (body["max_retries"], body["task_timeout"]) == (2, 0)  # transient failures retried
    tuned = cli(
        env, "workflows", "import", str(tmp_path / "graph.json"), "--slug", "cli-sim",
        "--retries", "5", "--timeout", "600", "--json",
    )  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    assert (json.loads(tuned.stdout)["max_retries"], json.loads(tuned.stdout)["task_timeout"]) == (
        5,
        600,
    )
    refused = cli(env, "workflows", "import", str(tmp_path / "graph.json"), "--retries", "99")
    assert refused.returncode == 2
    assert "--retries: must be a whole number from 0 to 20" in refused.stderr
    who = invoke(env, "whoami", "--json")
    assert who.exit_code == 0, who.output
    assert json.loads(who.stdout)["email"] == EMAIL
    assert json.loads(who.stdout)["credentials_from"] == "config"
    # The stored key goes only to the server it came from.
    elsewhere = invoke(env, "workflows", "list", "--server", "http://127.0.0.1:9")
    assert elsewhere.exit_code == 2 and "no credentials" in elsewhere.stderr
    # Managing keys needs a person signed in; the device key's refusal says how.
    keys = invoke(env, "keys", "list")
    assert keys.exit_code == 1
    assert "sign in with your email and password instead" in keys.stderr
    assert "--email EMAIL" in keys.stderr

    logout = cli(env, "logout")
    assert logout.returncode == 0, logout.stderr
    assert "api_key" not in json.loads(config.read_text())
    with Runyard(stack.url, api_key=stored["api_key"]) as revoked, pytest.raises(RunyardError):
        revoked.list_workflows()


def test_tasks_agents_keys_and_webhooks(env: dict[str, str], tmp_path: Path) -> None:
    submitted = invoke(env, "run", "sim", "-p", "simulate=stall", "--json")
    task_id = json.loads(submitted.stdout)["task_id"]
    shown = invoke(env, "tasks", "show", task_id, "--json")
    assert json.loads(shown.stdout)["id"] == task_id
    listed = invoke(env, "tasks", "list", "--workflow", "sim", "--json")
    assert task_id in [t["id"] for t in json.loads(listed.stdout)]
    table = invoke(env, "tasks", "list")
    assert task_id in table.stdout
    cancelled = invoke(env, "tasks", "cancel", task_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert f"Task {task_id}: cancelled" in cancelled.stdout
    again = invoke(env, "tasks", "cancel", task_id)
    assert again.exit_code == 0, again.output
    assert "had already ended (cancelled); nothing was cancelled" in again.stdout
    watched = invoke(env, "tasks", "watch", task_id, "--json")
    assert watched.exit_code == 1  # it was cancelled
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert events[-1]["event"] == "cancelled"
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))

    done = json.loads(invoke(env, "run", "sim", "--wait", "--json").stdout)["task"]["id"]
    watched_ok = invoke(env, "tasks", "watch", done)
    assert watched_ok.exit_code == 0 and "completed" in watched_ok.stdout
    result = invoke(env, "tasks", "result", done, "--out", str(tmp_path / "r"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["result"]["task_status"] == "completed"
    # A second download into the same folder keeps the first file and takes a numbered name;
    # --overwrite replaces it.
    [first] = json.loads(result.stdout)["files"]
    Path(first).write_bytes(b"kept")
    again = invoke(env, "tasks", "result", done, "--out", str(tmp_path / "r"), "--json")
    [second] = json.loads(again.stdout)["files"]
    assert second != first and Path(second).stem.endswith("-2")
    assert Path(first).read_bytes() == b"kept"
    replaced = invoke(
        env, "tasks", "result", done, "--out", str(tmp_path / "r"), "--overwrite", "--json"
    )
    assert json.loads(replaced.stdout)["files"] == [first]
    assert Path(first).read_bytes().startswith(b"simulated output")

    agents = invoke(env, "agents", "list", "--json")
    assert "sim-agent" in [a["agent_id"] for a in json.loads(agents.stdout)]

    as_owner = {**env, "RUNYARD_EMAIL": EMAIL, "RUNYARD_PASSWORD": PASSWORD}
    refused = invoke(env, "keys", "list")
    assert refused.exit_code == 1  # an sk- key does not manage keys
    created = invoke(as_owner, "keys", "create", "--name", "from cli", "--json")
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    assert key["raw_key"].startswith("sk-")
    assert key["id"] in invoke(as_owner, "keys", "list").stdout
    assert invoke(as_owner, "keys", "revoke", key["id"]).exit_code == 0

    hook = invoke(
        as_owner, "webhooks", "create", "--name", "ci", "--url", "http://127.0.0.1:9/h", "--json"
    )
    assert hook.exit_code == 0, hook.output
    hook_id = json.loads(hook.stdout)["id"]
    assert hook_id in invoke(as_owner, "webhooks", "list").stdout
    deliveries = invoke(as_owner, "webhooks", "deliveries", hook_id, "--json")
    assert deliveries.exit_code == 0 and isinstance(json.loads(deliveries.stdout), list)
    assert invoke(as_owner, "webhooks", "delete", hook_id).exit_code == 0


def test_run_uploads_file_parameters(stack: Stack, env: dict[str, str], tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(2000))
    ran = cli(
        env,
        "run",
        "sim-img",
        "-p",
        f"image=@{photo}",
        "-p",
        "simulate_seconds=0",
        "--wait",
        "--out",
        str(tmp_path / "out"),
        "--json",
    )
    assert ran.returncode == 0, ran.stderr
    body = json.loads(ran.stdout)
    assert body["task"]["task_status"] == "completed"
    (output,) = body["files"]
    assert Path(output).read_bytes().startswith(b"simulated output")
    with stack.client() as client:
        logged = [
            line
            for event in client.events(body["task"]["id"], timeout=30)
            if event.event == "log"
            for line in event.data.get("lines", [])
        ]
    assert "input image: 2008 bytes" in logged  # the agent got the uploaded file

    # A large file gets a progress bar (on stderr); the run goes as before.
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    shown = cli(env, "run", "sim-img", "-p", f"image=@{big}", "--wait")
    assert shown.returncode == 0, shown.stderr
    assert "big.png" in shown.stderr and "completed" in shown.stdout

    missing = cli(env, "run", "sim-img", "-p", f"image=@{tmp_path / 'nope.png'}", "--wait")
    assert missing.returncode == 2
    one_error_line(missing.stderr, "no such file")
