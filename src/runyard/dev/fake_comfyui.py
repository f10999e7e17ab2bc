"""A fake ComfyUI that speaks ComfyUI's real HTTP + WebSocket protocol, quirks included.

Shipped for tests and for trying Runyard without a GPU: ``runyard dev fake-comfyui --port 8188``
serves it as a process (see :func:`serve`). In a test it runs inside the test's event loop on
127.0.0.1 (port 0 by default)::

    async with FakeComfyUI(step_delay=0.01) as comfy:
        httpx.post(f"{comfy.url}/prompt", json={"prompt": graph, "client_id": "agent-1"})

No model runs: nodes pass small descriptive values to each other, and output nodes write real
files (PNG pixels derived from the prompt text, seed and every other upstream input, so two
different prompts give two different images). Message shapes, their order, who receives them,
validation errors and history entries follow ComfyUI's ``server.py`` / ``execution.py`` /
``main.py`` / ``comfy_execution`` behaviour. What is reproduced and what is not:
``docs/fake-comfyui.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import json
import mimetypes
import os
import random
import shutil
import struct
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

# -- constants taken from ComfyUI's behaviour ----------------------------------------------------

MAX_UPLOAD_SIZE = 100 * 1024 * 1024  # --max-upload-size default (MB)
MAXIMUM_HISTORY_SIZE = 10000  # execution.MAXIMUM_HISTORY_SIZE
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
PREVIEW_IMAGE = 1  # protocol.BinaryEventTypes
UNENCODED_PREVIEW_IMAGE = 2
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_TYPE_JPEG = 1
IMAGE_TYPE_PNG = 2
MAX_FAKE_IMAGE_SIDE = 4096  # larger requested images are written at this size

CUDA_DEVICE: dict[str, Any] = {
    "name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync",
    "type": "cuda",
    "index": 0,
    "vram_total": 25386352640,
    "vram_free": 24110956544,
    "torch_vram_total": 0,
    "torch_vram_free": 0,
}
CPU_DEVICE: dict[str, Any] = {
    "name": "cpu",
    "type": "cpu",
    "index": None,
    "vram_total": 67237126144,
    "vram_free": 51539607552,
    "torch_vram_total": 67237126144,
    "torch_vram_free": 51539607552,
}

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
    "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "gradient_estimation",
    "er_sde", "seeds_2", "seeds_3", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]  # fmt: skip
VHS_FORMATS = ["image/gif", "image/webp", "video/h264-mp4", "video/h265-mp4", "video/webm"]
VHS_CATEGORY = "Video Helper Suite \U0001f3a5\U0001f165\U0001f157\U0001f162"


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- fake values passed between nodes ------------------------------------------------------------


@dataclass(frozen=True)
class FakeValue:
    """What a node outputs instead of a tensor or a model.

    ``cls`` is the class name ComfyUI would print for it in ``execution_error.current_inputs``;
    ``digest`` changes whenever any upstream input changes, so output files differ with the
    prompt and seed.
    """

    kind: str
    cls: str
    digest: str
    attrs: dict[str, Any] = field(default_factory=dict)


def _format_value(value: Any) -> Any:
    """execution.format_value: primitives as-is, anything else as its class."""
    if value is None or isinstance(value, int | float | bool | str):
        return value
    if isinstance(value, FakeValue):
        return f"<class '{value.cls}'>"
    return str(value.__class__)


# -- node registry -------------------------------------------------------------------------------

InputSpec = list[Any]  # [TYPE] or [TYPE, {options}]; TYPE is a str or a list (a combo)
InputsFn = Callable[["FakeComfyUI"], dict[str, dict[str, InputSpec]]]
RunFn = Callable[["NodeCall"], Awaitable[tuple[tuple[Any, ...], dict[str, Any] | None]]]


@dataclass(frozen=True)
class NodeSpec:
    """One node class of the fake's registry (what ``/object_info`` lists)."""

    name: str
    display_name: str
    category: str
    inputs: InputsFn
    return_types: tuple[str, ...]
    run: RunFn
    output_node: bool = False
    return_names: tuple[str, ...] | None = None
    description: str = ""
    python_module: str = "nodes"
    #: inputs checked by the node's own VALIDATE_INPUTS (ComfyUI then skips its combo check)
    custom_validated: tuple[str, ...] = ()
    custom_validate: Callable[[FakeComfyUI, str, Any], bool | str] | None = None
    #: IS_CHANGED: extra data folded into the cache signature (LoadImage hashes its file)
    is_changed: Callable[[FakeComfyUI, dict[str, Any]], str] | None = None
    sampler: bool = False

    def object_info(self, fake: FakeComfyUI) -> dict[str, Any]:
        inputs = self.inputs(fake)
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": {category: list(spec) for category, spec in inputs.items()},
            "output": list(self.return_types),
            "output_is_list": [False] * len(self.return_types),
            "output_name": list(self.return_names or self.return_types),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        return info


@dataclass
class NodeCall:
    """Everything a node's ``run`` gets."""

    fake: FakeComfyUI
    run: _Run
    node_id: str
    class_type: str
    inputs: dict[str, Any]
    digest: str

    async def sample(self, steps: int) -> None:
        await self.fake._sample(self, steps)


@dataclass
class NodeFailure:
    """A scripted failure: ``node`` is a node id or a class_type."""

    node: str
    message: str = "Fake failure injected by the test"
    exception_type: str = "RuntimeError"
    at_step: int | None = None
    times: int | None = 1  # None: every time


