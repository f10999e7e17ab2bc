"""Files of attempts: the signed input links of a dispatch, upload links for outputs, and the
``complete`` manifest checked against what the attempt really uploaded.

Nothing here moves file bytes: agents get signed links and talk to the object store
directly. Every key is built by :mod:`runyard.objects.keys`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runyard.domain.times import iso
from runyard.logging import get_logger
from runyard.objects import ObjectStore
from runyard.objects.keys import BadName, attempt_prefix, check_content_type, output_key
from runyard.protocol import v1
from runyard.store.port import Attach, AttemptRef, EngineStore, OutputSlot

log = get_logger("runyard.engine")

#: How each output kind is counted in ``task_output`` (``image_count`` as in the reference).
_COUNT_NAMES = {"images": "image", "gifs": "gif", "videos": "video", "meshes": "mesh"}


def may_have_inputs(parameters: dict[str, Any]) -> bool:
    """Cheap pre-check before a dispatch looks for file parameters."""
    return any(isinstance(v, str) and v.startswith("inputs/") for v in parameters.values())


@dataclass(frozen=True)
class PreparedOutput:
    """What a ``complete`` frame's manifest becomes, checked against what the attempt was
    given links for and what is in storage; attached inside the completing transaction."""

    task_output: dict[str, Any]
    attached: list[Attach] = field(default_factory=list)


def _count_name(kind: str) -> str:
    return f"{_COUNT_NAMES.get(kind, kind)}_count"


class Transfers:
    def __init__(
        self,
        store: EngineStore,
        objects: ObjectStore | None,
        link_ttl_seconds: int,
        now: Callable[[], datetime],
    ) -> None:
        self.store = store
        self._objects = objects
        self.ttl = link_ttl_seconds
        self.now = now

    @property
    def objects(self) -> ObjectStore:
        if self._objects is None:
            raise RuntimeError("the engine has no object store")
        return self._objects

    async def inputs(self, task_id: str, parameters: dict[str, Any]) -> dict[str, str]:
        """Parameter key → a fresh signed download link, for the dispatch of an attempt."""
        if not may_have_inputs(parameters):
            return {}
        links: dict[str, str] = {}
        for item in await self.store.task_inputs(task_id):
            if not item.present:
                log.warning("task_input_missing", task_id=task_id, file_key=item.key)
                continue
            link = await self.objects.presign_get(
                item.key, ttl=self.ttl, content_type=item.content_type, file_name=item.file_name
            )
            links[item.param] = link.url
        return links

    async def upload_links(self, frame: v1.UploadRequest) -> v1.UploadLinks:
        """Links for an attempt's outputs under ``tasks/<task_id>/<attempt>/``. The caller
        has checked that the attempt is the task's current one (fencing)."""
        reply: dict[str, Any] = {
            "task_id": frame.task_id,
            "attempt": frame.attempt,
            "request_id": frame.request_id,
        }
        slots: list[OutputSlot] = []
        seen: set[str] = set()
        try:
            for f in frame.files:
                key = output_key(frame.task_id, frame.attempt, f.name)
                content_type = check_content_type(f.content_type)
                if key in seen:
                    raise BadName(f"name {f.name!r} is listed twice")
                seen.add(key)
                slots.append(OutputSlot(key, f.name, content_type, f.size))
        except BadName as exc:
            return v1.UploadLinks(**reply, error=str(exc))
        await self.store.record_outputs(AttemptRef(frame.task_id, frame.attempt), slots, self.now())
        links = []
        for slot in slots:
            link = await self.objects.presign_put(
                slot.storage_key, size=slot.size, content_type=slot.content_type, ttl=self.ttl
            )
            links.append(
                v1.UploadLink(
                    name=slot.name,
                    key=slot.storage_key,
                    url=link.url,
                    headers=link.headers,
                    expires_at=iso(link.expires_at),
                )
            )
        return v1.UploadLinks(**reply, links=links)

    async def prepare(self, frame: v1.Complete) -> PreparedOutput:
        """Only files this attempt got links for and really uploaded are kept; the rest of
        the manifest passes through. A manifest without an ``outputs`` list is kept as is."""
        manifest = dict(frame.output)
        listed = manifest.get("outputs")
        if not isinstance(listed, list):
            return PreparedOutput(manifest)
        issued = await self.store.attempt_outputs(AttemptRef(frame.task_id, frame.attempt))
        present = (
            {
                o.key: o.size
                for o in await self.objects.list_prefix(
                    attempt_prefix(frame.task_id, frame.attempt)
                )
            }
            if issued
            else {}
        )
        outputs: list[dict[str, Any]] = []
        attached: list[Attach] = []
        counts: dict[str, int] = {"image_count": 0}
        dropped = 0
        for entry in listed:
            key = entry.get("storage_key") if isinstance(entry, dict) else None
            slot = issued.get(key) if isinstance(key, str) else None
            if slot is None or slot.storage_key not in present:
                dropped += 1
                continue
            assert isinstance(entry, dict)
            node_id = str(entry.get("node_id") or "")[:100]
            kind = str(entry.get("kind") or "files")[:50]
            file_name = entry.get("file_name") or entry.get("filename") or slot.name
            outputs.append(
                {
                    "node_id": node_id,
                    "kind": kind,
                    "file_name": str(file_name)[:255],
                    "content_type": slot.content_type,
                    "size": present[slot.storage_key],
                    "storage_key": slot.storage_key,
                }
            )
            attached.append(Attach(slot.storage_key, len(attached), node_id, kind))
            counts[_count_name(kind)] = counts.get(_count_name(kind), 0) + 1
        if dropped:
            log.warning(
                "outputs_dropped",
                task_id=frame.task_id,
                attempt=frame.attempt,
                dropped=dropped,
                detail="listed in the manifest without an upload link of this attempt, or missing",
            )
        passthrough = {
            k: v
            for k, v in manifest.items()
            if k not in ("outputs", "storage_key") and not k.endswith("_count")
        }
        task_output = {
            "storage_key": outputs[0]["storage_key"] if outputs else None,
            **counts,
            **passthrough,
            "outputs": outputs,
        }
        return PreparedOutput(task_output, attached)
