"""In-process Python API: load an artifact (with or without its manifest) and predict dict-of-arrays."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import InputError
from agent.runtimes import Array, ModelRuntime, TensorInfo, format_of, load_runtime
from protocol.manifest import Manifest, TensorSpec, batch_first
from protocol.signatures import plain_tensor_name


@dataclass(frozen=True)
class _Binding:
    """How one public tensor maps onto a runtime tensor, with its quantisation."""

    name: str
    runtime_name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype[np.generic]
    scale: float | None
    zero_point: int | None
    aliases: tuple[str, ...] = ()

    @cached_property
    def batch_first(self) -> bool:
        return batch_first(self.shape)

    @cached_property
    def sample_size(self) -> int | None:
        """Elements of one sample of a batch-first tensor (None when a dim past the first is dynamic)."""
        dims = self.shape[1:]
        return None if any(d is None for d in dims) else math.prod(d for d in dims if d is not None)

    @cached_property
    def whole_size(self) -> int | None:
        """Elements of the whole tensor when every dim is fixed."""
        return None if any(d is None for d in self.shape) else math.prod(d for d in self.shape if d is not None)


def _bind(specs: list[TensorSpec] | None, infos: list[TensorInfo], kind: str) -> list[_Binding]:
    if specs is None:
        return [_Binding(i.name, i.name, i.shape, i.dtype, i.scale, i.zero_point, i.aliases) for i in infos]
    if len(specs) != len(infos):
        raise InputError(f"manifest lists {len(specs)} {kind}s but the model has {len(infos)}")
    matched = _match(specs, infos)
    out = []
    for spec, info in zip(specs, matched, strict=True):
        quant = spec.quantization
        scale = quant.scale if quant else info.scale
        zero = quant.zero_point if quant else info.zero_point
        aliases = tuple(a for a in dict.fromkeys((info.name, *info.aliases)) if a != spec.name)
        out.append(_Binding(spec.name, info.name, tuple(spec.shape), info.dtype, scale, zero, aliases))
    return out


def _match(specs: list[TensorSpec], infos: list[TensorInfo]) -> list[TensorInfo]:
    """Runtime tensors in manifest order: each by its runtime name (the manifest's `runtime_name`, else its
    name, among the runtime's names and aliases), else by signature name, else by position (old manifests)."""
    lookup = {n: i for i in infos for n in (i.name, *i.aliases)}
    keys = [s.runtime_name or s.name for s in specs]
    if all(k in lookup for k in keys) and len({lookup[k].name for k in keys}) == len(keys):
        return [lookup[k] for k in keys]
    by_plain = {plain_tensor_name(i.name): i for i in infos}
    if len(by_plain) == len(infos) and all(s.name in by_plain for s in specs):
        return [by_plain[s.name] for s in specs]
    return infos


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _quantize(value: Array, b: _Binding) -> Array:
    assert b.scale is not None and b.zero_point is not None
    info = np.iinfo(b.dtype)  # type: ignore[type-var]
    q = np.round(value.astype(np.float32) / b.scale) + b.zero_point
    clipped: Array = np.clip(q, info.min, info.max).astype(b.dtype)
    return clipped


class LoadedModel:
    """A model ready to predict: validates, quantises and batches inputs; dequantises outputs.

    Inputs are named as the manifest names them (the source model's names) or, where the artifact
    calls a tensor otherwise, by the artifact's name too. Batch-first tensors (first dim dynamic or 1)
    take any number of samples and accept one flat row per sample; other tensors (0-d scalars,
    recurrent state) are given whole.
    """

    def __init__(self, runtime: ModelRuntime, manifest: Manifest | None = None) -> None:
        self.runtime = runtime
        self.manifest = manifest
        self.inputs = _bind(manifest.inputs if manifest else None, runtime.inputs, "input")
        self.outputs = _bind(manifest.outputs if manifest else None, runtime.outputs, "output")
        # Precomputed for the per-call path: lookups by name (and alias), the names as a set, the fixed dims
        # after the batch of batch-first tensors.
        self._by_name = {b.name: b for b in self.inputs}
        # Every key an input answers to: its public name, else one of its aliases (a public name wins a clash).
        self._by_key = {**{a: b for b in self.inputs for a in b.aliases}, **self._by_name}
        self._names = frozenset(self._by_name)
        self._fixed = {
            b.name: tuple(b.shape[1:]) if b.batch_first and None not in b.shape[1:] else None for b in self.inputs
        }
        # Runtime names of the inputs with a dynamic batch: they must agree on it.
        self._batched = [b.runtime_name for b in self.inputs if b.shape and b.shape[0] is None]
        # A model built for batch 1 (litert-torch exports a fixed batch): a batch of rows runs one row per call.
        rows = [b for b in self.inputs if b.batch_first]
        self._row_by_row = bool(rows) and not self._batched and all(b.shape[0] == 1 for b in rows)
        # Dynamic dims the model names (ONNX `batch`, `sequence`): every input sharing a name must agree on it.
        named: dict[str, list[tuple[str, int]]] = {}
        by_runtime = {i.name: i for i in runtime.inputs}
        for b in self.inputs:
            for axis, dim in enumerate(by_runtime[b.runtime_name].dim_names):
                if dim is not None and axis < len(b.shape) and b.shape[axis] is None:
                    named.setdefault(dim, []).append((b.runtime_name, axis))
        self._named_dims = {k: v for k, v in named.items() if len(v) > 1}
        self._public = {b.runtime_name: b.name for b in self.inputs}
        # The per-call fast path: an input already an array of the tensor's dtype, rank and fixed dims goes to the
        # runtime as it is (anything else through `coerce`); outputs neither renamed nor dequantised are the
        # runtime's own dict.
        self._ready = tuple(
            (b.name, b.runtime_name, b.dtype, len(b.shape), 1 if b.batch_first else 0,
             tuple(b.shape[1:] if b.batch_first else b.shape))
            for b in self.inputs
        )  # fmt: skip
        self._agree = len(self._batched) > 1 or bool(self._named_dims)
        self._raw_out = all(b.name == b.runtime_name and b.scale is None for b in self.outputs)

    @classmethod
    def from_file(
        cls, path: Path, threads: int = 1, manifest: Manifest | None = None, signature: str | None = None
    ) -> LoadedModel:
        """Load any .tflite or .onnx file; the manifest, when given, names tensors and quantisation."""
        fmt = manifest.format.value if manifest else format_of(path)
        if signature is None and manifest is not None:
            signature = manifest.signature
        edgetpu = manifest is not None and manifest.report.chosen.compiled_for == "edgetpu"
        return cls(load_runtime(path, fmt, threads, signature, edgetpu), manifest)

    def binding(self, name: str) -> _Binding:
        """The input a key names (its public name or an alias); InputError naming the inputs otherwise."""
        b = self._by_key.get(name)
        if b is None:
            raise InputError(f"unknown input {name!r}; the model takes {', '.join(x.name for x in self.inputs)}")
        return b

    def output(self, name: str) -> _Binding:
        """The output of that public name."""
        return next(b for b in self.outputs if b.name == name)

    def resolve(self, inputs: Mapping[str, Any]) -> Mapping[str, Any]:
        """Inputs keyed by their public names: every input given once, nothing unknown."""
        if inputs.keys() == self._names:
            return inputs
        out: dict[str, Any] = {}
        unknown = []
        for key, value in inputs.items():
            b = self._by_key.get(key)
            if b is None:
                unknown.append(str(key))
            elif b.name in out:
                raise InputError(f"input {b.name!r} given twice (as {b.name!r} or an alias and as {key!r})")
            else:
                out[b.name] = value
        missing = [b.name for b in self.inputs if b.name not in out]
        if unknown:  # a misspelt name shows as unknown (naming what the model takes), not only as a missing one
            names = ", ".join(b.name for b in self.inputs)
            lacking = f" (missing: {', '.join(missing)})" if missing else ""
            raise InputError(f"unknown input(s): {', '.join(unknown)}; the model takes {names}{lacking}")
        if missing:
            raise InputError(f"missing input(s): {', '.join(missing)}")
        return out

    def coerce(self, name: str, raw: Any) -> Array:
        """One input as the runtime wants it: shape checked, flattened rows reshaped, (de)quantised."""
        b = self.binding(name)
        name = b.name
        try:
            value = np.asarray(raw)
        except (ValueError, TypeError) as e:
            raise InputError(f"input {name!r}: not a numeric array: {e}") from e
        if value.dtype.kind not in "biuf":
            raise InputError(f"input {name!r}: dtype {value.dtype} is not numeric")
        if value.ndim != len(b.shape):
            value = _reshaped(value, b)
        fixed = self._fixed[name]
        if fixed is None or value.shape[1:] != fixed:  # check each fixed dim (the first is free when batch-first)
            for axis, (got, want) in enumerate(zip(value.shape, b.shape, strict=True)):
                if want is not None and got != want and not (axis == 0 and b.batch_first):
                    raise InputError(f"input {name!r}: dim {axis} is {got}, expected {want} (shape {_fmt(b.shape)})")
        if b.batch_first and value.shape[0] == 0:
            raise InputError(f"input {name!r}: empty batch")
        if value.dtype == b.dtype:
            return value
        return _converted(value, b)

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, Array]:
        """Run one batch: inputs by name (arrays or nested lists), outputs by name (dequantised when quantised)."""
        if inputs.keys() != self._names:
            inputs = self.resolve(inputs)
        feeds: dict[str, Array] = {}
        for name, runtime_name, dtype, ndim, skip, dims in self._ready:
            value = inputs[name]
            if (type(value) is np.ndarray and value.dtype == dtype and value.ndim == ndim
                    and value.shape[skip:] == dims and (not skip or value.shape[0])):  # fmt: skip
                feeds[runtime_name] = value
            else:
                feeds[runtime_name] = self.coerce(name, value)
        if self._agree:
            self._check_agreement(feeds)
        raw = self._run_rows(feeds) if self._row_by_row else self.runtime.run(feeds)
        if self._raw_out:
            return raw
        out: dict[str, Array] = {}
        for b in self.outputs:
            value = raw[b.runtime_name]
            if b.scale is not None and b.zero_point is not None:
                value = ((value.astype(np.float32) - b.zero_point) * b.scale).astype(np.float32)
            out[b.name] = value
        return out

    def _check_agreement(self, feeds: dict[str, Array]) -> None:
        """Inputs with a dynamic batch share its size; inputs sharing a named dynamic dim agree on it."""
        if len(self._batched) > 1 and len({feeds[n].shape[0] for n in self._batched}) > 1:
            raise InputError("inputs have different batch sizes")
        for dim, uses in self._named_dims.items():
            sizes = {(self._public[t], axis): feeds[t].shape[axis] for t, axis in uses}
            if len(set(sizes.values())) > 1:
                said = ", ".join(f"{n!r} dim {axis} is {size}" for (n, axis), size in sizes.items())
                raise InputError(f"inputs disagree on the model's dim {dim!r}: {said}")

    def _run_rows(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Several rows through a batch-1 model: one call per row, batch-first outputs joined row after row."""
        rows = {b.runtime_name for b in self.inputs if b.batch_first}
        n = max(feeds[r].shape[0] for r in rows)
        if n == 1:
            return self.runtime.run(feeds)
        if len({feeds[r].shape[0] for r in rows}) > 1:
            raise InputError("inputs have different batch sizes")
        calls = [self.runtime.run({k: v[i : i + 1] if k in rows else v for k, v in feeds.items()}) for i in range(n)]
        joined = {b.runtime_name for b in self.outputs if b.batch_first}
        return {k: (np.concatenate if k in joined else np.stack)([c[k] for c in calls]) for k in calls[0]}

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


def _reshaped(value: Array, b: _Binding) -> Array:
    """A value of another rank made to fit: a scalar for a one-element tensor, flat rows of a batch-first
    tensor, the flat values of a whole one."""
    if value.size == 1 and b.whole_size == 1:
        return value.reshape(tuple(1 if d is None else d for d in b.shape))
    if b.batch_first and value.ndim <= 1 and b.sample_size and value.size and value.size % b.sample_size == 0:
        return value.reshape((-1, *(d for d in b.shape[1:] if d is not None)))
    if not b.batch_first and b.whole_size is not None and value.size == b.whole_size:
        return value.reshape(tuple(d for d in b.shape if d is not None))
    raise InputError(f"input {b.name!r}: shape {list(value.shape)} does not fit {_fmt(b.shape)}")


def _converted(value: Array, b: _Binding) -> Array:
    """A value of another dtype as the tensor's dtype, refusing what the cast would change (wrap, round, overflow)."""
    name = b.name
    if b.scale is not None and value.dtype.kind == "f":
        if not np.isfinite(value).all():
            raise InputError(f"input {name!r}: NaN or inf")
        if value.dtype.itemsize > 4 and value.size and np.abs(value).max() > FLOAT32_MAX:
            # Quantizing goes through float32 (as the converter's calibration did): 1e39 would become inf.
            raise InputError(f"input {name!r}: values outside float32 range")
        return _quantize(value, b)
    # Whole numbers given as floats (JSON, CSV) are taken as such; a fraction or NaN is refused.
    if b.dtype.kind in "iub" and value.dtype.kind == "f" and not (
        np.isfinite(value).all() and np.array_equal(value, np.trunc(value))
    ):
        raise InputError(f"input {name!r}: float values for integer tensor ({b.dtype})")
    if b.dtype.kind == "b":
        if value.size and not np.isin(value, (0, 1)).all():
            raise InputError(f"input {name!r}: values other than 0 and 1 for a bool tensor")
        return value.astype(np.bool_)
    if b.dtype.kind in "iu" and value.dtype.kind in "iubf":
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


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
