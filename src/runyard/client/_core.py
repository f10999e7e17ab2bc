"""What the sync and async clients share: routes, request building, parsing, auth, SSE.

Nothing here does I/O. Every API operation is a function returning a ``Call`` (a route, its
path parameters, query, body and how to read the answer); ``Runyard`` and ``AsyncRunyard`` only
send calls and feed answers back. Every call names a ``Route`` from ``ROUTES`` — the list a test
checks against the server's OpenAPI document.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import posixpath
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx
from pydantic import BaseModel

from runyard.client.errors import RunyardError
from runyard.client.models import (
    Agent,
    CreatedKey,
    CreatedWebhook,
    Delivery,
    DownloadProgress,
    Key,
    MultipartUpload,
    Page,
    PairingResult,
    PairingStart,
    PartLink,
    PresignedUpload,
    Task,
    TaskEvent,
    TaskResult,
    TokenPair,
    UploadProgress,
    User,
    Webhook,
    Workflow,
)
from runyard.domain.limits import MAX_RUNS_PER_REQUEST, PRIORITY

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

API_PREFIX = "/api/v1"
DEFAULT_SERVER = "http://127.0.0.1:8080"
USER_AGENT = "runyard-python"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


# -- routes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One API operation: an HTTP method and a path template under ``/api/v1``."""

    method: str
    template: str


ROUTES: list[Route] = []


def _route(method: str, template: str) -> Route:
    route = Route(method, template)
    ROUTES.append(route)
    return route


LOGIN = _route("POST", "/auth/login")
REFRESH = _route("POST", "/auth/refresh")
LOGOUT = _route("POST", "/auth/logout")
DEVICE_REVOKE = _route("POST", "/auth/device/revoke")
ME = _route("GET", "/users/me")
PAIR_START = _route("POST", "/desktop/pair/start")
PAIR_POLL = _route("POST", "/desktop/pair/poll")
PAIR_CONFIRM = _route("POST", "/desktop/pair/confirm")
WORKFLOW_IMPORT = _route("POST", "/workflows/import")
WORKFLOW_LIST = _route("GET", "/r/workflows")
WORKFLOW_GET = _route("GET", "/r/workflows/{workflowId}")
WORKFLOW_GET_SLUG = _route("GET", "/r/workflows/slug/{workflowSlug}")
RUN = _route("POST", "/r/workflows/{workflowId}/run")
RUN_SLUG = _route("POST", "/r/workflows/slug/{workflowSlug}/run")
RUNS = _route("POST", "/r/workflows/{workflowId}/runs")
RUNS_SLUG = _route("POST", "/r/workflows/slug/{workflowSlug}/runs")
TASK_LIST = _route("GET", "/r/tasks")
TASK_GET = _route("GET", "/r/tasks/{taskId}")
TASK_CANCEL = _route("POST", "/r/tasks/{taskId}/cancel")
TASK_RESULT = _route("GET", "/r/tasks/{taskId}/result")
TASK_EVENTS = _route("GET", "/r/tasks/{taskId}/events")
AGENT_LIST = _route("GET", "/r/agents")
KEY_CREATE = _route("POST", "/credentials")
KEY_LIST = _route("GET", "/credentials")
KEY_REVOKE = _route("DELETE", "/credentials/{credentialId}")
WEBHOOK_CREATE = _route("POST", "/webhooks")
WEBHOOK_LIST = _route("GET", "/webhooks")
WEBHOOK_GET = _route("GET", "/webhooks/{webhookId}")
WEBHOOK_UPDATE = _route("PUT", "/webhooks/{webhookId}")
WEBHOOK_DELETE = _route("DELETE", "/webhooks/{webhookId}")
WEBHOOK_DELIVERIES = _route("GET", "/webhooks/{webhookId}/deliveries")
WEBHOOK_PING = _route("POST", "/webhooks/{webhookId}/ping")
FILE_PRESIGN = _route("POST", "/r/files/presign")
MULTIPART_INITIATE = _route("POST", "/uploads/multipart/initiate")
MULTIPART_PARTS = _route("POST", "/uploads/multipart/parts")
MULTIPART_COMPLETE = _route("POST", "/uploads/multipart/complete")
MULTIPART_ABORT = _route("POST", "/uploads/multipart/abort")


# -- calls --------------------------------------------------------------------------------------


