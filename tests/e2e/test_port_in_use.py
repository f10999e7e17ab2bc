"""A port already taken: one clear line and a non-zero exit, before anything starts."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNYARD, runyard_env


@pytest.mark.parametrize("command", ["server", "up"])
def test_a_port_in_use_is_one_clear_line(command: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        result = subprocess.run(
            [*RUNYARD, command, "--port", str(port), "--data-dir", str(data)],
            env=runyard_env(f"sqlite:///{data}/runyard.db"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == [f"error: port {port} on 127.0.0.1 is in use (another Runyard, or another "
                     "program); choose one with --port"]  # fmt: skip
    assert not data.exists()  # nothing was started or created
