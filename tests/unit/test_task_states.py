"""The task state machine, driven by Hypothesis: only legal moves happen; terminal states stay."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from runyard.domain.errors import Conflict
from runyard.domain.tasks import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    TaskStatus,
    check_transition,
)


def test_the_table_covers_every_state_and_terminal_states_absorb() -> None:
    assert set(TRANSITIONS) == set(TaskStatus)
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
    # Every state can be cancelled until it ends, and nothing goes back to pending.
    for state, targets in TRANSITIONS.items():
        assert (TaskStatus.CANCELLED in targets) == (state not in TERMINAL)
        assert TaskStatus.PENDING not in targets


class TaskLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.status = TaskStatus.PENDING
        self.history = [self.status]

    @rule(wanted=st.sampled_from(list(TaskStatus)))
    def request(self, wanted: TaskStatus) -> None:
        before = self.status
        try:
            check_transition(self.status, wanted)
        except IllegalTransition as exc:
            assert isinstance(exc, Conflict)
            assert wanted not in TRANSITIONS[before]
            return
        assert wanted in TRANSITIONS[before]
        self.status = wanted
        self.history.append(wanted)

    @invariant()
    def terminal_is_last(self) -> None:
        for state in self.history[:-1]:
            assert state not in TERMINAL


TestTaskLifecycle = TaskLifecycle.TestCase