def _ignore(_response: httpx.Response) -> None:
    return None


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request to make and how to read its (successful) answer."""

    route: Route
    parse: Callable[[httpx.Response], T]
    path: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Send the client's credentials (False for login, refresh and pairing).
    authenticated: bool = True

    @property
    def url(self) -> str:
        values = {name: quote(value, safe="@") for name, value in self.path.items()}
        return API_PREFIX + self.route.template.format(**values)


def error_from(response: httpx.Response) -> RunyardError:
    """The ``RunyardError`` for a non-2xx answer (its ``error_message``, or the raw text)."""
    body: Any = None
    message = ""
    try:
        body = response.json()
    except ValueError:
        message = response.text.strip()[:500]
    if isinstance(body, dict) and isinstance(body.get("error_message"), str):
        message = body["error_message"]
    elif body is not None and not message:
        message = json.dumps(body)[:500]
    return RunyardError(response.status_code, message or response.reason_phrase, body=body)


def check(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_from(response)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise RunyardError(
            response.status_code, f"the server answered something that is not JSON: {exc}"
        ) from None


def model(cls: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return cls.model_validate(_json(response))

    return parse


def page(cls: type[M], key: str) -> Callable[[httpx.Response], Page[M]]:
    def parse(response: httpx.Response) -> Page[M]:
        body = _json(response)
        meta = body.get("page_meta") or {}
        return Page(
            items=[cls.model_validate(item) for item in body.get(key, [])],
            current_page=int(meta.get("current_page", 1)),
            per_page=int(meta.get("per_page", 20)),
            total_count=int(meta.get("total_count", 0)),
        )

    return parse


def field_of(key: str) -> Callable[[httpx.Response], str]:
    def parse(response: httpx.Response) -> str:
        return str(_json(response)[key])

    return parse


def _paging(current_page: int, per_page: int, **extra: Any) -> dict[str, Any]:
    params = {"current_page": current_page, "per_page": per_page}
    params.update({k: v for k, v in extra.items() if v is not None})
    return params


def is_uuid(value: str) -> bool:
    return bool(_UUID.match(value))


def base_url(server: str) -> str:
    """``http://host:port`` from what people type (a trailing ``/`` or ``/api/v1`` is fine)."""
    url = server.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)]
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise RunyardError(0, f"server must be an http(s):// URL, not {server!r}")
    return url


def default_server() -> str:
    return os.environ.get("RUNYARD_SERVER_URL") or DEFAULT_SERVER


# -- operations ---------------------------------------------------------------------------------


def login(email: str, password: str) -> Call[TokenPair]:
    body = {"email_address": email, "user_password": password}
    return Call(LOGIN, model(TokenPair), json=body, authenticated=False)


def refresh(refresh_token: str) -> Call[TokenPair]:
    body = {"refresh_token": refresh_token}
    return Call(REFRESH, model(TokenPair), json=body, authenticated=False)


def logout(refresh_token: str) -> Call[None]:
    body = {"refresh_token": refresh_token}
    return Call(LOGOUT, _ignore, json=body, authenticated=False)


def revoke_device() -> Call[None]:
    return Call(DEVICE_REVOKE, _ignore)


def me() -> Call[User]:
    return Call(ME, model(User))


def start_pairing() -> Call[PairingStart]:
    return Call(PAIR_START, model(PairingStart), authenticated=False)


def _poll_result(response: httpx.Response) -> PairingResult | None:
    body = _json(response)
    if body.get("status") != "approved":
        return None
    return PairingResult(device_key=body["raw_key"], agent_key=body.get("agent_key"))


def poll_pairing(device_code: str) -> Call[PairingResult | None]:
    body = {"device_code": device_code}
    return Call(PAIR_POLL, _poll_result, json=body, authenticated=False)


def confirm_pairing(user_code: str, device_name: str | None) -> Call[None]:
    body: dict[str, Any] = {"user_code": user_code}
    if device_name:
        body["device_name"] = device_name
    return Call(PAIR_CONFIRM, _ignore, json=body)


def import_workflow(body: Mapping[str, Any]) -> Call[str]:
    return Call(WORKFLOW_IMPORT, field_of("id"), json=dict(body))


def list_workflows(current_page: int, per_page: int) -> Call[Page[Workflow]]:
    return Call(
        WORKFLOW_LIST,
        page(Workflow, "workflow_list"),
        params=_paging(current_page, per_page),
    )


def get_workflow(ref: str) -> Call[Workflow]:
    if is_uuid(ref):
        return Call(WORKFLOW_GET, model(Workflow), path={"workflowId": ref})
    return Call(WORKFLOW_GET_SLUG, model(Workflow), path={"workflowSlug": ref})


def _workflow_route(ref: str, by_id: Route, by_slug: Route) -> tuple[Route, dict[str, str]]:
    if is_uuid(ref):
        return by_id, {"workflowId": ref}
    return by_slug, {"workflowSlug": ref}


