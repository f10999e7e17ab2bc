"""What a write transaction changed that others must hear of: its change record.

Every write transaction (``Database.write()``) owns one :class:`Changes`; the repositories
append to it as they write, in the transaction. The database hands it to one
:class:`CommitListener` — the engine's publisher in a server (``engine/publish.py``), which
decides what goes to whom — just before the commit (PostgreSQL's ``NOTIFY`` travels inside
the transaction), after it, or, if the transaction did not commit, to undo what was reserved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from runyard.domain.attempts import Claimed, Stop, WaitingTask

if TYPE_CHECKING:
    from runyard.store.db import Session


@dataclass
class Changes:
    #: Tasks with new ``task_events`` rows (their event streams wake up).
    events: set[str] = field(default_factory=set)
    #: Tasks that entered or re-entered the queue (submitted, retried, handed back, marked
    #: waiting), by id: the dispatchers index them.
    waiting: dict[str, WaitingTask] = field(default_factory=dict)
    #: Tasks claimed in this transaction for agents of this process: dispatched once it
    #: commits, their slots freed if it does not.
    claims: list[Claimed] = field(default_factory=list)
    #: Attempts whose agents must stop, and cancelled tasks to drop from every index.
    stops: list[Stop] = field(default_factory=list)
    #: Webhook deliveries were queued (the deliverers wake up).
    outbox: bool = False

    def __bool__(self) -> bool:
        return bool(self.events or self.waiting or self.claims or self.stops or self.outbox)


class Transaction(Protocol):
    """A write transaction as the engine sees it: something that records its changes."""

    @property
    def changes(self) -> Changes: ...


class CommitListener(Protocol):
    """The one party a database tells about its write transactions' changes."""

    async def before_commit(self, session: Session) -> None:
        """In the transaction, after its body, just before the commit."""

    async def after_commit(self, changes: Changes) -> None:
        """Once the transaction committed (never for one that did not)."""

    def rolled_back(self, changes: Changes) -> None:
        """The transaction did not commit: undo what its changes reserved."""


class Unheard:
    """For processes with nobody to tell (CLI commands): the servers' sweeps catch up."""

    async def before_commit(self, session: Session) -> None:
        return None

    async def after_commit(self, changes: Changes) -> None:
        return None

    def rolled_back(self, changes: Changes) -> None:
        return None
