from __future__ import annotations

import asyncio
import logging
import time

import pytest
import structlog

from runyard.config import LoggerSettings, load_settings
from runyard.logging import configure_logging
from runyard.observability import LoopMonitor


def _block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a slow synchronous call does to every other task


async def test_a_blocked_loop_is_logged_with_its_duration_and_where_it_was_stuck() -> None:
    monitor = LoopMonitor(threshold=0.15, interval=0.05)
    with structlog.testing.capture_logs() as logs:
        monitor.start()
        try:
            await asyncio.sleep(0.06)  # let the monitor take its first beat
            _block_the_loop(0.4)
            await asyncio.sleep(0.1)  # the monitor wakes late and reports
        finally:
            await monitor.stop()
    stalls = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert stalls  # a loaded machine may add stalls of its own; the first is ours
    stall = stalls[0]
    assert stall["log_level"] == "warning"
    assert stall["stalled_ms"] >= 250
    assert stall["stalls"] == 1
    assert any("_block_the_loop" in line for line in stall["frames"])
    assert monitor.stalls == len(stalls)
    assert monitor.max_lag_seconds >= 0.25


async def test_a_healthy_loop_logs_nothing() -> None:
    monitor = LoopMonitor(threshold=1.0, interval=0.05)
    with structlog.testing.capture_logs() as logs:
        monitor.start()
        try:
            await asyncio.sleep(0.5)
        finally:
            await monitor.stop()
    assert [e for e in logs if e["event"] == "event_loop_stalled"] == []
    assert monitor.stalls == 0
    assert monitor.max_lag_seconds < 1.0


async def test_threshold_zero_starts_nothing() -> None:
    monitor = LoopMonitor(threshold=0)
    monitor.start()
    assert not monitor.running
    assert monitor._thread is None
    await monitor.stop()


async def test_stop_is_idempotent_and_ends_the_task_and_thread() -> None:
    monitor = LoopMonitor(threshold=0.5, interval=0.05)
    monitor.start()
    assert monitor.running
    thread = monitor._thread
    assert thread is not None and thread.is_alive()
    await monitor.stop()
    await monitor.stop()
    assert not monitor.running
    assert not thread.is_alive()


def test_server_threshold_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNYARD_SERVER_LOOP_STALL_THRESHOLD_SECONDS", raising=False)
    assert load_settings().server.loop_stall_threshold_seconds == 0.5
    monkeypatch.setenv("RUNYARD_SERVER_LOOP_STALL_THRESHOLD_SECONDS", "0")
    assert load_settings().server.loop_stall_threshold_seconds == 0


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_stall_is_written_by_the_real_renderers_and_the_watch_goes_on(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Through configure_logging, not capture_logs: a field the renderer treats specially (the
    # console renderer concatenates a ``stack`` string) once ended the watch at its first stall.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(LoggerSettings(format=fmt, level="info"))
    monitor = LoopMonitor(threshold=0.15, interval=0.05)
    try:
        monitor.start()
        await asyncio.sleep(0.06)
        _block_the_loop(0.4)
        await asyncio.sleep(0.1)
        assert monitor.running, "the watch ended after reporting a stall"
        _block_the_loop(0.4)
        await asyncio.sleep(0.1)
    finally:
        await monitor.stop()
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "Logging error" not in err  # what the stdlib prints when a formatter raises
    assert err.count("event_loop_stalled") >= 2
    assert "_block_the_loop" in err
