"""Notice when the asyncio event loop stalls, and say where it was stuck.

Everything in a Runyard process (HTTP, the gateway WebSocket, the scheduler, inline SQLite
calls) shares one event loop, so a callback that blocks delays all of them: heartbeats go
unanswered and agents' leases lapse. :class:`LoopMonitor` is a task that sleeps ``interval``
at a time and measures how late it wakes; a wake-up later than ``threshold`` is logged as
``event_loop_stalled``.

To say *what* blocked the loop without asyncio's debug mode (too slow for production), a
daemon thread checks the task's heartbeat and, once it is overdue, takes one sample of the
loop thread's Python stack (``sys._current_frames``). The thread only wakes a few times a
second and samples nothing while the loop is healthy. A stall inside C code that holds the
GIL cannot be sampled; then the warning has no ``frames``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from types import FrameType
from typing import Any

import structlog

#: Innermost frames kept in a stall's ``frames`` field.
STACK_DEPTH = 8


def _describe(frame: FrameType | None) -> list[str]:
    """``module:line function`` for the innermost frames, innermost first."""
    out: list[str] = []
    while frame is not None and len(out) < STACK_DEPTH:
        module = frame.f_globals.get("__name__", "?")
        out.append(f"{module}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return out


class LoopMonitor:
    """Log ``event_loop_stalled`` when the running loop wakes a task ``threshold`` late.

    ``threshold <= 0`` disables it: :meth:`start` starts nothing. ``stalls`` and
    ``max_lag_seconds`` count since :meth:`start` (for metrics).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        interval: float = 0.25,
        *,
        sample_stack: bool = True,
        logger_name: str = "runyard.loop",
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.threshold = threshold
        self.interval = interval
        self.sample_stack = sample_stack
        self.stalls = 0
        self.max_lag_seconds = 0.0
        self._log: Any = structlog.get_logger(logger_name)
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        # Written by the loop task, read by the sampler thread (single assignments: no lock).
        self._beat: float | None = None
        self._sample: tuple[float, list[str]] | None = None

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start watching the running loop (call from inside it). A no-op when disabled or
        already running."""
        if not self.enabled or self.running:
            return
        self._halt.clear()
        self._beat = None
        self._sample = None
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-monitor")
        if self.sample_stack:
            self._thread = threading.Thread(
                target=self._sampler,
                args=(threading.get_ident(),),
                name="runyard-loop-sampler",
                daemon=True,
            )
            self._thread.start()

    async def stop(self) -> None:
        """Stop watching; safe to call twice or without :meth:`start`."""
        self._halt.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait(), not ``await task``: a cancellation of our caller still propagates.
            await asyncio.wait([task])
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)
        self._beat = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            beat = time.monotonic()
            self._beat = beat
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            # How late we woke: a lower bound of how long the loop was blocked.
            lag = max(0.0, loop.time() - due)
            self.max_lag_seconds = max(self.max_lag_seconds, lag)
            if lag < self.threshold:
                continue
            self.stalls += 1
            fields: dict[str, Any] = {}
            sample = self._sample
            if sample is not None and sample[0] == beat:
                fields["frames"] = sample[1]
            try:
                self._log.warning(
                    "event_loop_stalled",
                    stalled_ms=round(lag * 1000),
                    stalls=self.stalls,
                    threshold_ms=round(self.threshold * 1000),
                    **fields,
                )
            except Exception:  # a broken log line must not end the watch
                continue

    def _sampler(self, loop_thread: int) -> None:
        # Poll often enough to catch a stall just over the threshold while it still lasts.
        poll = min(self.interval, self.threshold / 2)
        sampled: float | None = None
        while not self._halt.wait(poll):
            beat = self._beat
            if beat is None or beat == sampled:
                continue
            if time.monotonic() - beat < self.interval + self.threshold:
                continue
            frame = sys._current_frames().get(loop_thread)
            try:
                self._sample = (beat, _describe(frame))
            finally:
                del frame  # frames keep their locals alive
            sampled = beat
