"""Process health signals shared by the server and the agent (no server imports here)."""

from runyard.observability.loop_monitor import LoopMonitor

__all__ = ["LoopMonitor"]
