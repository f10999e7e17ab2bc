"""The engine of one server: its agents, the dispatcher, frame handling and leases, wired.

Following one task:

1. ``services.tasks.submit`` inserts the task (its ``Changes`` note it entered the queue)
   and calls :meth:`Engine.claim_at_submit` in the same transaction: an idle agent here
   that has nothing better to do gets it at once (``Dispatcher.claim_at_submit``).
2. At the commit the publisher (``publish.py``) hands the changes over: a claim becomes a
   ``dispatch`` frame (``Dispatcher.claims_committed``), an unclaimed task goes into the
   dispatcher's index (``Dispatcher.entered_queue``) and, on PostgreSQL, to the other
   servers over the bus (``Engine._on_task_ready``); a dispatch round claims it later.
3. The gateway endpoint hands every agent frame to :meth:`Engine.handle`
   (``FrameHandler``): ``ack`` → running, ``upload_request`` → links, ``complete`` →
   completed; a failure ends the attempt (``EngineStore.end_attempt``: retry or fail).
4. ``Leases`` renews running attempts and reaps lapsed ones (ACK deadline, lease, timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from runyard.config import SchedulerSettings
from runyard.engine.dispatcher import Dispatcher
from runyard.engine.frames import FrameHandler
from runyard.engine.leases import Leases
from runyard.engine.outputs import Transfers
from runyard.engine.publish import Publisher, parse_ready, parse_stop
from runyard.engine.registry import AgentConnection, AgentRegistry, AttemptState
from runyard.events.bus import AGENT_COMMAND, TASK_READY, Bus
from runyard.logging import get_logger
from runyard.objects import ObjectStore
from runyard.protocol import v1
from runyard.store.changes import Transaction
from runyard.store.port import AttemptRef, EngineStore

log = get_logger("runyard.scheduler")


class Engine:
    def __init__(
        self,
        store: EngineStore,
        bus: Bus,
        settings: SchedulerSettings,
        *,
        objects: ObjectStore | None = None,
        link_ttl_seconds: int = 3600,
        now: Callable[[], datetime],
        gateway_id: str | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings
        self.now = now
        self.gateway_id = gateway_id or f"gw-{secrets.token_hex(4)}"
        self.agents = AgentRegistry()
        self.transfers = Transfers(store, objects, link_ttl_seconds, now)
        self.dispatcher = Dispatcher(
            store, self.agents, self.transfers, settings, now, self.gateway_id
        )
        self.frames = FrameHandler(store, self.dispatcher, self.transfers, settings, now)
        self.leases = Leases(store, self.agents, self.dispatcher, settings, now, self.gateway_id)
        #: The database's commit listener (set by whoever owns the database: ``app.py``).
        self.publisher = Publisher(bus, self.dispatcher, self.gateway_id)
        self._loops: list[asyncio.Task[None]] = []
        bus.subscribe(TASK_READY, self._on_task_ready)
        bus.subscribe(AGENT_COMMAND, self._on_agent_command)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        now = self.now()
        # While this server was down nobody could renew leases. Give agents one lease
        # period to reconnect and report their attempts before they count as lost, so a
        # restart resumes work instead of running it twice.
        extended = await self.store.gateway_started(
            self.gateway_id, now, now + timedelta(seconds=self.settings.lease_ttl_seconds)
        )
        if extended:
            log.info("leases_extended_after_start", attempts=extended)
        await self.dispatcher.reload()
        for loop in (
            self.dispatcher.run,
            self.leases.reaper,
            self.leases.renewer,
            self.leases.sweeper,
        ):
            self._loops.append(asyncio.create_task(loop(), name=loop.__name__))
        log.info(
            "scheduler_started", gateway_id=self.gateway_id, waiting=len(self.dispatcher.index)
        )

    async def stop(self) -> None:
        for conn in self.agents:
            conn.close(v1.CLOSE_SHUTDOWN, "server restarting")
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        await self.frames.stop()
        with contextlib.suppress(Exception):
            await self.store.gateway_stopped(self.gateway_id)

    # -- what services ask (context.EngineHandle) ----------------------------------------------

    async def claim_at_submit(self, tx: Transaction) -> None:
        """In a submit's transaction: claim its new tasks for idle agents here."""
        fresh = [e for e in tx.changes.waiting.values() if e.pending]
        if fresh:
            await self.dispatcher.claim_at_submit(tx, fresh)

    # -- agents (the gateway endpoint) ---------------------------------------------------------

    async def agent_connected(
        self, conn: AgentConnection
    ) -> tuple[list[v1.AttemptRef], list[v1.AttemptRef]]:
        """Register an agent; decide keep/abort for the attempts it says it still runs."""
        previous = self.agents.add(conn)
        if previous is not None:
            previous.close(v1.CLOSE_REPLACED, "replaced by a new connection of the same agent")
            # The agent's row says which connection it belongs to by this moment (see
            # agent_disconnected): a newer connection's is always later, even on a still clock.
            if conn.connected_at <= previous.connected_at:
                conn.connected_at = previous.connected_at + timedelta(microseconds=1)
        now = conn.connected_at
        reported = [AttemptRef(r.task_id, r.attempt) for r in conn.hello.running]
        resumed = await self.store.agent_connected(
            conn.info(),
            self.gateway_id,
            now,
            reported,
            now + timedelta(seconds=self.settings.lease_ttl_seconds),
        )
        kept = {(r.task_id, r.attempt) for r in resumed}
        for r in resumed:
            state = AttemptState(r.task_id, r.attempt, task_timeout=r.task_timeout)
            if r.running:
                state.acked_at = time.monotonic()
            conn.attempts[(r.task_id, r.attempt)] = state
        keep = [ref for ref in conn.hello.running if (ref.task_id, ref.attempt) in kept]
        abort = [ref for ref in conn.hello.running if (ref.task_id, ref.attempt) not in kept]
        log.info(
            "agent_connected",
            agent_id=conn.agent_id,
            team_id=conn.team_id,
            labels=sorted(conn.labels),
            capacity=conn.capacity,
            kept=len(keep),
            aborted=len(abort),
        )
        self.dispatcher.wake()
        return keep, abort

    async def agent_disconnected(self, conn: AgentConnection) -> None:
        """Its attempts are kept until their leases lapse: it may come back in time."""
        if self.agents.remove(conn):
            with contextlib.suppress(Exception):
                # Only if the row is still this connection's: a quick reconnect (here or on
                # another server) may have written its own, and whichever transaction commits
                # first, the newer connection stays listed.
                await self.store.agent_disconnected(conn.key, self.gateway_id, conn.connected_at)
        log.info("agent_disconnected", agent_id=conn.agent_id, team_id=conn.team_id)

    async def handle(self, conn: AgentConnection, frame: Any) -> None:
        await self.frames.handle(conn, frame)

    # -- from other servers (the bus) ----------------------------------------------------------

    async def _on_task_ready(self, payload: str) -> None:
        origin, task_id = parse_ready(payload)
        if origin != self.gateway_id:  # ours is indexed already (publish.py)
            await self.dispatcher.heard_of(task_id)

    async def _on_agent_command(self, payload: str) -> None:
        stop = parse_stop(payload)
        if stop.ended:
            # Only then: a timed-out attempt's task may be waiting again, in the index.
            self.dispatcher.forget(stop.task_id)
        if stop.agent_id is None:
            return
        conn = self.agents.find(stop.agent_id, stop.team_id)
        if conn is None:
            return
        state = conn.attempts.get((stop.task_id, stop.attempt))
        if state is not None:
            state.stopping = True
        conn.send(v1.Cancel(task_id=stop.task_id, attempt=stop.attempt, reason=stop.reason))
