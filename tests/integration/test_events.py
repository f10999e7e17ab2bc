"""The task event stream (``GET /r/tasks/{taskId}/events``) over real HTTP, on both databases.

Every test reads the stream as a client would: httpx streaming against a live server, the
Server-Sent Events parsed here line by line (``id:``, ``event:``, ``data:``, ``:`` comments).
Events are produced by a protocol-level agent (``RawAgent``) and by the API (cancel), and what
a client received is compared with the task's event log in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from runyard.config import Settings
from runyard.events import hub
from runyard.protocol import v1
from runyard.store.work import WorkRepos
from tests.integration.live import LiveServer, LiveTeam, RawAgent, api, fast, live_server, live_team

#: Well below the default 15 s keep-alive: an event that arrives within this long was pushed
#: by the notification, not found by the periodic re-read of an idle stream.
LIVE = 3.0


# -- a Server-Sent Events client -----------------------------------------------------------------


@dataclass(frozen=True)
class Sse:
    """One message of the stream: an event, or a comment (``event == ""``)."""

    id: int | None
    event: str
    data: dict[str, Any]
    comment: str = ""


class SseReader:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.retry: int | None = None
        self.ended = False

    async def message(self, timeout: float = LIVE) -> Sse | None:
        """The next event or comment; ``None`` once the server has closed the stream."""
        if self.ended:
            return None
        fields: dict[str, str] = {}
        data: list[str] = []
        comments: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    line = await anext(self._lines)
                except StopAsyncIteration:
                    self.ended = True
                    return None
                if line:
                    if line.startswith(":"):
                        comments.append(line[1:].strip())
                        continue
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name == "retry":
                        self.retry = int(value)
                    else:
                        fields[name] = value
                    continue
                # A blank line ends the message.
                if data:
                    seq = int(fields["id"]) if "id" in fields else None
                    return Sse(seq, fields.get("event", "message"), json.loads("\n".join(data)))
                if comments:
                    return Sse(None, "", {}, comment=" ".join(comments))
                fields.clear()  # e.g. the ``retry:`` block

    async def event(self, timeout: float = LIVE) -> Sse:
        """The next event (comments skipped); fails if the stream ends first."""
        while True:
            message = await self.message(timeout)
            assert message is not None, "the stream closed early"
            if message.event:
                return message

    async def rest(self, timeout: float = LIVE) -> list[Sse]:
        """Every remaining event until the server closes the stream."""
        events = []
        while (message := await self.message(timeout)) is not None:
            if message.event:
                events.append(message)
        return events


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient,
    task_id: str,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
) -> AsyncIterator[SseReader]:
    async with client.stream(
        "GET",
        f"/r/tasks/{task_id}/events",
        headers=headers,
        params=params,
        timeout=httpx.Timeout(10, read=None),
    ) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        yield SseReader(response)


Row = tuple[int | None, str, dict[str, Any]]


def rows(events: list[Sse]) -> list[Row]:
    return [(e.id, e.event, e.data) for e in events]


async def reference(server: LiveServer, task_id: str) -> list[Row]:
    """The task's event log as stored: what every client must end up with."""
    async with server.ctx.db.read() as session:
        stored = await WorkRepos(session).events(task_id)
    return [(e.seq, e.event_type, e.payload) for e in stored]


async def stored_count(server: LiveServer, task_id: str, count: int) -> None:
    """Wait until the task has ``count`` events in the database."""
    async with asyncio.timeout(5):
        while len(await reference(server, task_id)) < count:
            await asyncio.sleep(0.01)


def status_of(event: Sse) -> tuple[str, str]:
    return event.event, event.data.get("status", "")


async def running_task(server: LiveServer, team: LiveTeam) -> tuple[RawAgent, v1.Dispatch]:
    agent = await RawAgent.connect(server, team.agent_key, labels=["gpu"])
    task_id = await team.run()
    dispatch = await agent.recv(v1.Dispatch)
    assert dispatch.task_id == task_id
    await agent.ack(dispatch)
    await team.wait(task_id, "running")
    return agent, dispatch


def tick(dispatch: v1.Dispatch, step: int, total: int = 4, **more: Any) -> v1.Progress:
    return v1.Progress(
        task_id=dispatch.task_id,
        attempt=dispatch.attempt,
        progress=step / total,
        current_node="3",
        step_current=step,
        step_total=total,
        **more,
    )


