"""Random submit / cancel / status-change sequences through the services and the database.

Whatever is attempted, the stored status only ever moves along the domain's table, each move is
one event row in order, and a terminal task never changes again.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runyard.context import ServiceContext
from runyard.domain.errors import Conflict
from runyard.domain.roles import Role
from runyard.domain.tasks import TRANSITIONS, TaskStatus
from runyard.domain.workflows import ParameterDef, ParamType
from runyard.services import accounts, tasks, workflows
from runyard.services.auth import Caller, CallerKind, TeamScope
from runyard.services.tasks import RunRequest
from runyard.services.workflows import WorkflowSpec
from runyard.store.work import WorkRepos
from tests.fixtures.graphs import text_to_image

Op = tuple[str, int, TaskStatus]

operations = st.lists(
    st.tuples(
        st.sampled_from(["submit", "cancel", "move"]),
        st.integers(min_value=0, max_value=4),
        st.sampled_from(list(TaskStatus)),
    ),
    min_size=1,
    max_size=25,
)


async def _scope(ctx: ServiceContext) -> TeamScope:
    async with ctx.db.read() as session:
        from runyard.store.repos import Repos

        existing = await Repos(session).user_by_email("prop@example.com")
    if existing is None:
        user = await accounts.register(ctx, email="prop@example.com", password="long-password")
    else:
        user = existing
    profile = await accounts.profile(ctx, user.id)
    team_id = profile.teams[0][0].id
    scope = TeamScope(Caller(CallerKind.SESSION, user.id), team_id, Role.OWNER)
    spec = WorkflowSpec(
        workflow_slug="prop",
        display_name="prop",
        workflow_json=text_to_image(),
        parameters=(ParameterDef(key="prompt", type=ParamType.STRING, node_id="6", field="text"),),
    )
    await workflows.import_workflow(ctx, scope, spec)
    return scope


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
async def test_random_sequences_only_make_legal_moves(ctx: ServiceContext, ops: list[Op]) -> None:
    scope = await _scope(ctx)
    submitted: list[str] = []
    expected: dict[str, TaskStatus] = {}

    for action, index, target in ops:
        if action == "submit" or not submitted:
            task_id = await tasks.submit(
                ctx, scope, RunRequest(parameters={"prompt": "p"}), ref="prop"
            )
            submitted.append(task_id)
            expected[task_id] = TaskStatus.PENDING
            continue
        task_id = submitted[index % len(submitted)]
        before = expected[task_id]
        if action == "cancel":
            await tasks.cancel(ctx, scope, task_id)
            if not before.is_terminal:
                expected[task_id] = TaskStatus.CANCELLED
        else:
            try:
                async with ctx.db.write() as session:
                    repos = WorkRepos(session)
                    row = await repos.task_for_update(task_id)
                    assert row is not None
                    await repos.change_status(row, target, ctx.now())
            except Conflict:
                assert target not in TRANSITIONS[before]
            else:
                assert target in TRANSITIONS[before]
                expected[task_id] = target
        stored = await tasks.get_task(ctx, scope, task_id)
        assert TaskStatus(stored.task_status) is expected[task_id]

    for task_id in submitted:
        async with ctx.db.read() as session:
            events = await WorkRepos(session).events(task_id)
        statuses = [TaskStatus(e.payload["status"]) for e in events]
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert statuses[0] is TaskStatus.PENDING
        for previous, current in itertools.pairwise(statuses):
            assert current in TRANSITIONS[previous], (previous, current)
        assert statuses[-1] is expected[task_id]
        final: dict[str, Any] = events[-1].payload
        assert final["task_id"] == task_id
        if statuses[-1].is_terminal:
            assert events[-1].event_type == statuses[-1].value
