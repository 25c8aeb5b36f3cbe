"""In-process Python API: load an artifact (with or without its manifest) and predict dict-of-arrays."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import InputError
from agent.runtimes import Array, ModelRuntime, TensorInfo, format_of, load_runtime
from protocol.manifest import Manifest, TensorSpec


@dataclass(frozen=True)
class _Binding:
    """How one public tensor maps onto a runtime tensor, with its quantisation."""

    name: str
    runtime_name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[np.generic]
    scale: float | None
    zero_point: int | None

    @cached_property
    def sample_size(self) -> int | None:
        dims = self.shape[1:]
        return None if any(d is None for d in dims) else math.prod(d for d in dims if d is not None)


def _bind(specs: list[TensorSpec] | None, infos: list[TensorInfo], kind: str) -> list[_Binding]:
    if specs is None:
        return [_Binding(i.name, i.name, i.shape, i.dtype, i.scale, i.zero_point) for i in infos]
    if len(specs) != len(infos):
        raise InputError(f"manifest lists {len(specs)} {kind}s but the model has {len(infos)}")
    matched = _match(specs, infos)
    out = []
    for spec, info in zip(specs, matched, strict=True):
        quant = spec.quantization
        scale = quant.scale if quant else info.scale
        zero = quant.zero_point if quant else info.zero_point
        out.append(_Binding(spec.name, info.name, tuple(spec.shape), info.dtype, scale, zero))
    return out


def _plain(name: str) -> str:
    """`serving_default_image:0` -> `image`: how TFLite names the tensors of a Keras signature."""
    return re.sub(r":\d+$", "", name).removeprefix("serving_default_")


def _match(specs: list[TensorSpec], infos: list[TensorInfo]) -> list[TensorInfo]:
    """Runtime tensors in manifest order: by exact name, then by signature name, else by position."""
    for key in (lambda n: n, _plain):
        by_name = {key(i.name): i for i in infos}
        if len(by_name) == len(infos) and all(s.name in by_name for s in specs):
            return [by_name[s.name] for s in specs]
    return infos


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _quantize(value: Array, b: _Binding) -> Array:
    assert b.scale is not None and b.zero_point is not None
    info = np.iinfo(b.dtype)  # type: ignore[type-var]
    q = np.round(value.astype(np.float32) / b.scale) + b.zero_point
    clipped: Array = np.clip(q, info.min, info.max).astype(b.dtype)
    return clipped


class LoadedModel:
    """A model ready to predict: validates, quantises and batches inputs; dequantises outputs."""

    def __init__(self, runtime: ModelRuntime, manifest: Manifest | None = None) -> None:
        self.runtime = runtime
        self.manifest = manifest
        self.inputs = _bind(manifest.inputs if manifest else None, runtime.inputs, "input")
        self.outputs = _bind(manifest.outputs if manifest else None, runtime.outputs, "output")
        # Precomputed for the per-call path: lookups by name, the names as a set, the fixed dims after the batch.
        self._by_name = {b.name: b for b in self.inputs}
        self._names = frozenset(self._by_name)
        self._fixed = {b.name: tuple(b.shape[1:]) if None not in b.shape[1:] else None for b in self.inputs}

    @classmethod
    def from_file(cls, path: Path, threads: int = 1, manifest: Manifest | None = None) -> LoadedModel:
        """Load any .tflite or .onnx file; the manifest, when given, names tensors and quantisation."""
        fmt = manifest.format.value if manifest else format_of(path)
        return cls(load_runtime(path, fmt, threads), manifest)

    def coerce(self, name: str, raw: Any) -> Array:
        """One input as the runtime wants it: shape checked, flattened rows reshaped, (de)quantised."""
        b = self._by_name.get(name)
        if b is None:
            raise InputError(f"unknown input {name!r}; the model takes {', '.join(x.name for x in self.inputs)}")
        try:
            value = np.asarray(raw)
        except (ValueError, TypeError) as e:
            raise InputError(f"input {name!r}: not a numeric array: {e}") from e
        if value.dtype.kind not in "biuf":
            raise InputError(f"input {name!r}: dtype {value.dtype} is not numeric")
        if value.ndim != len(b.shape):
            size = b.sample_size
            if value.ndim > 1 or size is None or value.size == 0 or value.size % size:
                raise InputError(f"input {name!r}: shape {list(value.shape)} does not fit {_fmt(b.shape)}")
            value = value.reshape((-1, *(d for d in b.shape[1:] if d is not None)))
        if value.shape[1:] != self._fixed[name]:  # (None: some dim is dynamic, check each)
            for axis, (got, want) in enumerate(zip(value.shape[1:], b.shape[1:], strict=True), start=1):
                if want is not None and got != want:
                    raise InputError(f"input {name!r}: dim {axis} is {got}, expected {want} (shape {_fmt(b.shape)})")
        if value.shape[0] == 0:
            raise InputError(f"input {name!r}: empty batch")
        if value.dtype == b.dtype:
            return value
        if b.scale is not None and value.dtype.kind == "f":
            if not np.isfinite(value).all():
                raise InputError(f"input {name!r}: NaN or inf")
            if value.dtype.itemsize > 4 and value.size and np.abs(value).max() > FLOAT32_MAX:
                # Quantizing goes through float32 (as the converter's calibration did): 1e39 would become inf.
                raise InputError(f"input {name!r}: values outside float32 range")
            return _quantize(value, b)
        if b.dtype.kind in "iu" and value.dtype.kind == "f":
            raise InputError(f"input {name!r}: float values for integer tensor ({b.dtype})")
        if b.dtype.kind in "iu" and value.dtype.kind in "iub":
            # A narrowing cast would wrap around silently: 300 -> 44 in int8.
            info = np.iinfo(b.dtype.type)  # type: ignore[type-var]
            if value.size and (value.min() < info.min or value.max() > info.max):
                raise InputError(f"input {name!r}: values outside {b.dtype} range [{info.min}, {info.max}]")
            return value.astype(b.dtype)
        with np.errstate(over="ignore"):
            cast = value.astype(b.dtype)
        narrowed = b.dtype.kind == "f" and value.dtype.kind == "f" and b.dtype.itemsize < value.dtype.itemsize
        if narrowed and not np.isfinite(cast).all() and np.isfinite(value).all():  # 1e39 -> inf in float32
            raise InputError(f"input {name!r}: values outside {b.dtype} range")
        return cast

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, Array]:
        """Run one batch: inputs by name (arrays or nested lists), outputs by name as float arrays."""
        if inputs.keys() != self._names:
            missing = [b.name for b in self.inputs if b.name not in inputs]
            if missing:
                raise InputError(f"missing input(s): {', '.join(missing)}")
            extra = [k for k in inputs if k not in self._by_name]
            if extra:
                raise InputError(f"unknown input(s): {', '.join(map(str, extra))}")
        feeds = {b.runtime_name: self.coerce(b.name, inputs[b.name]) for b in self.inputs}
        if len(feeds) > 1 and len({v.shape[0] for v in feeds.values()}) > 1:
            raise InputError("inputs have different batch sizes")
        raw = self.runtime.run(feeds)
        out: dict[str, Array] = {}
        for b in self.outputs:
            value = raw[b.runtime_name]
            if b.scale is not None and b.zero_point is not None:
                value = ((value.astype(np.float32) - b.zero_point) * b.scale).astype(np.float32)
            out[b.name] = value
        return out

    def describe(self) -> dict[str, Any]:
        """Inputs and outputs as plain data (for the CLI and the local API)."""

        def one(b: _Binding) -> dict[str, Any]:
            return {
                "name": b.name,
                "shape": list(b.shape),
                "dtype": str(b.dtype),
                "quantized": b.scale is not None,
            }

        return {"inputs": [one(b) for b in self.inputs], "outputs": [one(b) for b in self.outputs]}


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
