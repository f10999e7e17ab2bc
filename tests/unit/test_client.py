"""The SDK without a server: routes against the OpenAPI document, SSE parsing, errors, session
refresh, downloads, and that it stays light (no server imports)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from runyard.client import AsyncRunyard, DownloadProgress, Runyard, RunyardError
from runyard.client._core import ROUTES, SSEDecoder, safe_filename, task_event

SERVER = "http://runyard.test"
TASK_ID = "019c0000-0000-7000-8000-000000000001"


def _template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_every_sdk_route_exists_in_the_openapi_document(tmp_path: Path) -> None:
    from runyard.app import create_app
    from runyard.config import Settings

    spec = create_app(Settings(data_dir=tmp_path)).openapi()
    served = {
        (method.upper(), _template(path))
        for path, operations in spec["paths"].items()
        for method in operations
    }
    used = {(r.method, _template("/api/v1" + r.template)) for r in ROUTES}
    assert len(ROUTES) == len(used) > 25
    assert used - served == set()
    # And the path parameter names match, so a template fills in as the server expects.
    names = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    for route in ROUTES:
        assert (route.method, "/api/v1" + route.template) in names, route


def test_the_sdk_does_not_import_the_server() -> None:
    code = (
        "import sys, runyard.client\n"
        "heavy = ('runyard.store', 'runyard.api', 'runyard.services', 'runyard.app',\n"
        "         'runyard.gateway', 'runyard.engine', 'runyard.config', 'sqlalchemy',\n"
        "         'fastapi', 'uvicorn', 'typer', 'structlog', 'runyard.cli.')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_sse_decoder_follows_the_event_stream_rules() -> None:
    decoder = SSEDecoder()
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "",
        "id: 7",
        "event: progress",
        'data: {"progress": 0.5,',
        'data:  "current_node": "3"}',
        "",
        "data: no id",
        "",
    ]
    messages = [m for m in (decoder.feed(line) for line in lines) if m is not None]
    assert decoder.retry_ms == 2000
    assert [(m.event, m.id) for m in messages] == [("progress", "7"), ("message", "7")]
    event = task_event(messages[0])
    assert event is not None and event.id == 7 and event.progress == 0.5
    assert event.current_node == "3"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
        ("../../etc/passwd", "passwd"),
        ("a/b/c.txt", "c.txt"),
        ("..", "fallback"),
        (".hidden", "hidden"),
        ("we ird%2Fname?.png", "we ird_2Fname_.png"),
        ("é<t>.png", "é_t_.png"),
        ("", "fallback"),
    ],
)
def test_download_names_are_plain_file_names(name: str, expected: str) -> None:
    assert safe_filename(name, "fallback") == expected


Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **options: Any) -> Runyard:
    return Runyard(SERVER, transport=httpx.MockTransport(handler), **options)


def test_errors_carry_status_and_error_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/r/tasks"):
            return httpx.Response(403, json={"error_message": "role too low"})
        return httpx.Response(502, text="<html>bad gateway</html>")

    with _client(handler, api_key="sk-test") as client:
        with pytest.raises(RunyardError) as denied:
            client.list_tasks()
        assert (denied.value.status, denied.value.error_message) == (403, "role too low")
        assert str(denied.value) == "403: role too low"
        with pytest.raises(RunyardError) as proxy:
            client.get_task(TASK_ID)
        assert proxy.value.status == 502 and "bad gateway" in proxy.value.error_message


def test_session_signs_in_picks_a_team_and_refreshes_once_on_401() -> None:
    seen: list[tuple[str, str | None, str | None]] = []
    tokens = iter(["access-1", "access-2"])
    refreshed: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        seen.append((path, request.headers.get("Authorization"), request.headers.get("X-Team-ID")))
        if path == "/api/v1/auth/login":
            assert json.loads(request.content) == {
                "email_address": "me@example.com",
                "user_password": "secret-password",
            }
            return httpx.Response(
                200, json={"access_token": next(tokens), "refresh_token": "r1", "expires_in": 3600}
            )
        if path == "/api/v1/auth/refresh":
            refreshed.append(json.loads(request.content)["refresh_token"])
            return httpx.Response(
                200, json={"access_token": next(tokens), "refresh_token": "r2", "expires_in": 3600}
            )
        if path == "/api/v1/users/me":
            team = {"id": "team-1", "display_name": "T", "member_role": "owner"}
            return httpx.Response(
                200, json={"id": "u", "email_address": "me@example.com", "team_list": [team]}
            )
        if request.headers["Authorization"] == "Bearer access-1" and len(seen) > 3:
            return httpx.Response(401, json={"error_message": "token expired"})
        return httpx.Response(
            200,
            json={
                "agent_list": [],
                "page_meta": {"current_page": 1, "per_page": 100, "total_count": 0},
            },
        )

    with _client(handler, email="me@example.com", password="secret-password") as client:
        assert list(client.list_agents()) == []
        assert client.team_id == "team-1"
        assert list(client.list_agents()) == []  # 401 → refresh → retried with access-2
    assert refreshed == ["r1"]
    paths = [p for p, _, _ in seen]
    assert paths == [
        "/api/v1/auth/login",
        "/api/v1/users/me",
        "/api/v1/r/agents",
        "/api/v1/r/agents",
        "/api/v1/auth/refresh",
        "/api/v1/r/agents",
    ]
    assert seen[2][1:] == ("Bearer access-1", "team-1")
    assert seen[-1][1:] == ("Bearer access-2", "team-1")
    assert all(auth is None for p, auth, _ in seen if p.startswith("/api/v1/auth/"))


def test_api_key_from_the_environment_and_no_team_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_API_KEY", "sk-from-env")
    monkeypatch.setenv("RUNYARD_SERVER_URL", "http://env.test:9000/api/v1/")
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        assert request.url.host == "env.test"
        return httpx.Response(200, json={"is_success": True})

    with Runyard(transport=httpx.MockTransport(handler)) as client:
        assert client.server_url == "http://env.test:9000"
        client.cancel_task(TASK_ID)
    assert headers[0]["Authorization"] == "Bearer sk-from-env"
    assert "X-Team-ID" not in headers[0]
    with pytest.raises(RunyardError, match="http"):
        Runyard("ftp://nope")


def _result(urls: dict[str, str] | None, url: str | None = None) -> dict[str, Any]:
    return {
        "id": TASK_ID,
        "task_status": "completed",
        "task_output": {"outputs": []},
        "download_url": url,
        "download_urls": urls,
        "expires_at": None,
        "task_error": None,
        "completed_at": "2026-11-28T17:00:00Z",
    }


def test_download_outputs_streams_files_with_progress_and_no_credentials(tmp_path: Path) -> None:
    body = b"x" * 300_000
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path.endswith("/result"):
            return httpx.Response(
                200,
                json=_result(
                    {
                        "9.images.0": "/api/v1/objects/tasks/t/1/ComfyUI_0001.png?sig=a",
                        "9.images.1": "https://bucket.example/tasks/t/1/x?sig=b",
                        "9.images.2": "https://bucket.example/tasks/t/1/ComfyUI_0001.png?s=c",
                    }
                ),
            )
        if request.url.host == "bucket.example" and request.url.path.endswith("/x"):
            disposition = "attachment; filename=\"a_b.png\"; filename*=UTF-8''a%2Fb%C3%A9.png"
            return httpx.Response(
                200, content=b"second", headers={"Content-Disposition": disposition}
            )
        return httpx.Response(200, content=body)

    steps: list[DownloadProgress] = []
    with _client(handler, api_key="sk-secret") as client:
        files = client.download_outputs(TASK_ID, tmp_path / "out", progress=steps.append)
    assert [f.name for f in files] == ["ComfyUI_0001.png", "bé.png", "ComfyUI_0001-2.png"]
    assert files[0].read_bytes() == body and files[1].read_bytes() == b"second"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.name for f in files)
    downloads = [r for r in requests if not r.url.path.endswith("/result")]
    assert str(downloads[0].url).startswith(f"{SERVER}/api/v1/objects/")
    assert all("Authorization" not in r.headers for r in downloads)
    first = [s for s in steps if s.index == 0]
    assert first[0].done == 0 and first[-1].done == len(body) == first[-1].total
    assert {s.count for s in steps} == {3}


def test_download_outputs_tolerates_tasks_without_outputs(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_result(None))

    with _client(handler, api_key="sk-x") as client:
        assert client.download_outputs(TASK_ID, tmp_path / "never") == []
    assert not (tmp_path / "never").exists()


def test_a_failed_download_leaves_no_partial_file(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/result"):
            return httpx.Response(200, json=_result(None, "/api/v1/objects/gone.png?sig=x"))
        return httpx.Response(403, json={"error_message": "link expired"})

    with _client(handler, api_key="sk-x") as client, pytest.raises(RunyardError) as e:
        client.download_outputs(TASK_ID, tmp_path)
    assert (e.value.status, e.value.error_message) == (403, "link expired")
    assert list(tmp_path.iterdir()) == []


def _sse(*events: tuple[int, str, dict[str, Any]]) -> bytes:
    return b"retry: 10\n\n" + b"".join(
        f"id: {i}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode() for i, name, data in events
    )


def test_events_reconnect_with_last_event_id_until_the_terminal_event() -> None:
    streams = [
        _sse((1, "status", {"status": "pending"}), (2, "status", {"status": "running"})),
        b"",  # an empty answer: the stream ended without a terminal event
        _sse((3, "progress", {"progress": 1.0}), (4, "completed", {"output": {"ok": 1}})),
    ]
    resumed_from: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        resumed_from.append(request.headers.get("Last-Event-ID"))
        return httpx.Response(
            200, content=streams.pop(0), headers={"Content-Type": "text/event-stream"}
        )

    with _client(handler, api_key="sk-x", reconnect_delay=0) as client:
        events = list(client.events(TASK_ID))
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert events[-1].output == {"ok": 1}
    assert resumed_from == [None, "2", "2"]


def test_events_stop_on_client_errors_and_give_up_on_a_dead_server() -> None:
    def not_found(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error_message": "task not found"})

    with _client(not_found, api_key="sk-x") as client, pytest.raises(RunyardError) as e:
        list(client.events(TASK_ID))
    assert e.value.status == 404

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with (
        _client(down, api_key="sk-x", reconnect_delay=0.01, give_up_after=0.1) as client,
        pytest.raises(RunyardError) as lost,
    ):
        list(client.events(TASK_ID))
    assert lost.value.status == 0 and "lost the event stream" in lost.value.error_message


def test_async_client_shares_the_core() -> None:
    import asyncio

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, content=_sse((1, "cancelled", {"status": "cancelled"})))
        if request.url.path.endswith("/run"):
            assert request.headers["Idempotency-Key"] == "k1"
            assert json.loads(request.content) == {"parameters": {"steps": 20}, "priority": 5}
            return httpx.Response(202, json={"task_id": TASK_ID})
        return httpx.Response(
            200,
            json={
                "id": TASK_ID,
                "workflow_id": "w",
                "task_source": "api_key",
                "task_status": "cancelled",
                "created_at": "2026-11-28T17:00:00Z",
            },
        )

    async def scenario() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncRunyard(SERVER, api_key="sk-x", transport=transport) as client:
            task = await client.run(
                "text-to-image@2", {"steps": 20}, wait=True, priority=5, idempotency_key="k1"
            )
            assert task.task_status == "cancelled" and not task.ok and task.is_done

    asyncio.run(scenario())


def _batch_server(
    sent: list[tuple[str, dict[str, Any]]], fail: dict[int, httpx.Response] | None = None
) -> Handler:
    """Answers ``…/runs`` with one id per run (``task-<i>`` from its parameters), or the
    response in ``fail`` for the n-th request (from 0)."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append((request.url.path, body))
        if fail and len(sent) - 1 in fail:
            return fail[len(sent) - 1]
        ids = [f"task-{run['parameters']['i']}" for run in body["runs"]]
        return httpx.Response(202, json={"task_ids": ids})

    return handler