def check_priority(priority: int | None) -> None:
    """Refuse an out-of-range priority before any upload, with the server's own message."""
    if priority is not None and priority not in PRIORITY:
        raise RunyardError(0, PRIORITY.message)


def _run_body(
    parameters: Mapping[str, Any] | None, priority: int | None, target_pool: str | None
) -> dict[str, Any]:
    check_priority(priority)
    body: dict[str, Any] = {"parameters": dict(parameters or {})}
    if priority is not None:
        body["priority"] = priority
    if target_pool is not None:
        body["target_pool"] = target_pool
    return body


def run(
    ref: str,
    parameters: Mapping[str, Any] | None,
    *,
    priority: int | None = None,
    target_pool: str | None = None,
    idempotency_key: str | None = None,
) -> Call[str]:
    body = _run_body(parameters, priority, target_pool)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    route, path = _workflow_route(ref, RUN, RUN_SLUG)
    return Call(route, field_of("task_id"), path=path, json=body, headers=headers)


def _task_ids(response: httpx.Response) -> list[str]:
    ids = _json(response).get("task_ids")
    if not isinstance(ids, list):
        raise RunyardError(response.status_code, "the server answered without task_ids")
    return [str(i) for i in ids]


def run_batch(
    ref: str,
    parameter_sets: Sequence[Mapping[str, Any] | None],
    *,
    priority: int | None = None,
    target_pool: str | None = None,
) -> Call[list[str]]:
    """One ``…/runs`` request (at most ``MAX_RUNS_PER_REQUEST`` runs, all accepted or none)."""
    body = {"runs": [_run_body(p, priority, target_pool) for p in parameter_sets]}
    route, path = _workflow_route(ref, RUNS, RUNS_SLUG)
    return Call(route, _task_ids, path=path, json=body)


_RUN_INDEX = re.compile(r"\bruns\[(\d+)\]")


def _later_batch_error(exc: RunyardError, start: int) -> RunyardError:
    """A failed request after the first: the run index counted from the whole list (the
    server counts from the request), and a note that the runs before it went through."""
    message = _RUN_INDEX.sub(lambda m: f"runs[{int(m.group(1)) + start}]", exc.error_message)
    message += f" (the {start} runs before it were submitted)"
    return RunyardError(exc.status, message, body=exc.body)


def runs_flow(
    ref: str,
    parameter_sets: Sequence[Mapping[str, Any] | None],
    *,
    priority: int | None = None,
    target_pool: str | None = None,
    threshold: int,
) -> Generator[Step, Any, list[str]]:
    """Upload the runs' files, then submit the runs ``MAX_RUNS_PER_REQUEST`` at a time, in
    order; returns every task id. Each request is all or nothing, the whole list is not."""
    check_priority(priority)
    resolved = yield from many_parameters_flow(parameter_sets, threshold)
    ids: list[str] = []
    for start in range(0, len(resolved), MAX_RUNS_PER_REQUEST):
        chunk = resolved[start : start + MAX_RUNS_PER_REQUEST]
        try:
            chunk_ids: list[str] = yield run_batch(
                ref, chunk, priority=priority, target_pool=target_pool
            )
        except RunyardError as exc:
            if start == 0:
                raise
            raise _later_batch_error(exc, start) from None
        ids.extend(chunk_ids)
    return ids


def list_tasks(
    current_page: int, per_page: int, status: str | None, workflow_id: str | None
) -> Call[Page[Task]]:
    params = _paging(current_page, per_page, status=status, workflow_id=workflow_id)
    return Call(TASK_LIST, page(Task, "task_list"), params=params)


def get_task(task_id: str) -> Call[Task]:
    return Call(TASK_GET, model(Task), path={"taskId": task_id})


def cancel_task(task_id: str) -> Call[None]:
    return Call(TASK_CANCEL, _ignore, path={"taskId": task_id})


def get_result(task_id: str) -> Call[TaskResult]:
    return Call(TASK_RESULT, model(TaskResult), path={"taskId": task_id})


def task_events(task_id: str, last_event_id: int) -> Call[None]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_event_id > 0:
        headers["Last-Event-ID"] = str(last_event_id)
    return Call(TASK_EVENTS, _ignore, path={"taskId": task_id}, headers=headers)


def list_agents(current_page: int, per_page: int) -> Call[Page[Agent]]:
    return Call(AGENT_LIST, page(Agent, "agent_list"), params=_paging(current_page, per_page))


def create_key(kind: str, display_name: str, expires_in_days: int | None) -> Call[CreatedKey]:
    body: dict[str, Any] = {"kind": kind, "display_name": display_name}
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    return Call(KEY_CREATE, model(CreatedKey), json=body)


