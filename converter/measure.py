"""Run an artifact in its real runtime (LiteRT, onnxruntime) and measure it against the float reference.

Runners take and give tensors under the source model's names: a route that names a tensor otherwise (a
TFLite signature's `output_0`, onnx2tf's names) passes the map, and the specs keep the artifact's own name
as `runtime_name`, so the manifest tells the agent how to map them back.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from converter.data import Dataset, Feed, per_sample, run_all
from converter.errors import ConversionFailed
from converter.sources.base import first_line
from protocol.manifest import ModelFormat, QuantParams, TensorSpec
from protocol.signatures import SignatureChoiceError, choose_signature

DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.float64): "float64",
          np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16",
          np.dtype(np.int32): "int32", np.dtype(np.int64): "int64", np.dtype(np.bool_): "bool"}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32",
              "tensor(int64)": "int64", "tensor(bool)": "bool"}


class ArtifactRunner(Protocol):
    """Source-named tensors in and out: quantises and dequantises integer I/O itself."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ram_estimate_bytes: int
    activation_bytes: int
    max_batch: int | None

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return np.asarray(x).astype(spec.dtype, copy=False)
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.round(x / spec.quantization.scale) + spec.quantization.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def _dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return y.astype(np.float32, copy=False) if y.dtype.kind == "f" else y
    return ((y.astype(np.float32) - spec.quantization.zero_point) * spec.quantization.scale).astype(np.float32)


def _named(spec: TensorSpec, names: Mapping[str, str]) -> TensorSpec:
    """The spec under the source's name, keeping the artifact's as `runtime_name` when they differ."""
    public = names.get(spec.name, spec.name)
    return spec.model_copy(update={"name": public, "runtime_name": spec.name if public != spec.name else None})


def _batch_limit(specs: list[TensorSpec]) -> int | None:
    """1 when an input is not batch-first or its batch is fixed at 1 (a model built for batch 1)."""
    return 1 if any(not s.batch_first or s.shape[0] == 1 for s in specs) else None


