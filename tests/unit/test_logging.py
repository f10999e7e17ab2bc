from __future__ import annotations

import json
import logging

import pytest

from runyard.config import LoggerSettings
from runyard.logging import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_never_contain_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggerSettings(format="json", level="info"))
    key = "sk-" + "A" * 43
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    get_logger("test").info(
        "request", user_password="hunter22", raw_key=key, detail=f"used {key} and {jwt}"
    )
    logging.getLogger("uvicorn.error").warning("bad header Bearer %s", key)
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines[0]["event"] == "request"
    assert lines[0]["user_password"] == "[redacted]"
    assert lines[0]["raw_key"] == "[redacted]"
    for secret in ("hunter22", key, jwt):
        assert secret not in err
    assert "[redacted]" in lines[1]["event"]


def test_text_format_is_human_readable(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LoggerSettings(format="text", level="info"))
    get_logger("test").info("server_started", port=8080)
    err = capsys.readouterr().err
    assert "server_started" in err
    assert "port" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])