# -- following a task --------------------------------------------------------------------------


async def test_client_follows_a_task_from_submit_to_completion(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        task_id = await team.run()
        await team.wait(task_id, "waiting")
        got: list[Sse] = []
        async with stream(client, task_id, team.sk_headers) as sse:
            # What happened before the client came: replayed.
            got += [await sse.event(), await sse.event()]
            assert [status_of(e) for e in got] == [("status", "pending"), ("status", "waiting")]
            assert sse.retry == 2000

            # Then live: each event arrives before the agent does the next thing.
            agent = await RawAgent.connect(server, team.agent_key, "gpu-node-01", labels=["gpu"])
            dispatch = await agent.recv(v1.Dispatch)
            got.append(await sse.event())
            assert status_of(got[-1]) == ("status", "queued")
            await agent.ack(dispatch)
            got.append(await sse.event())
            assert status_of(got[-1]) == ("status", "running")
            assert got[-1].data["agent_id"] == "gpu-node-01"
            for step in (1, 2, 3):
                await agent.send(tick(dispatch, step))
                got.append(await sse.event())
                assert got[-1].event == "progress"
                assert {k: got[-1].data[k] for k in ("task_id", "progress", "step_current")} == {
                    "task_id": task_id,
                    "progress": step / 4,
                    "step_current": step,
                }
                assert got[-1].data["current_node"] == "3"
                assert got[-1].data["step_total"] == 4
                assert got[-1].data["timestamp"].endswith("Z")
            await agent.send(
                v1.Log(task_id=task_id, attempt=1, lines=["loading model", "sampling 3/4"])
            )
            got.append(await sse.event())
            assert got[-1].event == "log"
            assert got[-1].data["lines"] == ["loading model", "sampling 3/4"]
            await agent.complete(dispatch, storage_key="tasks/x/out.png", image_count=1)
            got.append(await sse.event())
            assert status_of(got[-1]) == ("completed", "completed")
            assert got[-1].data["output"] == {"storage_key": "tasks/x/out.png", "image_count": 1}
            # The stream ends after the terminal event.
            assert await sse.message() is None
        assert [e.id for e in got] == list(range(1, 10))
        assert rows(got) == await reference(server, task_id)
        await agent.close()


async def test_ticks_within_the_interval_coalesce_and_the_last_one_is_still_written(
    settings: Settings,
) -> None:
    """Ticks faster than the progress interval are coalesced, but the latest one reaches the
    log when the interval ends, even if the agent sends nothing more (a long node after the
    sampler's last step must not leave the task showing an older step)."""
    async with (
        live_server(fast(settings, progress_interval_seconds=1.0)) as server,
        api(server) as client,
    ):
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)

        async def steps() -> list[int]:
            stored = await reference(server, dispatch.task_id)
            return [data["step_current"] for _, kind, data in stored if kind == "progress"]

        for step in (1, 2, 3, 4):
            await agent.send(tick(dispatch, step))
        async with asyncio.timeout(5):  # the agent sends nothing more
            while await steps() != [1, 4]:
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.2)
        assert await steps() == [1, 4]  # 2 and 3 were coalesced away
        await agent.close()


async def test_reconnecting_client_gets_every_event_exactly_once_in_order(
    server: LiveServer,
) -> None:
    """Ticks stream in while the client keeps dropping the connection and resuming, with
    ``Last-Event-ID`` or ``?after=``: together its streams hold the log, once, in order."""
    async with api(server) as client:
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)
        ticks = 60

        async def produce() -> None:
            for step in range(1, ticks + 1):
                await agent.send(tick(dispatch, step, ticks, message=f"step {step}"))
                if step % 20 == 0:
                    await agent.send(
                        v1.Log(task_id=dispatch.task_id, attempt=1, lines=[f"at {step}"])
                    )
                await asyncio.sleep(0.005)
            await agent.complete(dispatch, images=3)

        producer = asyncio.create_task(produce())
        got: list[Sse] = []
        reads = [3, 1, 5, 2, 8, 1, 4, 7]
        connections = 0
        try:
            while not got or got[-1].event != "completed":
                headers, params = dict(team.sk_headers), None
                if got:  # resume: the header on even reconnects, the query on odd ones
                    if connections % 2:
                        headers["Last-Event-ID"] = str(got[-1].id)
                    else:
                        params = {"after": str(got[-1].id)}
                async with stream(client, dispatch.task_id, headers, params) as sse:
                    for _ in range(reads[connections % len(reads)]):
                        got.append(await sse.event())
                        if got[-1].event == "completed":
                            assert await sse.message() is None
                            break
                connections += 1
                if connections % 3 == 0:
                    await asyncio.sleep(0.03)  # events pile up while disconnected
        finally:
            await producer
        assert connections > 10
        assert [e.id for e in got] == list(range(1, len(got) + 1))
        assert rows(got) == await reference(server, dispatch.task_id)
        # Every tick was stored (no coalescing at interval 0) and delivered.
        assert [e.data["step_current"] for e in got if e.event == "progress"] == list(
            range(1, ticks + 1)
        )
        await agent.close()


