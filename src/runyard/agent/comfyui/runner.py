"""``ComfyUIRunner``: runs attempts on a ComfyUI next to the agent.

One attempt:

1. ``ack``; download every ``file`` input from its signed link and upload it to ComfyUI
   (``/upload/image``), replacing the file key in the graph by the name ComfyUI stored it as;
2. ``POST /prompt`` with the attempt's own ``prompt_id`` (a UUID derived from task id and
   attempt) and the agent's ``client_id``. A 400 fails the attempt as not retryable, with each
   failing node and its message;
3. follow ``/ws`` (events filtered by ``prompt_id``) into progress frames at a bounded rate;
   after any socket loss, and as a slow watchdog otherwise, poll ``/history/{prompt_id}`` and
   ``/queue``. A prompt that is in neither is lost: ComfyUI restarted (its queue lives in
   memory) and the attempt fails as retryable. So does a ComfyUI that stays unreachable;
4. on success read ``/history/{prompt_id}``, fetch every output (images, gifs/videos, audio,
   files; text is kept inline and stored as ``.txt``) through ``/view``, upload them through
   the attempt's signed links and ``complete`` with the manifest; then delete the history
   entry. ``execution_error`` fails with the node and its message (not retryable, except
   out-of-memory errors);
5. cancel: ``POST /interrupt {prompt_id}`` (only that prompt) and ``POST /queue {delete}``
   (if still pending), repeated until ComfyUI confirms; then ``cancelled``.

``watch(client)`` keeps the agent's status in step with ComfyUI's health: ``unhealthy`` while
``/system_stats`` does not answer, ``idle`` once it does again, and fresh system stats (VRAM)
for the heartbeats. Each answer goes to ``on_detected`` too, so labels and versions detected
late (an agent started before ComfyUI) or changed (ComfyUI upgraded) reach the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import mimetypes
import re
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runyard.agent import transfer
from runyard.agent.client import Reporter, Runner, UploadError
from runyard.agent.comfyui.api import (
    DEFAULT_URL,
    ComfyUIAPI,
    ComfyUIUnavailable,
    Detected,
    PromptRejected,
)
from runyard.agent.comfyui.events import SOCKET_LOST, Event, EventSocket
from runyard.agent.comfyui.progress import ProgressTracker, Snapshot
from runyard.logging import get_logger
from runyard.protocol import v1

if TYPE_CHECKING:
    from runyard.agent.client import GatewayClient

#: Namespace of the prompt ids the agent chooses: uuid5(namespace, "<task_id>#<attempt>").
PROMPT_NAMESPACE = uuid.UUID("6f0b7b9e-3a4c-5d2e-9f10-52756e796172")
_CANCEL = "cancel"
_PROGRESS_EVENTS = frozenset(
    {"execution_start", "execution_cached", "executing", "progress", "progress_state", "executed"}
)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_OOM = ("outofmemory", "out of memory")


def attempt_prompt_id(task_id: str, attempt: int) -> str:
    """The ComfyUI ``prompt_id`` of an attempt: stable, so the agent can find it again."""
    return str(uuid.uuid5(PROMPT_NAMESPACE, f"{task_id}#{attempt}"))


def _safe_segment(value: str, fallback: str) -> str:
    cleaned = _SAFE.sub("_", value).strip("._") or fallback
    return cleaned[:120]


@dataclass
class _Outcome:
    kind: str  # success, error, interrupted, lost
    message: str = ""
    retryable: bool = True
    entry: dict[str, Any] | None = None


@dataclass
class _State:
    prompt_id: str
    events: asyncio.Queue[Event]
    outputs: list[tuple[str, str, Any]] = field(default_factory=list)


class ComfyUIRunner(Runner):
    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        client_id: str | None = None,
        work_dir: Path | None = None,
        progress_interval: float = 0.25,
        poll_interval: float = 0.5,
        watchdog_interval: float = 5.0,
        history_wait: float = 30.0,
        unreachable_timeout: float = 60.0,
        health_interval: float = 5.0,
        health_timeout: float = 5.0,
        socket_wait: float = 2.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.api = ComfyUIAPI(url, timeout=request_timeout)
        self.client_id = client_id or f"runyard-{uuid.uuid4().hex}"
        self.socket = EventSocket(self.api.ws_url, self.client_id)
        self.work_dir = work_dir
        self.progress_interval = progress_interval
        self.poll_interval = poll_interval
        self.watchdog_interval = watchdog_interval
        self.history_wait = history_wait
        self.unreachable_timeout = unreachable_timeout
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.socket_wait = socket_wait
        self.healthy: bool | None = None
        self.detected: Detected | None = None
        #: Called with every successful detection, before ``idle`` is reported: the agent
        #: re-announces its labels and versions when they changed (``main.comfyui_agent``).
        self.on_detected: Callable[[Detected], Awaitable[None]] | None = None
        self._attempts: dict[tuple[str, int], _State] = {}
        self._log = get_logger("runyard.agent.comfyui")

    # -- lifecycle and health --------------------------------------------------------------

    async def detect(self) -> Detected:
        """``/system_stats`` now; raises :class:`ComfyUIUnavailable`."""
        detected = await self.api.system_stats(timeout=self.health_timeout)
        self.detected = detected
        return detected

    async def aclose(self) -> None:
        await self.socket.stop()
        await self.api.aclose()

    async def check_health(self, client: GatewayClient) -> bool:
        """One health probe: report ``unhealthy``/``idle`` on a change, refresh stats."""
        try:
            detected = await self.detect()
        except ComfyUIUnavailable as exc:
            if self.healthy is not False:
                self._log.warning("comfyui_unhealthy", detail=str(exc))
                await client.set_status("unhealthy", detail=str(exc)[:500])
            self.healthy = False
            return False
        client.update_system_stats(detected.system_stats())
        if self.on_detected is not None:
            await self.on_detected(detected)
        if self.healthy is not True:
            self._log.info("comfyui_healthy", comfyui_version=detected.comfyui_version)
            await client.set_status("idle")
        self.healthy = True
        self.socket.start()
        return True

    async def watch(self, client: GatewayClient) -> None:
        """Probe ``/system_stats`` every ``health_interval`` until cancelled."""
        while True:
            await self.check_health(client)
            await asyncio.sleep(self.health_interval)

    # -- Runner ----------------------------------------------------------------------------

    async def cancel(self, task_id: str, attempt: int) -> None:
        state = self._attempts.get((task_id, attempt))
        if state is not None:
            state.events.put_nowait(Event(_CANCEL, {}))

    async def start(self, dispatch: v1.Dispatch, reporter: Reporter) -> None:
        key = (dispatch.task_id, dispatch.attempt)
        prompt_id = attempt_prompt_id(dispatch.task_id, dispatch.attempt)
        state = _State(prompt_id, self.socket.subscribe(prompt_id))
        self._attempts[key] = state
        log = self._log.bind(task_id=dispatch.task_id, attempt=dispatch.attempt, prompt=prompt_id)
        try:
            with tempfile.TemporaryDirectory(prefix="runyard-", dir=self.work_dir) as tmp:
                await self._run(dispatch, reporter, state, Path(tmp), log)
        finally:
            self._attempts.pop(key, None)
            self.socket.unsubscribe(prompt_id)

    async def _run(
        self, dispatch: v1.Dispatch, reporter: Reporter, state: _State, tmp: Path, log: Any
    ) -> None:
        await reporter.ack()
        graph = copy.deepcopy(dispatch.workflow)
        try:
            await self._inject_inputs(dispatch, graph, tmp, reporter)
        except (transfer.TransferError, ComfyUIUnavailable, OSError) as exc:
            await reporter.fail(f"input transfer failed: {exc}", retryable=True)
            return
        if reporter.cancel_requested:
            await reporter.cancelled()
            return
        if not await self.socket.wait_connected(self.socket_wait):
            log.warning("comfyui_socket_unavailable", detail="following the prompt by polling")
        try:
            answer = await self.api.queue_prompt(
                graph, prompt_id=state.prompt_id, client_id=self.client_id
            )
        except PromptRejected as exc:
            log.info("comfyui_prompt_rejected")
            await reporter.fail(str(exc), retryable=False)
            return
        except ComfyUIUnavailable as exc:
            await reporter.fail(str(exc), retryable=True)
            return
        if answer.get("node_errors"):
            await reporter.log(
                f"ComfyUI skipped outputs that failed validation: {sorted(answer['node_errors'])}"
            )
        await reporter.log(f"queued in ComfyUI as prompt {state.prompt_id}")
        outcome = await self._follow(graph, reporter, state)
        log.info("comfyui_prompt_ended", outcome=outcome.kind)
        if outcome.kind == "interrupted" or (
            outcome.kind == "success" and reporter.cancel_requested
        ):
            await reporter.cancelled()
        elif outcome.kind == "success":
            assert outcome.entry is not None
            await self._finish(dispatch, reporter, state, outcome.entry, tmp)
        else:
            await reporter.fail(outcome.message, retryable=outcome.retryable)

    # -- inputs ----------------------------------------------------------------------------

    async def _inject_inputs(
        self, dispatch: v1.Dispatch, graph: dict[str, Any], tmp: Path, reporter: Reporter
    ) -> None:
        for index, (param, url) in enumerate(sorted(dispatch.inputs.items())):
            file_key = dispatch.parameters.get(param)
            base = str(file_key).rsplit("/", 1)[-1] if isinstance(file_key, str) else param
            name = _safe_segment(base, f"input-{index}")
            path = tmp / f"in-{index}-{name}"
            size = await transfer.download(url, path)
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
            stored = await self.api.upload_image(path, name, content_type)
            replaced = _replace_value(graph, file_key, stored) if isinstance(file_key, str) else 0
            await reporter.log(
                f"input {param}: {size} bytes, uploaded to ComfyUI as {stored!r}"
                + ("" if replaced else " (no graph input named its file key)")
            )

    # -- following the prompt --------------------------------------------------------------

    async def _stop_prompt(self, prompt_id: str) -> None:
        with contextlib.suppress(ComfyUIUnavailable):
            await self.api.delete_pending(prompt_id)
            await self.api.interrupt(prompt_id)

    async def _follow(self, graph: dict[str, Any], reporter: Reporter, state: _State) -> _Outcome:
        loop = asyncio.get_running_loop()
        prompt_id = state.prompt_id
        tracker = ProgressTracker(graph)
        polling = not self.socket.connected
        succeeded = False
        last_sent = -1e9
        last_snap: Snapshot | None = None
        cancel_sent: float | None = None
        unreachable_since: float | None = None
        next_poll = loop.time() + (self.poll_interval if polling else self.watchdog_interval)
        succeeded_at = 0.0

        while True:
            now = loop.time()
            if reporter.cancel_requested and (cancel_sent is None or now - cancel_sent >= 1.0):
                await self._stop_prompt(prompt_id)
                cancel_sent = now = loop.time()
                next_poll = min(next_poll, now + self.poll_interval)
            wait = next_poll - now
            if tracker.changed:
                wait = min(wait, last_sent + self.progress_interval - now)
            event: Event | None = None
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    event = await asyncio.wait_for(state.events.get(), wait)
            elif not state.events.empty():
                event = state.events.get_nowait()
            if event is not None:
                if event.type == SOCKET_LOST:
                    polling = True
                    next_poll = min(next_poll, loop.time() + self.poll_interval)
                elif event.type == "execution_error":
                    return _execution_error(event.data)
                elif event.type == "execution_interrupted":
                    return _Outcome("interrupted")
                elif event.type == "execution_success" or (
                    event.type == "executing" and event.data.get("node") is None
                ):
                    if not succeeded:
                        succeeded, succeeded_at = True, loop.time()
                        tracker.apply("execution_success", {})
                        next_poll = loop.time()
                elif event.type in _PROGRESS_EVENTS:
                    tracker.apply(event.type, event.data)
            now = loop.time()
            if tracker.changed and now - last_sent >= self.progress_interval:
                snap = tracker.snapshot()
                if snap != last_snap:  # progress and progress_state often say the same
                    await reporter.progress(
                        snap.progress,
                        current_node=snap.current_node,
                        step_current=snap.step_current,
                        step_total=snap.step_total,
                    )
                    last_sent, last_snap = now, snap
            if now < next_poll:
                continue
            # -- poll /history and /queue --------------------------------------------------
            outcome, reachable = await self._poll(prompt_id, cancelling=cancel_sent is not None)
            now = loop.time()
            if not reachable:
                polling = True
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= self.unreachable_timeout:
                    return _Outcome(
                        "lost",
                        f"ComfyUI at {self.api.base_url} unreachable for "
                        f"{self.unreachable_timeout:g} s while running the prompt",
                    )
            else:
                if outcome is not None:
                    if unreachable_since is not None and outcome.kind == "lost":
                        outcome.message += " (it was unreachable, then came back)"
                    return outcome
                unreachable_since = None
            if succeeded and now - succeeded_at > self.history_wait:
                return _Outcome("lost", "ComfyUI finished the prompt but wrote no history entry")
            if succeeded:
                interval = 0.05
            elif polling or cancel_sent is not None:
                interval = self.poll_interval
            else:
                interval = self.watchdog_interval
            next_poll = now + interval

    async def _poll(self, prompt_id: str, *, cancelling: bool) -> tuple[_Outcome | None, bool]:
        """(an outcome if the prompt ended or vanished, whether ComfyUI answered)."""
        try:
            entry = await self.api.history(prompt_id)
            if entry is None:
                running, pending = await self.api.queue()
                if prompt_id in running or prompt_id in pending:
                    return None, True
                # It may have ended between the two calls: look once more.
                entry = await self.api.history(prompt_id)
        except ComfyUIUnavailable:
            return None, False
        if entry is not None:
            return _from_history(entry), True
        if cancelling:
            return _Outcome("interrupted"), True  # removed from the pending queue
        return (
            _Outcome(
                "lost",
                f"ComfyUI lost prompt {prompt_id}: it is neither queued nor in the history "
                "(ComfyUI restarted)",
            ),
            True,
        )

    # -- outputs ---------------------------------------------------------------------------

    async def _finish(
        self,
        dispatch: v1.Dispatch,
        reporter: Reporter,
        state: _State,
        entry: dict[str, Any],
        tmp: Path,
    ) -> None:
        await reporter.progress(1.0, stage="uploading")
        files, texts = collect_outputs(entry)
        manifest: dict[str, Any] = {"prompt_id": state.prompt_id}
        if texts:
            manifest["texts"] = [{"node_id": n, "kind": k, "text": t} for n, k, t in texts]
        if not reporter.uploads_supported:
            manifest["outputs"] = [
                {
                    "node_id": node_id,
                    "kind": kind,
                    "file_name": item.get("filename"),
                    "subfolder": item.get("subfolder", ""),
                    "type": item.get("type", "output"),
                }
                for node_id, kind, item in files
            ]
            manifest["uploaded"] = False
            await reporter.complete(manifest)
            return
        try:
            manifest["outputs"] = await self._upload_outputs(reporter, files, texts, tmp)
        except (UploadError, transfer.TransferError, ComfyUIUnavailable, OSError) as exc:
            if reporter.cancel_requested:
                await reporter.cancelled()
            else:
                await reporter.fail(f"output upload failed: {exc}", retryable=True)
            return
        await reporter.complete(manifest)
        with contextlib.suppress(ComfyUIUnavailable):
            await self.api.delete_history(state.prompt_id)

    async def _upload_outputs(
        self,
        reporter: Reporter,
        files: list[tuple[str, str, dict[str, Any]]],
        texts: list[tuple[str, str, str]],
        tmp: Path,
    ) -> list[dict[str, Any]]:
        prepared: list[tuple[str, str, str, Path, int, str]] = []
        used: set[str] = set()

        def unique(name: str, node_id: str) -> str:
            if name in used:
                name = f"{_safe_segment(node_id, 'node')}/{name}"
            stem, dot, ext = name.rpartition(".")
            counter = 1
            while name in used:
                counter += 1
                name = f"{stem}-{counter}.{ext}" if dot else f"{name}-{counter}"
            used.add(name)
            return name

        for index, (node_id, kind, item) in enumerate(files):
            path = tmp / f"out-{index}"
            size, content_type = await self.api.view(item, path)
            segments = [
                _safe_segment(s, "dir") for s in str(item.get("subfolder") or "").split("/") if s
            ]
            file_name = _safe_segment(str(item.get("filename")), f"output-{index}")
            name = unique("/".join([*segments, file_name]), node_id)
            prepared.append((node_id, kind, name, path, size, content_type))
        for index, (node_id, kind, text) in enumerate(texts):
            path = tmp / f"text-{index}.txt"
            data = text.encode()
            await asyncio.to_thread(path.write_bytes, data)
            name = unique(f"{_safe_segment(node_id, 'node')}-{kind}-{index}.txt", node_id)
            prepared.append((node_id, kind, name, path, len(data), "text/plain"))
        manifest: list[dict[str, Any]] = []
        for start in range(0, len(prepared), 500):
            batch = prepared[start : start + 500]
            specs = [
                v1.UploadFile(name=name, content_type=ctype, size=size)
                for _, _, name, _, size, ctype in batch
            ]
            links = await reporter.upload_links(specs)
            by_name = {link.name: link for link in links}
            for node_id, kind, name, path, size, ctype in batch:
                link = by_name.get(name)
                if link is None:
                    raise UploadError(f"the gateway sent no upload link for {name!r}")
                await transfer.put(link, path)
                manifest.append(
                    {
                        "node_id": node_id,
                        "kind": kind,
                        "file_name": name.rsplit("/", 1)[-1],
                        "content_type": ctype,
                        "size": size,
                        "storage_key": link.key,
                    }
                )
        return manifest


def collect_outputs(
    entry: dict[str, Any],
) -> tuple[list[tuple[str, str, dict[str, Any]]], list[tuple[str, str, str]]]:
    """Every output of a history entry: files (any kind whose items name a ``filename``:
    images, gifs, videos, audio, 3d, custom lists) and text values."""
    files: list[tuple[str, str, dict[str, Any]]] = []
    texts: list[tuple[str, str, str]] = []
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict):
        return files, texts
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for kind, values in node_outputs.items():
            if not isinstance(values, list):
                continue
            for value in values:
                if isinstance(value, dict) and value.get("filename"):
                    files.append((str(node_id), str(kind), value))
                elif isinstance(value, str):
                    texts.append((str(node_id), str(kind), value))
    return files, texts


def _replace_value(graph: dict[str, Any], old: str, new: str) -> int:
    count = 0
    for node in graph.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if value == old:
                inputs[name] = new
                count += 1
    return count


def _execution_error(data: dict[str, Any]) -> _Outcome:
    node_id = data.get("node_id")
    node_type = data.get("node_type") or "?"
    exc_type = str(data.get("exception_type") or "error")
    message = str(data.get("exception_message") or "").strip()
    text = f"node {node_id} ({node_type}) failed: {exc_type}: {message}"
    oom = any(marker in f"{exc_type} {message}".lower().replace("_", "") for marker in _OOM)
    return _Outcome("error", text, retryable=oom)


def _from_history(entry: dict[str, Any]) -> _Outcome:
    status = entry.get("status")
    status = status if isinstance(status, dict) else {}
    messages = status.get("messages")
    for item in messages if isinstance(messages, list) else []:
        if not isinstance(item, list | tuple) or len(item) < 2 or not isinstance(item[1], dict):
            continue
        if item[0] == "execution_error":
            return _execution_error(item[1])
        if item[0] == "execution_interrupted":
            return _Outcome("interrupted")
    if status.get("status_str") == "error":
        return _Outcome("error", "ComfyUI reports the prompt failed", retryable=True)
    return _Outcome("success", entry=entry)
