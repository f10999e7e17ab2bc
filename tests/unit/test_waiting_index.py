"""The dispatcher's index of waiting tasks: which task an agent gets next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runyard.domain.attempts import WaitingTask
from runyard.engine.index import AgentSlot, WaitingIndex

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def task(
    task_id: str,
    *,
    team: str = "a",
    pool: str = "team",
    labels: tuple[str, ...] = ("gpu",),
    priority: int = 0,
    age: int = 0,
    not_before: datetime | None = None,
) -> WaitingTask:
    created = T0 - timedelta(seconds=age)
    return WaitingTask(task_id, team, pool, frozenset(labels), priority, created, not_before)


def agent(team: str = "a", labels: tuple[str, ...] = ("gpu",), *pools: str) -> AgentSlot:
    return AgentSlot(team, frozenset(labels), frozenset(pools or ("team",)))


def test_highest_priority_first_then_the_oldest() -> None:
    index = WaitingIndex()
    for entry in (
        task("young", age=1),
        task("old", age=9),
        task("urgent", priority=5),
        task("low", priority=-1, age=99),
    ):
        index.add(entry, T0)
    order = []
    while (best := index.best_for(agent())) is not None:
        order.append(best.task_id)
        index.remove(best.task_id)
    assert order == ["urgent", "old", "young", "low"]


def test_an_agent_gets_only_tasks_whose_labels_it_has_in_its_own_team() -> None:
    index = WaitingIndex()
    index.add(task("sdxl", labels=("gpu", "sdxl")), T0)
    index.add(task("theirs", team="b"), T0)
    assert index.best_for(agent(labels=("gpu",))) is None
    assert index.best_for(agent(labels=("gpu", "sdxl", "fp16"))) == task(
        "sdxl", labels=("gpu", "sdxl")
    )
    assert not WaitingIndex.accepts(agent(), task("theirs", team="b"))
    assert index.best_for(agent(team="b")) == task("theirs", team="b")


def test_community_tasks_go_round_robin_across_teams() -> None:
    index = WaitingIndex()
    for team, n in (("a", 3), ("b", 3)):
        for i in range(n):
            index.add(task(f"{team}{i}", team=team, pool="community", age=10 - i), T0)
    helper = agent("c", ("gpu",), "community")
    taken = []
    for _ in range(4):
        best = index.best_for(helper)
        assert best is not None
        taken.append(best.task_id)
        index.remove(best.task_id)
    assert taken == ["a0", "b0", "a1", "b1"]
    # Asking whether there is work does not move the turn on.
    assert index.has_work_for(helper) and index.has_work_for(helper)
    assert index.best_for(helper) == task("a2", team="a", pool="community", age=8)


def test_a_task_not_due_yet_waits_in_the_delay_heap() -> None:
    index = WaitingIndex()
    later = T0 + timedelta(seconds=10)
    index.add(task("retry", not_before=later), T0)
    assert "retry" in index and len(index) == 1
    assert index.best_for(agent()) is None
    assert index.next_due() == later
    assert index.promote_due(T0 + timedelta(seconds=5)) == 0
    assert index.promote_due(later) == 1
    assert index.best_for(agent()) == task("retry", not_before=later)


def test_a_removed_or_replaced_task_is_never_handed_out() -> None:
    index = WaitingIndex()
    index.add(task("gone"), T0)
    index.add(task("moved", priority=9), T0)
    index.remove("gone")
    index.add(task("moved", priority=1, labels=("gpu", "big")), T0)  # replaced
    assert index.best_for(agent()) is None
    assert index.best_for(agent(labels=("gpu", "big"))) == task(
        "moved", priority=1, labels=("gpu", "big")
    )
