"""The Python SDK against a real server process and a simulated agent process, on SQLite and
PostgreSQL: runs end to end, events with resume, cancel, pairing, keys, webhooks, errors."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from runyard.client import (
    AsyncRunyard,
    Runyard,
    RunyardError,
    TaskEvent,
    TaskStatus,
    UploadProgress,
)
from tests.conftest import BACKENDS, database_url
from tests.e2e.stack import (
    SIM_GRAPH,
    RecordingTransport,
    Stack,
    route_of,
    start_stack,
)


@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"sdk-{request.param}")
    yield from start_stack(database_url(request, request.param, workdir), workdir)


def _assert_known_routes(transport: RecordingTransport) -> None:
    unknown = [r for r in transport.requests if route_of(*r) is None]
    downloads = [r for r in unknown if r[1].startswith("/api/v1/objects/") or "/files" in r[1]]
    assert unknown == downloads, f"requests to routes the SDK does not declare: {unknown}"


def test_run_end_to_end_with_events_result_and_download(stack: Stack, tmp_path: Path) -> None:
    transport = RecordingTransport()
    events: list[TaskEvent] = []
    with stack.client(transport=transport) as client:
        task = client.run(
            "sim",
            {"simulate_seconds": 0.3, "prompt": "a red fox"},
            wait=True,
            timeout=30,
            on_event=events.append,
        )
        assert task.task_status is TaskStatus.COMPLETED and task.ok and task.is_done
        assert task.task_source == "api_key"
        ids = [e.id for e in events]
        assert ids == list(range(1, len(ids) + 1)), ids
        assert events[-1].event == "completed" and events[-1].is_terminal
        assert [e.status for e in events if e.event == "status"][:1] == ["pending"]
        assert any(e.event == "progress" and e.progress for e in events)

        result = client.get_result(task.id)
        assert result.task_status is TaskStatus.COMPLETED
        assert result.task_output is not None and result.task_output["simulated"] is True
        files = client.download_outputs(task.id, tmp_path / "out")
        expected = len(result.download_urls or {}) or (1 if result.download_url else 0)
        assert len(files) == expected
        for path in files:
            assert path.read_bytes().startswith(b"simulated output")

        # Replaying a finished task's events gives the same events, resumable from any point.
        again = list(client.events(task.id, after=2))
        assert [e.id for e in again] == ids[2:]

        by_version = client.run("sim@1", {"simulate_seconds": 0}, wait=True, timeout=30)
        workflow = client.get_workflow("sim")
        by_id = client.run(workflow.id, wait=False)
        assert by_id.workflow_id == workflow.id == by_version.workflow_id
        assert workflow.workflow_json is None  # integration keys never read graphs
        assert [p.key for p in workflow.parameters] == ["simulate", "simulate_seconds", "prompt"]
        listed = client.list_tasks(workflow_id=workflow.id, per_page=100)
        assert {task.id, by_version.id, by_id.id} <= {t.id for t in listed}
        assert "sim" in [w.workflow_slug for w in client.list_workflows()]
        assert client.wait(by_id.id, timeout=30).ok
        # A failed task is returned, not raised.
        failed = client.run("sim", {"simulate": "fail-permanent"}, wait=True, timeout=30)
        assert failed.task_status is TaskStatus.FAILED
        assert failed.task_error == "simulated permanent failure"
        assert client.download_outputs(failed.id, tmp_path / "none") == []
        assert not (tmp_path / "none").exists()
    _assert_known_routes(transport)


class CutOnce(httpx.BaseTransport):
    """Cuts the first event stream right after its first event, like a dropped connection."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.event_requests: list[dict[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.event_requests.append(dict(request.headers))
        if len(self.event_requests) > 1:
            return response
        upstream = response.stream
        assert isinstance(upstream, httpx.SyncByteStream)

        class Cut(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                seen = b""
                for chunk in upstream:
                    seen += chunk
                    if b"\nid: 1\n" in b"\n" + seen and seen.endswith(b"\n\n"):
                        yield seen
                        raise httpx.RemoteProtocolError("peer closed connection (test)")
                yield seen

            def close(self) -> None:
                upstream.close()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Cut(), request=request
        )


def test_events_resume_after_a_dropped_connection(stack: Stack) -> None:
    transport = CutOnce()
    with stack.client(transport=transport, reconnect_delay=0.05) as client:
        task_id = client.submit("sim", {"simulate_seconds": 0.6})
        events = list(client.events(task_id, timeout=30))
    ids = [e.id for e in events]
    assert ids == list(range(1, len(ids) + 1)), ids  # every event once, in order
    assert events[-1].event == "completed"
    assert len(transport.event_requests) >= 2
    assert "last-event-id" not in transport.event_requests[0]
    assert transport.event_requests[1]["last-event-id"] == "1"


