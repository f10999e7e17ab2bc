"""The agent's settings, gateway address, ``runyard agent`` argument errors, and its imports."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

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


def test_agent_package_does_not_import_the_server() -> None:
    code = (
        "import sys, runyard.agent, runyard.agent.config, runyard.agent.simulate\n"
        "heavy = ('runyard.store', 'runyard.api', 'runyard.services', 'runyard.app',\n"
        "         'runyard.gateway', 'runyard.scheduler', 'sqlalchemy', 'fastapi')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