async def test_finished_task_replays_and_closes_at_once(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)
        task_id = dispatch.task_id
        await agent.send(tick(dispatch, 2))
        await agent.complete(dispatch, storage_key="k")
        await team.wait(task_id, "completed")
        expected = await reference(server, task_id)
        assert expected[-1][1] == "completed"

        started = time.monotonic()
        # A member's session (JWT) may read the stream as well as an integration key.
        async with stream(client, task_id, team.owner_headers) as sse:
            assert rows(await sse.rest()) == expected
        async with stream(client, task_id, team.sk_headers, {"after": "2"}) as sse:
            assert rows(await sse.rest()) == expected[2:]
        headers = {**team.sk_headers, "Last-Event-ID": "3"}
        async with stream(client, task_id, headers, {"after": "1"}) as sse:
            # The header wins over the query.
            assert rows(await sse.rest()) == expected[3:]
        # Resuming after the terminal event: nothing left, closed at once.
        headers = {**team.sk_headers, "Last-Event-ID": str(expected[-1][0])}
        async with stream(client, task_id, headers) as sse:
            assert await sse.rest() == []
        assert time.monotonic() - started < 2  # no wait for a keep-alive period (15 s)
        await agent.close()


@pytest.mark.parametrize("window", [hub.FEED_WINDOW, 3])
async def test_many_watchers_of_one_task_see_the_same_events(
    server: LiveServer, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task's events are read once per server and shared by its watchers. With a tiny
    in-memory window and a slow shared read (so events arrive in batches larger than the
    window), watchers fall behind the window and read the rest from the database."""
    if window < hub.FEED_WINDOW:
        read_rows = hub._read_rows

        async def slow_read(*args: Any) -> Any:
            await asyncio.sleep(0.1)
            return await read_rows(*args)

        monkeypatch.setattr(hub, "_read_rows", slow_read)
        monkeypatch.setattr(hub, "FEED_WINDOW", window)
    async with api(server) as client:
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)
        async with contextlib.AsyncExitStack() as stack:
            watchers = [
                await stack.enter_async_context(stream(client, dispatch.task_id, team.sk_headers))
                for _ in range(20)
            ]
            for step in range(1, 21):
                await agent.send(tick(dispatch, step, 20))
            await agent.complete(dispatch)
            seen = await asyncio.gather(*(w.rest() for w in watchers))
        expected = await reference(server, dispatch.task_id)
        assert len(expected) == 1 + 2 + 20 + 1  # pending, queued, running; ticks; completed
        for events in seen:
            assert rows(events) == expected
        await agent.close()


async def test_event_committed_during_a_streams_first_read_still_arrives_live(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's replay read is held until a tick has been committed and announced: the
    announcement came before the stream (and its task's feed) knew where it stood, and must
    not be lost (it would then only arrive with a keep-alive, 15 s later)."""
    read_events = hub._read_events
    holding, release = asyncio.Event(), asyncio.Event()

    async def held_read(*args: Any) -> Any:
        result = await read_events(*args)
        if not holding.is_set():
            holding.set()
            await release.wait()
        return result

    monkeypatch.setattr(hub, "_read_events", held_read)
    async with api(server) as client:
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)
        async with stream(client, dispatch.task_id, team.sk_headers) as sse:
            await asyncio.wait_for(holding.wait(), LIVE)
            await agent.send(tick(dispatch, 1))
            await stored_count(server, dispatch.task_id, 4)
            await asyncio.sleep(0.1)  # the announcement reaches the server's hub
            release.set()
            got = [await sse.event() for _ in range(4)]
            assert [e.event for e in got] == ["status", "status", "status", "progress"]
            await agent.complete(dispatch)
            got += await sse.rest()
        assert rows(got) == await reference(server, dispatch.task_id)
        await agent.close()


