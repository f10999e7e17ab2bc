"""The fake ComfyUI now ships in the package (``runyard.dev.fake_comfyui``, run it with
``runyard dev fake-comfyui``); this module keeps the tests' import path."""

from runyard.dev.fake_comfyui import (
    CPU_DEVICE,
    CUDA_DEVICE,
    FakeComfyUI,
    NodeCall,
    NodeFailure,
    NodeSpec,
    make_png,
    png_size,
)

__all__ = [
    "CPU_DEVICE",
    "CUDA_DEVICE",
    "FakeComfyUI",
    "NodeCall",
    "NodeFailure",
    "NodeSpec",
    "make_png",
    "png_size",
]
