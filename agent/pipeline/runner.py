"""Run a pipeline version in process: its stage models and built-in steps, in wiring order, timed per node.

The plan is compiled once (node order, each node's callable and where each of its inputs comes from), so a
call is a loop over prepared tuples: a stage is its `LoadedModel.predict`, a step its numpy callable
(agent/pipeline/steps.py). Stateful steps (`window`) keep their state across calls; a lock serialises calls
of a pipeline that has one, so two callers never interleave frames.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from agent.errors import InputError
from agent.model import LoadedModel
from agent.pipeline.steps import make_step
from protocol.pipeline import INPUTS, PipelineInput, PipelineSpec, StageIO, StageSpec
from protocol.pipeline_steps import TensorType

Fn = Callable[[Mapping[str, Any]], Mapping[str, Any]]
# Called after each stage with (stage name, its inputs, its outputs, its milliseconds): telemetry per stage.
StageHook = Callable[[str, Mapping[str, Any], Mapping[str, Any], float], None]


class PipelineError(InputError):
    """A pipeline call that cannot run: bad pipeline inputs, or a stage or step that refused its inputs."""


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs three times as much, on every call
class PipelineResult:
    """Outputs by the pipeline's output names and each node's wall time in milliseconds (run order)."""

    outputs: dict[str, np.ndarray]
    node_ms: dict[str, float]

    @property
    def total_ms(self) -> float:
        return sum(self.node_ms.values())


class _Node(NamedTuple):
    """A node of the compiled plan; a tuple, so the per-call loop unpacks it instead of looking attributes up."""

    name: str
    is_stage: bool  # a stage (a model), else a built-in step
    fn: Fn
    feeds: tuple[tuple[str, str], ...]  # (the node's input name, key in the value table)
    keeps: tuple[tuple[str, str], ...]  # (its output name, key in the value table): only what is read later
    stateful: bool


def stage_io(model: LoadedModel) -> StageIO:
    """A loaded model's public inputs and outputs as pipeline tensor types (for `check_wiring`): quantised
    inputs take floats (quantised on the way in), quantised outputs come out dequantised as float32."""
    inputs = {b.name: TensorType(shape=list(b.shape), dtype=str(b.dtype)) for b in model.inputs}
    outputs = {
        b.name: TensorType(shape=list(b.shape), dtype="float32" if b.scale is not None else str(b.dtype))
        for b in model.outputs
    }
    quantized = frozenset(b.name for b in model.inputs if b.scale is not None)
    return StageIO(inputs=inputs, outputs=outputs, quantized_inputs=quantized)


class PipelineRunner:
    """One pipeline version, ready to answer: `run(inputs)` -> `PipelineResult`."""

    def __init__(self, spec: PipelineSpec, models: Mapping[str, LoadedModel]) -> None:
        missing = [s.name for s in spec.stages if s.name not in models]
        if missing:
            raise PipelineError(f"pipeline {spec.name!r}: no model loaded for stage {missing[0]!r}")
        self.spec = spec
        self.models = dict(models)
        self._inputs = {i.name: i for i in spec.inputs}
        self._input_keys = {name: f"{INPUTS}.{name}" for name in self._inputs}
        # (name, key, dtype, shape) of inputs with every dim fixed: an array already in that shape and dtype is
        # taken with two comparisons (the common case), anything else goes through `_coerce`.
        self._fixed = tuple(
            (i.name, f"{INPUTS}.{i.name}", np.dtype(i.dtype), tuple(i.shape))
            for i in spec.inputs
            if None not in i.shape
        )
        self._all_fixed = len(self._fixed) == len(spec.inputs)
        read = {r for n in spec.nodes() for r in n.inputs.values()} | set(spec.outputs.values())
        nodes = []
        for node in spec.order():
            feeds = tuple((tensor, ref) for tensor, ref in node.inputs.items())
            keeps = tuple((ref.partition(".")[2], ref) for ref in sorted(read) if ref.partition(".")[0] == node.name)
            if isinstance(node, StageSpec):
                nodes.append(_Node(node.name, True, self.models[node.name].predict, feeds, keeps, False))
            else:
                step = make_step(node.params)
                nodes.append(_Node(node.name, False, step, feeds, keeps, node.params.op == "window"))
        self._nodes = tuple(nodes)
        self._outputs = tuple(spec.outputs.items())
        self._lock = threading.Lock() if any(n.stateful for n in nodes) else None  # None: no state to guard

    def run(self, inputs: Mapping[str, Any], on_stage: StageHook | None = None) -> PipelineResult:
        """One call: pipeline inputs by name -> outputs by name, with each node's time; `on_stage` sees each
        stage's inputs and outputs once it has run."""
        values = self._coerced(inputs)
        if self._lock is None:
            node_ms = self._run_nodes(values, on_stage)
        else:
            with self._lock:
                node_ms = self._run_nodes(values, on_stage)
        outputs = {}
        for name, ref in self._outputs:
            value = values[ref]
            outputs[name] = value if type(value) is np.ndarray else np.asarray(value)
        return PipelineResult(outputs, node_ms)

    def _run_nodes(self, values: dict[str, Any], on_stage: StageHook | None) -> dict[str, float]:
        """Every node in order over the value table (which gains their outputs); each node's milliseconds."""
        node_ms: dict[str, float] = {}
        clock = time.perf_counter_ns
        for name, is_stage, fn, feeds_from, keeps, _stateful in self._nodes:
            feeds = {}
            for tensor, key in feeds_from:
                feeds[tensor] = values[key]
            start = clock()
            try:
                out = fn(feeds)
            except (InputError, ValueError) as e:
                raise PipelineError(f"{'stage' if is_stage else 'step'} {name!r}: {e}") from e
            ms = node_ms[name] = (clock() - start) / 1e6
            if on_stage is not None and is_stage:
                on_stage(name, feeds, out, ms)
            for tensor, key in keeps:
                values[key] = out[tensor]
        return node_ms

    def reset(self) -> None:
        """Forget the state of stateful steps (a new stream)."""
        with self._lock or contextlib.nullcontext():
            for node in self._nodes:
                reset = getattr(node.fn, "reset", None)
                if reset is not None:
                    reset()

    def _coerced(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The value table's pipeline inputs (`inputs.<name>`), each as its declared dtype and shape."""
        if inputs.keys() != self._inputs.keys():
            _refuse_names(self._inputs, inputs)
        if self._all_fixed:
            values: dict[str, Any] = {}
            for name, key, dtype, shape in self._fixed:
                value = inputs[name]
                if type(value) is np.ndarray and value.dtype == dtype and value.shape == shape:
                    values[key] = value
                else:
                    values[key] = _coerce(self._inputs[name], value)
            return values
        return {self._input_keys[name]: _coerce(spec, inputs[name]) for name, spec in self._inputs.items()}


def coerce_inputs(spec: PipelineSpec, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A pipeline's inputs by name, each as its declared dtype and shape (for a call that does not run here)."""
    declared = {i.name: i for i in spec.inputs}
    if inputs.keys() != declared.keys():
        _refuse_names(declared, inputs)
    return {name: _coerce(declared[name], inputs[name]) for name in declared}


def _refuse_names(declared: Mapping[str, PipelineInput], inputs: Mapping[str, Any]) -> None:
    unknown = [k for k in inputs if k not in declared]
    if unknown:
        takes = ", ".join(declared)
        raise PipelineError(f"unknown input(s): {', '.join(map(str, unknown))}; the pipeline takes {takes}")
    raise PipelineError(f"missing input(s): {', '.join(k for k in declared if k not in inputs)}")


def _coerce(spec: PipelineInput, raw: Any) -> np.ndarray:
    """A pipeline input as its declared dtype and shape; a missing leading batch dim of 1 is added."""
    if isinstance(raw, np.ndarray) and raw.dtype.name == spec.dtype and _fits(raw.shape, spec.shape):
        return raw
    try:
        value = np.asarray(raw)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"input {spec.name!r}: not a numeric array: {e}") from e
    if value.dtype.kind not in "biuf":
        raise PipelineError(f"input {spec.name!r}: dtype {value.dtype} is not numeric")
    shape = spec.shape
    if value.ndim == len(shape) - 1 and shape and shape[0] in (None, 1):
        value = value[np.newaxis]
    if value.ndim != len(shape):
        raise PipelineError(f"input {spec.name!r}: shape {list(value.shape)} does not fit {_fmt(shape)}")
    for axis, (got, want) in enumerate(zip(value.shape, shape, strict=True)):
        if want is not None and got != want:
            raise PipelineError(f"input {spec.name!r}: dim {axis} is {got}, expected {want} (shape {_fmt(shape)})")
    want_dtype = np.dtype(spec.dtype)
    if value.dtype != want_dtype:
        if want_dtype.kind in "iu" and value.dtype.kind == "f" and not np.array_equal(value, np.trunc(value)):
            raise PipelineError(f"input {spec.name!r}: float values for integer input ({spec.dtype})")
        value = value.astype(want_dtype)
    return value


def _fits(shape: tuple[int, ...], want: list[int | None]) -> bool:
    return len(shape) == len(want) and all(w is None or g == w for g, w in zip(shape, want, strict=True))


def _fmt(shape: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