def test_cancel_a_running_task(stack: Stack) -> None:
    with stack.client() as client:
        task_id = client.submit("sim", {"simulate": "stall"})
        for event in client.events(task_id, timeout=30):
            if event.status == "running":
                break
        client.cancel_task(task_id)
        task = client.wait(task_id, timeout=30)
        assert task.task_status is TaskStatus.CANCELLED
        client.cancel_task(task_id)  # cancelling an ended task changes nothing
        assert client.get_task(task_id).task_status is TaskStatus.CANCELLED
        with pytest.raises(RunyardError) as timed_out:
            stalled = client.submit("sim", {"simulate": "stall"})
            client.wait(stalled, timeout=0.5)
        assert timed_out.value.status == 0 and "timed out" in timed_out.value.error_message
        client.cancel_task(stalled)


def test_api_errors_raise_one_exception_type(stack: Stack) -> None:
    with stack.client() as client:
        with pytest.raises(RunyardError) as missing:
            client.get_workflow("no-such-workflow")
        assert missing.value.status == 404
        assert missing.value.error_message == "workflow not found"
        with pytest.raises(RunyardError) as bad_param:
            client.run("sim", {"nope": 1})
        assert bad_param.value.status == 400 and "nope" in bad_param.value.error_message
        with pytest.raises(RunyardError) as no_task:
            client.get_task(str(uuid.uuid4()))
        assert no_task.value.status == 404
        with pytest.raises(RunyardError) as forbidden:
            client.import_workflow(SIM_GRAPH, slug="not-allowed")  # sk- cannot manage
        assert forbidden.value.status == 403
    with Runyard(stack.url, api_key="sk-not-a-real-key") as wrong, pytest.raises(RunyardError) as e:
        wrong.list_tasks()
    assert e.value.status == 401
    bad = Runyard(stack.url, email="owner@example.com", password="wrong-password")
    with bad, pytest.raises(RunyardError) as login:
        bad.list_tasks()
    assert login.value.status == 401 and login.value.error_message == "invalid email or password"
    with Runyard("http://127.0.0.1:9", api_key="sk-x") as nowhere, pytest.raises(RunyardError) as e:
        nowhere.list_tasks()
    assert e.value.status == 0 and "cannot reach" in e.value.error_message


def test_device_pairing_gives_a_working_device_key(stack: Stack) -> None:
    with stack.session() as owner, Runyard(stack.url, api_key="") as device:
        shown: list[str] = []

        def confirm(start: object) -> None:
            code = start.user_code  # type: ignore[attr-defined]
            shown.append(code)
            owner.confirm_pairing(code, "e2e laptop")

        paired = device.pair(confirm, timeout=20)
        assert paired.device_key.startswith("dk-") and paired.agent_key
        assert len(shown) == 1 and len(shown[0]) == 9
        assert device.me().email_address == "owner@example.com"
        assert any(w.workflow_slug == "sim" for w in device.list_workflows())
        # A person's device key reads graphs and manages workflows.
        assert device.get_workflow("sim").workflow_json == SIM_GRAPH
        keys = owner.list_keys(kind="device")
        assert "e2e laptop" in [k.display_name for k in keys]
        device.logout()
        with pytest.raises(RunyardError) as revoked:
            device.list_workflows()
        assert revoked.value.status == 401


def test_keys_and_webhooks(stack: Stack) -> None:
    with stack.session() as owner:
        created = owner.create_key("temporary", expires_in_days=1)
        assert created.raw_key.startswith("sk-") and created.kind == "integration"
        assert created.id in [k.id for k in owner.list_keys(kind="integration")]
        with Runyard(stack.url, api_key=created.raw_key) as temporary:
            temporary.list_tasks()
        owner.revoke_key(created.id)
        statuses = {k.id: k.key_status for k in owner.list_keys()}
        assert statuses[created.id] == "revoked"

        hook = owner.create_webhook("ci", "http://127.0.0.1:9/hook", events=["task.completed"])
        assert hook.webhook_secret.startswith("whsec_")
        assert hook.id in [w.id for w in owner.list_webhooks()]
        owner.update_webhook(hook.id, webhook_status="disabled")
        fetched = owner.get_webhook(hook.id)
        assert fetched.webhook_status == "disabled"
        assert fetched.webhook_secret == hook.webhook_secret
        assert owner.ping_webhook(hook.id)
        deliveries = owner.list_deliveries(hook.id)
        assert [d.event_type for d in deliveries] == ["ping"]
        owner.delete_webhook(hook.id)
        with pytest.raises(RunyardError) as gone:
            owner.get_webhook(hook.id)
        assert gone.value.status == 404


