"""Stopping a server with event streams open: Ctrl-C ends the streams (their clients are told
to reconnect) and the process exits in seconds, not when the last watcher gives up."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import httpx

from runyard.client import Runyard
from tests.e2e.conftest import runyard_env
from tests.e2e.stack import EMAIL, PASSWORD, SIM_GRAPH, SIM_PARAMETERS, start_server, stop


def test_ctrl_c_ends_open_event_streams_and_the_server_exits(db_url: str, tmp_path: Path) -> None:
    url, proc = start_server(runyard_env(db_url), tmp_path)
    try:
        with Runyard(url, email=EMAIL, password=PASSWORD) as owner:
            owner.login()
            owner.import_workflow(SIM_GRAPH, slug="sim", parameters=SIM_PARAMETERS)
            key = owner.create_key("watch").raw_key
        with Runyard(url, api_key=key) as client:
            task_id = client.submit("sim", {})  # no agent: it waits, its stream stays open
        lines: list[str] = []
        opened = threading.Event()

        def watch() -> None:
            headers = {"Authorization": f"Bearer {key}"}
            stream_url = f"{url}/api/v1/r/tasks/{task_id}/events"
            with httpx.stream("GET", stream_url, headers=headers, timeout=60) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    opened.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert opened.wait(10), "the event stream did not open"
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=15)  # it waited for the watcher, for minutes, before
        except subprocess.TimeoutExpired:
            raise AssertionError("the server did not stop with an event stream open") from None
        assert code in (0, 130), (tmp_path / "server.log").read_text()[-3000:]  # 130: SIGINT
        watcher.join(timeout=5)
        assert not watcher.is_alive(), "the stream was not ended"
        assert ": the server is stopping; reconnect" in lines
        assert "retry: 1000" in lines
    finally:
        stop(proc)
