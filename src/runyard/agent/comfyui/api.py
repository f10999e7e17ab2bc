"""ComfyUI's HTTP routes, as the agent uses them (httpx, no Origin header ever sent).

ComfyUI has no authentication and, on a loopback address, refuses requests whose ``Origin``
differs from ``Host``; the agent therefore talks to it from the same machine and never sends
an ``Origin``. Every call has a timeout: a wedged ComfyUI answers nothing rather than an error.
"""

from __future__ import annotations

import logging
import mimetypes
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from runyard.protocol import v1

DEFAULT_URL = "http://127.0.0.1:8188"

#: httpx logs every request at info level: far too chatty for an agent polling ComfyUI.
logging.getLogger("httpx").setLevel(logging.WARNING)


class ComfyUIUnavailable(Exception):
    """ComfyUI did not answer (refused, timed out, or a 5xx): worth trying again later."""


class PromptRejected(Exception):
    """``POST /prompt`` answered 400: the graph does not validate (deterministic)."""

    def __init__(self, message: str, body: Any) -> None:
        super().__init__(message)
        self.body = body


@dataclass(frozen=True)
class Detected:
    """What ``/system_stats`` says about the machine."""

    comfyui_version: str | None
    pytorch_version: str | None
    os_type: str | None
    devices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_gpu(self) -> bool:
        return any(str(d.get("type", "cpu")).lower() != "cpu" for d in self.devices)

    def labels(self) -> list[str]:
        """Labels derived automatically: the tool, and ``gpu`` when a non-CPU device exists."""
        return ["comfyui", "gpu"] if self.has_gpu else ["comfyui"]

    def system_stats(self) -> v1.SystemStats:
        return v1.SystemStats(
            comfyui_version=self.comfyui_version,
            pytorch_version=self.pytorch_version,
            os_type=self.os_type,
            gpu_devices=[
                v1.GpuDevice(
                    device_name=str(d.get("name") or ""),
                    device_type=str(d.get("type") or ""),
                    vram_total=_int_or_none(d.get("vram_total")),
                    vram_free=_int_or_none(d.get("vram_free")),
                )
                for d in self.devices
                if isinstance(d, dict)
            ],
        )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def parse_system_stats(body: Any) -> Detected:
    system = body.get("system") if isinstance(body, dict) else None
    system = system if isinstance(system, dict) else {}
    devices = body.get("devices") if isinstance(body, dict) else None
    return Detected(
        comfyui_version=_str_or_none(system.get("comfyui_version")),
        pytorch_version=_str_or_none(system.get("pytorch_version")),
        os_type=_str_or_none(system.get("os")),
        devices=[d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else [],
    )


def _str_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def describe_rejection(body: Any) -> str:
    """A 400 from ``/prompt`` as one readable line per failing node."""
    if not isinstance(body, dict):
        return f"ComfyUI refused the prompt: {str(body)[:500]}"
    error = body.get("error")
    error = error if isinstance(error, dict) else {"message": str(error or "")}
    head = str(error.get("message") or error.get("type") or "invalid prompt").strip()
    details = str(error.get("details") or "").strip()
    parts = [f"ComfyUI refused the prompt: {head}" + (f": {details}" if details else "")]
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            if not isinstance(info, dict):
                continue
            class_type = info.get("class_type") or "?"
            for err in info.get("errors") or []:
                if not isinstance(err, dict):
                    continue
                message = str(err.get("message") or err.get("type") or "error").strip()
                detail = str(err.get("details") or "").strip()
                parts.append(
                    f"node {node_id} ({class_type}): {message}" + (f": {detail}" if detail else "")
                )
    return "\n".join(parts)


class ComfyUIAPI:
    """The routes the agent needs; errors other than a 400 from ``/prompt`` raise
    :class:`ComfyUIUnavailable` (the message says why)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={"User-Agent": "runyard-agent"},
        )
        self._transfer_timeout = httpx.Timeout(300.0, connect=min(timeout, 5.0))

    @property
    def ws_url(self) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
            response = await self._http.request(method, path, **kwargs, **extra)
        except httpx.HTTPError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path}: {type(exc).__name__}"
            ) from exc
        if response.status_code >= 500:
            raise ComfyUIUnavailable(
                f"ComfyUI answered {method} {path} with HTTP {response.status_code}"
            )
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ComfyUIUnavailable(
                f"ComfyUI answered {method} {path} with HTTP {response.status_code}: "
                f"{response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyUIUnavailable(f"ComfyUI answered {method} {path} with no JSON") from exc

    async def system_stats(self, *, timeout: float | None = None) -> Detected:
        return parse_system_stats(await self._json("GET", "/system_stats", timeout=timeout))

    async def queue_prompt(
        self, graph: Mapping[str, Any], *, prompt_id: str, client_id: str
    ) -> dict[str, Any]:
        """``POST /prompt``; raises :class:`PromptRejected` on a 400."""
        body = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        response = await self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            try:
                detail = response.json()
            except ValueError:
                detail = response.text
            raise PromptRejected(describe_rejection(detail), detail)
        if response.status_code >= 400:
            raise ComfyUIUnavailable(
                f"ComfyUI answered POST /prompt with HTTP {response.status_code}: "
                f"{response.text[:200]}"
            )
        answer = response.json()
        return answer if isinstance(answer, dict) else {}

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of ``prompt_id``; None while it runs or when unknown."""
        body = await self._json("GET", f"/history/{prompt_id}")
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        return entry if isinstance(entry, dict) else None

    async def queue(self) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids."""
        body = await self._json("GET", "/queue")

        def ids(items: Any) -> set[str]:
            return {
                str(item[1])
                for item in items or []
                if isinstance(item, list | tuple) and len(item) > 1
            }

        if not isinstance(body, dict):
            return set(), set()
        return ids(body.get("queue_running")), ids(body.get("queue_pending"))

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` only if it is the one running (ComfyUI ≥ PR #9607)."""
        await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def delete_pending(self, prompt_id: str) -> None:
        await self._request("POST", "/queue", json={"delete": [prompt_id]})

    async def delete_history(self, prompt_id: str) -> None:
        await self._request("POST", "/history", json={"delete": [prompt_id]})

    async def upload_image(self, path: Path, name: str, content_type: str) -> str:
        """``POST /upload/image`` (type input); returns the name ComfyUI stored it under."""
        with path.open("rb") as handle:
            response = await self._request(
                "POST",
                "/upload/image",
                files={"image": (name, handle, content_type)},
                data={"type": "input", "overwrite": "false"},
                timeout=self._transfer_timeout.read,
            )
        if response.status_code >= 400:
            raise ComfyUIUnavailable(
                f"ComfyUI refused the upload of {name!r}: HTTP {response.status_code}"
            )
        body = response.json()
        stored = str(body.get("name") or name)
        subfolder = str(body.get("subfolder") or "")
        return f"{subfolder}/{stored}" if subfolder else stored

    async def view(self, item: Mapping[str, Any], target: Path) -> tuple[int, str]:
        """Fetch an output through ``/view`` into ``target``; (size, content type)."""
        filename = str(item.get("filename") or "")
        params = {
            "filename": filename,
            "subfolder": str(item.get("subfolder") or ""),
            "type": str(item.get("type") or "output"),
        }
        size = 0
        try:
            async with self._http.stream(
                "GET", "/view", params=params, timeout=self._transfer_timeout
            ) as response:
                if response.status_code >= 400:
                    raise ComfyUIUnavailable(
                        f"ComfyUI answered /view of {filename!r} with HTTP {response.status_code}"
                    )
                header = response.headers.get("content-type", "").split(";")[0].strip()
                with target.open("wb") as out:
                    async for chunk in response.aiter_bytes(1024 * 1024):
                        out.write(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI did not send {filename!r}: {type(exc).__name__}"
            ) from exc
        guessed = mimetypes.guess_type(filename)[0]
        content_type = guessed or header or "application/octet-stream"
        return size, content_type


def nvidia_smi_present() -> bool:
    return shutil.which("nvidia-smi") is not None
