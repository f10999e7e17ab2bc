"""Workflow templates: slugs, graph validation, parameter definitions, checking and injection.

Pure functions. Every problem raises ``BadRequest`` with a message that names what is wrong
(the node, the input, the parameter key), because that message is what the user sees.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from runyard.domain.errors import BadRequest
from runyard.domain.limits import (
    DEFAULT_MAX_RETRIES,
    MAX_NODES,
    MAX_PARAMETERS,
    MAX_VERSION,
    PARAM_KEY_MAX,
    SLUG_MAX,
    SLUG_MIN,
)
from runyard.domain.tasks import DispatchTarget, ToolType

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
_SLUG = re.compile(SLUG_PATTERN)
_PARAM_KEY = re.compile(rf"^[A-Za-z_][A-Za-z0-9_.\-]{{0,{PARAM_KEY_MAX - 1}}}$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]+$")
_VERSION = re.compile(r"[0-9]{1,10}")


class WorkflowStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class ParamType(StrEnum):
    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    SELECT = "select"
    FILE = "file"


@dataclass(frozen=True)
class ParameterDef:
    key: str
    type: ParamType
    label: str = ""
    description: str = ""
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    options: tuple[Any, ...] | None = None
    accept: tuple[str, ...] | None = None
    #: ComfyUI injection target: ``graph[node_id]["inputs"][field]``.
    node_id: str | None = None
    field: str | None = None
    #: Nerfstudio injection target: a dotted path into the spec.
    target_path: str | None = None
    #: Another parameter this one is linked to (kept for clients; not used for injection).
    source_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["type"] = self.type.value
        for name in ("options", "accept"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParameterDef:
        values = dict(data)
        values["type"] = ParamType(values["type"])
        for name in ("options", "accept"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def accepts(patterns: tuple[str, ...] | None, file_name: str, content_type: str) -> bool:
    """Whether a file matches a ``file`` parameter's ``accept`` list: MIME types
    (``video/mp4``), families (``image/*``) or extensions (``.png``), as HTML's ``accept``
    attribute reads them. No list: anything goes."""
    if not patterns:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    name = file_name.lower()
    for pattern in (p.strip().lower() for p in patterns):
        if pattern.startswith("."):
            if name.endswith(pattern):
                return True
        elif pattern.endswith("/*"):
            if kind.startswith(pattern[:-1]):
                return True
        elif pattern in (kind, "*/*", "*"):
            return True
    return False


def check_slug(slug: str) -> None:
    if not SLUG_MIN <= len(slug) <= SLUG_MAX or not _SLUG.match(slug):
        raise BadRequest(
            f"workflow_slug must be {SLUG_MIN}-{SLUG_MAX} lowercase letters, digits and single "
            "hyphens (e.g. sd-portrait-v2)"
        )


def parse_slug_ref(ref: str) -> tuple[str, int | None]:
    """``text-to-image@2`` → (``text-to-image``, 2); a bare slug → (slug, None)."""
    slug, sep, version = ref.partition("@")
    if not sep:
        return slug, None
    # ASCII digits only (str.isdigit() accepts "²", which int() refuses), and within the
    # 32-bit version column (a larger number made PostgreSQL fail with a 500).
    if not _VERSION.fullmatch(version) or not 1 <= int(version) <= MAX_VERSION:
        raise BadRequest(f"bad workflow version in {ref!r}: use slug@N with N ≥ 1")
    return slug, int(version)


# -- graphs ----------------------------------------------------------------------------------


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def validate_comfy_graph(graph: Any) -> None:
    """A ComfyUI *API format* graph: ``{node_id: {"class_type": str, "inputs": {...}}}``."""
    if not isinstance(graph, dict):
        raise BadRequest("workflow_json must be a JSON object (ComfyUI API format)")
    if "nodes" in graph and "links" in graph:
        raise BadRequest(
            "workflow_json is in ComfyUI's UI format (nodes/links); in ComfyUI use "
            "Workflow → Export (API) to save the API format and import that"
        )
    if not graph:
        raise BadRequest("workflow_json has no nodes")
    if len(graph) > MAX_NODES:
        raise BadRequest(f"workflow_json has {len(graph)} nodes; the limit is {MAX_NODES}")
    for node_id, node in graph.items():
        if not isinstance(node, dict):
            raise BadRequest(f"node {node_id!r}: must be an object with class_type and inputs")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise BadRequest(f"node {node_id!r}: class_type must be a non-empty string")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise BadRequest(f"node {node_id!r}: inputs must be an object")
        for name, value in inputs.items():
            if _is_link(value):
                source = str(value[0])
                if source not in graph:
                    raise BadRequest(
                        f"node {node_id!r} input {name!r} links to node {source!r}, "
                        "which is not in the graph"
                    )
                if value[1] < 0:
                    raise BadRequest(f"node {node_id!r} input {name!r}: output index must be ≥ 0")


def validate_nerfstudio_spec(spec: Any) -> None:
    if not isinstance(spec, dict) or not spec:
        raise BadRequest("workflow_json must be a non-empty JSON object (Nerfstudio spec)")


def validate_graph(tool_type: ToolType, graph: Any) -> None:
    if tool_type is ToolType.COMFYUI:
        validate_comfy_graph(graph)
    else:
        validate_nerfstudio_spec(graph)


def _path_parent(spec: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, str]:
    parts = path.split(".")
    node: Any = spec
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return None, parts[-1]
        node = node[part]
    return (node if isinstance(node, dict) else None), parts[-1]


# -- parameter definitions -------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_parameter_defs(
    defs: Sequence[ParameterDef], tool_type: ToolType, graph: Mapping[str, Any]
) -> None:
    if len(defs) > MAX_PARAMETERS:
        raise BadRequest(f"at most {MAX_PARAMETERS} parameters")
    seen: set[str] = set()
    for d in defs:
        where = f"parameter {d.key!r}"
        if not _PARAM_KEY.match(d.key):
            raise BadRequest(
                f"{where}: key must start with a letter or _ and use letters, digits, _ . -"
            )
        if d.key in seen:
            raise BadRequest(f"{where}: duplicate key")
        seen.add(d.key)
        if tool_type is ToolType.COMFYUI:
            if not d.node_id or not d.field:
                raise BadRequest(f"{where}: node_id and field are required for ComfyUI")
            node = graph.get(d.node_id)
            if not isinstance(node, dict):
                raise BadRequest(f"{where}: node {d.node_id!r} is not in workflow_json")
            if d.field not in node.get("inputs", {}):
                raise BadRequest(
                    f"{where}: node {d.node_id!r} ({node.get('class_type')}) has no input "
                    f"{d.field!r}"
                )
        else:
            if not d.target_path or not all(
                _PATH_SEGMENT.match(p) for p in d.target_path.split(".")
            ):
                raise BadRequest(f"{where}: target_path must be a dotted path like train.steps")
            parent, _ = _path_parent(dict(graph), d.target_path)
            if parent is None:
                raise BadRequest(f"{where}: target_path {d.target_path!r} is not in the spec")
        _validate_def_values(d, where)


