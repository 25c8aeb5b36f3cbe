"""Run an artifact in its real runtime (LiteRT, onnxruntime) and measure it against the float reference."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from converter.data import Dataset
from converter.errors import ConversionFailed
from protocol.manifest import ModelFormat, QuantParams, TensorSpec

DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.int8): "int8",
          np.dtype(np.uint8): "uint8", np.dtype(np.int16): "int16", np.dtype(np.int32): "int32",
          np.dtype(np.int64): "int64", np.dtype(np.bool_): "bool"}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


class ArtifactRunner(Protocol):
    """Float in, float out: quantises and dequantises integer I/O itself."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ram_estimate_bytes: int
    activation_bytes: int

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def _quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return x.astype(spec.dtype, copy=False)
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.round(x / spec.quantization.scale) + spec.quantization.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def _dequantize(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.quantization is None:
        return y.astype(np.float32, copy=False)
    return ((y.astype(np.float32) - spec.quantization.zero_point) * spec.quantization.scale).astype(np.float32)


class LiteRTRunner:
    """`ai_edge_litert` interpreter; names from the serving signature, order from the interpreter."""

    def __init__(self, model: bytes, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from converter.sources import silenced

        try:
            with silenced():
                self._it = Interpreter(model_content=model, num_threads=threads)
                self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ConversionFailed(f"LiteRT cannot load the artifact: {e}") from e
        names = self._signature_names()
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        self.inputs = [self._spec(d, names) for d in self._in]
        self.outputs = [self._spec(d, names) for d in self._out]
        total = sum(int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize for t in self._it.get_tensor_details())
        self.activation_bytes = total
        self.ram_estimate_bytes = total + len(model)
        self._batch = 1

    def _signature_names(self) -> dict[int, str]:
        sigs = self._it.get_signature_list()
        if len(sigs) != 1:
            return {}
        runner = self._it.get_signature_runner(next(iter(sigs)))
        found = {d["index"]: name for name, d in runner.get_input_details().items()}
        found.update({d["index"]: name for name, d in runner.get_output_details().items()})
        return found

    @staticmethod
    def _spec(d: dict[str, Any], names: dict[int, str]) -> TensorSpec:
        scale, zp = d["quantization"]
        dtype = DTYPES[np.dtype(d["dtype"])]
        quant = QuantParams(scale=float(scale), zero_point=int(zp)) if scale and dtype in ("int8", "uint8") else None
        shape = [None if s < 0 else int(s) for s in d.get("shape_signature", d["shape"])]
        return TensorSpec(name=names.get(d["index"], d["name"]), shape=shape, dtype=dtype, quantization=quant)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        if n != self._batch:
            for d in self._in:
                self._it.resize_tensor_input(d["index"], [n, *d["shape"][1:]])
            self._it.allocate_tensors()
            self._batch = n
        for d, spec in zip(self._in, self.inputs, strict=True):
            self._it.set_tensor(d["index"], _quantize(inputs[spec.name], spec))
        self._it.invoke()
        pairs = zip(self._out, self.outputs, strict=True)
        return {s.name: _dequantize(self._it.get_tensor(d["index"]), s) for d, s in pairs}


class OnnxRunner:
    """onnxruntime CPU session with the profile's intra-op thread count."""

    def __init__(self, model: bytes, threads: int) -> None:
        import onnx
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self._sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ConversionFailed(f"onnxruntime cannot load the artifact: {e}") from e
        self.inputs = [self._spec(i) for i in self._sess.get_inputs()]
        self.outputs = [self._spec(o) for o in self._sess.get_outputs()]
        self._out_names = [o.name for o in self.outputs]
        inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
        act = 0
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
            act += math.prod(dims) * 4
        self.activation_bytes = act
        self.ram_estimate_bytes = act + len(model)

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) and d > 0 else None for d in arg.shape]
        return TensorSpec(name=arg.name, shape=shape, dtype=ORT_DTYPES.get(arg.type, "float32"))  # type: ignore[arg-type]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {s.name: inputs[s.name].astype(s.dtype, copy=False) for s in self.inputs}
        outs = self._sess.run(self._out_names, feed)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self._out_names, outs, strict=True)}


def make_runner(fmt: ModelFormat, model: bytes, threads: int) -> ArtifactRunner:
    threads = max(1, min(threads, os.cpu_count() or 1))
    return LiteRTRunner(model, threads) if fmt is ModelFormat.TFLITE else OnnxRunner(model, threads)


def rename_inputs(data: dict[str, np.ndarray], runner: ArtifactRunner) -> dict[str, np.ndarray]:
    """Map the source model's input names onto the artifact's (same order)."""
    if set(data) == {s.name for s in runner.inputs}:
        return data
    return {s.name: v for s, v in zip(runner.inputs, data.values(), strict=True)}


def run_batched(runner: ArtifactRunner, data: dict[str, np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    """Run a whole dataset in chunks; outputs concatenated per name."""
    n = len(next(iter(data.values())))
    parts: list[dict[str, np.ndarray]] = []
    for i in range(0, n, batch):
        parts.append(runner.run({k: v[i : i + batch] for k, v in data.items()}))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    runs: int


def measure_latency(runner: ArtifactRunner, sample: dict[str, np.ndarray], runs: int, warmup: int = 20) -> Latency:
    """Single-sample latency including I/O (quantise, invoke, dequantise): median and p95 of `runs`."""
    one = {k: v[:1] for k, v in sample.items()}
    for _ in range(warmup):
        runner.run(one)
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        runner.run(one)
        times[i] = time.perf_counter_ns() - t0
    return Latency(float(np.median(times)) / 1e6, float(np.percentile(times, 95)) / 1e6, runs)


@dataclass(frozen=True)
class Quality:
    top1_agreement: float | None
    accuracy: float | None
    max_abs_error: float


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], labels: np.ndarray | None,
            classifier: bool) -> Quality:
    """Artifact outputs vs float reference outputs (matched by order) and labels."""
    outs, refs = list(outputs.values()), list(reference.values())
    err = max(float(np.max(np.abs(o.reshape(r.shape) - r))) for o, r in zip(outs, refs, strict=True))
    if not classifier:
        return Quality(None, None, err)
    pred = outs[0].reshape(len(outs[0]), -1).argmax(axis=1)
    ref = refs[0].reshape(len(refs[0]), -1).argmax(axis=1)
    acc = float(np.mean(pred == labels)) if labels is not None else None
    return Quality(float(np.mean(pred == ref)), acc, err)


def reference_accuracy(reference: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    first = next(iter(reference.values()))
    return float(np.mean(first.reshape(len(first), -1).argmax(axis=1) == labels))


__all__ = ["Dataset", "Latency", "Quality", "compare", "make_runner", "measure_latency", "run_batched"]
