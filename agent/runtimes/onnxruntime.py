"""onnxruntime plugin: one InferenceSession on the CPU provider, intra-op threads from the profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ModelLoadError, RuntimeUnavailable
from agent.runtimes.base import Array, TensorInfo

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class OnnxRuntimeConfig(BaseModel):
    """Options for the onnxruntime runtime."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["onnxruntime"] = "onnxruntime"
    threads: int = Field(default=1, ge=1, le=64)


def _info(arg: Any) -> TensorInfo:
    if arg.type not in _ORT_DTYPES:
        raise ModelLoadError(f"tensor {arg.name!r}: unsupported ONNX type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    # Symbolic dims by name; "?" and "None" are what some exporters write for "unknown", not a name to agree on.
    names = tuple(d if isinstance(d, str) and d not in ("", "?", "None") else None for d in arg.shape)
    return TensorInfo(name=arg.name, shape=shape, dtype=np.dtype(_ORT_DTYPES[arg.type]), dim_names=names)


class OnnxRuntime:
    """An ONNX model in an onnxruntime InferenceSession (thread-safe `run`)."""

    def __init__(self, path: Path, config: OnnxRuntimeConfig) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeUnavailable("onnxruntime is not installed: pip install onnxruntime") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped exceptions on bad files
            raise ModelLoadError(f"{path.name}: onnxruntime cannot load it: {e}") from e
        self.inputs = [_info(a) for a in self._session.get_inputs()]
        self.outputs = [_info(a) for a in self._session.get_outputs()]
        self._out_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Run the session; returns outputs by name."""
        try:
            values = self._session.run(self._out_names, feeds)
        except Exception as e:  # invalid shapes surface as onnxruntime's own exception types
            raise ModelLoadError(f"onnxruntime refused the inputs: {e}") from e
        names = self._out_names
        if len(names) == 1:  # most models; a dict display costs a fifth of dict(zip(...)) per call
            return {names[0]: values[0]}
        return dict(zip(names, values, strict=True))