async def test_a_failed_shared_read_is_retried(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_rows = hub._read_rows
    failed: list[str] = []

    async def flaky_read(*args: Any) -> Any:
        if not failed:
            failed.append("once")
            raise OSError("the database went away for a moment")
        return await read_rows(*args)

    monkeypatch.setattr(hub, "_read_rows", flaky_read)
    async with api(server) as client:
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)
        async with stream(client, dispatch.task_id, team.sk_headers) as sse:
            got = [await sse.event() for _ in range(3)]
            await agent.send(tick(dispatch, 1))
            got.append(await sse.event())  # a second later, not a keep-alive period later
            assert failed == ["once"]
            await agent.complete(dispatch)
            got += await sse.rest()
        assert rows(got) == await reference(server, dispatch.task_id)
        await agent.close()


# -- terminal events ---------------------------------------------------------------------------


async def test_cancel_sends_cancelled_and_closes(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)
        async with stream(client, dispatch.task_id, team.sk_headers) as sse:
            replayed = [await sse.event() for _ in range(3)]
            assert [status_of(e)[1] for e in replayed] == ["pending", "queued", "running"]
            response = await client.post(
                f"/r/tasks/{dispatch.task_id}/cancel", headers=team.sk_headers
            )
            assert response.json() == {"is_success": True}
            cancelled = await sse.event()
            assert status_of(cancelled) == ("cancelled", "cancelled")
            assert cancelled.data["task_id"] == dispatch.task_id
            assert cancelled.id == 4
            assert await sse.message() is None
        assert (await agent.recv(v1.Cancel)).task_id == dispatch.task_id
        await agent.close()


async def test_failure_sends_failed_with_the_error(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client, max_retries=1)
        agent, dispatch = await running_task(server, team)
        task_id = dispatch.task_id
        async with stream(client, task_id, team.sk_headers, {"after": "3"}) as sse:
            await agent.send(v1.Fail(task_id=task_id, attempt=1, error="CUDA out of memory"))
            retry = await agent.recv(v1.Dispatch)
            assert retry.attempt == 2
            # The retry shows as the task waiting, then queued again.
            assert [status_of(await sse.event())[1] for _ in range(2)] == ["waiting", "queued"]
            await agent.ack(retry)
            assert status_of(await sse.event()) == ("status", "running")
            await agent.send(
                v1.Fail(task_id=task_id, attempt=2, error="model not found", retryable=False)
            )
            failed = await sse.event()
            assert status_of(failed) == ("failed", "failed")
            assert failed.data["error"] == "model not found (attempt 2)"
            assert await sse.message() is None
        assert (await team.task(task_id))["task_error"] == "model not found (attempt 2)"
        await agent.close()


# -- keep-alive, bad input, other teams --------------------------------------------------------


async def test_idle_stream_gets_keep_alive_comments(settings: Settings) -> None:
    fast(settings).events.keep_alive_seconds = 0.2
    async with live_server(settings) as live, api(live) as client:
        team = await live_team(live, client)
        task_id = await team.run()
        await team.wait(task_id, "waiting")
        async with stream(client, task_id, team.sk_headers) as sse:
            assert [status_of(await sse.event())[1] for _ in range(2)] == ["pending", "waiting"]
            comments = []
            for _ in range(2):
                message = await sse.message(timeout=2)
                assert message is not None
                assert message.event == ""
                comments.append(message.comment)
            assert comments == ["keep-alive", "keep-alive"]
            # Still following: the next event arrives, and the terminal one closes the stream.
            await client.post(f"/r/tasks/{task_id}/cancel", headers=team.sk_headers)
            assert status_of(await sse.event()) == ("cancelled", "cancelled")
            assert await sse.message() is None