def test_run_many_sends_the_runs_in_requests_of_100_and_returns_every_id_in_order() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    with _client(_batch_server(sent), api_key="sk-x") as client:
        ids = client.run_many(
            "text-to-image@2", [{"i": n} for n in range(250)], priority=5, target_pool="gpu"
        )
    assert ids == [f"task-{n}" for n in range(250)]
    assert [path for path, _ in sent] == ["/api/v1/r/workflows/slug/text-to-image@2/runs"] * 3
    assert [len(body["runs"]) for _, body in sent] == [100, 100, 50]
    assert sent[0][1]["runs"][0] == {"parameters": {"i": 0}, "priority": 5, "target_pool": "gpu"}
    assert sent[2][1]["runs"][-1]["parameters"] == {"i": 249}


def test_run_many_by_id_sends_one_request_and_parameters_may_be_empty() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content)))
        return httpx.Response(202, json={"task_ids": ["a", "b"]})

    with _client(handler, api_key="sk-x") as client:
        assert client.run_many(TASK_ID, [None, {}]) == ["a", "b"]
        assert client.run_many(TASK_ID, []) == []  # nothing to send
    assert sent == [
        (f"/api/v1/r/workflows/{TASK_ID}/runs", {"runs": [{"parameters": {}}, {"parameters": {}}]})
    ]


