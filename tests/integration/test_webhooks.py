"""Webhooks: registration rules, the outbox, signed deliveries on the documented schedule (with a
controllable clock, not sleeps), the delivery log, redelivery, ping and secret rotation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runyard.context import ServiceContext
from runyard.domain.tasks import TaskStatus
from runyard.store.work import WorkRepos
from runyard.webhooks.deliverer import Deliverer
from tests.conftest import FakeClock
from tests.fixtures.graphs import text_to_image_workflow
from tests.integration.conftest import Account, Accounts

API = "/api/v1"


@dataclass
class Receiver:
    """A real HTTP endpoint on loopback that answers with scripted status codes."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        return Response(b"ok" if status < 300 else b"nope", status_code=status)


@pytest.fixture
async def receivers() -> AsyncIterator[Any]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def make(statuses: list[int] | None = None, delay: float = 0.0) -> Receiver:
        receiver = Receiver(list(statuses or []), delay)
        app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        receiver.url = f"http://127.0.0.1:{port}/hook"
        servers.append((server, task))
        return receiver

    yield make
    for server, task in servers:
        server.should_exit = True
        await task


@pytest.fixture(autouse=True)
def _loopback(ctx: ServiceContext) -> None:
    ctx.settings.webhooks.allow_http_loopback = True


async def hook(owner: Account, url: str, events: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"display_name": "CI notifier", "webhook_url": url}
    if events is not None:
        body["webhook_events"] = events
    response = await owner.request("POST", f"{API}/webhooks", json=body)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


async def finish(
    ctx: ServiceContext, owner: Account, target: TaskStatus = TaskStatus.COMPLETED
) -> str:
    """Submit a task and move it through the states the scheduler would."""
    await owner.request("POST", f"{API}/workflows/import", json=text_to_image_workflow())
    run = await owner.request(
        "POST", f"{API}/r/workflows/slug/text-to-image/run", json={"parameters": {"prompt": "x"}}
    )
    task_id: str = run.json()["task_id"]
    path = [TaskStatus.QUEUED, TaskStatus.RUNNING, target]
    for status in path:
        async with ctx.db.write() as session:
            repos = WorkRepos(session)
            task = await repos.task_for_update(task_id)
            assert task is not None
            fields: dict[str, Any] = {}
            if status is TaskStatus.COMPLETED:
                fields["task_output"] = {
                    "storage_key": f"tasks/{task_id}/1/out.png",
                    "image_count": 1,
                }
            if status is TaskStatus.FAILED:
                fields["task_error"] = "CUDA out of memory"
            await repos.change_status(task, status, ctx.now(), **fields)
    return task_id


def verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    """Check both signature schemes the way a receiver would."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-webhook-signature-256"], expected)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    standard = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert standard in headers["webhook-signature"].split(" ")


async def deliveries(owner: Account, webhook_id: str) -> list[dict[str, Any]]:
    response = await owner.request("GET", f"{API}/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["delivery_list"]
    return items


async def test_failing_receiver_gets_the_documented_schedule_and_one_accepted_delivery(
    ctx: ServiceContext, accounts: Accounts, clock: FakeClock, receivers: Any
) -> None:
    receiver = await receivers([500, 502, 503, 200])
    owner = await accounts.signup("owner")
    webhook = await hook(owner, receiver.url)
    task_id = await finish(ctx, owner)
    deliverer = Deliverer(ctx)
    try:
        schedule = [0, 5, 30, 120]
        for index, wait in enumerate(schedule):
            if wait:
                clock.advance(wait - 1)
                assert await deliverer.deliver_due() == 0  # not due yet: nothing is sent
                clock.advance(1)
            assert await deliverer.deliver_due() == 1
            assert len(receiver.requests) == index + 1
        assert await deliverer.deliver_due() == 0
        clock.advance(3600)
        assert await deliverer.deliver_due() == 0  # delivered: never sent again
    finally:
        await deliverer.stop()
    await owner.relogin()  # the clock moved past the session's hour

    bodies = {body for _, body in receiver.requests}
    assert len(bodies) == 1  # every attempt sends the same bytes
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert len(ids) == 1  # and the same webhook-id, so receivers can dedupe
    payload = json.loads(receiver.requests[0][1])
    assert payload == {
        "event_type": "task.completed",
        "task_id": task_id,
        "task_status": "completed",
        "task_output": {"storage_key": f"tasks/{task_id}/1/out.png", "image_count": 1},
        "task_error": "",
        "timestamp": payload["timestamp"],
    }
    secret = (await owner.request("GET", f"{API}/webhooks/{webhook['id']}")).json()[
        "webhook_secret"
    ]
    assert secret == webhook["webhook_secret"]
    for headers, body in receiver.requests:
        verify(secret, headers, body)

    [log] = await deliveries(owner, webhook["id"])
    assert log["delivery_status"] == "delivered"
    assert log["attempt_count"] == 4
    assert log["next_attempt_at"] is None
    assert [a["status_code"] for a in log["attempts"]] == [500, 502, 503, 200]
    assert [a["attempt"] for a in log["attempts"]] == [1, 2, 3, 4]
    detail = (await owner.request("GET", f"{API}/webhooks/{webhook['id']}")).json()
    assert detail["last_delivered_at"] is not None


async def test_schedule_survives_a_restart_and_gives_up_after_four_attempts(
    ctx: ServiceContext, accounts: Accounts, clock: FakeClock, receivers: Any
) -> None:
    receiver = await receivers([500] * 10)
    owner = await accounts.signup("owner")
    webhook = await hook(owner, receiver.url)
    await finish(ctx, owner, TaskStatus.FAILED)
    first = Deliverer(ctx)
    assert await first.deliver_due() == 1
    await first.stop()  # the server stops; the schedule lives in the database
    second = Deliverer(ctx)
    try:
        for wait in (5, 30, 120):
            clock.advance(wait)
            assert await second.deliver_due() == 1
        clock.advance(3600)
        assert await second.deliver_due() == 0
    finally:
        await second.stop()
    await owner.relogin()
    assert len(receiver.requests) == 4
    assert json.loads(receiver.requests[0][1])["task_error"] == "CUDA out of memory"
    [log] = await deliveries(owner, webhook["id"])
    assert log["delivery_status"] == "failed"
    assert log["last_error"] == "receiver answered 500"

    # Redeliver: the same message (same webhook-id) on a fresh schedule.
    receiver.statuses = [200]
    response = await owner.request(
        "POST", f"{API}/webhooks/{webhook['id']}/deliveries/{log['id']}/redeliver"
    )
    assert response.status_code == 200, response.text
    third = Deliverer(ctx)
    try:
        assert await third.deliver_due() == 1
    finally:
        await third.stop()
    assert receiver.requests[-1][0]["webhook-id"] == log["id"]
    [log] = await deliveries(owner, webhook["id"])
    assert (log["delivery_status"], log["attempt_count"]) == ("delivered", 5)


async def test_rotated_secret_signs_the_next_delivery(
    ctx: ServiceContext, accounts: Accounts, clock: FakeClock, receivers: Any
) -> None:
    receiver = await receivers([500, 200])
    owner = await accounts.signup("owner")
    webhook = await hook(owner, receiver.url)
    await finish(ctx, owner)
    deliverer = Deliverer(ctx)
    try:
        await deliverer.deliver_due()
        rotated = await owner.request("POST", f"{API}/webhooks/{webhook['id']}/rotate-secret")
        new_secret = rotated.json()["webhook_secret"]
        assert new_secret != webhook["webhook_secret"]
        clock.advance(5)
        await deliverer.deliver_due()
    finally:
        await deliverer.stop()
    (old_headers, old_body), (new_headers, new_body) = receiver.requests
    verify(webhook["webhook_secret"], old_headers, old_body)
    verify(new_secret, new_headers, new_body)
    with pytest.raises(AssertionError):
        verify(webhook["webhook_secret"], new_headers, new_body)


async def test_events_reach_only_webhooks_that_subscribe(
    ctx: ServiceContext, accounts: Accounts, receivers: Any
) -> None:
    default = await receivers()
    running = await receivers()
    cancelled = await receivers()
    owner = await accounts.signup("owner")
    await hook(owner, default.url)  # task.completed + task.failed
    await hook(owner, running.url, ["task.running"])
    await hook(owner, cancelled.url, ["task.cancelled"])
    other = await accounts.signup("other")
    await hook(other, default.url)  # another team's hook hears nothing of this team
    await finish(ctx, owner)
    await owner.request(
        "POST", f"{API}/r/workflows/slug/text-to-image/run", json={"parameters": {"prompt": "y"}}
    )
    task_list = (await owner.request("GET", f"{API}/r/tasks?status=pending")).json()["task_list"]
    await owner.request("POST", f"{API}/r/tasks/{task_list[0]['id']}/cancel")
    deliverer = Deliverer(ctx)
    try:
        await deliverer.deliver_due()
    finally:
        await deliverer.stop()
    kinds = lambda r: [json.loads(b)["event_type"] for _, b in r.requests]  # noqa: E731
    assert kinds(default) == ["task.completed"]
    assert kinds(running) == ["task.running"]
    assert kinds(cancelled) == ["task.cancelled"]


async def test_a_slow_receiver_does_not_hold_up_others(
    ctx: ServiceContext, accounts: Accounts, receivers: Any
) -> None:
    slow = await receivers(delay=2.0)
    fast = await receivers()
    owner = await accounts.signup("owner")
    await hook(owner, slow.url)
    await hook(owner, fast.url)
    await finish(ctx, owner)
    deliverer = Deliverer(ctx)
    try:
        assert await deliverer.deliver_due(wait=False) == 2
        async with asyncio.timeout(1.5):
            while not fast.requests:
                await asyncio.sleep(0.01)
        assert len(slow.requests) == 1  # started, still waiting for its answer
    finally:
        await deliverer.stop()


async def test_ping_is_signed_and_logged(
    ctx: ServiceContext, accounts: Accounts, receivers: Any
) -> None:
    receiver = await receivers()
    owner = await accounts.signup("owner")
    webhook = await hook(owner, receiver.url)
    queued = await owner.request("POST", f"{API}/webhooks/{webhook['id']}/ping")
    assert queued.status_code == 200
    deliverer = Deliverer(ctx)
    try:
        await deliverer.deliver_due()
    finally:
        await deliverer.stop()
    [(headers, body)] = receiver.requests
    assert json.loads(body)["event_type"] == "ping"
    verify(webhook["webhook_secret"], headers, body)
    [log] = await deliveries(owner, webhook["id"])
    assert (log["id"], log["event_type"], log["delivery_status"]) == (
        queued.json()["delivery_id"],
        "ping",
        "delivered",
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example.com/x", "https://"),
        ("ftp://hooks.example.com/x", "https://"),
        ("https://10.1.2.3/hook", "points to 10.1.2.3, which is not a public address"),
        ("https://169.254.169.254/latest/meta-data", "not a public address"),
        ("https://[fd00::1]/hook", "not a public address"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("not a url", "https://"),
    ],
)
async def test_webhook_urls_must_be_public_https(
    accounts: Accounts, url: str, message: str
) -> None:
    owner = await accounts.signup("owner")
    response = await owner.request(
        "POST", f"{API}/webhooks", json={"display_name": "x", "webhook_url": url}
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error_message"]
    assert (await owner.request("GET", f"{API}/webhooks")).json()["webhook_list"] == []


async def test_loopback_needs_the_development_setting(
    ctx: ServiceContext, accounts: Accounts
) -> None:
    ctx.settings.webhooks.allow_http_loopback = False
    owner = await accounts.signup("owner")
    for url in ("http://127.0.0.1:9/hook", "https://localhost/hook"):
        response = await owner.request(
            "POST", f"{API}/webhooks", json={"display_name": "x", "webhook_url": url}
        )
        assert response.status_code == 400, response.text


async def test_manage_webhooks(accounts: Accounts, receivers: Any) -> None:
    receiver = await receivers()
    owner = await accounts.signup("owner")
    member = await accounts.join(owner, "member")
    created = await hook(owner, receiver.url)
    listed = (await owner.request("GET", f"{API}/webhooks")).json()
    assert [w["id"] for w in listed["webhook_list"]] == [created["id"]]
    assert "webhook_secret" not in listed["webhook_list"][0]
    bad = await owner.request(
        "POST",
        f"{API}/webhooks",
        json={"display_name": "x", "webhook_url": receiver.url, "webhook_events": ["task.done"]},
    )
    assert bad.status_code == 400
    assert "task.done" in bad.json()["error_message"]
    update = await owner.request(
        "PUT",
        f"{API}/webhooks/{created['id']}",
        json={"webhook_events": ["task.failed"], "webhook_status": "disabled"},
    )
    assert update.status_code == 200, update.text
    detail = (await owner.request("GET", f"{API}/webhooks/{created['id']}")).json()
    assert (detail["webhook_events"], detail["webhook_status"]) == (["task.failed"], "disabled")
    for method, path in (
        ("GET", f"{API}/webhooks"),
        ("GET", f"{API}/webhooks/{created['id']}"),
        ("POST", f"{API}/webhooks/{created['id']}/rotate-secret"),
    ):
        assert (await member.request(method, path)).status_code == 403
    gone = await owner.request("DELETE", f"{API}/webhooks/{created['id']}")
    assert gone.status_code == 204
    assert (await owner.request("GET", f"{API}/webhooks/{created['id']}")).status_code == 404
