"""Webhooks: registration rules, the outbox, signed deliveries on the documented schedule (with a
controllable clock, not sleeps), the delivery log, redelivery, ping and secret rotation, and
egress: refused destinations, a name resolved once and pinned (DNS rebinding), no redirects,
the Host header and TLS name kept on a pinned connection. Network: loopback only."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runyard.context import ServiceContext
from runyard.domain.tasks import TaskStatus
from runyard.security import egress
from runyard.security.egress import EgressTransport
from runyard.store.work import WorkRepos
from runyard.webhooks.deliverer import Deliverer
from runyard.webhooks.urls import webhook_policy
from tests.conftest import FakeClock
from tests.fixtures.graphs import text_to_image_workflow
from tests.integration.conftest import Account, Accounts, assert_error

API = "/api/v1"


@dataclass
class Receiver:
    """A real HTTP endpoint on loopback that answers with scripted status codes."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    port: int = 0
    location: str = ""  # sent with a 3xx

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Location": self.location} if 300 <= status < 400 else None
        return Response(b"ok" if status < 300 else b"nope", status_code=status, headers=headers)


@pytest.fixture
async def receivers() -> AsyncIterator[Any]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def make(
        statuses: list[int] | None = None, delay: float = 0.0, tls: tuple[Path, Path] | None = None
    ) -> Receiver:
        """A receiver on 127.0.0.1; ``tls``: (certificate, key) files to serve https."""
        receiver = Receiver(list(statuses or []), delay)
        app = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_config=None,
            lifespan="off",
            ssl_certfile=tls and tls[0],
            ssl_keyfile=tls and tls[1],
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        receiver.port = port
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
        # The findings of issue 14: shared address space (a metadata API), IETF protocol
        # assignments, 6to4 wrapping link-local.
        ("https://100.100.100.200/latest", "points to 100.100.100.200, which is not a public"),
        ("https://192.0.0.170/hook", "points to 192.0.0.170, which is not a public address"),
        ("https://[2002:a9fe:a9fe::]/", "2002:a9fe:a9fe:: (6to4 for 169.254.169.254), which is"),
        ("https://[::ffff:169.254.169.254]/", "IPv4-mapped for 169.254.169.254"),
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


# Egress: names resolve through a scripted resolver (no DNS); connections other than to
# loopback are recorded and refused by the network backend (no network).


@dataclass
class Resolver:
    """Answers ``first`` for the first ``times`` lookups, then ``then``; counts lookups."""

    first: list[str]
    times: int = 1_000_000
    then: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        return self.first if len(self.asked) <= self.times else self.then


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Connects to loopback; records every address asked for and refuses any other."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if not ipaddress.ip_address(host).is_loopback:
            raise httpcore.ConnectError(f"tests have no network: {host}")
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@pytest.fixture
async def listener() -> AsyncIterator[list[int]]:
    """A bare TCP listener on 127.0.0.1 that counts connections: ``[port, connections]``."""
    seen = [0, 0]

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen[1] += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    seen[0] = server.sockets[0].getsockname()[1]
    yield seen
    server.close()
    await server.wait_closed()


async def test_names_that_resolve_to_private_addresses_are_refused_at_create_and_update(
    accounts: Accounts, monkeypatch: pytest.MonkeyPatch, receivers: Any
) -> None:
    names = {
        "metadata.example.test": ["100.100.100.200"],
        "six.example.test": ["2002:a9fe:a9fe::"],
        "mixed.example.test": ["8.8.8.8", "192.168.1.20"],
        "public.example.test": ["8.8.8.8"],
    }

    async def resolve(host: str, port: int) -> Sequence[str]:
        return names[host]

    monkeypatch.setattr(egress, "system_resolver", resolve)
    owner = await accounts.signup("owner")
    created = await owner.request(
        "POST",
        f"{API}/webhooks",
        json={"display_name": "x", "webhook_url": "https://metadata.example.test/hook"},
    )
    assert_error(
        created,
        400,
        exact="webhook_url resolves to 100.100.100.200, which is not a public address",
    )
    webhook = await hook(owner, "https://public.example.test/hook")
    for host, shown in (
        ("six.example.test", "2002:a9fe:a9fe:: (6to4 for 169.254.169.254)"),
        ("mixed.example.test", "192.168.1.20"),  # every address must pass
    ):
        updated = await owner.request(
            "PUT", f"{API}/webhooks/{webhook['id']}", json={"webhook_url": f"https://{host}/"}
        )
        assert_error(
            updated, 400, exact=f"webhook_url resolves to {shown}, which is not a public address"
        )
    detail = (await owner.request("GET", f"{API}/webhooks/{webhook['id']}")).json()
    assert detail["webhook_url"] == "https://public.example.test/hook"