def test_run_many_errors_name_the_run_across_requests() -> None:
    refused = httpx.Response(400, json={"error_message": "runs[3]: steps: must be <= 150"})
    sent: list[tuple[str, dict[str, Any]]] = []
    with (
        _client(_batch_server(sent, {0: refused}), api_key="sk-x") as client,
        pytest.raises(RunyardError) as first,
    ):
        client.run_many("sim", [{"i": n} for n in range(5)])
    assert (first.value.status, first.value.error_message) == (
        400,
        "runs[3]: steps: must be <= 150",
    )

    sent.clear()
    with (
        _client(_batch_server(sent, {1: refused}), api_key="sk-x") as client,
        pytest.raises(RunyardError) as later,
    ):
        client.run_many("sim", [{"i": n} for n in range(150)])
    assert later.value.status == 400
    assert later.value.error_message == (
        "runs[103]: steps: must be <= 150 (the 100 runs before it were submitted)"
    )
    assert len(sent) == 2


def test_run_many_uploads_a_shared_file_once(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG" + b"x" * 100)
    presigned: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/r/files/presign"):
            presigned.append(json.loads(request.content))
            return httpx.Response(
                200, json={"file_key": "inputs/photo.png", "upload_url": "/put/photo?sig=1"}
            )
        if request.method == "PUT":
            assert request.content == photo.read_bytes()
            return httpx.Response(200, headers={"ETag": '"e"'})
        runs.extend(json.loads(request.content)["runs"])
        return httpx.Response(202, json={"task_ids": ["a", "b", "c"]})

    with _client(handler, api_key="sk-x") as client:
        ids = client.run_many("img2img", [{"image": photo, "seed": n} for n in range(3)])
    assert ids == ["a", "b", "c"] and len(presigned) == 1
    assert [r["parameters"] for r in runs] == [
        {"image": "inputs/photo.png", "seed": n} for n in range(3)
    ]

    with _client(handler, api_key="sk-x") as client, pytest.raises(RunyardError) as missing:
        client.run_many("img2img", [{"image": photo}, {"image": tmp_path / "nope.png"}])
    assert missing.value.status == 0 and "cannot upload" in missing.value.error_message
    assert len(presigned) == 1  # the missing file was found before anything was sent


def test_async_run_many_matches_the_sync_client() -> None:
    import asyncio

    sent: list[tuple[str, dict[str, Any]]] = []

    async def scenario() -> list[str]:
        transport = httpx.MockTransport(_batch_server(sent))
        async with AsyncRunyard(SERVER, api_key="sk-x", transport=transport) as client:
            return await client.run_many("sim", ({"i": n} for n in range(101)), priority=1)

    assert asyncio.run(scenario()) == [f"task-{n}" for n in range(101)]
    assert [len(body["runs"]) for _, body in sent] == [100, 1]
    assert all(run["priority"] == 1 for _, body in sent for run in body["runs"])