def test_session_refreshes_and_keys_need_a_session(stack: Stack) -> None:
    with stack.session() as owner:
        owner.login()
        first = owner._auth.access_token
        owner._auth.expire()  # as if the hour had passed
        assert owner.list_tasks(per_page=1) is not None
        assert owner._auth.access_token != first
        owner._auth.access_token = "eyJ.not.valid"  # the server refuses it: renew once, retry
        assert owner.list_agents().items
    with stack.client() as client, pytest.raises(RunyardError) as e:
        client.create_key("nope")
    assert e.value.status == 403


def test_async_client(stack: Stack, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with AsyncRunyard(stack.url, api_key=stack.sk) as client:
            seen: list[str] = []

            async def record(event: TaskEvent) -> None:
                seen.append(event.event)

            task = await client.run(
                "sim", {"simulate_seconds": 0.2}, wait=True, timeout=30, on_event=record
            )
            assert task.ok and seen[-1] == "completed"
            files = await client.download_outputs(task.id, tmp_path)
            result = await client.get_result(task.id)
            assert len(files) == len(result.download_urls or {})

            stalled = await client.submit("sim", {"simulate": "stall"})
            async for event in client.events(stalled, timeout=30):
                if event.status == "running":
                    break
            await client.cancel_task(stalled)
            assert (await client.wait(stalled, timeout=30)).task_status is TaskStatus.CANCELLED
            with pytest.raises(RunyardError) as missing:
                await client.get_workflow("missing")
            assert missing.value.status == 404
        async with AsyncRunyard(
            stack.url, email="owner@example.com", password="owner-password"
        ) as s:
            assert (await s.me()).email_address == "owner@example.com"
            assert [a.agent_id for a in (await s.list_agents())] == ["sim-agent"]

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 30


def _input_log(client: Runyard, task_id: str) -> list[str]:
    """What the simulated agent logged about the inputs it downloaded."""
    lines = [
        line
        for event in client.events(task_id, timeout=30)
        if event.event == "log"
        for line in event.data.get("lines", [])
    ]
    return [line for line in lines if line.startswith("input ")]


def test_upload_files_and_run_with_path_parameters(stack: Stack, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3000))
    big = tmp_path / "big scan.tiff"
    big.write_bytes(os.urandom(11 * 1024 * 1024 + 17))  # three 5 MiB parts on this stack
    transport = RecordingTransport()
    seen: list[UploadProgress] = []
    with stack.client(transport=transport, multipart_threshold=1024 * 1024) as client:
        key = client.upload_file(photo, progress=seen.append)
        assert key.startswith(f"inputs/{stack.team_id}/") and key.endswith("/photo.png")
        assert seen[0].done == 0 and seen[-1].done == seen[-1].total == photo.stat().st_size
        assert {s.filename for s in seen} == {"photo.png"}

        parts: list[UploadProgress] = []
        big_key = client.upload_file(big, progress=parts.append)
        assert big_key.endswith("/big scan.tiff")
        assert parts[-1].done == big.stat().st_size
        puts = [path for method, path in transport.requests if method == "PUT"]
        assert len(puts) == 1 + 3  # the photo, then the big file's three parts
        for file_key, size in ((key, 3008), (big_key, big.stat().st_size)):
            task = client.run("sim-img", {"image": file_key}, wait=True, timeout=30)
            assert task.ok, task.task_error
            assert _input_log(client, task.id) == [f"input image: {size} bytes"]

        # A Path value is uploaded on the way.
        uploads: list[UploadProgress] = []
        task = client.run(
            "sim-img", {"image": photo}, wait=True, timeout=30, upload_progress=uploads.append
        )
        assert task.ok and uploads[-1].done == 3008
        assert _input_log(client, task.id) == ["input image: 3008 bytes"]

        before = len(transport.requests)
        with pytest.raises(RunyardError) as missing:
            client.run("sim-img", {"image": tmp_path / "nope.png"})
        assert missing.value.status == 0 and "nope.png" in missing.value.error_message
        assert len(transport.requests) == before  # nothing was sent
    _assert_known_routes(transport)

    async def scenario() -> None:
        async with AsyncRunyard(stack.url, api_key=stack.sk, multipart_threshold=1) as client:
            steps: list[UploadProgress] = []
            file_key = await client.upload_file(photo, progress=steps.append)
            assert steps[-1].done == 3008 and file_key.endswith("/photo.png")
            task = await client.run("sim-img", {"image": photo}, wait=True, timeout=30)
            assert task.ok

    asyncio.run(scenario())
