"""Driving a real ComfyUI: its HTTP routes, its ``/ws`` events, and the agent's runner."""

from runyard.agent.comfyui.api import (
    DEFAULT_URL,
    ComfyUIAPI,
    ComfyUIUnavailable,
    Detected,
    PromptRejected,
)
from runyard.agent.comfyui.runner import ComfyUIRunner, attempt_prompt_id, collect_outputs

__all__ = [
    "DEFAULT_URL",
    "ComfyUIAPI",
    "ComfyUIRunner",
    "ComfyUIUnavailable",
    "Detected",
    "PromptRejected",
    "attempt_prompt_id",
    "collect_outputs",
]