class LiteRTRunner:
    """`ai_edge_litert` interpreter; tensors named by the chosen signature's keys, order from the interpreter.

    A signature on another subgraph than the primary one runs through its SignatureRunner.
    """

    def __init__(self, model: bytes, threads: int, names: Mapping[str, str] | None = None,
                 signature: str | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from converter.sources import silenced

        try:
            with silenced():
                self._it = Interpreter(model_content=model, num_threads=threads)
                self._it.allocate_tensors()
            chosen = choose_signature(list(self._it.get_signature_list()), signature)
        except SignatureChoiceError as e:
            raise ConversionFailed(str(e)) from e
        except (ValueError, RuntimeError) as e:
            raise ConversionFailed(f"LiteRT cannot load the artifact: {first_line(e)}") from e
        runner = self._it.get_signature_runner(chosen) if chosen else None
        sig_names: dict[int, str] = {}
        if runner is not None:
            sig_names = {int(d["index"]): k for k, d in runner.get_input_details().items()}
            sig_names.update({int(d["index"]): k for k, d in runner.get_output_details().items()})
        self._runner = runner if runner is not None and getattr(runner, "_subgraph_index", 0) != 0 else None
        if self._runner is not None:
            self._in = list(self._runner.get_input_details().values())
            self._out = list(self._runner.get_output_details().values())
        else:
            self._in = self._it.get_input_details()
            self._out = self._it.get_output_details()
        names = names or {}
        self.inputs = [_named(self._spec(d, sig_names), names) for d in self._in]
        self.outputs = [_named(self._spec(d, sig_names), names) for d in self._out]
        total = 0
        for t in self._it.get_tensor_details():
            dtype = np.dtype(t["dtype"]) if np.dtype(t["dtype"]).kind in "biufc" else np.dtype(np.int64)
            total += int(np.prod(t["shape"])) * dtype.itemsize
        self.activation_bytes = total
        self.ram_estimate_bytes = total + len(model)
        self.max_batch = _batch_limit(self.inputs)
        self._shapes = {int(d["index"]): tuple(int(x) for x in d["shape"]) for d in self._in}
        self._sig_in = [sig_names.get(int(d["index"]), str(d["name"])) for d in self._in]
        self._sig_out = [sig_names.get(int(d["index"]), str(d["name"])) for d in self._out]

    @staticmethod
    def _spec(d: dict[str, Any], names: dict[int, str]) -> TensorSpec:
        scale, zp = d["quantization"]
        dtype = DTYPES.get(np.dtype(d["dtype"]))
        if dtype is None:
            raise ConversionFailed(f"tensor {d['name']!r}: dtype {np.dtype(d['dtype'])} is not supported for I/O")
        quant = QuantParams(scale=float(scale), zero_point=int(zp)) if scale and dtype in ("int8", "uint8") else None
        sig = d.get("shape_signature")
        dims = sig if sig is not None and len(sig) else d["shape"]
        shape = [None if s < 0 else int(s) for s in dims]
        return TensorSpec(name=names.get(d["index"], d["name"]), shape=shape, dtype=dtype, quantization=quant)  # type: ignore[arg-type]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = [(d, _quantize(np.asarray(inputs[s.name]), s)) for d, s in zip(self._in, self.inputs, strict=True)]
        if self._runner is not None:
            try:
                out = self._runner(**{k: v for k, (_, v) in zip(self._sig_in, values, strict=True)})
            except (ValueError, RuntimeError) as e:
                raise ConversionFailed(f"LiteRT cannot run the artifact: {first_line(e)}") from e
            pairs = zip(self._sig_out, self.outputs, strict=True)
            return {s.name: _dequantize(np.asarray(out[k]), s) for k, s in pairs}
        resized = False
        for d, value in values:
            if value.shape != self._shapes[int(d["index"])]:
                self._it.resize_tensor_input(d["index"], list(value.shape), strict=False)
                self._shapes[int(d["index"])] = value.shape
                resized = True
        try:
            if resized:
                self._it.allocate_tensors()
            for d, value in values:
                self._it.set_tensor(d["index"], value)
            self._it.invoke()
        except (ValueError, RuntimeError) as e:
            raise ConversionFailed(f"LiteRT cannot run the artifact: {first_line(e)}") from e
        pairs = zip(self._out, self.outputs, strict=True)
        return {s.name: _dequantize(self._it.get_tensor(d["index"]), s) for d, s in pairs}


class OnnxRunner:
    """onnxruntime CPU session with the profile's intra-op thread count."""

    def __init__(self, model: bytes, threads: int, names: Mapping[str, str] | None = None) -> None:
        import onnx
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ConversionFailed(f"onnxruntime cannot load the artifact: {first_line(e)}") from e
        names = names or {}
        self.inputs = [_named(self._spec(i), names) for i in self._sess.get_inputs()]
        self.outputs = [_named(self._spec(o), names) for o in self._sess.get_outputs()]
        self._feeds = [(s.name, s.runtime_name or s.name, s.dtype) for s in self.inputs]
        self._out_names = [s.runtime_name or s.name for s in self.outputs]
        inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
        act = 0
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
            act += math.prod(dims) * 4
        self.activation_bytes = act
        self.ram_estimate_bytes = act + len(model)
        self.max_batch = _batch_limit(self.inputs)

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        dtype = ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise ConversionFailed(f"tensor {arg.name!r}: ONNX type {arg.type} is not supported for I/O")
        shape = [d if isinstance(d, int) and d > 0 else None for d in arg.shape]
        return TensorSpec(name=arg.name, shape=shape, dtype=dtype)  # type: ignore[arg-type]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {runtime: np.asarray(inputs[name]).astype(dtype, copy=False) for name, runtime, dtype in self._feeds}
        try:
            outs = self._sess.run(self._out_names, feed)
        except Exception as e:  # onnxruntime's own exception types
            raise ConversionFailed(f"onnxruntime cannot run the artifact: {first_line(e)}") from e
        return {s.name: _dequantize(np.asarray(o), s) for s, o in zip(self.outputs, outs, strict=True)}


def make_runner(fmt: ModelFormat, model: bytes, threads: int, names: Mapping[str, str] | None = None,
                signature: str | None = None) -> ArtifactRunner:
    threads = max(1, min(threads, os.cpu_count() or 1))
    if fmt is ModelFormat.TFLITE:
        return LiteRTRunner(model, threads, names, signature)
    return OnnxRunner(model, threads, names)


def run_dataset(runner: ArtifactRunner, data: Dataset, batch: int = 64) -> dict[str, np.ndarray]:
    """The artifact over every sample (batched where it can be): outputs by name, samples first."""
    missing = sorted({s.name for s in runner.inputs} - set(data.inputs))
    if missing:
        raise ConversionFailed(f"the artifact's inputs {missing} are not the source model's ({sorted(data.inputs)})")
    return run_all(runner.run, data, batch, max_batch=runner.max_batch)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    runs: int


def measure_latencies(runners: Mapping[str, ArtifactRunner], one: Feed, runs: int,
                      warmup: int = 20) -> dict[str, Latency]:
    """Single-sample latency including I/O (quantise, invoke, dequantise) of each runner: median and p95 of `runs`,
    the runners taken in turn within each round (the first of a round rotating), so a slow or fast stretch of
    the host falls on all of them alike rather than on whichever was measured then."""
    keys = list(runners)
    for key in keys:
        for _ in range(warmup):
            runners[key].run(one)
    times = {key: np.empty(runs) for key in keys}
    for i in range(runs):
        for j in range(len(keys)):
            key = keys[(i + j) % len(keys)]
            t0 = time.perf_counter_ns()
            runners[key].run(one)
            times[key][i] = time.perf_counter_ns() - t0
    return {k: Latency(float(np.median(t)) / 1e6, float(np.percentile(t, 95)) / 1e6, runs) for k, t in times.items()}


@dataclass(frozen=True)
class Quality:
    top1_agreement: float | None
    accuracy: float | None
    max_abs_error: float
    relative_error: float


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], labels: np.ndarray | None,
            classifier: bool) -> Quality:
    """Artifact outputs vs float reference outputs (matched by name, per sample) and labels."""
    n = len(next(iter(reference.values())))
    outs, refs = per_sample(outputs, n), per_sample(reference, n)
    missing = sorted(set(refs) - set(outs))
    if missing:
        raise ConversionFailed(f"the artifact has no output(s) {missing} (it gives {sorted(outs)})")
    err = relative = 0.0
    for name, ref in refs.items():
        got = outs[name]
        if got.shape != ref.shape:
            raise ConversionFailed(
                f"output {name!r}: {got.shape[1]} values per sample, the source gives {ref.shape[1]}"
            )
        if not got.size:
            continue
        worst = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
        span = float(np.max(ref) - np.min(ref)) or float(np.max(np.abs(ref))) or 1.0
        err, relative = max(err, worst), max(relative, worst / span)
    if not classifier:
        return Quality(None, None, err, relative)
    first = next(iter(refs))
    pred, ref_top = outs[first].argmax(axis=1), refs[first].argmax(axis=1)
    acc = float(np.mean(pred == labels)) if labels is not None else None
    return Quality(float(np.mean(pred == ref_top)), acc, err, relative)


def reference_accuracy(reference: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    first = next(iter(reference.values()))
    return float(np.mean(first.reshape(len(first), -1).argmax(axis=1) == labels))


__all__ = ["Dataset", "Latency", "Quality", "compare", "make_runner", "measure_latencies", "run_dataset"]
