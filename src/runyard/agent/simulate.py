"""A protocol-level fake GPU worker, for tests, benchmarks and checking a deployment.

Each attempt behaves as the dispatch's ``parameters["simulate"]`` says, or as the agent's
default behaviour:

- ``succeed``: ack, a log line, a few progress ticks over ``run_seconds``, then ``complete``
  with ``{"outputs": [...], "simulated": true}``. Against a gateway that hands out upload
  links, the attempt first downloads every input of the dispatch (``inputs``) and uploads one
  small text output through a signed link, which its manifest lists;
- ``fail`` / ``fail-permanent``: the same, then ``fail`` (retryable / not retryable);
- ``stall``: ack, then nothing: the attempt stays in heartbeats until cancelled;
- ``disconnect``: ack, cut the WebSocket without a close frame, then carry on as ``succeed``
  (the attempt is reported in the next ``hello``; its result goes out once reconnected);
- ``slow``: ``succeed`` taking ten times ``run_seconds`` (10 s when ``run_seconds`` is 0);
- ``no-ack``: never acks (and never finishes) until cancelled.

``parameters["simulate_seconds"]`` overrides ``run_seconds`` for one task. Every behaviour
honours cancel: it stops and reports ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal, get_args

from runyard.agent import transfer
from runyard.agent.client import GatewayClient, Reporter, Runner, UploadError
from runyard.protocol.v1 import Dispatch

if TYPE_CHECKING:  # config imports Behaviour from here
    from runyard.agent.config import AgentSettings

Behaviour = Literal["succeed", "fail", "fail-permanent", "stall", "disconnect", "slow", "no-ack"]
BEHAVIOURS: tuple[str, ...] = get_args(Behaviour)


def simulated_manifest(task_id: str, attempt: int) -> dict[str, Any]:
    """The manifest of a run whose gateway hands out no upload links (nothing uploaded)."""
    name = f"simulated-{task_id}-{attempt}.txt"
    output = {"node_id": "simulated", "kind": "text", "filename": name, "text": "simulated"}
    return {"outputs": [output], "simulated": True}


def simulated_output(task_id: str, attempt: int) -> tuple[str, bytes]:
    """The small file a simulated attempt uploads: its name and bytes."""
    name = f"simulated-{task_id}-{attempt}.txt"
    return name, f"simulated output of task {task_id}, attempt {attempt}\n".encode()


async def upload_simulated_output(dispatch: Dispatch, reporter: Reporter) -> dict[str, Any]:
    """Fetch the dispatch's inputs, upload one output; the manifest to complete with."""
    for param, url in sorted(dispatch.inputs.items()):
        size = await transfer.download(url)
        await reporter.log(f"input {param}: {size} bytes")
    name, data = simulated_output(dispatch.task_id, dispatch.attempt)
    entry = await reporter.upload(name, data, "text/plain", node_id="simulated", kind="text")
    return {"outputs": [entry], "simulated": True}


class SimulatedRunner(Runner):
    def __init__(
        self,
        behaviour: Behaviour = "succeed",
        run_seconds: float = 0.0,
        *,
        progress_steps: int = 3,
    ) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {', '.join(BEHAVIOURS)}")
        self.behaviour: str = behaviour
        self.run_seconds = max(0.0, run_seconds)
        self.progress_steps = max(0, progress_steps)
        self._cancels: dict[tuple[str, int], asyncio.Event] = {}

    async def start(self, dispatch: Dispatch, reporter: Reporter) -> None:
        key = (dispatch.task_id, dispatch.attempt)
        cancel = self._cancels[key] = asyncio.Event()
        if reporter.cancel_requested:
            cancel.set()
        try:
            await self._run(dispatch, reporter, cancel)
        finally:
            self._cancels.pop(key, None)

    async def cancel(self, task_id: str, attempt: int) -> None:
        event = self._cancels.get((task_id, attempt))
        if event is not None:
            event.set()

    async def _run(self, dispatch: Dispatch, reporter: Reporter, cancel: asyncio.Event) -> None:
        behaviour = dispatch.parameters.get("simulate", self.behaviour)
        if behaviour not in BEHAVIOURS:
            choices = ", ".join(BEHAVIOURS)
            await reporter.fail(
                f"unknown simulate behaviour {behaviour!r}; one of {choices}", retryable=False
            )
            return
        seconds = dispatch.parameters.get("simulate_seconds", self.run_seconds)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            await reporter.fail(
                f"simulate_seconds must be a number ≥ 0, not {seconds!r}", retryable=False
            )
            return
        seconds = float(seconds)
        if behaviour == "slow":
            seconds = (seconds or 1.0) * 10
        if behaviour == "no-ack":
            await cancel.wait()
            await reporter.cancelled()
            return
        await reporter.ack()
        if behaviour == "stall":
            await cancel.wait()
            await reporter.cancelled()
            return
        if behaviour == "disconnect":
            await reporter.drop_connection()
        await reporter.log(f"simulated {behaviour} run of {seconds:g} s")
        steps = self.progress_steps
        for step in range(1, steps + 1):
            if await _sleep_or_cancel(cancel, seconds / steps):
                await reporter.cancelled()
                return
            await reporter.progress(
                step / steps, current_node="simulated", step_current=step, step_total=steps
            )
        if steps == 0 and await _sleep_or_cancel(cancel, seconds):
            await reporter.cancelled()
            return
        if behaviour == "fail":
            await reporter.fail("simulated failure", retryable=True)
        elif behaviour == "fail-permanent":
            await reporter.fail("simulated permanent failure", retryable=False)
        elif not reporter.uploads_supported:
            await reporter.complete(simulated_manifest(dispatch.task_id, dispatch.attempt))
        else:
            try:
                manifest = await upload_simulated_output(dispatch, reporter)
            except (UploadError, transfer.TransferError) as exc:
                if reporter.cancel_requested:
                    await reporter.cancelled()
                else:
                    await reporter.fail(f"simulated output upload failed: {exc}", retryable=True)
                return
            await reporter.complete(manifest)


async def _sleep_or_cancel(cancel: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``; True if cancelled meanwhile."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return cancel.is_set()
    try:
        await asyncio.wait_for(cancel.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


@contextlib.asynccontextmanager
async def simulated_agent(settings: AgentSettings, key: str) -> AsyncIterator[GatewayClient]:
    """The simulated agent: ``--labels`` as they are, ``tool_version`` ``simulated``."""
    runner = SimulatedRunner(settings.behaviour, settings.run_seconds)
    yield GatewayClient(
        settings.gateway,
        key,
        runner,
        agent_id=settings.agent_id,
        labels=settings.labels,
        capacity=settings.capacity,
        pools=settings.pools,
        tool_version="simulated",
    )


async def check(settings: AgentSettings, echo: Callable[[str], None]) -> int:
    """``--check`` of the simulated agent: nothing to detect, only the settings it runs with."""
    echo(f"runner:    simulated ({settings.behaviour}, {settings.run_seconds:g} s per task)")
    echo(f"labels:    {', '.join(settings.labels) or '(none)'}")
    echo(f"agent id:  {settings.agent_id}")
    echo(f"capacity:  {settings.capacity}")
    echo(f"pools:     {', '.join(settings.pools)}")
    echo(f"gateway:   {settings.gateway or '(not set)'}")
    return 0
