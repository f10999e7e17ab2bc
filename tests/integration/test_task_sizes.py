"""Limits that hold end to end: a task too large for the frames that carry it is refused at
submit, and one an agent could never receive fails at once instead of going round forever."""

from __future__ import annotations

import pytest

from runyard.domain import limits
from runyard.protocol import v1
from tests.integration.conftest import assert_error
from tests.integration.live import LiveServer, RawAgent, api, live_team

RUN = "/r/workflows/slug/text-to-image/run"


async def test_an_oversized_parameter_is_refused_at_submit_naming_it(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        # 9 MiB: under the request body limit (16 MB), over what one value may be.
        huge = {"parameters": {"prompt": "x" * (9 * limits.MIB)}}
        refused = await client.post(RUN, headers=team.sk_headers, json=huge)
        assert_error(refused, 400, "parameter 'prompt' is 9,437,186 bytes")
        assert "at most 1,048,576 bytes (1 MiB)" in refused.json()["error_message"]
        listed = await client.get("/r/tasks", headers=team.sk_headers)
        assert listed.json()["page_meta"]["total_count"] == 0
        # Just under the limit is a task like any other.
        fits = {"parameters": {"prompt": "x" * (limits.PARAM_VALUE_MAX_BYTES - 2)}}
        assert (await client.post(RUN, headers=team.sk_headers, json=fits)).status_code == 202


async def test_text_the_databases_cannot_hold_is_refused_at_submit(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        for bad in ('"a\\ud800b"', '"a\\u0000b"'):
            body = '{"parameters": {"prompt": ' + bad + "}}"
            refused = await client.post(
                RUN, headers={**team.sk_headers, "Content-Type": "application/json"}, content=body
            )
            assert_error(refused, 400, "NUL characters or unpaired surrogates")


async def test_a_task_the_agent_could_not_receive_fails_at_once(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        small = 64 * 1024
        agent = await RawAgent.connect(
            server, team.agent_key, labels=["gpu"], max_frame_bytes=small
        )
        assert agent.welcome.max_frame_bytes == limits.FRAME_MAX_BYTES
        task_id = await team.run(parameters={"prompt": "x" * 100_000})
        failed = await team.wait(task_id, "failed")
        assert f"over agent agent-1's limit of {small:,} bytes" in failed["task_error"]
        assert failed["retry_count"] == 0
        # Nothing was sent that the agent would have hung up on; it still works.
        with pytest.raises(TimeoutError):
            await agent.recv(v1.Dispatch, timeout=0.5)
        fits = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        assert dispatch.task_id == fits
        await agent.close()
