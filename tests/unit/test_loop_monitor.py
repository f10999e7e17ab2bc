from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from runyard.config import load_settings
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
    assert any("_block_the_loop" in line for line in stall["stack"])
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