async def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_connected_to(
    ctx: ServiceContext,
    accounts: Accounts,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    listener: list[int],
) -> None:
    """DNS rebinding: the name answers a public address for the checks (at creation and at the
    delivery), then 127.0.0.1. The connection goes to the checked public address, never to
    loopback; the next attempt's check sees 127.0.0.1 and refuses it before any connection."""
    ctx.settings.webhooks.allow_http_loopback = False
    port = listener[0]
    resolver = Resolver(first=["8.8.8.8"], times=2, then=["127.0.0.1"])
    monkeypatch.setattr(egress, "system_resolver", resolver)
    owner = await accounts.signup("owner")
    webhook = await hook(owner, f"https://rebind.example.test:{port}/hook")
    await finish(ctx, owner)
    backend = RecordingBackend()
    transport = EgressTransport(webhook_policy(False, resolver), network_backend=backend)
    deliverer = Deliverer(ctx, transport)
    try:
        assert await deliverer.deliver_due() == 1
        assert backend.connects == [("8.8.8.8", port)]  # the checked address (refused here)
        assert len(resolver.asked) == 2  # creation and this attempt: no second lookup to send
        clock.advance(5)
        assert await deliverer.deliver_due() == 1
    finally:
        await deliverer.stop()
    await owner.relogin()
    assert backend.connects == [("8.8.8.8", port)]  # the refused attempt connected nowhere
    assert listener[1] == 0  # nothing ever reached loopback
    [log] = await deliveries(owner, webhook["id"])
    first, second = log["attempts"]
    assert "tests have no network: 8.8.8.8" in first["error"]
    assert second["error"] == (
        "webhook_url resolves to 127.0.0.1, which is a loopback address (allowed only in "
        "development)"
    )
    assert second["status_code"] is None
    assert log["last_error"] == second["error"]


async def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    ctx: ServiceContext, accounts: Accounts, receivers: Any
) -> None:
    target = await receivers()
    redirecting = await receivers([302])
    redirecting.location = target.url
    owner = await accounts.signup("owner")
    webhook = await hook(owner, redirecting.url)
    await finish(ctx, owner)
    deliverer = Deliverer(ctx)
    try:
        assert await deliverer.deliver_due() == 1
    finally:
        await deliverer.stop()
    assert len(redirecting.requests) == 1
    assert target.requests == []
    [log] = await deliveries(owner, webhook["id"])
    assert log["delivery_status"] == "pending"  # retried on the schedule, like any failure
    assert log["last_status_code"] == 302
    assert log["last_error"] == "receiver answered 302 (redirects are not followed)"
    assert [a["status_code"] for a in log["attempts"]] == [302]


async def test_a_pinned_connection_keeps_the_host_header(
    ctx: ServiceContext, accounts: Accounts, monkeypatch: pytest.MonkeyPatch, receivers: Any
) -> None:
    receiver = await receivers()
    monkeypatch.setattr(egress, "system_resolver", Resolver(first=["127.0.0.1"]))
    owner = await accounts.signup("owner")
    await hook(owner, f"http://localhost:{receiver.port}/hook")
    await finish(ctx, owner)
    deliverer = Deliverer(ctx)  # the server's own transport, with the (replaced) resolver
    try:
        assert await deliverer.deliver_due() == 1
    finally:
        await deliverer.stop()
    [(headers, _)] = receiver.requests
    assert headers["host"] == f"localhost:{receiver.port}"


def certificates(directory: Path, name: str) -> tuple[ssl.SSLContext, tuple[Path, Path]]:
    """A throwaway CA and a certificate for ``name`` signed by it: a client context trusting
    the CA, and the server's (certificate, key) files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Runyard test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "leaf.pem", directory / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    trusting = ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode()
    )
    return trusting, (cert_file, key_file)


async def test_tls_to_a_pinned_address_verifies_the_name(
    ctx: ServiceContext,
    accounts: Accounts,
    monkeypatch: pytest.MonkeyPatch,
    receivers: Any,
    tmp_path: Path,
) -> None:
    """The connection goes to the checked address (127.0.0.1 here, with the development
    setting) while SNI, certificate verification and Host use the name: the certificate's
    name is accepted, another name on the same address is not."""
    trusting, files = certificates(tmp_path, "hooks.runyard.test")
    receiver = await receivers(tls=files)
    monkeypatch.setattr(egress, "system_resolver", Resolver(first=["127.0.0.1"]))
    owner = await accounts.signup("owner")
    good = await hook(owner, f"https://hooks.runyard.test:{receiver.port}/hook")
    wrong = await hook(owner, f"https://other.runyard.test:{receiver.port}/hook")
    await finish(ctx, owner)
    transport = EgressTransport(webhook_policy(True), verify=trusting)
    deliverer = Deliverer(ctx, transport)
    try:
        assert await deliverer.deliver_due() == 2
    finally:
        await deliverer.stop()
    [(headers, _)] = receiver.requests  # only the delivery whose name the certificate holds
    assert headers["host"] == f"hooks.runyard.test:{receiver.port}"
    [delivered] = await deliveries(owner, good["id"])
    assert delivered["delivery_status"] == "delivered"
    [refused] = await deliveries(owner, wrong["id"])
    assert "certificate" in refused["last_error"].lower()
    assert refused["last_status_code"] is None
