"""Fakes of external systems that speak their real wire protocols (see README.md)."""

from tests.fakes.comfyui import CPU_DEVICE, CUDA_DEVICE, FakeComfyUI, NodeFailure, NodeSpec

__all__ = ["CPU_DEVICE", "CUDA_DEVICE", "FakeComfyUI", "NodeFailure", "NodeSpec"]
