"""``runyard.agent.main``: the registry of runner kinds, and each kind built from the settings
(against the fake gateway of ``test_agent_client`` and the fake ComfyUI, on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner
from websockets.asyncio.server import serve

from runyard.agent import main as agent_main
from runyard.agent.client import GatewayClient
from runyard.agent.config import AgentSettings, ConfigError
from runyard.cli.main import app
from runyard.protocol import v1
from tests.fakes.comfyui import FakeComfyUI
from tests.unit.test_agent_client import KEY, WAIT, FakeGateway


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("RUNYARD_AGENT"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    async with serve(gw.handler, "127.0.0.1", 0, process_request=gw.process_request) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gw.url = f"http://127.0.0.1:{port}"
        yield gw


@contextlib.asynccontextmanager
async def running(client: GatewayClient) -> AsyncIterator[None]:
    task = asyncio.create_task(client.run())
    try:
        yield
    finally:
        await client.stop(0)
        await asyncio.wait_for(task, WAIT)


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_the_registry_holds_comfyui_and_simulate() -> None:
    assert sorted(agent_main.RUNNERS) == ["comfyui", "simulate"]
    assert agent_main.runner_name(AgentSettings()) == "comfyui"
    assert agent_main.runner_name(AgentSettings(simulate=True)) == "simulate"
    assert agent_main.runner_name(AgentSettings(runner="simulate")) == "simulate"
    assert agent_main.runner_name(AgentSettings(runner="simulate", simulate=True)) == "simulate"


@pytest.mark.parametrize("check", [False, True])
def test_an_unknown_runner_is_one_error_line_naming_the_known_ones(check: bool) -> None:
    args = ["agent", "--runner", "nerfstudio", "--gateway", "http://h:1", "--key", "ak-x"]
    result = CliRunner().invoke(app, [*args, "--check"] if check else args)
    assert result.exit_code == 2, result.output
    (line,) = _errors(result.output)
    assert line == "error: unknown runner 'nerfstudio' (known: comfyui, simulate)"
    assert "Traceback" not in result.output


def test_simulate_and_another_runner_disagree() -> None:
    args = ["agent", "--simulate", "--runner", "comfyui", "--gateway", "http://h:1"]
    result = CliRunner().invoke(app, [*args, "--key", "ak-x"])
    assert result.exit_code == 2, result.output
    (line,) = _errors(result.output)
    assert "simulate is on but runner is 'comfyui'" in line


def test_the_runner_comes_from_the_environment_or_the_config_file(tmp_path: Path) -> None:
    env = {"RUNYARD_AGENT_RUNNER": "simulate"}
    result = CliRunner().invoke(app, ["agent", "--check", "--labels", "a,b"], env=env)
    assert result.exit_code == 0, result.output
    assert "runner:    simulated (succeed, 0 s per task)" in result.output
    assert "labels:    a, b" in result.output
    assert "ComfyUI" not in result.output  # the simulated agent probes no ComfyUI

    config = tmp_path / "agent.yaml"
    config.write_text("runner: simulate\nbehaviour: slow\nrun_seconds: 2\n")
    result = CliRunner().invoke(app, ["agent", "--check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "runner:    simulated (slow, 2 s per task)" in result.output
    # A flag beats the file: the ComfyUI check (nothing answers on port 9).
    args = ["agent", "--check", "--config", str(config), "--runner", "comfyui"]
    result = CliRunner().invoke(app, [*args, "--comfyui-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1, result.output
    assert "answers:   no" in result.output


async def test_adding_a_runner_is_adding_one_entry() -> None:
    seen: list[AgentSettings] = []

    async def check(settings: AgentSettings, echo: agent_main.Echo) -> int:
        seen.append(settings)
        echo("checked")
        return 3

    @contextlib.asynccontextmanager
    async def open_agent(settings: AgentSettings, key: str) -> AsyncIterator[GatewayClient]:
        raise AssertionError("not opened by --check")
        yield  # pragma: no cover

    runners = {**agent_main.RUNNERS, "custom": agent_main.RunnerKind(open_agent, check)}
    settings = AgentSettings(runner="custom", agent_id="box")
    lines: list[str] = []
    assert await agent_main.check(settings, lines.append, runners) == 3
    assert lines == ["checked"] and seen == [settings]
    with pytest.raises(ConfigError, match="unknown runner 'custom'"):
        await agent_main.check(settings, lines.append)


async def test_run_agent_refuses_what_the_protocol_would_before_connecting(
    gateway: FakeGateway,
) -> None:
    too_long = "x" * 101  # labels are 1 to 100 characters
    settings = AgentSettings(gateway=gateway.url, key=KEY, runner="simulate", labels=[too_long])
    with pytest.raises(ConfigError, match="labels"):
        await asyncio.wait_for(agent_main.run_agent(settings), WAIT)
    assert gateway.conns == []


async def test_the_simulated_runner_is_built_from_the_settings(gateway: FakeGateway) -> None:
    settings = AgentSettings(
        gateway=gateway.url,
        key=KEY,
        agent_id="sim-7",
        labels=["sdxl", "big"],
        pools=["team", "community"],
        capacity=3,
        runner="simulate",
        behaviour="fail-permanent",
        run_seconds=0.01,
    )
    kind = agent_main.runner_kind(settings)
    async with kind.open(settings, KEY) as client, running(client):
        conn = await gateway.next_conn()
        assert conn.headers["Authorization"] == f"Bearer {KEY}"
        hello = conn.hello
        assert hello is not None
        assert (hello.agent_id, hello.labels, hello.capacity) == ("sim-7", ["sdxl", "big"], 3)
        assert hello.pools == ["team", "community"]
        assert hello.tool_version == "simulated"
        await gateway.dispatch("task-1")
        result = await gateway.result("task-1")
        # The behaviour of the settings: a permanent failure.
        assert isinstance(result, v1.Fail) and result.retryable is False
        assert result.error == "simulated permanent failure"


async def test_the_comfyui_runner_is_built_from_the_settings(
    gateway: FakeGateway, tmp_path: Path
) -> None:
    async with FakeComfyUI(comfyui_version="0.3.77") as comfy:
        settings = AgentSettings(
            gateway=gateway.url,
            key=KEY,
            agent_id="gpu-7",
            labels=["sdxl"],
            capacity=2,
            comfyui_url=comfy.url,
            work_dir=str(tmp_path),
        )
        kind = agent_main.runner_kind(settings)
        async with kind.open(settings, KEY) as client, running(client):
            hello = (await gateway.next_conn()).hello
            assert hello is not None
            assert (hello.agent_id, hello.capacity, hello.status) == ("gpu-7", 2, "idle")
            # What ComfyUI at comfyui_url said, then the settings' labels.
            assert hello.labels == ["comfyui", "gpu", "sdxl"]
            assert hello.tool == "comfyui"
            assert hello.comfyui_version == hello.tool_version == "0.3.77"
            assert hello.system_stats.gpu_devices
        # The runner probes the ComfyUI of the settings.
        assert comfy.count("GET", "/system_stats") >= 1
