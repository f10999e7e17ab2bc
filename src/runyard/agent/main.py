"""The agent as a program: its settings in, a running agent (or a ``--check`` report) out.

What runs the attempts is a *runner kind*, looked up by name in :data:`RUNNERS`: ``comfyui``
(the ComfyUI next to the agent, the default) and ``simulate`` (the protocol-level simulated
worker). A kind opens the agent for the settings — its runner wired into a
:class:`GatewayClient`, plus whatever the runner keeps running alongside (ComfyUI's health
watch) — and answers ``--check``. Adding a runner (Nerfstudio, containers) is writing those two
functions and adding one entry.

``runyard agent`` (``runyard.cli.agent``) only turns flags into :class:`AgentSettings`
(``load_settings``) and calls :func:`run_agent` or :func:`check`. Like all of
``runyard.agent``, this needs only the base install (``pip install runyard[agent]``), never the
server's packages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import MappingProxyType

from runyard.agent import simulate, transfer
from runyard.agent.client import GatewayClient, run_until_signalled, websocket_url
from runyard.agent.comfyui import main as comfyui
from runyard.agent.config import AgentSettings, ConfigError

#: Prints one line for the user (``typer.echo`` in the CLI).
Echo = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RunnerKind:
    """How one kind of runner becomes an agent."""

    #: ``(settings, agent key)`` → the client, its runner wired in; what the runner needs
    #: alongside runs until the context ends. May raise ``ValueError`` for settings the
    #: protocol refuses (an agent id, a label).
    open: Callable[[AgentSettings, str], AbstractAsyncContextManager[GatewayClient]]
    #: ``--check``: print what the agent detects and the settings it would run with; the
    #: process exit status (0: ready to run).
    check: Callable[[AgentSettings, Echo], Awaitable[int]]


RUNNERS: Mapping[str, RunnerKind] = MappingProxyType(
    {
        "comfyui": RunnerKind(open=comfyui.comfyui_agent, check=comfyui.check),
        "simulate": RunnerKind(open=simulate.simulated_agent, check=simulate.check),
    }
)
DEFAULT_RUNNER = "comfyui"


def runner_name(settings: AgentSettings) -> str:
    """The runner the settings choose: ``runner``, or ``simulate`` when only ``simulate`` is
    on, or the default. Raises :class:`ConfigError` when the two disagree."""
    if settings.simulate:
        if settings.runner and settings.runner != "simulate":
            raise ConfigError(
                f"simulate is on but runner is {settings.runner!r}: "
                "drop --simulate or choose --runner simulate"
            )
        return "simulate"
    return settings.runner or DEFAULT_RUNNER


def runner_kind(settings: AgentSettings, runners: Mapping[str, RunnerKind] = RUNNERS) -> RunnerKind:
    """The registered kind the settings name; :class:`ConfigError` for an unknown one."""
    name = runner_name(settings)
    kind = runners.get(name)
    if kind is None:
        raise ConfigError(f"unknown runner {name!r} (known: {', '.join(sorted(runners))})")
    return kind


def _agent_key(settings: AgentSettings) -> str:
    """The agent key, after checking there is a gateway to use it on."""
    if not settings.gateway:
        raise ConfigError("no gateway: pass --gateway URL or set RUNYARD_AGENT_GATEWAY")
    key = settings.key.get_secret_value()
    if not key.startswith("ak-"):
        raise ConfigError("an agent key (ak-…) is needed: pass --key or set RUNYARD_AGENT_KEY")
    try:
        websocket_url(settings.gateway)  # refused before ComfyUI is probed, not after
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return key


async def run_agent(settings: AgentSettings, runners: Mapping[str, RunnerKind] = RUNNERS) -> int:
    """Run the agent the settings describe until SIGTERM/SIGINT; the process exit status.

    Settings that cannot work (unknown runner, no gateway or key, a label the protocol
    refuses) raise :class:`ConfigError` before anything connects.
    """
    kind = runner_kind(settings, runners)
    key = _agent_key(settings)
    await transfer.warm_up()
    async with contextlib.AsyncExitStack() as stack:
        try:
            client = await stack.enter_async_context(kind.open(settings, key))
        except ValueError as exc:  # pydantic's ValidationError is one too
            raise ConfigError(str(exc)) from None
        return await run_until_signalled(client, settings.grace_seconds)


async def check(
    settings: AgentSettings, echo: Echo, runners: Mapping[str, RunnerKind] = RUNNERS
) -> int:
    """``runyard agent --check`` for the runner the settings name."""
    return await runner_kind(settings, runners).check(settings, echo)