def list_keys(current_page: int, per_page: int, kind: str | None) -> Call[Page[Key]]:
    params = _paging(current_page, per_page, kind=kind)
    return Call(KEY_LIST, page(Key, "credentials"), params=params)


def revoke_key(key_id: str) -> Call[None]:
    return Call(KEY_REVOKE, _ignore, path={"credentialId": key_id})


def create_webhook(
    display_name: str, url: str, events: Sequence[str] | None
) -> Call[CreatedWebhook]:
    body: dict[str, Any] = {"display_name": display_name, "webhook_url": url}
    if events is not None:
        body["webhook_events"] = list(events)
    return Call(WEBHOOK_CREATE, model(CreatedWebhook), json=body)


def list_webhooks(current_page: int, per_page: int) -> Call[Page[Webhook]]:
    return Call(WEBHOOK_LIST, page(Webhook, "webhook_list"), params=_paging(current_page, per_page))


def get_webhook(webhook_id: str) -> Call[Webhook]:
    return Call(WEBHOOK_GET, model(Webhook), path={"webhookId": webhook_id})


def update_webhook(webhook_id: str, changes: Mapping[str, Any]) -> Call[None]:
    return Call(WEBHOOK_UPDATE, _ignore, path={"webhookId": webhook_id}, json=dict(changes))


def delete_webhook(webhook_id: str) -> Call[None]:
    return Call(WEBHOOK_DELETE, _ignore, path={"webhookId": webhook_id})


def list_deliveries(webhook_id: str, current_page: int, per_page: int) -> Call[Page[Delivery]]:
    return Call(
        WEBHOOK_DELIVERIES,
        page(Delivery, "delivery_list"),
        path={"webhookId": webhook_id},
        params=_paging(current_page, per_page),
    )


def ping_webhook(webhook_id: str) -> Call[str]:
    return Call(WEBHOOK_PING, field_of("delivery_id"), path={"webhookId": webhook_id})


