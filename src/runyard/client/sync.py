"""``Runyard``: the blocking client."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from runyard import __version__
from runyard.client import _core
from runyard.client._core import Call, SSEDecoder, StreamState
from runyard.client.errors import RunyardError
from runyard.client.models import (
    Agent,
    CreatedKey,
    CreatedWebhook,
    Delivery,
    DownloadProgress,
    Key,
    Page,
    PairingResult,
    PairingStart,
    Task,
    TaskEvent,
    TaskResult,
    User,
    Webhook,
    Workflow,
)

T = TypeVar("T")
PathLike = str | os.PathLike[str]


class Runyard:
    """A Runyard server, as one team sees it.

    Credentials, one of:

    - ``api_key``: an integration key (``sk-…``) or a paired device key (``dk-…``);
      default: ``RUNYARD_API_KEY``;
    - ``email`` and ``password`` (a session; ``team_id`` picks the team, default the first one
      you belong to), refreshed automatically;
    - nothing, for ``pair()`` — which then uses the device key it obtained.

    ``server`` defaults to ``RUNYARD_SERVER_URL``, then ``http://127.0.0.1:8080``. Every API
    error raises ``RunyardError`` (``status``, ``error_message``).
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        api_key: str | None = None,
        email: str | None = None,
        password: str | None = None,
        team_id: str | None = None,
        timeout: float = 30.0,
        stream_timeout: float = 60.0,
        reconnect_delay: float | None = None,
        give_up_after: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server_url = _core.base_url(server or _core.default_server())
        if api_key is None and email is None:
            api_key = os.environ.get("RUNYARD_API_KEY") or None
        self._auth = _core.Auth(api_key, email, password, team_id)
        self._stream_timeout = stream_timeout
        self._reconnect_delay = reconnect_delay
        self._give_up_after = give_up_after
        self._lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.server_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": f"{_core.USER_AGENT}/{__version__}"},
            follow_redirects=False,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Runyard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def team_id(self) -> str | None:
        """The session's team (after the first call), when signed in with email/password."""
        return self._auth.team_id

    def _send(
        self,
        call: Call[Any],
        *,
        stream: bool = False,
        renew: bool = True,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        if call.authenticated and renew:
            self._ensure_auth()
        for attempt in (1, 2):
            headers = dict(call.headers)
            if call.authenticated:
                headers.update(self._auth.headers())
            request = self._http.build_request(
                call.route.method,
                call.url,
                params=call.params,
                json=call.json,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise _core.transport_error(self.server_url, exc) from None
            if (
                response.status_code == 401
                and attempt == 1
                and renew
                and call.authenticated
                and self._auth.is_session
            ):
                response.close()
                self._auth.expire()
                self._ensure_auth()
                continue
            if response.status_code >= 400:
                if stream:
                    response.read()
                    response.close()
                raise _core.error_from(response)
            return response
        raise AssertionError("unreachable")

    def _call(self, call: Call[T], *, renew: bool = True) -> T:
        return call.parse(self._send(call, renew=renew))

    def _ensure_auth(self) -> None:
        if not self._auth.needs_renewal():
            return
        with self._lock:
            if self._auth.needs_renewal():
                self._drive(self._auth.flow())

    def _drive(self, flow: Generator[Call[Any], Any, None]) -> None:
        try:
            call = next(flow)
            while True:
                try:
                    result = self._call(call, renew=False)
                except RunyardError as exc:
                    call = flow.throw(exc)
                else:
                    call = flow.send(result)
        except StopIteration:
            return

    # -- auth --------------------------------------------------------------------------------

    def login(self) -> None:
        """Sign in now with the email and password given (otherwise it happens on first use)."""
        if not self._auth.is_session:
            raise RunyardError(0, "login() needs a client made with email and password")
        self._auth.expire()
        self._ensure_auth()

    def logout(self) -> None:
        """End the session, or revoke the device key (``dk-``) in use and its agent key."""
        auth = self._auth
        if auth.is_session:
            if auth.refresh_token:
                self._call(_core.logout(auth.refresh_token))
            auth.access_token = auth.refresh_token = None
        elif auth.api_key and auth.api_key.startswith("dk-"):
            self._call(_core.revoke_device())
        else:
            raise RunyardError(0, "only a session or a device key (dk-) can log out")

    def me(self) -> User:
        """The signed-in user and their teams (sessions and device keys)."""
        return self._call(_core.me())

    def start_pairing(self) -> PairingStart:
        return self._call(_core.start_pairing())

    def poll_pairing(self, device_code: str) -> PairingResult | None:
        """``None`` while the pairing waits for confirmation; the keys once, when approved."""
        return self._call(_core.poll_pairing(device_code))

    def confirm_pairing(self, user_code: str, device_name: str | None = None) -> None:
        """Approve a code shown by a device, for this session's team (sessions only)."""
        self._call(_core.confirm_pairing(user_code, device_name))

    def pair(
        self,
        on_code: Callable[[PairingStart], None] | None = None,
        *,
        timeout: float | None = None,
        use: bool = True,
    ) -> PairingResult:
        """Device pairing: start, show the code (``on_code``), poll until someone confirms it.

        With ``use`` the client then authenticates with the new device key.
        """
        start = self.start_pairing()
        if on_code is not None:
            on_code(start)
        deadline = time.monotonic() + (timeout if timeout is not None else start.expires_in + 5)
        while True:
            result = self.poll_pairing(start.device_code)
            if result is not None:
                if use:
                    self._auth.use_key(result.device_key)
                return result
            if time.monotonic() >= deadline:
                raise RunyardError(0, "the pairing code was not confirmed in time")
            time.sleep(max(0.1, min(start.interval, deadline - time.monotonic())))

    # -- workflows ---------------------------------------------------------------------------

    def import_workflow(
        self,
        workflow: Mapping[str, Any],
        *,
        slug: str | None = None,
        display_name: str | None = None,
        parameters: Sequence[Mapping[str, Any]] | None = None,
        labels: Sequence[str] | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> Workflow:
        """Import a ComfyUI API-format graph (or a whole workflow object) under ``slug``.

        An existing slug gets a new version. Other workflow fields (``task_timeout``,
        ``max_retries``, ``tool_type`` …) go in ``fields``. Needs an admin's session or device
        key; integration keys (``sk-``) may not manage workflows.
        """
        body = _core.workflow_body(
            workflow,
            slug=slug,
            display_name=display_name,
            parameters=parameters,
            labels=labels,
            description=description,
            extra=fields,
        )
        workflow_id = self._call(_core.import_workflow(body))
        return self.get_workflow(workflow_id)

    def import_workflow_file(
        self,
        path: PathLike,
        *,
        slug: str | None = None,
        parameters: PathLike | Sequence[Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> Workflow:
        """``import_workflow`` from a JSON file; ``parameters`` may be a JSON file too."""
        graph = _core.read_json_file(path)
        if not isinstance(graph, dict):
            raise RunyardError(0, f"{path} must hold a JSON object (a ComfyUI API-format graph)")
        if isinstance(parameters, str | os.PathLike):
            parameters = _core.parameters_from(_core.read_json_file(parameters), str(parameters))
        return self.import_workflow(graph, slug=slug, parameters=parameters, **options)

    def list_workflows(self, *, page: int = 1, per_page: int = 100) -> Page[Workflow]:
        return self._call(_core.list_workflows(page, per_page))

    def get_workflow(self, workflow: str) -> Workflow:
        """By id, slug, or ``slug@version``."""
        return self._call(_core.get_workflow(workflow))

    # -- runs and tasks ----------------------------------------------------------------------

    def submit(
        self,
        workflow: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        target_pool: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit a run of a workflow (id, slug or ``slug@version``); returns the task id."""
        call = _core.run(
            workflow,
            parameters,
            priority=priority,
            target_pool=target_pool,
            idempotency_key=idempotency_key,
        )
        return self._call(call)

    def run(
        self,
        workflow: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        on_event: Callable[[TaskEvent], None] | None = None,
        priority: int | None = None,
        target_pool: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Submit a run; with ``wait``, follow its events until it ends and return the final
        task (check ``task.ok``; a failed task is returned, not raised)."""
        task_id = self.submit(
            workflow,
            parameters,
            priority=priority,
            target_pool=target_pool,
            idempotency_key=idempotency_key,
        )
        if not wait:
            return self.get_task(task_id)
        return self.wait(task_id, timeout=timeout, on_event=on_event)

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[TaskEvent], None] | None = None,
    ) -> Task:
        """Follow a task's events until it ends; ``RunyardError(0, …)`` after ``timeout``."""
        for event in self.events(task_id, timeout=timeout):
            if on_event is not None:
                on_event(event)
        return self.get_task(task_id)

    def get_task(self, task_id: str) -> Task:
        return self._call(_core.get_task(task_id))

    def list_tasks(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        page: int = 1,
        per_page: int = 20,
    ) -> Page[Task]:
        """The team's tasks, newest first."""
        return self._call(_core.list_tasks(page, per_page, status, workflow_id))

    def cancel_task(self, task_id: str) -> None:
        """Cancel a task that has not ended (on one that has, nothing happens)."""
        self._call(_core.cancel_task(task_id))

    def get_result(self, task_id: str) -> TaskResult:
        return self._call(_core.get_result(task_id))

    def events(
        self, task_id: str, *, after: int = 0, timeout: float | None = None
    ) -> Iterator[TaskEvent]:
        """A task's events, in order, each once: replayed from after ``after``, then live,
        ending after ``completed``, ``failed`` or ``cancelled``. A dropped connection is
        resumed with ``Last-Event-ID``."""
        state = StreamState(task_id, last_id=after)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reason = "the stream ended before the task did"
            try:
                response = self._send(
                    _core.task_events(task_id, state.last_id),
                    stream=True,
                    timeout=self._read_timeout(deadline),
                )
                try:
                    decoder = SSEDecoder()
                    for line in response.iter_lines():
                        message = decoder.feed(line)
                        if decoder.retry_ms is not None:
                            state.retry_seconds = decoder.retry_ms / 1000
                        event = _core.task_event(message) if message is not None else None
                        if event is not None and (
                            event.id > state.last_id or event.event == "error"
                        ):
                            state.last_id = max(state.last_id, event.id)
                            state.progressed()
                            yield event
                            if event.is_terminal:
                                return
                        _core.check_deadline(deadline, task_id)
                finally:
                    response.close()
            except httpx.TimeoutException:
                _core.check_deadline(deadline, task_id)
                reason = "no data within the read timeout"
            except httpx.TransportError as exc:
                reason = str(exc) or type(exc).__name__
            except RunyardError as exc:
                if not _core.retriable(exc):
                    raise
                reason = exc.error_message
            _core.check_deadline(deadline, task_id)
            state.failed(self._give_up_after, reason)
            pause = state.delay(self._reconnect_delay)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)

    def _read_timeout(self, deadline: float | None) -> httpx.Timeout:
        read = self._stream_timeout
        if deadline is not None:
            read = max(0.05, min(read, deadline - time.monotonic() + 0.05))
        return httpx.Timeout(30.0, read=read)

    def download_outputs(
        self,
        task_id: str,
        folder: PathLike,
        *,
        progress: Callable[[DownloadProgress], None] | None = None,
    ) -> list[Path]:
        """Download every output of a completed task into ``folder``; returns the paths.

        Follows the result's signed links (``download_urls`` / ``download_url``) without
        sending credentials. A task without outputs (or not completed) downloads nothing.
        """
        links = _core.download_links(self.get_result(task_id), self.server_url)
        target_dir = Path(folder)
        if links:
            target_dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        used: set[str] = set()
        for index, (label, url) in enumerate(links):
            partial: Path | None = None
            try:
                with self._http.stream("GET", url, timeout=httpx.Timeout(30.0)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _core.error_from(response)
                    name = _core.output_name(response, label, index, used)
                    target = target_dir / name
                    partial = target_dir / f".{name}.part"
                    total = _core.content_length(response)
                    done = 0
                    if progress is not None:
                        progress(DownloadProgress(name, 0, total, index, len(links)))
                    with partial.open("wb") as out:
                        for chunk in response.iter_bytes(1024 * 1024):
                            out.write(chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(DownloadProgress(name, done, total, index, len(links)))
                partial.replace(target)
            except httpx.TransportError as exc:
                if partial is not None:
                    partial.unlink(missing_ok=True)
                raise _core.transport_error(url, exc) from None
            except BaseException:
                if partial is not None:
                    partial.unlink(missing_ok=True)
                raise
            paths.append(target)
        return paths

    # -- agents, keys, webhooks --------------------------------------------------------------

    def list_agents(self, *, page: int = 1, per_page: int = 100) -> Page[Agent]:
        return self._call(_core.list_agents(page, per_page))

    def create_key(
        self,
        display_name: str,
        *,
        kind: str = "integration",
        expires_in_days: int | None = None,
    ) -> CreatedKey:
        """A new integration (``sk-``) or agent (``ak-``) key; ``raw_key`` is shown once.
        Keys are managed by admins signed in with email and password (a session)."""
        return self._call(_core.create_key(kind, display_name, expires_in_days))

    def list_keys(
        self, *, kind: str | None = None, page: int = 1, per_page: int = 100
    ) -> Page[Key]:
        return self._call(_core.list_keys(page, per_page, kind))

    def revoke_key(self, key_id: str) -> None:
        self._call(_core.revoke_key(key_id))

    def create_webhook(
        self, display_name: str, url: str, *, events: Sequence[str] | None = None
    ) -> CreatedWebhook:
        return self._call(_core.create_webhook(display_name, url, events))

    def list_webhooks(self, *, page: int = 1, per_page: int = 100) -> Page[Webhook]:
        return self._call(_core.list_webhooks(page, per_page))

    def get_webhook(self, webhook_id: str) -> Webhook:
        return self._call(_core.get_webhook(webhook_id))

    def update_webhook(self, webhook_id: str, **changes: Any) -> None:
        """Change ``display_name``, ``webhook_url``, ``webhook_events`` or ``webhook_status``."""
        self._call(_core.update_webhook(webhook_id, changes))

    def delete_webhook(self, webhook_id: str) -> None:
        self._call(_core.delete_webhook(webhook_id))

    def list_deliveries(
        self, webhook_id: str, *, page: int = 1, per_page: int = 20
    ) -> Page[Delivery]:
        return self._call(_core.list_deliveries(webhook_id, page, per_page))

    def ping_webhook(self, webhook_id: str) -> str:
        """Queue a signed ``ping``; returns the delivery id."""
        return self._call(_core.ping_webhook(webhook_id))
