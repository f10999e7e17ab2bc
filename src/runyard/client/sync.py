"""``Runyard``: the blocking client."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from runyard.client import _core
from runyard.client._core import Call, StreamState
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
    UploadProgress,
    User,
    Webhook,
    Workflow,
)

T = TypeVar("T")
PathLike = str | os.PathLike[str]


class Runyard(_core.ClientBase):
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

    _http: httpx.Client

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
        multipart_threshold: int = _core.MULTIPART_THRESHOLD,
    ) -> None:
        # Every argument, as given, to the shared constructor (the signature above is the
        # public one; ClientBase takes the same names).
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})

    def _open(self, http_options: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._http = httpx.Client(**http_options)

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
            request = self._request(self._http, call, timeout)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise _core.transport_error(self.server_url, exc) from None
            if self._renew_after(response, attempt, renew, call):
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
                self._drive(self._auth.flow(), renew=False)

    def _drive(
        self,
        flow: Generator[_core.Step, Any, T],
        *,
        renew: bool = True,
        progress: Callable[[UploadProgress], None] | None = None,
    ) -> T:
        """Run a flow of calls (and signed PUTs), feeding each answer back; its result."""
        counter = _core.UploadCounter(progress)
        try:
            step = next(flow)
            while True:
                try:
                    if isinstance(step, _core.Put):
                        result: Any = self._put(step, counter)
                    else:
                        result = self._call(step, renew=renew)
                except RunyardError as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

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

    # -- input files -------------------------------------------------------------------------

    def upload_file(
        self,
        path: PathLike,
        *,
        content_type: str | None = None,
        progress: Callable[[UploadProgress], None] | None = None,
    ) -> str:
        """Upload a local file as an input of the team; returns the ``file_key`` to pass as a
        ``file`` parameter. Large files (``multipart_threshold``, 100 MiB) go up in parts.
        The type is guessed from the name unless given; ``progress`` sees the bytes sent."""
        source = _core.upload_source(path, content_type)
        return self._drive(_core.upload_flow(source, self.multipart_threshold), progress=progress)

    def _put(self, put: _core.Put, counter: _core.UploadCounter) -> str:
        counter.add(put.source, 0)
        url = _core.put_url(self.server_url, put)
        try:
            response = self._http.put(
                url,
                content=self._chunks(put, counter),
                headers=dict(put.headers),
                timeout=_core.upload_timeout(),
            )
        except httpx.TransportError as exc:
            raise _core.transport_error(url, exc) from None
        return _core.put_result(response)

    def _chunks(self, put: _core.Put, counter: _core.UploadCounter) -> Iterator[bytes]:
        with put.source.path.open("rb") as handle:
            handle.seek(put.offset)
            for size in _core.chunk_sizes(put):
                chunk = handle.read(size)
                _core.check_chunk(chunk, size, put.source)
                counter.add(put.source, len(chunk))
                yield chunk

    def _with_uploads(
        self,
        parameters: Mapping[str, Any] | None,
        progress: Callable[[UploadProgress], None] | None,
    ) -> Mapping[str, Any] | None:
        """``Path`` values uploaded, replaced by their file keys."""
        if parameters is None or not _core.has_files(parameters):
            return parameters
        flow = _core.parameters_flow(parameters, self.multipart_threshold)
        return self._drive(flow, progress=progress)

    # -- runs and tasks ----------------------------------------------------------------------

    def submit(
        self,
        workflow: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        target_pool: str | None = None,
        idempotency_key: str | None = None,
        upload_progress: Callable[[UploadProgress], None] | None = None,
    ) -> str:
        """Submit a run of a workflow (id, slug or ``slug@version``); returns the task id.
        ``pathlib.Path`` values are uploaded first (``upload_file``) and sent as file keys."""
        _core.check_priority(priority)
        call = _core.run(
            workflow,
            self._with_uploads(parameters, upload_progress),
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
        upload_progress: Callable[[UploadProgress], None] | None = None,
    ) -> Task:
        """Submit a run (``Path`` parameter values are uploaded first); with ``wait``, follow
        its events until it ends and return the final task (check ``task.ok``; a failed task
        is returned, not raised)."""
        task_id = self.submit(
            workflow,
            parameters,
            priority=priority,
            target_pool=target_pool,
            idempotency_key=idempotency_key,
            upload_progress=upload_progress,
        )
        if not wait:
            return self.get_task(task_id)
        return self.wait(task_id, timeout=timeout, on_event=on_event)

    def run_many(
        self,
        workflow: str,
        parameters_list: Iterable[Mapping[str, Any] | None],
        *,
        priority: int | None = None,
        target_pool: str | None = None,
        upload_progress: Callable[[UploadProgress], None] | None = None,
    ) -> list[str]:
        """Submit one run per item of ``parameters_list`` (``POST …/runs``); returns their task
        ids in the same order (like ``submit``; ``get_task``/``wait`` each for more).

        Up to 100 runs go in one request, accepted all or none (the error names the first bad
        run, ``runs[i]: …``). More are sent 100 at a time, in order: then a request that fails
        leaves the runs of the earlier ones submitted (the error says how many). ``Path``
        values are uploaded first, each file once. There is no ``idempotency_key`` here.
        """
        flow = _core.runs_flow(
            workflow,
            list(parameters_list),
            priority=priority,
            target_pool=target_pool,
            threshold=self.multipart_threshold,
        )
        return self._drive(flow, progress=upload_progress)

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
            reader = _core.EventReader(state)
            try:
                response = self._send(
                    _core.task_events(task_id, state.last_id),
                    stream=True,
                    timeout=self._read_timeout(deadline),
                )
                try:
                    for line in response.iter_lines():
                        event = reader.feed(line)
                        if event is not None:
                            yield event
                            if event.is_terminal:
                                return
                        _core.check_deadline(deadline, task_id)
                finally:
                    response.close()
                reason = _core.STREAM_ENDED
            except (httpx.TransportError, RunyardError) as exc:
                reason = _core.stream_failure(exc, deadline, task_id)
            time.sleep(self._pause(state, deadline, reason))

    def download_outputs(
        self,
        task_id: str,
        folder: PathLike,
        *,
        progress: Callable[[DownloadProgress], None] | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Download every output of a completed task into ``folder``; returns the paths.

        Follows the result's signed links (``download_urls`` / ``download_url``) without
        sending credentials. A task without outputs (or not completed) downloads nothing.
        A file of the same name already in ``folder`` is kept, and the download gets a
        numbered name (``image-2.png``), unless ``overwrite``.
        """
        links = _core.download_links(self.get_result(task_id), self.server_url)
        target_dir = Path(folder)
        if links:
            target_dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        used = _core.taken_names(target_dir, overwrite)
        for index, (label, url) in enumerate(links):
            file: _core.DownloadFile | None = None
            try:
                with self._http.stream("GET", url, timeout=httpx.Timeout(30.0)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _core.error_from(response)
                    file = _core.download_file(
                        response, target_dir, label, (index, len(links)), used, progress
                    )
                    with file.partial.open("wb") as out:
                        for chunk in response.iter_bytes(1024 * 1024):
                            out.write(chunk)
                            file.add(len(chunk))
                file.partial.replace(file.target)
            except BaseException as exc:
                if file is not None:
                    file.partial.unlink(missing_ok=True)
                if isinstance(exc, httpx.TransportError):
                    raise _core.transport_error(url, exc) from None
                raise
            paths.append(file.target)
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
