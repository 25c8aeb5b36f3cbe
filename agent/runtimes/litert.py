"""LiteRT plugin: `ai_edge_litert`, falling back to `tflite_runtime` when only that is installed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ModelLoadError, RuntimeUnavailable
from agent.runtimes.base import Array, TensorInfo


class LiteRTConfig(BaseModel):
    """Options for the LiteRT runtime."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["litert"] = "litert"
    threads: int = Field(default=1, ge=1, le=64)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError as e:
        raise RuntimeUnavailable("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)") from e


def _signature_names(interp: Any) -> dict[int, str]:
    """Tensor index -> signature name (`image`, `output_0`), as the converter names manifest tensors."""
    try:
        signatures = interp.get_signature_list()
        if len(signatures) != 1:
            return {}
        runner = interp.get_signature_runner(next(iter(signatures)))
        names = {int(d["index"]): n for n, d in runner.get_input_details().items()}
        names.update({int(d["index"]): n for n, d in runner.get_output_details().items()})
        return names
    except (ValueError, RuntimeError, AttributeError):  # models without signatures
        return {}


def _info(detail: dict[str, Any], names: dict[int, str]) -> TensorInfo:
    sig = detail.get("shape_signature")
    dims = sig if sig is not None and len(sig) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    scale, zero = detail.get("quantization", (0.0, 0))
    quantized = float(scale) > 0 and np.dtype(detail["dtype"]).kind in "iu"
    return TensorInfo(
        name=names.get(int(detail["index"]), str(detail["name"])),
        shape=shape,
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale) if quantized else None,
        zero_point=int(zero) if quantized else None,
    )


class LiteRTRuntime:
    """A TFLite flatbuffer in a LiteRT Interpreter; resizes on a new batch size; one call at a time."""

    def __init__(self, path: Path, config: LiteRTConfig) -> None:
        interpreter_cls = _interpreter_class()
        try:
            self._interp = interpreter_cls(model_path=str(path), num_threads=config.threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as e:
            hint = ""
            if interpreter_cls.__module__.startswith("tflite_runtime") and "find op for builtin opcode" in str(e):
                hint = " with tflite-runtime, whose last release predates this op version (pip install ai-edge-litert)"
            raise ModelLoadError(f"{path.name}: LiteRT cannot load it{hint}: {e}") from e
        self._lock = threading.Lock()
        in_details = self._interp.get_input_details()
        out_details = self._interp.get_output_details()
        names = _signature_names(self._interp)
        self.inputs = [_info(d, names) for d in in_details]
        self.outputs = [_info(d, names) for d in out_details]
        self._in_index = {t.name: int(d["index"]) for t, d in zip(self.inputs, in_details, strict=True)}
        self._out_index = [(t.name, int(d["index"])) for t, d in zip(self.outputs, out_details, strict=True)]
        self._shapes = {t.name: tuple(int(x) for x in d["shape"]) for t, d in zip(self.inputs, in_details, strict=True)}

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Set inputs (resizing dynamic dims when the shape changed), invoke, copy outputs out."""
        with self._lock:
            resized = False
            for name, value in feeds.items():
                if value.shape != self._shapes[name]:
                    self._interp.resize_tensor_input(self._in_index[name], list(value.shape), strict=False)
                    self._shapes[name] = value.shape
                    resized = True
            if resized:
                try:
                    self._interp.allocate_tensors()
                except (ValueError, RuntimeError) as e:
                    raise ModelLoadError(f"LiteRT cannot resize to these input shapes: {e}") from e
            for name, value in feeds.items():
                self._interp.set_tensor(self._in_index[name], value)
            self._interp.invoke()
            return {name: self._interp.get_tensor(index) for name, index in self._out_index}
