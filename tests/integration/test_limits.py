"""A task's priority range, declared once (``domain.limits.PRIORITY``), refused alike by the API
(one run and a batch), the dashboard's run form and a direct service call, with the bounds
themselves accepted and stored as given (the dashboard used to clamp to ±100 in silence)."""

from __future__ import annotations

import httpx
import pytest

from runyard.context import ServiceContext
from runyard.domain.errors import BadRequest
from runyard.domain.limits import PRIORITY
from runyard.domain.roles import Role
from runyard.services import tasks
from runyard.services.auth import Caller, CallerKind, TeamScope
from runyard.services.tasks import RunRequest
from tests.integration.conftest import Account, Accounts, assert_error, ok
from tests.integration.test_dashboard import field_errors, sign_in
from tests.integration.uploads import image_workflow

MESSAGE = "priority: must be a whole number from -1000 to 1000"


async def _workflow(owner: Account) -> str:
    body = image_workflow("foxes", display_name="Foxes")
    wf_id: str = ok(await owner.request("POST", "/api/v1/workflows/import", json=body))["id"]
    return wf_id


async def _priority(ctx: ServiceContext, owner: Account, task_id: str) -> int:
    scope = TeamScope(Caller(CallerKind.SESSION, owner.user_id), owner.team_id or "", Role.OWNER)
    return (await tasks.get_task(ctx, scope, task_id)).priority


async def _task_count(owner: Account) -> int:
    listed = ok(await owner.request("GET", "/api/v1/r/tasks"))
    count: int = listed["page_meta"]["total_count"]
    return count


def test_the_message_names_the_declared_range() -> None:
    assert PRIORITY.message == MESSAGE


async def test_the_api_refuses_a_priority_out_of_range_and_takes_the_bounds(
    ctx: ServiceContext, accounts: Accounts
) -> None:
    owner = await accounts.signup("owner")
    await _workflow(owner)
    run = "/api/v1/r/workflows/slug/foxes/run"
    for bad in (1001, -1001, 10**12):
        body = {"parameters": {"prompt": "a fox"}, "priority": bad}
        assert_error(await owner.request("POST", run, json=body), 400, exact=MESSAGE)
    batch = {"runs": [{"parameters": {"prompt": "a"}}, {"parameters": {}, "priority": 1001}]}
    assert_error(
        await owner.request("POST", run + "s", json=batch), 400, exact=f"runs[1].{MESSAGE}"
    )
    assert await _task_count(owner) == 0

    for bound in (PRIORITY.low, PRIORITY.high):
        body = {"parameters": {"prompt": "a fox"}, "priority": bound}
        task_id = ok(await owner.request("POST", run, json=body), 202)["task_id"]
        assert await _priority(ctx, owner, task_id) == bound


async def test_a_direct_service_call_refuses_it_too(
    ctx: ServiceContext, accounts: Accounts
) -> None:
    owner = await accounts.signup("owner")
    wf_id = await _workflow(owner)
    scope = TeamScope(Caller(CallerKind.SESSION, owner.user_id), owner.team_id or "", Role.OWNER)
    request = RunRequest(parameters={"prompt": "a fox"}, priority=1001)
    with pytest.raises(BadRequest) as refused:
        await tasks.submit(ctx, scope, request, workflow_id=wf_id)
    assert refused.value.message == MESSAGE
    assert refused.value.status_code == 400
    with pytest.raises(BadRequest) as refused_batch:
        await tasks.submit_many(ctx, scope, [request], workflow_id=wf_id)
    assert refused_batch.value.message == f"runs[0]: {MESSAGE}"
    assert await _task_count(owner) == 0

    for bound in (PRIORITY.low, PRIORITY.high):
        ok_request = RunRequest(parameters={"prompt": "a fox"}, priority=bound)
        task_id = await tasks.submit(ctx, scope, ok_request, workflow_id=wf_id)
        assert await _priority(ctx, owner, task_id) == bound


async def test_the_run_form_shows_the_range_and_the_same_message(
    ctx: ServiceContext, client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("owner")
    wf_id = await _workflow(owner)
    browser = await sign_in(client, owner)
    try:
        form = await browser.get(f"/workflows/{wf_id}")
        assert '<label for="run-priority">Priority</label>' in form.text
        assert 'name="priority" min="-1000" max="1000" step="1" value="0"' in form.text

        run_path = f"/workflows/{wf_id}/run"
        for bad in ("1001", "-1001", "abc", "1.5", "1_0"):
            refused = await browser.post(run_path, {"p.prompt": "a fox", "priority": bad})
            assert refused.status_code == 400, bad
            assert field_errors(refused.text) == {"run-priority": MESSAGE}, bad
            assert 'aria-describedby="run-priority-hint run-priority-error"' in refused.text
        # Together with a bad Runs value, both are shown.
        both = await browser.post(
            run_path, {"p.prompt": "a fox", "priority": "1001", "run_count": "0"}
        )
        assert set(field_errors(both.text)) == {"run-priority", "run-count"}
        assert await _task_count(owner) == 0

        for bound in (PRIORITY.low, PRIORITY.high):
            ran = await browser.post(run_path, {"p.prompt": "a fox", "priority": str(bound)})
            assert ran.status_code == 303, ran.text
            task_id = ran.headers["location"].removeprefix("/tasks/")
            assert await _priority(ctx, owner, task_id) == bound
    finally:
        await browser.http.aclose()