def workflow_body(
    graph_or_workflow: Mapping[str, Any],
    *,
    slug: str | None,
    display_name: str | None,
    parameters: Sequence[Mapping[str, Any]] | None,
    labels: Sequence[str] | None,
    description: str | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The import body from a bare graph (``{node_id: {class_type, inputs}}``) or a whole
    workflow object (one with ``workflow_json``); the keyword arguments override."""
    if "workflow_json" in graph_or_workflow:
        body = dict(graph_or_workflow)
    else:
        body = {"workflow_json": dict(graph_or_workflow)}
    if slug is not None:
        body["workflow_slug"] = slug
    if not body.get("workflow_slug"):
        raise RunyardError(0, "a workflow slug is needed (slug=…)")
    if display_name is not None:
        body["display_name"] = display_name
    body.setdefault("display_name", body["workflow_slug"])
    if parameters is not None:
        body["parameters"] = [dict(p) for p in parameters]
    if labels is not None:
        body["required_labels"] = list(labels)
    if description is not None:
        body["description"] = description
    body.update(extra)
    return body


def read_json_file(path: str | os.PathLike[str]) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RunyardError(0, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RunyardError(0, f"{path} is not valid JSON: {exc}") from None


def parameters_from(value: Any, source: str) -> list[dict[str, Any]]:
    """A parameter file holds a list of definitions, or ``{"parameters": [...]}``."""
    if isinstance(value, dict) and isinstance(value.get("parameters"), list):
        value = value["parameters"]
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise RunyardError(0, f"{source} must hold a JSON list of parameter definitions")
    return [dict(p) for p in value]


# -- session auth -------------------------------------------------------------------------------


class Auth:
    """Which credentials a client sends, and (for email/password) its session tokens.

    ``flow()`` is a generator of the calls that sign in or refresh: the clients drive it with
    their own I/O, so the sync and async clients share one implementation.
    """

    #: Refresh this long before the access token expires.
    EARLY = 30.0

    def __init__(
        self,
        api_key: str | None = None,
        email: str | None = None,
        password: str | None = None,
        team_id: str | None = None,
    ) -> None:
        if api_key and email:
            raise RunyardError(0, "pass api_key or email/password, not both")
        if email and not password:
            raise RunyardError(0, "a password is needed with an email")
        if api_key is not None and not api_key.strip():
            api_key = None
        self.api_key = api_key.strip() if api_key else None
        self.email = email
        self.password = password
        self.team_id = team_id
        self.access_token: str | None = None
        self.refresh_token: str | None = None
        self.expires_at = 0.0

    @property
    def is_session(self) -> bool:
        return self.email is not None

    @property
    def has_credentials(self) -> bool:
        return self.api_key is not None or self.email is not None

    def use_key(self, api_key: str) -> None:
        self.api_key, self.email, self.password = api_key, None, None
        self.access_token = self.refresh_token = None

    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"Authorization": f"Bearer {self.api_key}"}
        if self.access_token:
            headers = {"Authorization": f"Bearer {self.access_token}"}
            if self.team_id:
                headers["X-Team-ID"] = self.team_id
            return headers
        return {}

    def needs_renewal(self) -> bool:
        if not self.is_session:
            return False
        if self.access_token is None or self.team_id is None:
            return True
        return time.monotonic() >= self.expires_at - self.EARLY

    def expire(self) -> None:
        """The server refused the access token: renew before the next call."""
        self.expires_at = 0.0

    def _accept(self, tokens: TokenPair) -> None:
        self.access_token = tokens.access_token
        self.refresh_token = tokens.refresh_token
        self.expires_at = time.monotonic() + tokens.expires_in

    def flow(self) -> Generator[Call[Any], Any, None]:
        """Refresh the session (or sign in again), then pick a team if none was given."""
        tokens: TokenPair | None = None
        if self.refresh_token is not None:
            try:
                tokens = yield refresh(self.refresh_token)
            except RunyardError as exc:
                if exc.status not in (400, 401):
                    raise
                self.refresh_token = None
        if tokens is None:
            assert self.email is not None and self.password is not None
            tokens = yield login(self.email, self.password)
        assert tokens is not None
        self._accept(tokens)
        if self.team_id is None:
            user: User = yield me()
            if not user.team_list:
                raise RunyardError(0, f"{user.email_address} is not a member of any team")
            self.team_id = user.team_list[0].id


# -- what both clients hold ----------------------------------------------------------------------


class ClientBase:
    """The state and request building ``Runyard`` and ``AsyncRunyard`` share (no I/O): the
    server, the credentials, the options; each adds its own httpx client and sending."""

    def __init__(
        self,
        server: str | None,
        *,
        api_key: str | None,
        email: str | None,
        password: str | None,
        team_id: str | None,
        stream_timeout: float,
        reconnect_delay: float | None,
        give_up_after: float,
        multipart_threshold: int,
        timeout: float,
        transport: Any,
    ) -> None:
        self.server_url = base_url(server or default_server())
        if api_key is None and email is None:
            api_key = os.environ.get("RUNYARD_API_KEY") or None
        self._auth = Auth(api_key, email, password, team_id)
        self._stream_timeout = stream_timeout
        self._reconnect_delay = reconnect_delay
        self._give_up_after = give_up_after
        self.multipart_threshold = multipart_threshold
        self._open(self._http_options(timeout, transport))

    def _open(self, http_options: dict[str, Any]) -> None:
        """Create the httpx client (and the lock that guards session renewal)."""
        raise NotImplementedError

    def _http_options(self, timeout: float, transport: Any) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client`` / ``httpx.AsyncClient``."""
        from runyard import __version__

        return {
            "base_url": self.server_url,
            "timeout": timeout,
            "transport": transport,
            "headers": {"User-Agent": f"{USER_AGENT}/{__version__}"},
            "follow_redirects": False,
        }

    @property
    def team_id(self) -> str | None:
        """The session's team (after the first call), when signed in with email/password."""
        return self._auth.team_id

    def _request(
        self, http: httpx.Client | httpx.AsyncClient, call: Call[Any], timeout: httpx.Timeout | None
    ) -> httpx.Request:
        headers = dict(call.headers)
        if call.authenticated:
            headers.update(self._auth.headers())
        return http.build_request(
            call.route.method,
            call.url,
            params=call.params,
            json=call.json,
            headers=headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )

    def _renew_after(
        self, response: httpx.Response, attempt: int, renew: bool, call: Call[Any]
    ) -> bool:
        """A session's token was refused on a first try: renew it and send again."""
        return (
            response.status_code == 401
            and attempt == 1
            and renew
            and call.authenticated
            and self._auth.is_session
        )

    def _read_timeout(self, deadline: float | None) -> httpx.Timeout:
        read = self._stream_timeout
        if deadline is not None:
            read = max(0.05, min(read, deadline - time.monotonic() + 0.05))
        return httpx.Timeout(30.0, read=read)

    def _pause(self, state: StreamState, deadline: float | None, reason: str) -> float:
        """After an event stream broke: give up (deadline, too long failing) or how long to
        wait before reconnecting."""
        check_deadline(deadline, state.task_id)
        state.failed(self._give_up_after, reason)
        pause = state.delay(self._reconnect_delay)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        return pause


# -- Server-Sent Events -------------------------------------------------------------------------


@dataclass(frozen=True)
class SSEMessage:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    """Lines in, messages out (the WHATWG event-stream rules the API needs)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> SSEMessage | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            message = SSEMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


def task_event(message: SSEMessage) -> TaskEvent | None:
    """A task event from an SSE message; ``None`` for anything else."""
    if message.id is None or not message.id.isdigit():
        return None
    try:
        data = json.loads(message.data) if message.data else {}
    except ValueError:
        data = {"raw": message.data}
    if not isinstance(data, dict):
        data = {"value": data}
    return TaskEvent(id=int(message.id), event=message.event, data=data)


@dataclass
class StreamState:
    """Where an event stream stands, across reconnects."""

    task_id: str
    last_id: int = 0
    retry_seconds: float = 2.0
    #: ``time.monotonic()`` of the first failure since the last event (or None).
    failing_since: float | None = None

    def delay(self, override: float | None) -> float:
        return override if override is not None else min(max(self.retry_seconds, 0.05), 30.0)

    def progressed(self) -> None:
        self.failing_since = None

    def failed(self, give_up_after: float, reason: str) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > give_up_after:
            raise RunyardError(
                0,
                f"lost the event stream of task {self.task_id} for {give_up_after:g} s ({reason})",
            )


def check_deadline(deadline: float | None, task_id: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise RunyardError(0, f"timed out waiting for task {task_id}")


def retriable(exc: RunyardError) -> bool:
    """Errors worth reconnecting an event stream for (server restarting, proxy hiccups)."""
    return exc.status == 0 or exc.status in (429, 502, 503, 504)


class EventReader:
    """Lines of one event-stream connection in, new task events out (each once)."""

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self.decoder = SSEDecoder()

    def feed(self, line: str) -> TaskEvent | None:
        message = self.decoder.feed(line)
        if self.decoder.retry_ms is not None:
            self.state.retry_seconds = self.decoder.retry_ms / 1000
        event = task_event(message) if message is not None else None
        if event is None or (event.id <= self.state.last_id and event.event != "error"):
            return None
        self.state.last_id = max(self.state.last_id, event.id)
        self.state.progressed()
        return event


STREAM_ENDED = "the stream ended before the task did"


def stream_failure(exc: Exception, deadline: float | None, task_id: str) -> str:
    """Why an event-stream connection failed; re-raises what reconnecting cannot mend."""
    if isinstance(exc, httpx.TimeoutException):
        check_deadline(deadline, task_id)
        return "no data within the read timeout"
    if isinstance(exc, httpx.TransportError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, RunyardError) and retriable(exc):
        return exc.error_message
    raise exc


# -- downloads ----------------------------------------------------------------------------------


_UNSAFE = re.compile(r"[^\w.\- ]+")


def safe_filename(name: str, fallback: str) -> str:
    """A plain file name (no directories, no dot files) from a name a server suggested."""
    base = posixpath.basename(name.replace("\\", "/")).strip()
    base = _UNSAFE.sub("_", base).strip(" .")
    return base[:200] or fallback


def download_links(result: TaskResult, server: str) -> list[tuple[str, str]]:
    """``(label, absolute URL)`` for every output link of a result."""
    links: list[tuple[str, str]] = []
    if result.download_urls:
        links.extend(result.download_urls.items())
    elif result.download_url:
        links.append(("", result.download_url))
    return [(label, urljoin(server + "/", url)) for label, url in links]


_EXT_FILENAME = re.compile(r"filename\*\s*=\s*([^';]*)'[^']*'([^;]+)", re.IGNORECASE)


def disposition_name(value: str) -> str:
    """The file name of a ``Content-Disposition`` header; ``filename*`` (RFC 6266) first."""
    if not value:
        return ""
    match = _EXT_FILENAME.search(value)
    if match:
        try:
            return unquote(
                match.group(2).strip(), encoding=match.group(1) or "utf-8", errors="strict"
            )
        except (LookupError, UnicodeDecodeError):
            pass
    message = Message()
    message["content-disposition"] = value
    return message.get_filename() or ""


def taken_names(folder: Path, overwrite: bool) -> set[str]:
    """Names a download must not take: the files already in ``folder``, unless it may
    replace them (another task's output of the same name is never overwritten silently)."""
    if overwrite or not folder.is_dir():
        return set()
    return {entry.name for entry in folder.iterdir()}


def output_name(response: httpx.Response, label: str, index: int, used: set[str]) -> str:
    """A file name for a download, unique among ``used`` (which it joins): the server's
    ``Content-Disposition`` name, else the link's last path segment, else the label."""
    candidates = [
        disposition_name(response.headers.get("Content-Disposition", "")),
        posixpath.basename(response.url.path),
        label,
    ]
    chosen = next((c for c in candidates if safe_filename(c, "")), "")
    name = safe_filename(chosen, f"output-{index + 1}")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    unique, n = name, 1
    while unique in used:
        n += 1
        unique = f"{stem}-{n}.{ext}" if dot else f"{stem}-{n}"
    used.add(unique)
    return unique


def content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


@dataclass
class DownloadFile:
    """One output being downloaded: where it goes (a hidden ``.part`` file until whole) and
    its progress reports."""

    name: str
    target: Path
    partial: Path
    total: int | None
    index: int
    count: int
    progress: Callable[[DownloadProgress], None] | None
    done: int = 0

    def add(self, received: int) -> None:
        self.done += received
        if self.progress is not None:
            self.progress(
                DownloadProgress(self.name, self.done, self.total, self.index, self.count)
            )


def download_file(
    response: httpx.Response,
    folder: Path,
    label: str,
    position: tuple[int, int],
    used: set[str],
    progress: Callable[[DownloadProgress], None] | None,
) -> DownloadFile:
    """Name the file of a download (``position``: its index and the count) and report its
    start."""
    index, count = position
    name = output_name(response, label, index, used)
    started = DownloadFile(
        name,
        folder / name,
        folder / f".{name}.part",
        content_length(response),
        index,
        count,
        progress,
    )
    started.add(0)
    return started


def transport_error(server: str, exc: Exception) -> RunyardError:
    if isinstance(exc, httpx.TimeoutException):
        return RunyardError(0, f"{server} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return RunyardError(0, f"cannot reach the Runyard server at {server} ({exc})")
    return RunyardError(0, f"connection to {server} failed: {exc or type(exc).__name__}")


# -- uploads ------------------------------------------------------------------------------------

MIB = 1024 * 1024
#: Files this large or larger go up as multipart uploads (parts signed by the server).
MULTIPART_THRESHOLD = 100 * MIB
UPLOAD_CHUNK = MIB
#: Part links asked for at a time (links expire: a batch is signed just before it is used).
PART_BATCH = 16


@dataclass(frozen=True)
class UploadSource:
    """A local file to upload: its path, the name and type the server records, its size."""

    path: Path
    name: str
    content_type: str
    size: int


def upload_source(path: str | os.PathLike[str], content_type: str | None = None) -> UploadSource:
    """Check the file is there and readable; ``RunyardError(0, …)`` in one line otherwise."""
    file = Path(path)
    try:
        stat = file.stat()
        if not file.is_file():
            raise RunyardError(0, f"cannot upload {path}: not a regular file")
        with file.open("rb"):
            pass
    except OSError as exc:
        raise RunyardError(0, f"cannot upload {path}: {exc.strerror or exc}") from None
    guessed = content_type or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return UploadSource(file, file.name, guessed, stat.st_size)


@dataclass(frozen=True)
class Put:
    """One signed ``PUT`` of ``size`` bytes of ``source`` from ``offset`` (no credentials
    sent); its result is the answer's ``ETag``."""

    source: UploadSource
    url: str
    headers: Mapping[str, str]
    offset: int
    size: int


def presign_file(source: UploadSource) -> Call[PresignedUpload]:
    body = {"file_name": source.name, "file_size": source.size, "content_type": source.content_type}
    return Call(FILE_PRESIGN, model(PresignedUpload), json=body)


def initiate_multipart(source: UploadSource) -> Call[MultipartUpload]:
    body = {"file_name": source.name, "file_size": source.size, "content_type": source.content_type}
    return Call(MULTIPART_INITIATE, model(MultipartUpload), json=body)


def _part_links(response: httpx.Response) -> list[PartLink]:
    return [PartLink.model_validate(p) for p in _json(response).get("parts", [])]


def part_links(storage_key: str, upload_id: str, numbers: Sequence[int]) -> Call[list[PartLink]]:
    body = {"storage_key": storage_key, "upload_id": upload_id, "part_numbers": list(numbers)}
    return Call(MULTIPART_PARTS, _part_links, json=body)


def complete_multipart(
    storage_key: str, upload_id: str, etags: Sequence[tuple[int, str]]
) -> Call[str]:
    parts = [{"part_number": n, "etag": etag} for n, etag in etags]
    body = {"storage_key": storage_key, "upload_id": upload_id, "parts": parts}
    return Call(MULTIPART_COMPLETE, field_of("file_key"), json=body)


def abort_multipart(storage_key: str, upload_id: str) -> Call[None]:
    body = {"storage_key": storage_key, "upload_id": upload_id}
    return Call(MULTIPART_ABORT, _ignore, json=body)


Step = Call[Any] | Put


def upload_flow(
    source: UploadSource, threshold: int = MULTIPART_THRESHOLD
) -> Generator[Step, Any, str]:
    """The calls and PUTs that upload a file; returns its ``file_key``. One presigned PUT
    below ``threshold`` (or multipart if the server finds it too large for one), else a
    multipart upload, aborted if anything fails."""
    if source.size < threshold:
        try:
            presigned: PresignedUpload = yield presign_file(source)
        except RunyardError as exc:
            if exc.status != 413:
                raise
        else:
            yield Put(source, presigned.upload_url, presigned.upload_headers, 0, source.size)
            return presigned.file_key
    upload: MultipartUpload = yield initiate_multipart(source)
    try:
        etags: list[tuple[int, str]] = []
        numbers = list(range(1, upload.part_count + 1))
        for start in range(0, len(numbers), PART_BATCH):
            links: list[PartLink] = yield part_links(
                upload.storage_key, upload.upload_id, numbers[start : start + PART_BATCH]
            )
            for link in links:
                offset = (link.part_number - 1) * upload.part_size
                size = min(upload.part_size, source.size - offset)
                etag: str = yield Put(source, link.upload_url, link.upload_headers, offset, size)
                etags.append((link.part_number, etag))
        file_key: str = yield complete_multipart(upload.storage_key, upload.upload_id, etags)
        return file_key
    except RunyardError:
        with contextlib.suppress(RunyardError):
            yield abort_multipart(upload.storage_key, upload.upload_id)
        raise


def parameters_flow(
    parameters: Mapping[str, Any], threshold: int = MULTIPART_THRESHOLD
) -> Generator[Step, Any, dict[str, Any]]:
    """Upload every ``Path`` value (each file checked before anything is sent); returns the
    parameters with their file keys in place."""
    (resolved,) = yield from many_parameters_flow([parameters], threshold)
    return resolved


def many_parameters_flow(
    parameter_sets: Sequence[Mapping[str, Any] | None], threshold: int = MULTIPART_THRESHOLD
) -> Generator[Step, Any, list[dict[str, Any]]]:
    """``parameters_flow`` for several runs: every file is checked before anything is sent,
    and a file named by several runs (``run_many`` of one photo) is uploaded once."""
    sources: dict[str, UploadSource] = {}
    for parameters in parameter_sets:
        for value in (parameters or {}).values():
            if isinstance(value, os.PathLike) and os.fspath(value) not in sources:
                sources[os.fspath(value)] = upload_source(value)
    keys: dict[str, str] = {}
    for name, source in sources.items():
        keys[name] = yield from upload_flow(source, threshold)
    return [
        {k: keys[os.fspath(v)] if isinstance(v, os.PathLike) else v for k, v in p.items()}
        for p in (dict(p or {}) for p in parameter_sets)
    ]


class UploadCounter:
    """Counts the bytes sent of each file and reports them to a progress callback."""

    def __init__(self, progress: Callable[[UploadProgress], Any] | None) -> None:
        self.progress = progress
        self.done: dict[Path, int] = {}

    def add(self, source: UploadSource, sent: int) -> None:
        first = source.path not in self.done
        self.done[source.path] = self.done.get(source.path, 0) + sent
        if self.progress is not None and (sent or first):
            self.progress(UploadProgress(source.name, self.done[source.path], source.size))


def chunk_sizes(put: Put) -> Iterator[int]:
    """How much to read at a time for one PUT."""
    remaining = put.size
    while remaining > 0:
        size = min(UPLOAD_CHUNK, remaining)
        yield size
        remaining -= size


def check_chunk(chunk: bytes, size: int, source: UploadSource) -> None:
    if len(chunk) != size:
        raise RunyardError(0, f"{source.path} changed while it was being uploaded")


def put_url(server: str, put: Put) -> str:
    return urljoin(server + "/", put.url)


def put_result(response: httpx.Response) -> str:
    """The ETag of a successful signed PUT; the error otherwise."""
    if response.status_code >= 400:
        raise error_from(response)
    return str(response.headers.get("ETag", ""))


def upload_timeout() -> httpx.Timeout:
    return httpx.Timeout(60.0)


def has_files(parameters: Mapping[str, Any] | None) -> bool:
    """Whether any parameter is a local file (``pathlib.Path``) to upload first."""
    return any(isinstance(v, os.PathLike) for v in (parameters or {}).values())
