"""The in-memory index of tasks waiting for an agent.

Tasks are grouped by (pool, team, required labels). An agent with free slots looks only at the
groups of its team (and of the community pool, if it serves it) whose labels it has, and takes
the best head among them: highest priority, then oldest. Waiting tasks that no agent can match
sit in groups nobody looks at, so they cost a dispatch nothing, however many there are.

The database stays the truth: a claim is a conditional update that can lose to another
replica, and the index is rebuilt from the database periodically.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime

from runyard.domain.attempts import WaitingTask

GroupKey = tuple[str, str, frozenset[str]]  # (pool, team_id, labels)


@dataclass
class AgentSlot:
    """What the index needs to know about an agent asking for work."""

    team_id: str
    labels: frozenset[str]
    pools: frozenset[str]


@dataclass(order=True)
class _HeapItem:
    rank: tuple[int, datetime, str]
    task: WaitingTask = field(compare=False)


class WaitingIndex:
    def __init__(self) -> None:
        self._groups: dict[GroupKey, list[_HeapItem]] = {}
        self._by_team: dict[tuple[str, str], set[GroupKey]] = {}
        self._members: dict[str, WaitingTask] = {}
        self._delayed: list[tuple[datetime, str]] = []
        #: Community teams in round-robin order; the next agent starts after the last served.
        self._community_order: list[str] = []
        self._community_next = 0

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._members

    def get(self, task_id: str) -> WaitingTask | None:
        return self._members.get(task_id)

    def add(self, task: WaitingTask, now: datetime) -> None:
        """Add (or replace) a task. Tasks with a future ``not_before`` wait in a delay heap."""
        self._members[task.task_id] = task
        if task.not_before is not None and task.not_before > now:
            heapq.heappush(self._delayed, (task.not_before, task.task_id))
            return
        self._push(task)

    def _push(self, task: WaitingTask) -> None:
        heap = self._groups.get(task.group)
        if heap is None:
            heap = self._groups[task.group] = []
            self._by_team.setdefault((task.pool, task.team_id), set()).add(task.group)
            if task.pool == "community" and task.team_id not in self._community_order:
                self._community_order.append(task.team_id)
        heapq.heappush(heap, _HeapItem(task.rank, task))

    def remove(self, task_id: str) -> None:
        """Forget a task (claimed, cancelled). Heaps drop it lazily."""
        self._members.pop(task_id, None)

    def promote_due(self, now: datetime) -> int:
        """Move delayed tasks whose time has come into their groups."""
        moved = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, task_id = heapq.heappop(self._delayed)
            task = self._members.get(task_id)
            if task is not None and (task.not_before is None or task.not_before <= now):
                self._push(task)
                moved += 1
        return moved

    def next_due(self) -> datetime | None:
        return self._delayed[0][0] if self._delayed else None

    def _head(self, key: GroupKey) -> WaitingTask | None:
        heap = self._groups.get(key)
        while heap:
            item = heap[0]
            live = self._members.get(item.task.task_id)
            if live is item.task:
                return live
            heapq.heappop(heap)  # removed or replaced: drop the stale entry
        if heap is not None:
            del self._groups[key]
            groups = self._by_team.get((key[0], key[1]))
            if groups is not None:
                groups.discard(key)
                if not groups:
                    del self._by_team[(key[0], key[1])]
        return None

    def _best_in(self, pool: str, team_id: str, labels: frozenset[str]) -> WaitingTask | None:
        best: WaitingTask | None = None
        for key in list(self._by_team.get((pool, team_id), ())):
            if not key[2] <= labels:
                continue
            head = self._head(key)
            if head is not None and (best is None or head.rank < best.rank):
                best = head
        return best

    def best_for(self, agent: AgentSlot) -> WaitingTask | None:
        """The task this agent should take next, or None. Does not remove it."""
        if "team" in agent.pools:
            own = self._best_in("team", agent.team_id, agent.labels)
            if own is not None:
                return own
        if "community" not in agent.pools or not self._community_order:
            return None
        # Round-robin over teams so one team's backlog cannot starve another's.
        count = len(self._community_order)
        for step in range(count):
            position = (self._community_next + step) % count
            team_id = self._community_order[position]
            task = self._best_in("community", team_id, agent.labels)
            if task is not None:
                self._community_next = (position + 1) % count
                return task
        return None

    @staticmethod
    def accepts(agent: AgentSlot, task: WaitingTask) -> bool:
        """Whether this agent may take this task (the rules of :meth:`best_for`)."""
        if not task.labels <= agent.labels or task.pool not in agent.pools:
            return False
        return task.pool == "community" or task.team_id == agent.team_id

    def has_work_for(self, agent: AgentSlot) -> bool:
        """Whether :meth:`best_for` would give this agent a task (without moving the
        community round-robin on)."""
        position = self._community_next
        try:
            return self.best_for(agent) is not None
        finally:
            self._community_next = position

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]