def _validate_def_values(d: ParameterDef, where: str) -> None:
    if d.type is ParamType.NUMBER:
        for name, bound in (("min", d.min), ("max", d.max)):
            if bound is not None and not _is_number(bound):
                raise BadRequest(f"{where}: {name} must be a number")
        if d.min is not None and d.max is not None and d.min > d.max:
            raise BadRequest(f"{where}: min is greater than max")
    elif d.min is not None or d.max is not None:
        raise BadRequest(f"{where}: min/max apply only to number parameters")
    if d.type is ParamType.SELECT:
        if not d.options:
            raise BadRequest(f"{where}: a select parameter needs options")
        if any(not isinstance(o, str | int | float) or isinstance(o, bool) for o in d.options):
            raise BadRequest(f"{where}: options must be strings or numbers")
    if d.default is not None:
        try:
            check_value(d, d.default, is_team_file=lambda _v: True)
        except BadRequest as exc:
            raise BadRequest(f"{where}: default is invalid ({exc.message})") from exc


# -- run-time values -------------------------------------------------------------------------


def check_value(d: ParameterDef, value: Any, is_team_file: Callable[[str], bool]) -> Any:
    """Check one value against its definition; returns the value to inject."""
    where = f"parameter {d.key!r}"
    if d.type is ParamType.STRING:
        if not isinstance(value, str):
            raise BadRequest(f"{where}: must be a string")
    elif d.type is ParamType.NUMBER:
        if not _is_number(value):
            raise BadRequest(f"{where}: must be a number")
        if d.min is not None and value < d.min:
            raise BadRequest(f"{where}: must be ≥ {d.min:g}")
        if d.max is not None and value > d.max:
            raise BadRequest(f"{where}: must be ≤ {d.max:g}")
    elif d.type is ParamType.BOOLEAN:
        if not isinstance(value, bool):
            raise BadRequest(f"{where}: must be true or false")
    elif d.type is ParamType.SELECT:
        if d.options is None or value not in d.options or isinstance(value, bool):
            choices = ", ".join(repr(o) for o in d.options or ())
            raise BadRequest(f"{where}: must be one of {choices}")
    elif d.type is ParamType.FILE:
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{where}: must be a file_key from POST /r/files/presign")
        if not is_team_file(value):
            raise BadRequest(f"{where}: {value!r} is not an input file of this team")
    return value


