"""Object keys: the only place they are built, and the checks every key and name passes.

``inputs/<team_id>/<upload id>/<file name>`` for uploaded inputs and
``tasks/<task_id>/<attempt>/<name>`` for the outputs of one attempt, so a retried task never
mixes files of two attempts.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

MAX_KEY = 1024
MAX_NAME = 255
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_CONTENT_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")


class BadName(ValueError):
    """A file name or key that could escape its folder or is not printable."""


def _check_segment(segment: str, what: str) -> None:
    if segment in ("", ".", ".."):
        raise BadName(f"{what} must not contain empty, '.' or '..' path segments")
    if any(unicodedata.category(ch)[0] == "C" for ch in segment):
        raise BadName(f"{what} must not contain control characters")


def check_file_name(name: str, what: str = "file_name") -> str:
    """A single file name: no folders, no ``..``, no backslashes, printable, ≤ 255 chars."""
    if not name or len(name) > MAX_NAME:
        raise BadName(f"{what} must be 1 to {MAX_NAME} characters")
    if "/" in name or "\\" in name:
        raise BadName(f"{what} must be a file name without slashes or backslashes")
    _check_segment(name, what)
    return name


def check_relative_name(name: str, what: str = "name") -> str:
    """A relative path such as ``subfolder/ComfyUI_00001_.png``: never absolute, no ``..``
    segments, no backslashes, printable, at most 255 characters."""
    if not name or len(name) > MAX_NAME:
        raise BadName(f"{what} must be 1 to {MAX_NAME} characters")
    if "\\" in name:
        raise BadName(f"{what} must not contain backslashes")
    if name.startswith("/"):
        raise BadName(f"{what} must be a relative path, not an absolute one")
    for segment in name.split("/"):
        _check_segment(segment, what)
    return name


def check_key(key: str) -> str:
    """A storage key: relative, ``/``-separated, no ``..``, no backslashes, and its first
    segment not starting with ``.`` (the local backend keeps its own files there)."""
    if not key or len(key) > MAX_KEY:
        raise BadName(f"key must be 1 to {MAX_KEY} characters")
    if "\\" in key or key.startswith("/"):
        raise BadName("key must be a relative path without backslashes")
    for segment in key.split("/"):
        _check_segment(segment, "key")
    if key.startswith("."):
        raise BadName("key must not start with '.'")
    return key


def check_content_type(value: str) -> str:
    """``type/subtype`` (parameters such as ``; charset=`` are not accepted)."""
    if not _CONTENT_TYPE.match(value):
        raise BadName("content_type must be a MIME type such as image/png")
    return value.lower()


def input_prefix(team_id: str) -> str:
    return f"inputs/{team_id}/"


def input_key(team_id: str, upload_id: str, file_name: str) -> str:
    return f"{input_prefix(team_id)}{upload_id}/{check_file_name(file_name)}"


#: Every task's files are under ``tasks/<task_id>/``.
TASKS_PREFIX = "tasks/"


def attempt_prefix(task_id: str, attempt: int) -> str:
    return f"{task_prefix(task_id)}{attempt}/"


def task_prefix(task_id: str) -> str:
    return f"{TASKS_PREFIX}{task_id}/"


def output_key(task_id: str, attempt: int, name: str) -> str:
    return attempt_prefix(task_id, attempt) + check_relative_name(name)


def content_disposition(file_name: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name in RFC 5987 form."""
    fallback = file_name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(file_name, safe='')}"