class _Interrupted(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class _NodeError(Exception):
    def __init__(self, node_id: str, message: str, exception_type: str) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.message = message
        self.exception_type = exception_type


@dataclass
class _CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


@dataclass
class _Socket:
    ws: web.WebSocketResponse
    request: web.Request
    feature_flags: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    item: list[Any]
    client_id: str | None
    messages: list[list[Any]] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def prompt_id(self) -> str:
        return str(self.item[1])

    @property
    def prompt(self) -> dict[str, Any]:
        prompt: dict[str, Any] = self.item[2]
        return prompt

    @property
    def extra_data(self) -> dict[str, Any]:
        extra: dict[str, Any] = self.item[3]
        return extra


# -- files ---------------------------------------------------------------------------------------


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def make_png(width: int, height: int, seed: bytes, text: dict[str, str] | None = None) -> bytes:
    """A real RGB PNG whose pixels are derived from ``seed`` (no Pillow needed)."""
    width = max(1, min(width, MAX_FAKE_IMAGE_SIDE))
    height = max(1, min(height, MAX_FAKE_IMAGE_SIDE))
    seed = hashlib.sha256(seed).digest()
    left, right = width // 2, width - width // 2
    band = seed[6] % 31 + 1
    rows = []
    for y in range(height):
        a = bytes(((seed[0] + y) & 255, (seed[1] + (y // band) * 9) & 255, seed[2]))
        b = bytes((seed[3], (seed[4] + y) & 255, (seed[5] + (y // band) * 5) & 255))
        rows.append(b"\x00" + a * left + b * right)
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    for key, value in (text or {}).items():
        out += _png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))
    return out + _png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + _png_chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _fake_container(kind: str, digest: str, extra: bytes = b"") -> bytes:
    body = hashlib.sha256(digest.encode()).digest() * 8 + extra
    if kind == "webp":
        payload = b"WEBP" + b"VP8L" + struct.pack("<I", len(body)) + body
        return b"RIFF" + struct.pack("<I", len(payload)) + payload
    if kind == "mp4":
        ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
        return ftyp + struct.pack(">I", 8 + len(body)) + b"mdat" + body
    if kind == "webm":
        return b"\x1a\x45\xdf\xa3" + body
    if kind == "gif":
        return b"GIF89a" + struct.pack("<HH", 64, 64) + body + b";"
    if kind == "flac":
        return b"fLaC" + body
    raise ValueError(kind)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _next_counter(folder: Path, prefix: str) -> int:
    """get_save_image_path: one past the highest ``<prefix>_<NNNNN>`` already in ``folder``."""
    highest = 0
    if folder.is_dir():
        for name in os.listdir(folder):
            if not name.startswith(prefix + "_"):
                continue
            digits = name[len(prefix) + 1 :].split("_")[0].split(".")[0]
            if digits.isdigit():
                highest = max(highest, int(digits))
    return highest + 1


def _split_prefix(root: Path, filename_prefix: str) -> tuple[Path, str, str]:
    """(folder, subfolder, filename) for a prefix like ``audio/ComfyUI``; refuses to escape."""
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = (root / subfolder).resolve()
    if os.path.commonpath((root.resolve(), folder)) != str(root.resolve()):
        raise _NodeError("", "Saving image outside the output folder is not allowed.", "Exception")
    return folder, subfolder.replace(os.sep, "/"), filename


def _save_files(
    root: Path, filename_prefix: str, pattern: str, contents: list[bytes]
) -> list[dict[str, Any]]:
    """Write ``contents`` as ``pattern.format(name=, counter=)`` files; ComfyUI's ui entries."""
    folder, subfolder, name = _split_prefix(root, filename_prefix)
    counter = _next_counter(folder, name)
    results = []
    for data in contents:
        filename = pattern.format(name=name, counter=counter)
        _write(folder / filename, data)
        results.append({"filename": filename, "subfolder": subfolder, "type": root.name})
        counter += 1
    return results


def _input_files(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(
        name for name in os.listdir(root) if (root / name).is_file() and not name.startswith(".")
    )


def _file_digest(path: Path) -> str:
    if not path.is_file():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def _store_upload(
    upload_dir: Path, subfolder: str, filename: str, data: bytes, overwrite: bool
) -> str | None:
    """image_upload: returns the stored name (maybe `` (1)``-suffixed) or None if refused."""
    base = upload_dir.resolve()
    folder = Path(os.path.abspath(os.path.join(base, os.path.normpath(subfolder))))
    target = Path(os.path.abspath(os.path.join(folder, filename)))
    if os.path.commonpath((str(base), str(target))) != str(base):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    stem, ext = os.path.splitext(filename)
    if not overwrite:
        i = 1
        while target.exists():
            if hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest():
                return filename  # same bytes already there: not written again, same name
            filename = f"{stem} ({i}){ext}"
            target = folder / filename
            i += 1
    target.write_bytes(data)
    return filename


def _resolve_view(base: Path, subfolder: str | None, filename: str) -> tuple[Path, str] | int:
    """/view's path rules: a subfolder escaping the base is 403, a missing file 404."""
    folder = base.resolve()
    if subfolder is not None:
        candidate = Path(os.path.abspath(os.path.join(folder, subfolder)))
        if os.path.commonpath((str(candidate), str(folder))) != str(folder):
            return 403
        folder = candidate
    filename = os.path.basename(filename)
    path = folder / filename
    if not path.is_file():
        return 404
    return path, filename


def _reset_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


# -- the standard nodes --------------------------------------------------------------------------


def _int(default: int, minimum: int, maximum: int, **extra: Any) -> InputSpec:
    return ["INT", {"default": default, "min": minimum, "max": maximum, **extra}]


def _float(default: float, minimum: float, maximum: float, **extra: Any) -> InputSpec:
    return ["FLOAT", {"default": default, "min": minimum, "max": maximum, **extra}]


def _string(default: str = "", **extra: Any) -> InputSpec:
    return ["STRING", {"default": default, **extra}]


def _images_hidden() -> dict[str, InputSpec]:
    return {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}


async def _run_checkpoint_loader(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    attrs = {"ckpt": call.inputs["ckpt_name"]}
    return (
        FakeValue("MODEL", "comfy.model_patcher.ModelPatcher", call.digest, attrs),
        FakeValue("CLIP", "comfy.sd.CLIP", call.digest, attrs),
        FakeValue("VAE", "comfy.sd.VAE", call.digest, attrs),
    ), None


async def _run_clip_text_encode(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    return (FakeValue("CONDITIONING", "list", call.digest, {"text": call.inputs["text"]}),), None


async def _run_empty_latent(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    attrs = {
        "width": call.inputs["width"],
        "height": call.inputs["height"],
        "batch": call.inputs["batch_size"],
    }
    return (FakeValue("LATENT", "dict", call.digest, attrs),), None


async def _run_ksampler(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    steps = call.fake.steps_override or int(call.inputs["steps"])
    await call.sample(steps)
    latent: FakeValue = call.inputs["latent_image"]
    return (FakeValue("LATENT", "dict", call.digest, dict(latent.attrs)),), None


async def _run_vae_decode(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    samples: FakeValue = call.inputs["samples"]
    attrs = {
        "width": samples.attrs.get("width", 512),
        "height": samples.attrs.get("height", 512),
        "batch": samples.attrs.get("batch", 1),
    }
    return (FakeValue("IMAGE", "torch.Tensor", call.digest, attrs),), None


async def _run_vae_encode(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    pixels: FakeValue = call.inputs["pixels"]
    return (FakeValue("LATENT", "dict", call.digest, dict(pixels.attrs)),), None


async def _run_load_image(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    path = call.fake.input_dir / str(call.inputs["image"])
    data = _read_bytes(path)
    width, height = png_size(data) or (512, 512)
    attrs = {"width": width, "height": height, "batch": 1}
    return (
        FakeValue("IMAGE", "torch.Tensor", call.digest, attrs),
        FakeValue("MASK", "torch.Tensor", call.digest, attrs),
    ), None


def _png_metadata(call: NodeCall) -> dict[str, str]:
    text = {"prompt": json.dumps(call.run.prompt)}
    workflow = call.run.extra_data.get("extra_pnginfo", {})
    if isinstance(workflow, dict):
        for key, value in workflow.items():
            text[str(key)] = json.dumps(value)
    return text


def _image_pngs(call: NodeCall, images: FakeValue) -> list[bytes]:
    width = int(images.attrs.get("width", 512))
    height = int(images.attrs.get("height", 512))
    metadata = _png_metadata(call)
    return [
        make_png(width, height, f"{images.digest}:{i}".encode(), metadata)
        for i in range(int(images.attrs.get("batch", 1)))
    ]


async def _run_save_image(call: NodeCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    pngs = _image_pngs(call, call.inputs["images"])
    prefix = str(call.inputs["filename_prefix"])
    files = _save_files(call.fake.output_dir, prefix, "{name}_{counter:05}_.png", pngs)
    return (), {"images": files}


async def _run_preview_image(call: NodeCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    pngs = _image_pngs(call, call.inputs["images"])
    prefix = "ComfyUI_temp_" + "".join(
        random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5)
    )
    files = _save_files(call.fake.temp_dir, prefix, "{name}_{counter:05}_.png", pngs)
    return (), {"images": files}


async def _run_save_animated_webp(call: NodeCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    images: FakeValue = call.inputs["images"]
    frames = int(images.attrs.get("batch", 1))
    data = _fake_container("webp", images.digest, struct.pack("<I", frames))
    prefix = str(call.inputs["filename_prefix"])
    files = _save_files(call.fake.output_dir, prefix, "{name}_{counter:05}_.webp", [data])
    # SaveAnimatedWEBP reports animated only when there is more than one frame
    return (), {"images": files, "animated": [frames != 1]}


async def _run_video_combine(call: NodeCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    images: FakeValue = call.inputs["images"]
    fmt = str(call.inputs["format"])
    ext = {"image/gif": "gif", "image/webp": "webp", "video/webm": "webm"}.get(fmt, "mp4")
    root = call.fake.output_dir if call.inputs.get("save_output", True) else call.fake.temp_dir
    prefix = str(call.inputs["filename_prefix"])
    folder, subfolder, name = _split_prefix(root, prefix)
    counter = _next_counter(folder, name)
    workflow_png = f"{name}_{counter:05}.png"
    filename = f"{name}_{counter:05}.{ext}"
    _write(folder / workflow_png, make_png(8, 8, images.digest.encode(), _png_metadata(call)))
    _write(folder / filename, _fake_container(ext, images.digest))
    entry = {
        "filename": filename,
        "subfolder": subfolder,
        "type": root.name,
        "format": fmt,
        "frame_rate": float(call.inputs["frame_rate"]),
        "workflow": workflow_png,
        "fullpath": str(folder / filename),
    }
    filenames = (bool(call.inputs.get("save_output", True)), [str(folder / filename)])
    return (filenames,), {"gifs": [entry]}


async def _run_empty_latent_audio(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    attrs = {"seconds": call.inputs["seconds"], "batch": call.inputs["batch_size"], "audio": True}
    return (FakeValue("LATENT", "dict", call.digest, attrs),), None


async def _run_vae_decode_audio(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    samples: FakeValue = call.inputs["samples"]
    attrs = {**samples.attrs, "sample_rate": 44100}
    return (FakeValue("AUDIO", "dict", call.digest, attrs),), None


async def _run_save_audio(call: NodeCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    audio: FakeValue = call.inputs["audio"]
    data = [
        _fake_container("flac", f"{audio.digest}:{i}")
        for i in range(int(audio.attrs.get("batch", 1)))
    ]
    prefix = str(call.inputs["filename_prefix"])
    files = _save_files(call.fake.output_dir, prefix, "{name}_{counter:05}_.flac", data)
    return (), {"audio": files}


async def _run_primitive_string(call: NodeCall) -> tuple[tuple[Any, ...], None]:
    return (str(call.inputs["value"]),), None


async def _run_preview_any(call: NodeCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    source = call.inputs.get("source")
    if isinstance(source, str):
        text = source
    elif isinstance(source, FakeValue):
        text = f"<{source.cls} {source.kind}>"
    else:
        text = json.dumps(source)
    return (), {"text": [text]}


async def _run_save_text_file(call: NodeCall) -> tuple[tuple[Any, ...], dict[str, Any]]:
    data = str(call.inputs["text"]).encode()
    prefix = str(call.inputs["filename_prefix"])
    files = _save_files(call.fake.output_dir, prefix, "{name}_{counter:05}_.txt", [data])
    return (), {"files": files}


def _validate_load_image(fake: FakeComfyUI, name: str, value: Any) -> bool | str:
    if not (fake.input_dir / str(value)).is_file():
        return f"Invalid image file: {value}"
    return True


def standard_nodes() -> dict[str, NodeSpec]:
    """The fake's node registry: core nodes plus two well-known custom-node output kinds."""
    model_input: InputSpec = [
        "MODEL",
        {"tooltip": "The model used for denoising the input latent."},
    ]
    specs = [
        NodeSpec(
            "CheckpointLoaderSimple",
            "Load Checkpoint",
            "loaders",
            lambda f: {
                "required": {
                    "ckpt_name": [
                        list(f.models["checkpoints"]),
                        {"tooltip": "The name of the checkpoint (model) to load."},
                    ]
                }
            },
            ("MODEL", "CLIP", "VAE"),
            _run_checkpoint_loader,
            description="Loads a diffusion model checkpoint.",
        ),
        NodeSpec(
            "CLIPTextEncode",
            "CLIP Text Encode (Prompt)",
            "conditioning",
            lambda f: {
                "required": {
                    "text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
                    "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
                }
            },
            ("CONDITIONING",),
            _run_clip_text_encode,
        ),
        NodeSpec(
            "KSampler",
            "KSampler",
            "sampling",
            lambda f: {
                "required": {
                    "model": model_input,
                    "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                    "steps": _int(20, 1, 10000),
                    "cfg": _float(8.0, 0.0, 100.0, step=0.1, round=0.01),
                    "sampler_name": [list(SAMPLERS)],
                    "scheduler": [list(SCHEDULERS)],
                    "positive": ["CONDITIONING"],
                    "negative": ["CONDITIONING"],
                    "latent_image": ["LATENT"],
                    "denoise": _float(1.0, 0.0, 1.0, step=0.01),
                }
            },
            ("LATENT",),
            _run_ksampler,
            sampler=True,
        ),
        NodeSpec(
            "EmptyLatentImage",
            "Empty Latent Image",
            "latent",
            lambda f: {
                "required": {
                    "width": _int(512, 16, 16384, step=8),
                    "height": _int(512, 16, 16384, step=8),
                    "batch_size": _int(1, 1, 4096),
                }
            },
            ("LATENT",),
            _run_empty_latent,
        ),
        NodeSpec(
            "VAEDecode",
            "VAE Decode",
            "latent",
            lambda f: {"required": {"samples": ["LATENT"], "vae": ["VAE"]}},
            ("IMAGE",),
            _run_vae_decode,
        ),
        NodeSpec(
            "VAEEncode",
            "VAE Encode",
            "latent",
            lambda f: {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}},
            ("LATENT",),
            _run_vae_encode,
        ),
        NodeSpec(
            "SaveImage",
            "Save Image",
            "image",
            lambda f: {
                "required": {
                    "images": ["IMAGE", {"tooltip": "The images to save."}],
                    "filename_prefix": _string("ComfyUI"),
                },
                "hidden": _images_hidden(),
            },
            (),
            _run_save_image,
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeSpec(
            "PreviewImage",
            "Preview Image",
            "image",
            lambda f: {"required": {"images": ["IMAGE"]}, "hidden": _images_hidden()},
            (),
            _run_preview_image,
            output_node=True,
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeSpec(
            "LoadImage",
            "Load Image",
            "image",
            lambda f: {"required": {"image": [_input_files(f.input_dir), {"image_upload": True}]}},
            ("IMAGE", "MASK"),
            _run_load_image,
            custom_validated=("image",),
            custom_validate=_validate_load_image,
            is_changed=lambda f, inputs: _file_digest(f.input_dir / str(inputs.get("image"))),
        ),
        NodeSpec(
            "SaveAnimatedWEBP",
            "SaveAnimatedWEBP",
            "image/animation",
            lambda f: {
                "required": {
                    "images": ["IMAGE"],
                    "filename_prefix": _string("ComfyUI"),
                    "fps": _float(6.0, 0.01, 1000.0, step=0.01),
                    "lossless": ["BOOLEAN", {"default": True}],
                    "quality": _int(80, 0, 100),
                    "method": [["default", "fastest", "slowest"]],
                },
                "hidden": _images_hidden(),
            },
            (),
            _run_save_animated_webp,
            output_node=True,
        ),
        NodeSpec(
            "VHS_VideoCombine",
            "Video Combine \U0001f3a5\U0001f165\U0001f157\U0001f162",
            VHS_CATEGORY,
            lambda f: {
                "required": {
                    "images": ["IMAGE"],
                    "frame_rate": _float(8, 1, 1000000, step=1),
                    "loop_count": _int(0, 0, 100, step=1),
                    "filename_prefix": _string("AnimateDiff"),
                    "format": [list(VHS_FORMATS)],
                    "pingpong": ["BOOLEAN", {"default": False}],
                    "save_output": ["BOOLEAN", {"default": True}],
                },
                "hidden": _images_hidden(),
            },
            ("VHS_FILENAMES",),
            _run_video_combine,
            output_node=True,
            return_names=("Filenames",),
            python_module="custom_nodes.ComfyUI-VideoHelperSuite",
        ),
        NodeSpec(
            "EmptyLatentAudio",
            "Empty Latent Audio",
            "latent/audio",
            lambda f: {
                "required": {
                    "seconds": _float(47.6, 1.0, 1000.0, step=0.1),
                    "batch_size": _int(1, 1, 4096),
                }
            },
            ("LATENT",),
            _run_empty_latent_audio,
            python_module="comfy_extras.nodes_audio",
        ),
        NodeSpec(
            "VAEDecodeAudio",
            "VAE Decode Audio",
            "latent/audio",
            lambda f: {"required": {"samples": ["LATENT"], "vae": ["VAE"]}},
            ("AUDIO",),
            _run_vae_decode_audio,
            python_module="comfy_extras.nodes_audio",
        ),
        NodeSpec(
            "SaveAudio",
            "Save Audio (FLAC)",
            "audio",
            lambda f: {
                "required": {"audio": ["AUDIO"], "filename_prefix": _string("audio/ComfyUI")},
                "hidden": _images_hidden(),
            },
            (),
            _run_save_audio,
            output_node=True,
            python_module="comfy_extras.nodes_audio",
        ),
        NodeSpec(
            "PrimitiveString",
            "String",
            "utils/primitive",
            lambda f: {"required": {"value": ["STRING", {}]}},
            ("STRING",),
            _run_primitive_string,
            python_module="comfy_extras.nodes_primitive",
        ),
        NodeSpec(
            "PreviewAny",
            "Preview Any",
            "utils",
            lambda f: {"required": {"source": ["*", {}]}},
            (),
            _run_preview_any,
            output_node=True,
            python_module="comfy_extras.nodes_preview_any",
        ),
        NodeSpec(
            "SaveTextFile",
            "Save Text File",
            "utils/text",
            lambda f: {
                "required": {
                    "text": ["STRING", {"multiline": True, "forceInput": True}],
                    "filename_prefix": _string("text/ComfyUI"),
                }
            },
            (),
            _run_save_text_file,
            output_node=True,
            description="Custom-node style output: a file list under a non-standard key.",
            python_module="custom_nodes.fake-text-nodes",
        ),
    ]
    return {spec.name: spec for spec in specs}


# -- validation helpers --------------------------------------------------------------------------


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _types_match(received: Any, expected: Any) -> bool:
    """comfy_execution.validation.validate_node_input (non-strict), ``*`` accepts anything."""
    if expected == "*" or received == "*" or received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _prompt_error(kind: str, message: str, details: str = "", **extra: Any) -> web.Response:
    body = {"error": _error(kind, message, details, **extra), "node_errors": {}}
    return web.json_response(body, status=400)


# -- the server ----------------------------------------------------------------------------------


class FakeComfyUI:
    """A fake ComfyUI server; an async context manager (``async with FakeComfyUI() as c``).

    Knobs (constructor arguments, all also plain attributes you may change while it runs):

    - ``step_delay``: seconds per sampler step; ``steps_override``: run this many sampler steps
      whatever the graph says; ``node_delay``: seconds spent in every other executed node.
    - ``preview_method``: the server's ``--preview-method`` (``"none"`` like ComfyUI's default;
      ``"auto"`` sends binary preview frames at every sampler step). A prompt's
      ``extra_data.preview_method`` overrides it.
    - ``history_delay``: gap between ``execution_success`` and the history write (the real
      server sends the message first; 0 keeps the gap to one loop turn).
    - ``upload_delay``: seconds before ``/upload/image`` answers (slow uploads).
    - ``frozen``: while True every HTTP request and WebSocket upgrade hangs (a wedged process).
    - ``drop_ws_at_step``: abruptly drop every WebSocket when a sampler reaches that step (once).
    - ``require_uuid_prompt_id``: reject a client ``prompt_id`` that is not a canonical UUID,
      as current ComfyUI does (``invalid_prompt_id``).
    - ``legacy_validation_errors``: unknown class_type → pre-2025 ``invalid_prompt`` error.
    - ``stale_socket_unregisters``: when a replaced socket with the same clientId closes, it
      unregisters the newer one too (upstream pops the sid unconditionally).
    - ``models``, ``devices``, ``comfyui_version``, ``max_upload_size``, ``max_history``.

    Methods for scripting: ``fail_node``, ``drop_websockets``, ``stop`` / ``start`` (crash and
    come back on the same port), ``restart``, ``wait_idle``, ``wait_history``. Observation:
    ``calls`` (a Counter of ``"METHOD /route/{template}"``, ``/api`` prefix folded in),
    ``requests`` (method, path with query), ``sent`` (every WebSocket message the server emitted:
    ``(sid or None, type, data)``; binary frames as ``(sid, "binary:<event>", bytes)``).
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        step_delay: float = 0.0,
        node_delay: float = 0.0,
        steps_override: int | None = None,
        preview_method: str = "none",
        history_delay: float = 0.0,
        upload_delay: float = 0.0,
        require_uuid_prompt_id: bool = True,
        legacy_validation_errors: bool = False,
        stale_socket_unregisters: bool = True,
        checkpoints: Iterable[str] = (
            "v1-5-pruned-emaonly.safetensors",
            "sd_xl_base_1.0.safetensors",
        ),
        devices: list[dict[str, Any]] | None = None,
        comfyui_version: str = "0.3.66",
        max_upload_size: int = MAX_UPLOAD_SIZE,
        max_history: int = MAXIMUM_HISTORY_SIZE,
    ) -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="fakecomfy-"))
        self.input_dir = self.root / "input"
        self.output_dir = self.root / "output"
        self.temp_dir = self.root / "temp"
        self.host = host
        self.port = port
        self.step_delay = step_delay
        self.node_delay = node_delay
        self.steps_override = steps_override
        self.preview_method = preview_method
        self.history_delay = history_delay
        self.upload_delay = upload_delay
        self.require_uuid_prompt_id = require_uuid_prompt_id
        self.legacy_validation_errors = legacy_validation_errors
        self.stale_socket_unregisters = stale_socket_unregisters
        self.models: dict[str, list[str]] = {
            "checkpoints": list(checkpoints),
            "loras": [],
            "vae": [],
            "text_encoders": [],
            "diffusion_models": [],
            "embeddings": [],
        }
        self.devices = copy.deepcopy(devices) if devices is not None else [dict(CUDA_DEVICE)]
        self.comfyui_version = comfyui_version
        self.max_upload_size = max_upload_size
        self.max_history = max_history
        self.frozen = False
        self.drop_ws_at_step: int | None = None
        self.nodes: dict[str, NodeSpec] = standard_nodes()
        self.failures: list[NodeFailure] = []
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.sent: list[tuple[str | None, str, Any]] = []
        self.starts = 0
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reset_state()

    # -- lifecycle -------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        """What a ComfyUI process keeps in memory (all lost on restart)."""
        self._pending: list[tuple[float, int, list[Any]]] = []
        self._seq = 0
        self._number = 0
        self._running: _Run | None = None
        self._history: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, _CacheEntry] = {}
        self._sockets: dict[str, _Socket] = {}
        self._client_id: str | None = None
        self._last_node_id: str | None = None
        self._interrupt_flag = False
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._outbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def __aenter__(self) -> FakeComfyUI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(graceful=True)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    async def start(self) -> None:
        """Start (or start again after ``stop``) on the same port, with empty memory."""
        if self._runner is not None:
            return
        self._reset_state()
        for folder in (self.input_dir, self.output_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _reset_dir(self.temp_dir)  # ComfyUI empties its temp directory at start-up
        app = web.Application(
            client_max_size=self.max_upload_size,
            middlewares=[self._observe_middleware, self._origin_middleware],
        )
        self._add_routes(app)
        runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        if not self.port:
            self.port = int(runner.addresses[0][1])
        self._runner = runner
        self.starts += 1
        self._tasks = [
            asyncio.create_task(self._worker(), name="fake-comfyui-worker"),
            asyncio.create_task(self._publisher(), name="fake-comfyui-publisher"),
        ]

    async def stop(self, *, graceful: bool = False) -> None:
        """Die like a killed process: sockets drop, queue, history and cache are gone.

        Files in input/ and output/ stay, as they would on disk.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._drop_all(abrupt=not graceful)
        await runner.cleanup()
        self._running = None
        self._idle.set()

    async def restart(self, down_for: float = 0.0) -> None:
        """A ComfyUI restart: everything in memory is lost, the port comes back."""
        await self.stop()
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()

    # -- scripting and observation ---------------------------------------------------------------

    def fail_node(
        self,
        node: str,
        message: str = "Fake failure injected by the test",
        *,
        exception_type: str = "RuntimeError",
        at_step: int | None = None,
        times: int | None = 1,
    ) -> NodeFailure:
        """Make node ``node`` (an id or a class_type) raise while executing."""
        failure = NodeFailure(node, message, exception_type, at_step, times)
        self.failures.append(failure)
        return failure

    async def drop_websockets(self, *, abrupt: bool = True) -> None:
        """Drop every open WebSocket now (abrupt: no close frame, like a dead network)."""
        await self._drop_all(abrupt=abrupt)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until nothing is running or pending."""
        async with asyncio.timeout(timeout):
            while self._pending or self._running is not None:
                self._idle.clear()
                await self._idle.wait()

    async def wait_history(self, prompt_id: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while prompt_id not in self._history:  # noqa: ASYNC110 - a test helper
                await asyncio.sleep(0.01)
        return self._history[prompt_id]

    @property
    def history(self) -> dict[str, dict[str, Any]]:
        return self._history

    @property
    def running_prompt_id(self) -> str | None:
        return self._running.prompt_id if self._running else None

    @property
    def pending_prompt_ids(self) -> list[str]:
        return [item[1] for _, _, item in sorted(self._pending)]

    @property
    def client_ids(self) -> list[str]:
        return list(self._sockets)

    def count(self, method: str, route: str) -> int:
        return self.calls[f"{method.upper()} {route}"]

    # -- HTTP plumbing ---------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/ws", self._ws_handler),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("GET", "/models", self._models),
            ("GET", "/models/{folder}", self._models_folder),
            ("GET", "/embeddings", self._embeddings),
            ("POST", "/free", self._free),
        ]
        for method, path, handler in routes:
            # every route is served both bare and under /api, like server.py's add_routes
            for prefix in ("", "/api"):
                app.router.add_route(method, prefix + path, handler, name=None)
        # the jobs API only exists under /api
        app.router.add_route("GET", "/api/jobs", self._jobs)
        app.router.add_route("GET", "/api/jobs/{job_id}", self._job)

    @web.middleware
    async def _observe_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else request.path
        if template.startswith("/api/") and not template.startswith("/api/jobs"):
            template = template[4:]
        self.calls[f"{request.method} {template}"] += 1
        self.requests.append((request.method, request.path_qs))
        while self.frozen:  # noqa: ASYNC110 - a knob flipped by tests at any time
            await asyncio.sleep(0.02)
        return await handler(request)

    @web.middleware
    async def _origin_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """server.py's anti-CSRF check: on a loopback Host, Origin's host must match (else 403)."""
        host = request.headers.get("Host")
        origin = request.headers.get("Origin")
        if host and origin:
            parsed = urlsplit(origin)
            host_parsed = urlsplit("//" + host.lower())
            host_domain: str | None = host.lower()
            origin_domain: str | None = parsed.netloc.lower()
            if parsed.port is None:
                host_domain = host_parsed.hostname
            if host_parsed.port is None:
                origin_domain = parsed.hostname
            loopback = host_parsed.hostname in ("localhost", "127.0.0.1", "::1")
            if loopback and host_domain and origin_domain and host_domain != origin_domain:
                return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    # -- WebSocket -------------------------------------------------------------------------------

    def _queue_info(self) -> dict[str, Any]:
        remaining = len(self._pending) + (1 if self._running is not None else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    def _server_features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": self.max_upload_size}

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        socket = _Socket(ws, request)
        self._sockets[sid] = socket  # reusing an id replaces the old socket (which stays open)
        try:
            await self._send_direct(socket, "status", {"status": self._queue_info(), "sid": sid})
            if self._client_id == sid and self._last_node_id is not None:
                # reconnect catch-up: the current node, without prompt_id
                await self._send_direct(socket, "executing", {"node": self._last_node_id})
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data")
                    socket.feature_flags = dict(flags) if isinstance(flags, dict) else {}
                    await self._send_direct(socket, "feature_flags", self._server_features())
                first = False
        finally:
            if self.stale_socket_unregisters or self._sockets.get(sid) is socket:
                self._sockets.pop(sid, None)
        return ws

    async def _send_direct(self, socket: _Socket, event: str, data: Any) -> None:
        sid = next((k for k, v in self._sockets.items() if v is socket), None)
        self.sent.append((sid, event, data))
        with contextlib.suppress(Exception):
            await socket.ws.send_json({"type": event, "data": data})

    def _publish(self, event: str, data: Any, sid: str | None = None) -> None:
        """PromptServer.send_sync: sid None broadcasts, an unknown sid drops the message."""
        self.sent.append((sid, event, data))
        self._outbox.put_nowait(("json", event, data, sid))

    def _publish_bytes(self, event: int, payload: bytes, sid: str | None) -> None:
        message = struct.pack(">I", event) + payload
        self.sent.append((sid, f"binary:{event}", message))
        self._outbox.put_nowait(("bytes", event, message, sid))

    async def _publisher(self) -> None:
        while True:
            kind, event, data, sid = await self._outbox.get()
            if kind == "drop":
                await self._drop_all(abrupt=True)
                continue
            targets = list(self._sockets.values()) if sid is None else []
            if sid is not None and sid in self._sockets:
                targets = [self._sockets[sid]]
            for socket in targets:
                with contextlib.suppress(Exception):
                    if kind == "json":
                        await socket.ws.send_json({"type": event, "data": data})
                    else:
                        await socket.ws.send_bytes(data)

    async def _drop_all(self, *, abrupt: bool) -> None:
        sockets = list(self._sockets.values())
        for socket in sockets:
            if abrupt:
                transport = socket.request.transport
                if transport is not None:
                    transport.abort()
            else:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await socket.ws.close(code=1001, message=b"Server shutdown")
        self._sockets.clear()

    # -- /prompt and validation ------------------------------------------------------------------

    async def _get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.Response(status=500, text="500 Internal Server Error")
        if not isinstance(body, dict) or "prompt" not in body:
            return _prompt_error("no_prompt", "No prompt provided", "No prompt provided")
        if "number" in body:
            number: float = float(body["number"])
        else:
            number = -self._number if body.get("front") else self._number
            self._number += 1
        supplied = body.get("prompt_id")
        if supplied is None:
            prompt_id = str(uuid.uuid4())
        elif self.require_uuid_prompt_id:
            try:
                canonical = str(uuid.UUID(str(supplied)))
            except ValueError:
                canonical = ""
            if canonical != supplied:
                return _prompt_error(
                    "invalid_prompt_id",
                    "prompt_id must be a valid UUID",
                    "prompt_id must be a UUID string in canonical lowercase hyphenated form; "
                    "omit it to let the server generate one",
                )
            prompt_id = canonical
        else:
            prompt_id = str(supplied)
        prompt = copy.deepcopy(body["prompt"])
        valid, error, outputs, node_errors = self._validate_prompt(
            prompt, body.get("partial_execution_targets")
        )
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra_data = body.get("extra_data", {})
        extra_data = copy.deepcopy(extra_data) if isinstance(extra_data, dict) else {}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        extra_data["create_time"] = _now_ms()
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)  # kept out of /queue and /history
        item = [number, prompt_id, prompt, extra_data, outputs]
        self._seq += 1
        heapq.heappush(self._pending, (number, self._seq, item))
        self._idle.clear()
        self._queue_updated()
        self._wakeup.set()
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    def _unknown_node_error(self, node_id: str, node: Any) -> dict[str, Any]:
        class_type = node.get("class_type") if isinstance(node, dict) else None
        meta = node.get("_meta") if isinstance(node, dict) else None
        title = meta.get("title") if isinstance(meta, dict) else None
        if self.legacy_validation_errors:
            if class_type is None:
                message = "Cannot execute because a node is missing the class_type property."
            else:
                message = f"Cannot execute because node {class_type} does not exist."
            return _error("invalid_prompt", message, f"Node ID '#{node_id}'")
        if class_type is None:
            name = title or f"ID #{node_id}"
            message = (
                f"Node '{name}' has no class_type. The workflow may be corrupted or a custom "
                "node is missing."
            )
        else:
            message = (
                f"Node '{title or class_type}' not found. The custom node may not be installed."
            )
        return _error(
            "missing_node_type",
            message,
            f"Node ID '#{node_id}'",
            node_id=node_id,
            class_type=class_type,
            node_title=title or class_type,
        )

    def _validate_prompt(
        self, prompt: Any, partial: Any
    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
        """execution.validate_prompt: (valid, error, outputs to execute, node_errors)."""
        if not isinstance(prompt, dict):
            return False, _error("invalid_prompt", "Prompt must be an object"), [], {}
        outputs: list[str] = []
        for node_id, node in prompt.items():
            class_type = node.get("class_type") if isinstance(node, dict) else None
            spec = self.nodes.get(class_type) if isinstance(class_type, str) else None
            if spec is None:
                return False, self._unknown_node_error(node_id, node), [], {}
            node.setdefault("inputs", {})
            if spec.output_node and (partial is None or node_id in partial):
                outputs.append(node_id)
        if not outputs:
            return False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {}
        validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        node_errors: dict[str, dict[str, Any]] = {}
        good: list[str] = []
        failed: list[tuple[str, list[dict[str, Any]]]] = []
        for output in outputs:
            try:
                ok, reasons = self._validate_inputs(prompt, output, validated)
            except Exception as exc:
                ok = False
                reasons = [
                    _error(
                        "exception_during_validation",
                        "Exception when validating node",
                        str(exc),
                        exception_type=type(exc).__qualname__,
                        traceback=[],
                    )
                ]
                validated[output] = (False, reasons)
            if ok:
                good.append(output)
                continue
            failed.append((output, reasons))
            for node_id, (node_ok, node_reasons) in validated.items():
                # nodes downstream of a broken one are invalid too but carry no errors
                if not node_ok and node_reasons:
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": node_reasons,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        },
                    )
                    entry["dependent_outputs"].append(output)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for _, es in failed for e in es)
            error = _error(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
            )
            return False, error, [], node_errors
        return True, None, good, node_errors

    def _validate_inputs(
        self,
        prompt: dict[str, Any],
        node_id: str,
        validated: dict[str, tuple[bool, list[dict[str, Any]]]],
    ) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in validated:
            return validated[node_id]
        validated[node_id] = (True, [])  # provisional: keeps a cyclic graph from recursing
        node = prompt[node_id]
        spec = self.nodes[node["class_type"]]
        inputs: dict[str, Any] = node["inputs"]
        declared = spec.inputs(self)
        errors: list[dict[str, Any]] = []
        valid = True
        for category in ("required", "optional"):
            for name, info in declared.get(category, {}).items():
                input_type = info[0]
                options = info[1] if len(info) > 1 else {}
                if name not in inputs:
                    if category == "required":
                        errors.append(
                            _error(
                                "required_input_missing",
                                "Required input is missing",
                                name,
                                input_name=name,
                            )
                        )
                    continue
                value = inputs[name]
                if isinstance(value, list):
                    if len(value) != 2:
                        errors.append(
                            _error(
                                "bad_linked_input",
                                "Bad linked input, must be a length-2 list of "
                                "[node_id, slot_index]",
                                name,
                                input_name=name,
                                input_config=info,
                                received_value=value,
                            )
                        )
                        continue
                    source_id = value[0]
                    source_spec = self.nodes[prompt[source_id]["class_type"]]  # KeyError: raised
                    received = source_spec.return_types[value[1]]
                    if not _types_match(received, input_type):
                        errors.append(
                            _error(
                                "return_type_mismatch",
                                "Return type mismatch between linked nodes",
                                f"{name}, received_type({received}) mismatch input_type"
                                f"({input_type})",
                                input_name=name,
                                input_config=info,
                                received_type=received,
                                linked_node=value,
                            )
                        )
                        continue
                    try:
                        if not self._validate_inputs(prompt, source_id, validated)[0]:
                            valid = False
                    except Exception as exc:
                        valid = False
                        validated[source_id] = (
                            False,
                            [
                                _error(
                                    "exception_during_inner_validation",
                                    "Exception when validating inner node",
                                    str(exc),
                                    input_name=name,
                                    input_config=info,
                                    exception_message=str(exc),
                                    exception_type=type(exc).__qualname__,
                                    traceback=[],
                                    linked_node=value,
                                )
                            ],
                        )
                    continue
                if name in spec.custom_validated:
                    continue
                error = self._check_widget(name, input_type, options, info, inputs)
                if error is not None:
                    errors.append(error)
        if spec.custom_validate is not None:
            for name in spec.custom_validated:
                if name in inputs and not isinstance(inputs[name], list):
                    verdict = spec.custom_validate(self, name, inputs[name])
                    if verdict is not True:
                        details = name if verdict is False else f"{name} - {verdict}"
                        errors.append(
                            _error(
                                "custom_validation_failed",
                                "Custom validation failed for node",
                                details,
                                input_name=name,
                            )
                        )
        result = (valid and not errors, errors)
        validated[node_id] = result
        return result

    @staticmethod
    def _check_widget(
        name: str, input_type: Any, options: dict[str, Any], info: Any, inputs: dict[str, Any]
    ) -> dict[str, Any] | None:
        value = inputs[name]
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        converters: dict[str, Callable[[Any], Any]] = {
            "INT": int,
            "FLOAT": float,
            "STRING": str,
            "BOOLEAN": bool,
        }
        if isinstance(input_type, str) and input_type in converters:
            try:
                value = inputs[name] = converters[input_type](value)
            except (TypeError, ValueError) as exc:
                return _error(
                    "invalid_input_type",
                    f"Failed to convert an input value to a {input_type} value",
                    f"{name}, {value}, {exc}",
                    input_name=name,
                    input_config=info,
                    received_value=value,
                    exception_message=str(exc),
                )
        if "min" in options and value < options["min"]:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {options['min']}",
                name,
                input_name=name,
                input_config=info,
                received_value=value,
            )
        if "max" in options and value > options["max"]:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {options['max']}",
                name,
                input_name=name,
                input_config=info,
                received_value=value,
            )
        if isinstance(input_type, list) and value not in input_type:
            # huge lists (lots of model files) are not echoed back
            too_long = len(input_type) > 20
            listing = f"(list of length {len(input_type)})" if too_long else str(input_type)
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {listing}",
                input_name=name,
                input_config=None if too_long else info,
                received_value=value,
            )
        return None

    # -- queue, interrupt, history ---------------------------------------------------------------

    def _queue_updated(self) -> None:
        self._publish("status", {"status": self._queue_info()})

    async def _get_queue(self, request: web.Request) -> web.StreamResponse:
        running = [self._running.item] if self._running is not None else []
        pending = [item for _, _, item in self._pending]  # heap order, as ComfyUI returns it
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("clear"):
            self._pending.clear()
            self._queue_updated()
        for prompt_id in body.get("delete", []) or []:
            for index, (_, _, item) in enumerate(self._pending):
                if item[1] == prompt_id:
                    del self._pending[index]
                    heapq.heapify(self._pending)
                    self._queue_updated()
                    break
        self._notify_idle()
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id:
            # since PR #9607: only if that prompt is the one running, otherwise ignored
            if self._running is not None and self._running.prompt_id == prompt_id:
                self._interrupt_flag = True
        elif self._running is not None:
            self._interrupt_flag = True
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.StreamResponse:
        max_items_param = request.query.get("max_items")
        max_items = int(max_items_param) if max_items_param is not None else None
        offset = int(request.query.get("offset", -1))
        if offset < 0 and max_items is not None:
            offset = len(self._history) - max_items
        out: dict[str, Any] = {}
        for index, key in enumerate(self._history):
            if index >= offset:
                out[key] = self._history[key]
                if max_items is not None and len(out) >= max_items:
                    break
        return web.json_response(out)

    async def _get_history_item(self, request: web.Request) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        if prompt_id in self._history:
            return web.json_response({prompt_id: self._history[prompt_id]})
        return web.json_response({})

    async def _post_history(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("clear"):
            self._history.clear()
        for prompt_id in body.get("delete", []) or []:
            self._history.pop(prompt_id, None)
        return web.Response(status=200)

    # -- jobs API (newer ComfyUI) ----------------------------------------------------------------

    def _job_from_queue(self, item: list[Any], status: str) -> dict[str, Any]:
        job = {
            "id": item[1],
            "status": status,
            "priority": item[0],
            "create_time": item[3].get("create_time"),
            "outputs_count": 0,
        }
        return {k: v for k, v in job.items() if v is not None}

    def _job_from_history(
        self, prompt_id: str, entry: dict[str, Any], full: bool
    ) -> dict[str, Any]:
        status_info = entry.get("status") or {}
        start = end = error = None
        interrupted = False
        for event, data in status_info.get("messages", []):
            if event == "execution_start":
                start = data.get("timestamp")
            elif event in ("execution_success", "execution_error", "execution_interrupted"):
                end = data.get("timestamp")
                error = data if event == "execution_error" else error
                interrupted = interrupted or event == "execution_interrupted"
        if status_info.get("status_str") == "error":
            status = "cancelled" if interrupted else "failed"
        else:
            status = "completed"
        count = 0
        preview = None
        for node_id, node_outputs in entry.get("outputs", {}).items():
            for media_type, items in node_outputs.items():
                if media_type == "animated" or not isinstance(items, list):
                    continue
                for item in items:
                    count += 1
                    previewable = media_type in ("images", "video", "audio", "3d")
                    if preview is None and isinstance(item, dict) and previewable:
                        preview = {**item, "nodeId": node_id, "mediaType": media_type}
        job: dict[str, Any] = {
            "id": prompt_id,
            "status": status,
            "priority": entry["prompt"][0],
            "create_time": entry["prompt"][3].get("create_time"),
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "preview_output": preview,
        }
        job = {k: v for k, v in job.items() if v is not None}
        if full:
            job["outputs"] = entry.get("outputs", {})
            job["execution_status"] = status_info
            job["workflow"] = {"prompt": entry["prompt"][2], "extra_data": entry["prompt"][3]}
        return job

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        statuses = request.query.get("status")
        wanted = set(statuses.split(",")) if statuses else None
        jobs: list[dict[str, Any]] = []
        if self._running is not None:
            jobs.append(self._job_from_queue(self._running.item, "in_progress"))
        jobs += [self._job_from_queue(item, "pending") for _, _, item in self._pending]
        jobs += [self._job_from_history(k, v, False) for k, v in self._history.items()]
        if wanted is not None:
            jobs = [job for job in jobs if job["status"] in wanted]
        descending = request.query.get("sort_order", "desc") == "desc"
        jobs.sort(key=lambda job: job.get("create_time", 0), reverse=descending)
        total = len(jobs)
        offset = int(request.query.get("offset", 0))
        limit_param = request.query.get("limit")
        limit = int(limit_param) if limit_param is not None else None
        page = jobs[offset:] if limit is None else jobs[offset : offset + limit]
        pagination = {
            "offset": offset,
            "limit": limit,
            "total": total,
            "has_more": offset + len(page) < total,
        }
        return web.json_response({"jobs": page, "pagination": pagination})

    async def _job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        if job_id in self._history:
            return web.json_response(self._job_from_history(job_id, self._history[job_id], True))
        if self._running is not None and self._running.prompt_id == job_id:
            return web.json_response(self._job_from_queue(self._running.item, "in_progress"))
        for _, _, item in self._pending:
            if item[1] == job_id:
                return web.json_response(self._job_from_queue(item, "pending"))
        return web.json_response({"error": "Job not found"}, status=404)

    # -- files -----------------------------------------------------------------------------------

    def _dir_for_type(self, kind: str) -> Path | None:
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}.get(kind)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        kind = query.get("type", "output")
        for annotation in ("input", "output", "temp"):  # folder_paths.annotated_filepath
            if filename.endswith(f" [{annotation}]"):
                filename, kind = filename[: -len(annotation) - 3], annotation
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        base = self._dir_for_type(kind)
        if base is None:
            return web.Response(status=400)
        resolved = _resolve_view(base, query.get("subfolder"), filename)
        if isinstance(resolved, int):
            return web.Response(status=resolved)
        path, filename = resolved
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/javascript", "text/css", "application/xhtml+xml"}:
            content_type = "application/octet-stream"
        headers = {"Content-Disposition": f'filename="{filename}"', "Content-Type": content_type}
        return web.FileResponse(path, headers=headers)

    async def _upload_image(self, request: web.Request) -> web.StreamResponse:
        if self.upload_delay:
            await asyncio.sleep(self.upload_delay)
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        upload_dir = self._dir_for_type(kind)
        if upload_dir is None:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        overwrite = str(post.get("overwrite")) in ("true", "1")
        data = image.file.read()
        name = _store_upload(upload_dir, subfolder, image.filename, data, overwrite)
        if name is None:
            return web.Response(status=400)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    # -- catalogue and health --------------------------------------------------------------------

    async def _object_info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {name: spec.object_info(self) for name, spec in self.nodes.items()}
        )

    async def _object_info_one(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        spec = self.nodes.get(name)
        # an unknown class answers 200 with an empty object, not 404
        return web.json_response({name: spec.object_info(self)} if spec else {})

    async def _system_stats(self, request: web.Request) -> web.StreamResponse:
        stats = {
            "system": {
                "os": "posix",
                "ram_total": 67237126144,
                "ram_free": 51539607552,
                "comfyui_version": self.comfyui_version,
                "required_frontend_version": "1.28.8",
                "python_version": "3.12.3 (main, Jun 18 2025, 17:59:45) [GCC 13.3.0]",
                "pytorch_version": "2.8.0+cu128",
                "embedded_python": False,
                "argv": ["main.py", "--listen", self.host, "--port", str(self.port)],
            },
            "devices": self.devices,
        }
        return web.json_response(stats)

    async def _features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._server_features())

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(list(self.models))

    async def _models_folder(self, request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        if folder not in self.models:
            return web.Response(status=404)
        return web.json_response(self.models[folder])

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([os.path.splitext(e)[0] for e in self.models["embeddings"]])

    async def _free(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    # -- execution -------------------------------------------------------------------------------

    def _notify_idle(self) -> None:
        if not self._pending and self._running is None:
            self._idle.set()

    async def _worker(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            _, _, item = heapq.heappop(self._pending)
            run = _Run(item=item, client_id=item[3].get("client_id"))
            self._running = run
            self._queue_updated()
            success = await self._execute(run)
            if self.history_delay:
                await asyncio.sleep(self.history_delay)
            else:
                await asyncio.sleep(0)
            self._record_history(run, success)
            self._running = None
            self._queue_updated()
            if run.client_id is not None:
                self._publish(
                    "executing", {"node": None, "prompt_id": run.prompt_id}, run.client_id
                )
            self._notify_idle()

    def _message(self, run: _Run, event: str, data: dict[str, Any], broadcast: bool) -> None:
        """PromptExecutor.add_message: recorded for history, sent only with a client_id."""
        data = {**data, "timestamp": _now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            self._publish(event, data, run.client_id)

    def _progress_state(
        self, run: _Run, node_id: str, value: float, maximum: float, state: str
    ) -> None:
        run.progress[node_id] = {"value": value, "max": maximum, "state": state}
        nodes = {
            nid: {
                **entry,
                "node_id": nid,
                "prompt_id": run.prompt_id,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }
            for nid, entry in run.progress.items()
        }
        self._publish("progress_state", {"prompt_id": run.prompt_id, "nodes": nodes})  # broadcast

    def _signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """Cache keys: class, widget values, IS_CHANGED and, recursively, the upstream keys."""
        memo: dict[str, str] = {}

        def signature(node_id: str, trail: tuple[str, ...]) -> str:
            if node_id in memo:
                return memo[node_id]
            if node_id in trail:
                return f"cycle:{node_id}"
            node = prompt[node_id]
            spec = self.nodes[node["class_type"]]
            parts: list[Any] = [node["class_type"]]
            for name, value in sorted(node["inputs"].items()):
                if _is_link(value) and value[0] in prompt:
                    parts.append([name, signature(value[0], (*trail, node_id)), value[1]])
                else:
                    parts.append([name, value])
            if spec.is_changed is not None:
                parts.append(["is_changed", spec.is_changed(self, node["inputs"])])
            digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]
            memo[node_id] = digest
            return digest

        return {node_id: signature(node_id, ()) for node_id in prompt}

    def _plan(self, prompt: dict[str, Any], outputs: list[str], cached: set[str]) -> list[str]:
        """The order ComfyUI's ExecutionList stages nodes in (with its ux-friendly pick)."""
        pending: dict[str, None] = {}
        blocking: dict[str, dict[str, None]] = {}
        block_count: dict[str, int] = {}
        links: list[tuple[str, str]] = []
        for output in outputs:
            stack = [output]
            while stack:
                node_id = stack.pop()
                if node_id in pending:
                    continue
                pending[node_id] = None
                blocking.setdefault(node_id, {})
                block_count.setdefault(node_id, 0)
                for value in prompt[node_id]["inputs"].values():
                    if _is_link(value):
                        if value[0] not in cached:
                            stack.append(value[0])
                        links.append((value[0], node_id))
        for source, target in links:
            if source in cached or target in blocking.get(source, {}):
                continue
            blocking[source][target] = None
            block_count[target] += 1

        def is_output(node_id: str) -> bool:
            return self.nodes[prompt[node_id]["class_type"]].output_node

        order: list[str] = []
        while pending:
            ready = [node_id for node_id in pending if block_count[node_id] == 0]
            if not ready:
                raise _NodeError(
                    next(iter(pending)), "Dependency cycle detected", "graph.DependencyCycleError"
                )
            pick = next((n for n in ready if is_output(n)), None)
            if pick is None:
                pick = next((n for n in ready if any(is_output(b) for b in blocking[n])), None)
            if pick is None:
                pick = next(
                    (
                        n
                        for n in ready
                        if any(is_output(c) for b in blocking[n] for c in blocking[b])
                    ),
                    ready[0],
                )
            order.append(pick)
            del pending[pick]
            for blocked in blocking[pick]:
                block_count[blocked] -= 1
        return order

    def _take_failure(self, node_id: str, class_type: str, step: int | None) -> NodeFailure | None:
        for failure in self.failures:
            if failure.node in (node_id, class_type) and failure.at_step == step:
                if failure.times is not None:
                    failure.times -= 1
                    if failure.times <= 0:
                        self.failures.remove(failure)
                return failure
        return None

    def _check_interrupt(self, node_id: str) -> None:
        if self._interrupt_flag:
            self._interrupt_flag = False
            raise _Interrupted(node_id)

    def _preview_enabled(self, run: _Run) -> bool:
        method = run.extra_data.get("preview_method", "default")
        if method in (None, "default"):
            method = self.preview_method
        return bool(method != "none")

    def _client_supports(self, sid: str | None, feature: str) -> bool:
        socket = self._sockets.get(sid) if sid is not None else None
        return bool(socket and socket.feature_flags.get(feature))

    async def _sample(self, call: NodeCall, steps: int) -> None:
        """A sampler's steps: progress_state, [preview], progress, [legacy preview] per step."""
        run = call.run
        for step in range(1, steps + 1):
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
            else:
                await asyncio.sleep(0)
            self._check_interrupt(call.node_id)
            failure = self._take_failure(call.node_id, call.class_type, step)
            if failure is not None:
                raise _NodeError(call.node_id, failure.message, failure.exception_type)
            self._progress_state(run, call.node_id, step, steps, "running")
            preview = self._preview_enabled(run)
            with_metadata = preview and self._client_supports(
                run.client_id, "supports_preview_metadata"
            )
            image = make_png(16, 16, f"{call.digest}:{step}".encode()) if preview else b""
            if with_metadata:
                metadata = json.dumps(
                    {
                        "node_id": call.node_id,
                        "prompt_id": run.prompt_id,
                        "display_node_id": call.node_id,
                        "parent_node_id": None,
                        "real_node_id": call.node_id,
                        "image_type": "image/png",
                    }
                ).encode()
                payload = struct.pack(">I", len(metadata)) + metadata + image
                self._publish_bytes(PREVIEW_IMAGE_WITH_METADATA, payload, run.client_id)
            progress = {
                "value": step,
                "max": steps,
                "prompt_id": run.prompt_id,
                "node": call.node_id,
            }
            self._publish("progress", progress, run.client_id)
            if preview and not with_metadata:
                payload = struct.pack(">I", IMAGE_TYPE_PNG) + image
                self._publish_bytes(PREVIEW_IMAGE, payload, run.client_id)
            if self.drop_ws_at_step is not None and step >= self.drop_ws_at_step:
                self.drop_ws_at_step = None
                self._outbox.put_nowait(("drop", None, None, None))

    async def _execute(self, run: _Run) -> bool:
        """PromptExecutor.execute for one queue item; True on success."""
        prompt = run.prompt
        prompt_id = run.prompt_id
        client_id = run.client_id
        self._client_id = client_id
        self._interrupt_flag = False
        self._message(run, "execution_start", {"prompt_id": prompt_id}, broadcast=False)
        signatures = self._signatures(prompt)
        current = set(signatures.values())
        self._cache = {key: entry for key, entry in self._cache.items() if key in current}
        cached = [node_id for node_id in prompt if signatures[node_id] in self._cache]
        self._message(
            run, "execution_cached", {"nodes": cached, "prompt_id": prompt_id}, broadcast=False
        )
        executed: list[str] = []
        node_id = ""
        current_inputs: dict[str, Any] = {}
        try:
            for node_id in self._plan(prompt, run.item[4], set(cached)):
                node = prompt[node_id]
                spec = self.nodes[node["class_type"]]
                entry = self._cache.get(signatures[node_id]) if node_id in cached else None
                if entry is not None:
                    if client_id is not None:
                        message = {
                            "node": node_id,
                            "display_node": node_id,
                            "output": entry.ui,
                            "prompt_id": prompt_id,
                        }
                        self._publish("executed", message, client_id)
                    self._progress_state(run, node_id, 1, 1, "finished")
                    continue
                current_inputs = {}
                self._progress_state(run, node_id, 0, 1, "running")
                if client_id is not None:
                    self._last_node_id = node_id
                    message = {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}
                    self._publish("executing", message, client_id)
                await asyncio.sleep(0)
                self._check_interrupt(node_id)
                inputs = {
                    name: (
                        self._cache[signatures[value[0]]].outputs[value[1]]
                        if _is_link(value)
                        else value
                    )
                    for name, value in node["inputs"].items()
                }
                current_inputs = {name: [_format_value(v)] for name, v in inputs.items()}
                failure = self._take_failure(node_id, node["class_type"], None)
                if failure is not None:
                    raise _NodeError(node_id, failure.message, failure.exception_type)
                if self.node_delay and not spec.sampler:
                    await asyncio.sleep(self.node_delay)
                call = NodeCall(self, run, node_id, node["class_type"], inputs, signatures[node_id])
                try:
                    outputs, ui = await spec.run(call)
                except (_NodeError, _Interrupted):
                    raise
                except Exception as exc:  # a bug or a scripted OSError: report it like ComfyUI
                    raise _NodeError(node_id, str(exc), type(exc).__qualname__) from exc
                self._cache[signatures[node_id]] = _CacheEntry(outputs, ui)
                if ui is not None and client_id is not None:
                    message = {
                        "node": node_id,
                        "display_node": node_id,
                        "output": ui,
                        "prompt_id": prompt_id,
                    }
                    self._publish("executed", message, client_id)
                self._progress_state(run, node_id, 1, 1, "finished")
                executed.append(node_id)
        except _Interrupted as exc:
            data = {
                "prompt_id": prompt_id,
                "node_id": exc.node_id,
                "node_type": prompt[exc.node_id]["class_type"],
                "executed": executed,
            }
            self._message(run, "execution_interrupted", data, broadcast=True)
            return False
        except _NodeError as exc:
            failed = exc.node_id or node_id
            data = {
                "prompt_id": prompt_id,
                "node_id": failed,
                "node_type": prompt[failed]["class_type"],
                "executed": executed,
                "exception_message": f"{exc.message}\n",  # "{ex}\n{tips}" with empty tips
                "exception_type": exc.exception_type,
                "traceback": [
                    '  File "/ComfyUI/execution.py", line 496, in execute\n'
                    "    output_data, output_ui, has_subgraph, has_pending_tasks = await "
                    "get_output_data(prompt_id, unique_id, obj, input_data_all, ...)\n",
                    '  File "/ComfyUI/execution.py", line 315, in get_output_data\n'
                    "    return_values = await _async_map_node_over_list(...)\n",
                ],
                "current_inputs": current_inputs,
                "current_outputs": cached,
            }
            self._message(run, "execution_error", data, broadcast=False)
            return False
        finally:
            self._last_node_id = None
        self._message(run, "execution_success", {"prompt_id": prompt_id}, broadcast=False)
        return True

    def _record_history(self, run: _Run, success: bool) -> None:
        signatures = self._signatures(run.prompt)
        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id in run.prompt:
            entry = self._cache.get(signatures[node_id])
            if entry is not None and entry.ui is not None:
                outputs[node_id] = entry.ui
                meta[node_id] = {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
        if len(self._history) > self.max_history:
            self._history.pop(next(iter(self._history)))
        self._history[run.prompt_id] = {
            "prompt": run.item,
            "outputs": outputs,
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": run.messages,
            },
            "meta": meta,
        }


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8188,
    step_delay: float = 0.1,
    root: Path | None = None,
    fail_nodes: Iterable[tuple[str, str | None]] = (),
    announce: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a fake ComfyUI until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None).

    ``fail_nodes``: (node id or class_type, message or None) pairs; each such node fails
    every time it runs (``fail_node(..., times=None)``).
    """
    import signal

    done = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if stop is None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, done.set)
                installed.append(signum)
    try:
        async with FakeComfyUI(host=host, port=port, step_delay=step_delay, root=root) as comfy:
            for node, message in fail_nodes:
                if message:
                    comfy.fail_node(node, message, times=None)
                else:
                    comfy.fail_node(node, times=None)
            if announce is not None:
                announce(f"fake ComfyUI at {comfy.url} (Ctrl-C stops it)")
            await done.wait()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
