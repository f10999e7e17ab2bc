"""The uvicorn server ``runyard up`` runs, with the local agent process tied to its life."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from runyard.cli.common import err
from runyard.cli.serve import DrainingServer

#: Pauses before restarting a local agent that exited on its own: doubling up to the cap,
#: back to the first after it ran this long.
RESTART_FIRST_SECONDS = 1.0
RESTART_CAP_SECONDS = 30.0
RESTART_RESET_AFTER_SECONDS = 60.0


class UpServer(DrainingServer):
    """uvicorn's server, plus a local agent process started once the server listens,
    restarted (with backoff) when it dies on its own, and stopped (given time to hand work
    back) before the server stops."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        agent_argv: list[str] | None,
        agent_env: dict[str, str],
        on_ready: Callable[[int | None], None],
        agent_grace: float,
    ) -> None:
        super().__init__(config)
        self.agent_grace = agent_grace
        self.agent_argv = agent_argv
        self.agent_env = agent_env
        self.on_ready = on_ready
        self.agent: asyncio.subprocess.Process | None = None
        self._agent_signalled = False
        self._watcher: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started or self.should_exit:
            return
        if self.agent_argv:
            self.agent = await self._start_agent(self.agent_argv)
            self._watcher = asyncio.create_task(self._supervise(self.agent_argv))
        self.on_ready(self.agent.pid if self.agent else None)

    async def _start_agent(self, argv: list[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv,
            env=self.agent_env,
            # Its own process group: Ctrl-C reaches only us, and we stop it once, gently.
            start_new_session=True,
        )

    async def _supervise(self, argv: list[str]) -> None:
        """Restart the local agent whenever it exits on its own, as a one-command stack
        should, with a growing pause so a crashing agent does not spin."""
        loop = asyncio.get_running_loop()
        pause = RESTART_FIRST_SECONDS
        while self.agent is not None:
            started = loop.time()
            code = await self.agent.wait()
            if self._agent_signalled or self.should_exit:
                return
            if loop.time() - started >= RESTART_RESET_AFTER_SECONDS:
                pause = RESTART_FIRST_SECONDS
            err.print(
                f"warning: the local agent exited (code {code}); restarting it in {pause:g} s",
                markup=False,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_CAP_SECONDS)
            if self._agent_signalled or self.should_exit:
                return
            self.agent = await self._start_agent(argv)
            err.print(f"the local agent is running again (pid {self.agent.pid})", markup=False)

    def _signal_agent(self) -> None:
        agent = self.agent
        if agent is not None and agent.returncode is None and not self._agent_signalled:
            self._agent_signalled = True
            with contextlib.suppress(ProcessLookupError):
                agent.send_signal(signal.SIGTERM)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._signal_agent()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        agent = self.agent
        if agent is not None:
            self._signal_agent()
            try:
                await asyncio.wait_for(agent.wait(), self.agent_grace + 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    agent.kill()
                await agent.wait()
        if self._watcher is not None:
            self._watcher.cancel()
        await super().shutdown(sockets=sockets)
        err.print("Runyard stopped.")