async def test_bad_positions_and_other_teams_tasks_are_refused(server: LiveServer) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
        other = await live_team(server, client)
        task_id = await team.run()
        path = f"/r/tasks/{task_id}/events"

        async def refused(status: int, fragment: str, **request: Any) -> None:
            response = await client.get(request.pop("path", path), **request)
            assert response.status_code == status, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert fragment in response.json()["error_message"]

        # "²" is a digit to ``str.isdigit`` but not to ``int``.
        for bad in (b"abc", b"-1", b"1.5", b"0x10", "²".encode("latin-1")):
            headers = {**team.sk_headers, "Last-Event-ID": bad}
            await refused(400, "Last-Event-ID", headers=headers)
        for text in ("abc", "-3", " ", "²"):
            await refused(400, "after", headers=team.sk_headers, params={"after": text})
        await refused(404, "task not found", headers=other.sk_headers)
        await refused(404, "task not found", headers=other.owner_headers)
        await refused(
            404, "task not found", headers=team.sk_headers, path=f"/r/tasks/{uuid.uuid4()}/events"
        )
        await refused(400, "taskId", headers=team.sk_headers, path="/r/tasks/nope/events")
        await refused(401, "", headers={})
        # An empty header is no position at all.
        async with stream(client, task_id, {**team.sk_headers, "Last-Event-ID": ""}) as sse:
            assert status_of(await sse.event()) == ("status", "pending")


# -- replicas ------------------------------------------------------------------------------------


async def test_two_servers_on_one_postgresql_both_stream_live(
    settings: Settings, backend: str
) -> None:
    """The agent is on server one; clients of both servers follow its task live (the
    notification crosses servers through LISTEN/NOTIFY, well within a keep-alive period)."""
    if backend == "sqlite":
        pytest.skip("several servers share a database only on PostgreSQL")
    # A replica without the agent may hold the new task's row (marking it waiting) just when
    # the agent's replica claims it; the claim then waits for the next reload of waiting
    # tasks (6 sweeps): keep that short.
    fast(settings, sweep_interval_seconds=0.2)
    async with (
        live_server(settings) as one,
        live_server(settings) as two,
        api(one) as client_one,
        api(two) as client_two,
    ):
        team = await live_team(one, client_one)
        agent = await RawAgent.connect(one, team.agent_key, labels=["gpu"])
        task_id = await team.run()
        dispatch = await agent.recv(v1.Dispatch)
        await team.wait(task_id, "queued")
        async with (
            stream(client_two, task_id, team.sk_headers) as far,
            stream(client_one, task_id, team.sk_headers) as near,
        ):
            watchers = (far, near)
            seen: dict[SseReader, list[Sse]] = {w: [] for w in watchers}

            async def each_sees(event: str, status: str = "") -> None:
                for watcher in watchers:
                    got = await watcher.event()
                    seen[watcher].append(got)
                    assert got.event == event
                    if status:
                        assert got.data["status"] == status

            for watcher in watchers:  # replayed: pending, (waiting,) queued
                while not seen[watcher] or seen[watcher][-1].data["status"] != "queued":
                    seen[watcher].append(await watcher.event())
            await agent.ack(dispatch)
            await each_sees("status", "running")
            for step in (1, 2, 3):
                await agent.send(tick(dispatch, step))
                await each_sees("progress")
            await agent.complete(dispatch, storage_key="k")
            await each_sees("completed", "completed")
            for watcher in watchers:
                assert await watcher.message() is None
        expected = await reference(one, task_id)
        assert rows(seen[far]) == rows(seen[near]) == expected
        await agent.close()


async def test_streams_stay_live_when_the_listening_connection_drops(
    server: LiveServer, backend: str
) -> None:
    """A database restart or failover closes the server's LISTEN connection: it is opened
    again, and events sent meanwhile are read then, not a keep-alive period (15 s) later."""
    if backend == "sqlite":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    async with api(server) as client:
        team = await live_team(server, client)
        agent, dispatch = await running_task(server, team)
        async with stream(client, dispatch.task_id, team.sk_headers) as sse:
            got = [await sse.event() for _ in range(3)]
            async with server.ctx.db.engine.connect() as conn:
                killed = await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                        " AND pid <> pg_backend_pid()"
                    )
                )
                assert killed.scalars().all() == [True]
            for step in (1, 2, 3):  # the first one most likely while nobody listens
                await agent.send(tick(dispatch, step))
                got.append(await sse.event())
                assert got[-1].data["step_current"] == step
            await agent.complete(dispatch)
            got += await sse.rest()
        assert rows(got) == await reference(server, dispatch.task_id)
        await agent.close()
