"""Whole-graph progress from ComfyUI's per-node WebSocket events.

ComfyUI reports which node runs (``executing``), per-step progress inside a node
(``progress``), snapshots of every node's state (``progress_state``), cached nodes
(``execution_cached``) and finished output nodes (``executed``). The tracker turns them into
one number, 0 to 1 over the whole graph: finished nodes count one each, the running node counts
its step fraction. It never goes backwards and stays below 1 until the prompt succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_BELOW_DONE = 0.99


@dataclass(frozen=True)
class Snapshot:
    progress: float
    current_node: str | None
    step_current: int | None
    step_total: int | None


class ProgressTracker:
    def __init__(self, graph: dict[str, Any]) -> None:
        self.nodes = {str(k) for k, v in graph.items() if isinstance(v, dict)}
        self.total = max(1, len(self.nodes))
        self.done: set[str] = set()
        self.current: str | None = None
        self.step_current: int | None = None
        self.step_total: int | None = None
        self._fraction = 0.0
        self._best = 0.0
        self._finished = False
        self.changed = False

    def _node_done(self, node: Any) -> None:
        if node is not None and str(node) in self.nodes:
            self.done.add(str(node))

    def _start_node(self, node: str) -> None:
        if node != self.current:
            if self.current is not None:
                self._node_done(self.current)
            self.current = node
            self.step_current = None
            self.step_total = None
            self._fraction = 0.0

    def apply(self, event: str, data: dict[str, Any]) -> None:
        """Fold one event in (already filtered to this prompt)."""
        if event == "execution_cached":
            for node in data.get("nodes") or []:
                self._node_done(node)
        elif event == "executing":
            node = data.get("node")
            if node is None:
                if self.current is not None:
                    self._node_done(self.current)
                self.current = None
            else:
                self._start_node(str(node))
        elif event == "progress":
            node = data.get("node")
            if node is not None:
                self._start_node(str(node))
            self._steps(data.get("value"), data.get("max"))
        elif event == "progress_state":
            nodes = data.get("nodes")
            if isinstance(nodes, dict):
                self._state(nodes)
        elif event == "executed":
            self._node_done(data.get("node"))
        elif event == "execution_success":
            self._finished = True
        self.changed = True

    def _steps(self, value: Any, maximum: Any) -> None:
        if isinstance(value, int | float) and isinstance(maximum, int | float) and maximum > 0:
            self.step_current = int(value)
            self.step_total = int(maximum)
            self._fraction = max(0.0, min(1.0, float(value) / float(maximum)))

    def _state(self, nodes: dict[str, Any]) -> None:
        running: list[tuple[str, dict[str, Any]]] = []
        for node_id, info in nodes.items():
            if not isinstance(info, dict):
                continue
            state = str(info.get("state") or "")
            real = str(info.get("real_node_id") or info.get("display_node_id") or node_id)
            if state == "finished":
                self._node_done(real)
            elif state not in ("pending", "error"):  # running, executing, anything newer
                running.append((real, info))
        if running:
            node_id, info = running[-1]
            self._start_node(node_id)
            maximum = info.get("max")
            # A node's own 0/1 placeholder says "started", not "one step of one".
            if isinstance(maximum, int | float) and maximum > 1:
                self._steps(info.get("value"), maximum)

    def snapshot(self) -> Snapshot:
        self.changed = False
        if self._finished:
            value = 1.0
        else:
            running = self._fraction if self.current and self.current not in self.done else 0.0
            value = min(_BELOW_DONE, (len(self.done) + running) / self.total)
        self._best = max(self._best, value)
        return Snapshot(
            progress=round(self._best, 4),
            current_node=self.current,
            step_current=self.step_current,
            step_total=self.step_total,
        )
