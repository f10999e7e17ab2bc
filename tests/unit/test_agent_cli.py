"""The agent's settings, gateway address and ``runyard agent`` argument errors (its imports:
``tests/e2e/test_agent_install.py``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from runyard.agent import websocket_url
from runyard.agent.config import AgentSettings, default_agent_id
from runyard.cli.main import app


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.startswith("RUNYARD_AGENT"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/api/v1/agent/ws"),
        ("http://127.0.0.1:8080/", "ws://127.0.0.1:8080/api/v1/agent/ws"),
        ("https://runyard.example.com", "wss://runyard.example.com/api/v1/agent/ws"),
        ("HTTPS://example.com/runyard/", "wss://example.com/runyard/api/v1/agent/ws"),
        ("http://h:1/api/v1/agent/ws", "ws://h:1/api/v1/agent/ws"),
        ("ws://h:1", "ws://h:1/api/v1/agent/ws"),
        ("wss://h/custom/ws", "wss://h/custom/ws"),
    ],
)
def test_websocket_url_is_derived_from_the_base_url(base: str, expected: str) -> None:
    assert websocket_url(base) == expected


@pytest.mark.parametrize("bad", ["", "127.0.0.1:8080", "ftp://h", "http://"])
def test_websocket_url_refuses_what_is_not_a_base_url(bad: str) -> None:
    with pytest.raises(ValueError, match="http"):
        websocket_url(bad)


def test_settings_come_from_env_and_flags_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_AGENT_GATEWAY", "http://env:8080")
    monkeypatch.setenv("RUNYARD_AGENT_KEY", "ak-from-env-123456789")
    monkeypatch.setenv("RUNYARD_AGENT_LABELS", "gpu, comfyui,gpu")
    monkeypatch.setenv("RUNYARD_AGENT_POOLS", "team,community")
    monkeypatch.setenv("RUNYARD_AGENT_CAPACITY", "3")
    monkeypatch.setenv("RUNYARD_AGENT_ID", "box-7")
    monkeypatch.setenv("RUNYARD_AGENT_SIMULATE", "true")
    settings = AgentSettings()
    assert settings.gateway == "http://env:8080"
    assert settings.key.get_secret_value() == "ak-from-env-123456789"
    assert "ak-from-env" not in repr(settings)
    assert settings.labels == ["gpu", "comfyui"]
    assert settings.pools == ["team", "community"]
    assert settings.capacity == 3
    assert settings.agent_id == "box-7"
    assert settings.simulate is True
    flags = AgentSettings(gateway="https://flag", labels="a,b", capacity=1, agent_id="x")
    assert (flags.gateway, flags.labels, flags.capacity, flags.agent_id) == (
        "https://flag",
        ["a", "b"],
        1,
        "x",
    )
    assert flags.pools == ["team", "community"]


def test_settings_defaults_and_validation() -> None:
    settings = AgentSettings()
    assert settings.agent_id == default_agent_id()
    assert (settings.capacity, settings.pools, settings.labels) == (1, ["team"], [])
    assert (settings.behaviour, settings.run_seconds, settings.grace_seconds) == ("succeed", 0, 30)
    assert settings.simulate is False
    for bad in (
        {"pools": "team,everyone"},
        {"pools": ""},
        {"capacity": 0},
        {"behaviour": "explode"},
        {"agent_id": "has space"},
    ):
        with pytest.raises(ValidationError):
            AgentSettings(**bad)


def test_agent_check_says_when_comfyui_does_not_answer() -> None:
    result = CliRunner().invoke(app, ["agent", "--check", "--comfyui-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1, result.output
    assert "answers:   no" in result.output
    assert "labels:    comfyui" in result.output


async def test_agent_check_prints_version_devices_and_labels() -> None:
    import asyncio

    from tests.fakes.comfyui import FakeComfyUI

    async with FakeComfyUI(comfyui_version="0.3.99") as comfy:
        args = ["agent", "--check", "--labels", "sdxl"]
        env = {"RUNYARD_AGENT_COMFYUI_URL": comfy.url}
        result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "answers:   yes" in result.output
    assert "version:   0.3.99" in result.output
    assert "cudaMallocAsync (cuda, 23.6 GiB)" in result.output
    assert "labels:    comfyui, gpu, sdxl" in result.output
    assert "gpu:       yes" in result.output


def test_comfyui_url_defaults_to_local_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert AgentSettings().comfyui_url == "http://127.0.0.1:8188"
    monkeypatch.setenv("RUNYARD_AGENT_COMFYUI_URL", "http://10.0.0.2:8188")
    assert AgentSettings().comfyui_url == "http://10.0.0.2:8188"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--key", "ak-abcdefgh123"], "no gateway"),
        (["--gateway", "http://h:1"], "agent key"),
        (["--gateway", "http://h:1", "--key", "sk-notanagentkey"], "agent key"),
        (["--gateway", "h:1", "--key", "ak-abcdefgh123"], "http"),
        (["--gateway", "http://h:1", "--key", "ak-x", "--behaviour", "explode"], "behaviour"),
        (["--gateway", "http://h:1", "--key", "ak-x", "--pools", "nobody"], "pools"),
    ],
)
def test_agent_argument_errors_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["agent", "--simulate", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "ak-abcdefgh123" not in result.output


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_config_file_sits_between_flags_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "runyard-agent.yaml"
    config.write_text(
        "# the agent on box 7\n"
        "agent_id: from-file\n"
        "capacity: 2\n"
        "labels: [sdxl, big]\n"
        "comfyui_url: http://127.0.0.1:9\n"
        "grace_seconds: 5\n"
    )
    env = {
        "RUNYARD_AGENT_ID": "from-env",
        "RUNYARD_AGENT_CAPACITY": "5",
        "RUNYARD_AGENT_POOLS": "community",
        "RUNYARD_AGENT_GATEWAY": "http://env:8080",
    }
    args = ["agent", "--check", "--config", str(config), "--capacity", "4"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 1, result.output  # nothing answers at the file's ComfyUI URL
    assert "ComfyUI:   http://127.0.0.1:9" in result.output  # file
    assert "agent id:  from-file" in result.output  # file over env
    assert "capacity:  4" in result.output  # flag over file over env
    assert "pools:     community" in result.output  # env: not in the file
    assert "gateway:   http://env:8080" in result.output
    assert "labels:    comfyui, sdxl, big" in result.output
    # RUNYARD_AGENT_CONFIG names the file too.
    result = CliRunner().invoke(
        app, ["agent", "--check"], env={"RUNYARD_AGENT_CONFIG": str(config)}
    )
    assert "agent id:  from-file" in result.output and "capacity:  2" in result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agent_id: a\ncapcity: 2\n", "unknown setting: capcity"),
        ("capacity: lots\n", "capacity: Input should be a valid integer"),
        ("capacity: 0\n", "capacity: Input should be greater than or equal to 1"),
        ("pools: [team, everyone]\n", "pools.1"),
        ("labels: [a\n", "not valid YAML (line 2)"),
        ("- gateway\n", "must be a mapping"),
    ],
)
def test_config_file_mistakes_are_one_error_line_and_exit_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["agent", "--config", str(config)])
    assert result.exit_code == 2, result.output
    (line,) = _errors(result.output)
    assert expected in line and str(config) in line, line
    assert "Traceback" not in result.output


def test_config_file_missing_or_holding_a_readable_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["agent", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    (line,) = _errors(result.output)
    assert "nope.yaml: cannot read the config file" in line

    config = tmp_path / "agent.yaml"
    config.write_text("key: ak-secretsecret123\ncomfyui_url: http://127.0.0.1:9\n")
    config.chmod(0o644)
    result = CliRunner().invoke(app, ["agent", "--check", "--config", str(config)])
    assert "holds the agent key and is readable by others" in result.output
    assert "ak-secretsecret123" not in result.output
    config.chmod(0o600)
    result = CliRunner().invoke(app, ["agent", "--check", "--config", str(config)])
    assert "readable by others" not in result.output


def test_the_example_config_file_is_valid() -> None:
    from runyard.agent.config import load_settings

    example = Path(__file__).resolve().parents[2] / "examples" / "runyard-agent.yaml"
    settings = load_settings({}, example)
    assert (settings.agent_id, settings.capacity) == ("gpu-box-1", 2)


def test_the_systemd_unit_runs_the_agent_with_the_config_file_of_docs_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/runyard-agent.service runs ``runyard agent --config /etc/runyard/agent.yaml``,
    and the agent.yaml shown in docs/deploy.md is a valid config whose key the environment
    file may supply instead."""
    import re
    import shlex

    from runyard.agent.config import load_settings

    root = Path(__file__).resolve().parents[2]
    unit = (root / "deploy" / "runyard-agent.service").read_text()
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, flags=re.MULTILINE)
    assert shlex.split(exec_start)[1:] == ["agent", "--config", "/etc/runyard/agent.yaml"]
    assert "EnvironmentFile=-/etc/runyard/agent.env" in unit  # optional, for RUNYARD_AGENT_*

    deploy = (root / "docs" / "deploy.md").read_text()
    (snippet,) = re.findall(r"```yaml\n(gateway: .*?)```", deploy, flags=re.DOTALL)
    config = tmp_path / "agent.yaml"
    config.write_text(snippet.replace("key: ak-…", "key: ak-fromthefile"))
    settings = load_settings({}, config)
    assert (settings.agent_id, settings.work_dir) == ("gpu-01", "/var/lib/runyard-agent")
    assert settings.key.get_secret_value() == "ak-fromthefile"
    config.write_text("\n".join(line for line in snippet.splitlines() if "key:" not in line))
    monkeypatch.setenv("RUNYARD_AGENT_KEY", "ak-fromtheenv")
    assert load_settings({}, config).key.get_secret_value() == "ak-fromtheenv"