def resolve_values(
    defs: Sequence[ParameterDef],
    values: Mapping[str, Any],
    is_team_file: Callable[[str], bool],
) -> dict[str, Any]:
    """Check submitted values and fill defaults. Unknown and missing keys are refused."""
    by_key = {d.key: d for d in defs}
    unknown = sorted(set(values) - set(by_key))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r}")
    resolved: dict[str, Any] = {}
    for d in defs:
        if d.key in values and values[d.key] is not None:
            resolved[d.key] = check_value(d, values[d.key], is_team_file)
        elif d.default is not None:
            resolved[d.key] = d.default
        elif d.required:
            raise BadRequest(f"missing required parameter {d.key!r}")
    return resolved


def render(
    tool_type: ToolType,
    graph: Mapping[str, Any],
    defs: Sequence[ParameterDef],
    resolved: Mapping[str, Any],
) -> dict[str, Any]:
    """A copy of the graph with every resolved value injected at its target."""
    rendered: dict[str, Any] = copy.deepcopy(dict(graph))
    for d in defs:
        if d.key not in resolved:
            continue
        value = resolved[d.key]
        if tool_type is ToolType.COMFYUI:
            assert d.node_id is not None and d.field is not None
            inputs = rendered[d.node_id]["inputs"]
            current = inputs.get(d.field)
            # ComfyUI rejects 20.0 where it wants an INT (steps, seed, width): keep ints ints.
            if (
                d.type is ParamType.NUMBER
                and isinstance(current, int)
                and not isinstance(current, bool)
            ):
                if isinstance(value, float) and not value.is_integer():
                    raise BadRequest(f"parameter {d.key!r}: must be a whole number")
                value = int(value)
            inputs[d.field] = value
        else:
            assert d.target_path is not None
            parent, leaf = _path_parent(rendered, d.target_path)
            if parent is None:
                raise BadRequest(f"parameter {d.key!r}: target_path is not in the spec")
            parent[leaf] = value
    return rendered


@dataclass(frozen=True)
class WorkflowSpec:
    """Everything a user defines about a workflow (all but id, version and timestamps)."""

    workflow_slug: str
    display_name: str
    workflow_json: dict[str, Any]
    description: str = ""
    parameters: tuple[ParameterDef, ...] = ()
    tool_type: ToolType = ToolType.COMFYUI
    required_labels: tuple[str, ...] = ()
    task_timeout: int = 0
    max_retries: int = DEFAULT_MAX_RETRIES
    preferred_gpu: str | None = None
    min_vram_gb: int | None = None
    required_models: tuple[str, ...] = ()
    default_dispatch_target: DispatchTarget = DispatchTarget.AGENT
    workflow_status: WorkflowStatus = WorkflowStatus.ACTIVE

    def validate(self) -> None:
        check_slug(self.workflow_slug)
        validate_graph(self.tool_type, self.workflow_json)
        validate_parameter_defs(self.parameters, self.tool_type, self.workflow_json)

    def settings(self) -> dict[str, Any]:
        """The fields a snapshot keeps beside the graph and the parameters."""
        return {
            "workflow_slug": self.workflow_slug,
            "display_name": self.display_name,
            "description": self.description,
            "tool_type": self.tool_type.value,
            "required_labels": list(self.required_labels),
            "task_timeout": self.task_timeout,
            "max_retries": self.max_retries,
            "preferred_gpu": self.preferred_gpu,
            "min_vram_gb": self.min_vram_gb,
            "required_models": list(self.required_models),
            "default_dispatch_target": self.default_dispatch_target.value,
        }
