"""Runtime plugins: an explicit registry from key to class, chosen by the artifact's format."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from agent.errors import ModelLoadError, RuntimeUnavailable
from agent.runtimes.base import Array, ModelRuntime, TensorInfo
from agent.runtimes.litert import LiteRTConfig, LiteRTRuntime
from agent.runtimes.onnxruntime import OnnxRuntime, OnnxRuntimeConfig

RuntimeConfig = LiteRTConfig | OnnxRuntimeConfig

RUNTIMES: dict[str, tuple[type[LiteRTRuntime] | type[OnnxRuntime], type[RuntimeConfig]]] = {
    "litert": (LiteRTRuntime, LiteRTConfig),
    "onnxruntime": (OnnxRuntime, OnnxRuntimeConfig),
}

# Artifact format (manifest `format` or file suffix) -> runtime key.
FORMAT_RUNTIME: dict[str, str] = {"tflite": "litert", "onnx": "onnxruntime"}


# Runtime key -> the modules that provide it (any one will do) and how to install it.
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "litert": ("ai_edge_litert", "tflite_runtime"),
    "onnxruntime": ("onnxruntime",),
}
INSTALL_HINT: dict[str, str] = {
    "litert": "pip install 'edgefleet[agent]' (ai-edge-litert; or tflite-runtime with numpy<2)",
    "onnxruntime": "pip install 'edgefleet[agent-onnx]'",
}


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def runtime_installed(key: str) -> bool:
    """Is one of the runtime's modules installed? (Looks, does not import: importing costs memory.)"""
    return any(_importable(m) for m in RUNTIME_MODULES[key])


def installed_runtimes() -> dict[str, bool]:
    return {key: runtime_installed(key) for key in RUNTIMES}


def runtime_for_format(fmt: str) -> str:
    """Runtime key for a model format; RuntimeUnavailable for an unknown one."""
    try:
        return FORMAT_RUNTIME[fmt]
    except KeyError:
        raise RuntimeUnavailable(f"no runtime for format {fmt!r}; known: {', '.join(FORMAT_RUNTIME)}") from None


def load_runtime(
    path: Path, fmt: str, threads: int = 1, signature: str | None = None, edgetpu: bool = False
) -> ModelRuntime:
    """Load `path` in the runtime its format needs, with `threads` intra-op threads (and a TFLite signature,
    and Coral's Edge TPU delegate for an artifact compiled for it)."""
    key = runtime_for_format(fmt)
    cls, config_cls = RUNTIMES[key]
    if key == "litert":
        config: RuntimeConfig = LiteRTConfig(threads=threads, signature=signature, edgetpu=edgetpu)
    elif signature is not None:
        raise ModelLoadError(f"{path.name}: an {fmt} model has no signatures to choose (--signature is for TFLite)")
    else:
        config = config_cls(threads=threads)
    runtime: ModelRuntime = cls(path, config)  # type: ignore[arg-type]
    return runtime


def format_of(path: Path) -> str:
    """Model format from a file suffix (`.tflite` or `.onnx`)."""
    return path.suffix.lower().lstrip(".")


__all__ = [
    "RUNTIMES",
    "Array",
    "ModelRuntime",
    "TensorInfo",
    "format_of",
    "installed_runtimes",
    "load_runtime",
    "runtime_for_format",
    "runtime_installed",
]
