"""The limits in ``domain/limits.py`` are the ones every surface uses: the OpenAPI document
shows them, and the SDK refuses an out-of-range priority with the server's message before it
sends anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from runyard.client import AsyncRunyard, Runyard, RunyardError
from runyard.domain import limits
from runyard.domain.errors import BadRequest
from runyard.domain.limits import IntRange


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from runyard.app import create_app
    from runyard.config import Settings

    document: dict[str, Any] = create_app(
        Settings(data_dir=tmp_path_factory.mktemp("data"))
    ).openapi()
    return document


def _schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = spec["components"]["schemas"][name]
    return found


def test_the_openapi_document_shows_the_declared_limits(spec: dict[str, Any]) -> None:
    priority = _schema(spec, "RunIn")["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"]) == (limits.PRIORITY.low, limits.PRIORITY.high)
    runs = _schema(spec, "RunsIn")["properties"]["runs"]
    assert runs["maxItems"] == limits.MAX_RUNS_PER_REQUEST
    labels = _schema(spec, "WorkflowIn")["properties"]["required_labels"]
    assert labels["maxItems"] == limits.MAX_LABELS
    retries = _schema(spec, "WorkflowIn")["properties"]["max_retries"]
    assert retries["maximum"] == limits.MAX_RETRIES.high
    team = _schema(spec, "TeamCreateRequest")["properties"]["display_name"]
    assert team["maxLength"] == limits.NAME_MAX
    listing = spec["paths"]["/api/v1/members"]["get"]["parameters"]
    per_page = next(p for p in listing if p["name"] == "per_page")["schema"]
    assert (per_page["maximum"], per_page["default"]) == (
        limits.PER_PAGE.high,
        limits.PER_PAGE_DEFAULT,
    )


def test_a_range_takes_its_bounds_and_refuses_the_rest() -> None:
    span = IntRange("priority", -2, 2)
    assert [v in span for v in (-3, -2, 0, 2, 3)] == [False, True, True, True, False]
    assert True not in span and 1.0 not in span and "1" not in span
    assert span.check(2) == 2
    with pytest.raises(BadRequest) as refused:
        span.check(3)
    assert refused.value.message == "priority: must be a whole number from -2 to 2"


def _refusing_server(sent: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    return httpx.MockTransport(handler)


def test_the_sdk_refuses_a_priority_out_of_range_before_sending(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"png")
    with Runyard("http://runyard.test", api_key="sk-x", transport=_refusing_server(sent)) as sdk:
        for call in (
            lambda: sdk.submit("foxes", {"image": photo}, priority=1001),
            lambda: sdk.run_many("foxes", [{"image": photo}], priority=-1001),
        ):
            with pytest.raises(RunyardError) as refused:
                call()
            assert refused.value.error_message == limits.PRIORITY.message
    assert sent == []  # not even the upload


async def test_the_async_sdk_refuses_it_too() -> None:
    sent: list[httpx.Request] = []
    transport = _refusing_server(sent)
    async with AsyncRunyard("http://runyard.test", api_key="sk-x", transport=transport) as sdk:
        with pytest.raises(RunyardError) as refused:
            await sdk.submit("foxes", {}, priority=1001)
    assert refused.value.error_message == limits.PRIORITY.message
    assert sent == []


def test_an_agent_over_the_limits_is_refused_by_the_protocol_and_its_settings() -> None:
    from pydantic import ValidationError

    from runyard.agent.config import AgentSettings
    from runyard.protocol import v1

    top = limits.CAPACITY.high
    assert v1.Hello(agent_id="gpu-1", capacity=top).capacity == top
    with pytest.raises(ValidationError):
        v1.Hello(agent_id="gpu-1", capacity=top + 1)
    with pytest.raises(ValidationError):
        v1.Hello(agent_id="gpu-1", labels=[f"l{i}" for i in range(limits.MAX_AGENT_LABELS + 1)])
    with pytest.raises(ValidationError):
        v1.Hello(agent_id="x" * (limits.AGENT_ID_MAX + 1))
    with pytest.raises(ValidationError):
        AgentSettings(capacity=top + 1)
