"""Every ``curl`` example in the docs works as written against a live server: the host and the
``sk-…`` key are filled in, a ``<placeholder>`` is taken from the example's own previous
answer, and each answer must be a success (2xx)."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.integration.live import LiveServer, api, live_team

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE_HOST = "https://runyard.example.com"


def curl_examples() -> list[tuple[str, list[str]]]:
    """(where, commands) for each ```sh block of the docs that runs curl; a command may span
    lines ending in ``\\`` or an open quote; ``#`` lines are answers, not commands."""
    found = []
    for doc in sorted(DOCS.glob("*.md")):
        for index, block in enumerate(re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S)):
            if "curl " not in block:
                continue
            commands: list[str] = []
            current = ""
            for line in block.splitlines():
                if not current and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                current += line.rstrip("\\") + "\n"
                if line.endswith("\\") or current.count("'") % 2:
                    continue
                commands.append(current.strip())
                current = ""
            found.append((f"{doc.name} example {index + 1}", commands))
    return found


def test_the_docs_have_curl_examples() -> None:
    assert len(curl_examples()) >= 2


@pytest.mark.parametrize(("where", "commands"), curl_examples(), ids=lambda v: str(v)[:40])
async def test_a_curl_example_works_as_written(
    server: LiveServer, tmp_path: Path, where: str, commands: list[str]
) -> None:
    async with api(server) as client:
        team = await live_team(server, client)
    sk = team.sk_headers["Authorization"].removeprefix("Bearer ")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG" + bytes(1048576 - 4))
    answer: dict[str, Any] = {}
    for command in commands:
        filled = command.replace(EXAMPLE_HOST, server.url).replace("sk-…", sk)
        for name in re.findall(r"<(\w+)>", filled):
            assert name in answer, f"{where}: <{name}> is not in the previous answer {answer}"
            filled = filled.replace(f"<{name}>", str(answer[name]))
        # Links carry the server's public URL, which the tests' settings name runyard.test.
        filled = filled.replace(server.ctx.settings.public_url(), server.url)
        args = shlex.split(filled)
        assert args[0] == "curl", f"{where}: not a curl command: {command}"
        proc = await asyncio.create_subprocess_exec(
            *args[:1],
            "-sS",
            "-w",
            "\n%{http_code}",
            *args[1:],
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, f"{where}: {command}\n{err.decode()}"
        body, _, status = out.decode().rpartition("\n")
        assert status.startswith("2"), f"{where}: {command}\n→ {status} {body}"
        if body.strip().startswith("{"):
            answer = json.loads(body)
