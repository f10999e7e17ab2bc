"""The user's CLI config: ``$XDG_CONFIG_HOME/runyard/config.json`` (``~/.config/…``), 0600.

Written by ``runyard login`` (server URL and the device key), removed by ``runyard logout``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base else Path.home() / ".config"
    return root / "runyard" / "config.json"


def load() -> dict[str, Any]:
    """The stored settings; empty when there is no (readable, valid) file."""
    try:
        data = json.loads(config_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.chmod(tmp, 0o600)  # the umask may have narrowed it; never widened
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save(data: dict[str, Any]) -> Path:
    path = config_path()
    write_private(path, data)
    return path


def clear_key() -> bool:
    """Forget the stored key (and the file, if nothing else is left). True if one was stored."""
    data = load()
    had = "api_key" in data
    data.pop("api_key", None)
    path = config_path()
    if not data:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        write_private(path, data)
    return had
