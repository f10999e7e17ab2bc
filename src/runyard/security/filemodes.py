"""Private files and folders: what Runyard keeps on disk (the data dir, the SQLite database,
local objects, the signing-secret key file) is readable by the server's own user only.

Modes are set explicitly (``os.open``/``mkdir`` with the mode, then ``chmod``), never left to
the process umask, which an operator or a service manager may have set to anything.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


@dataclass(frozen=True)
class ModeFixed:
    """A path whose mode was tightened (callers log it: ``was`` → ``now``)."""

    path: Path
    was: int
    now: int

    def fields(self) -> dict[str, str]:
        return {"path": str(self.path), "was": f"{self.was:04o}", "now": f"{self.now:04o}"}


def make_private_dir(path: Path) -> bool:
    """Create ``path`` with mode 0700 if it is missing (missing parents get the usual mode);
    True if it was created here. An existing folder is left to :func:`tighten`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        return False
    os.chmod(path, PRIVATE_DIR)  # the umask may have taken bits from mkdir's mode
    return True


def tighten(path: Path, mode: int) -> ModeFixed | None:
    """Take from ``path`` every permission bit ``mode`` does not allow (group and others,
    usually); never adds one. None when it was already tight or does not exist."""
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    if not current & ~mode:
        return None
    os.chmod(path, current & mode)
    return ModeFixed(path, current, current & mode)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` creating ``path`` (``O_EXCL``: it must not exist) with mode 0600."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private_file(path: Path) -> bool:
    """Create an empty ``path`` with mode 0600; False if it already exists."""
    try:
        os.close(open_private(path, os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600, whole or not at all: a temporary file in the
    same folder, fsynced, then moved into place (``exclusive``: linked, failing with
    ``FileExistsError`` when ``path`` exists, so two writers never overwrite each other)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = open_private(temp, os.O_WRONLY)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temp, path)
        else:
            os.replace(temp, path)
        sync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def sync_dir(path: Path) -> None:
    """fsync a folder, so a file created or renamed in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
