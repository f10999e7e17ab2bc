"""Every frame example in docs/protocol.md parses with the protocol models: the page stays true."""

from __future__ import annotations

import json
import re
from pathlib import Path

from runyard.protocol import v1

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
AGENT_TYPES = {
    "hello",
    "heartbeat",
    "status",
    "ack",
    "progress",
    "log",
    "complete",
    "fail",
    "cancelled",
    "upload_request",
}
GATEWAY_TYPES = {"welcome", "dispatch", "cancel", "error", "upload_links"}


def examples() -> list[dict[str, object]]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    return [json.loads(block) for block in blocks]


def test_every_frame_type_has_an_example_that_parses() -> None:
    seen: set[str] = set()
    for example in examples():
        text = json.dumps(example)
        kind = str(example["type"])
        frame = v1.parse_agent_frame(text) if kind in AGENT_TYPES else v1.parse_gateway_frame(text)
        assert frame.type == kind
        seen.add(kind)
    assert seen == AGENT_TYPES | GATEWAY_TYPES
