"""Baseline statistics for drift detection and golden self-test cases, from the validation data.

Binning convention shared with the agent: `bins = len(edges) - 1`; a value v falls in bin
`searchsorted(edges[1:-1], v, side="right")`, so values below the first edge count in bin 0 and
values above the last edge in the last bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.data import Dataset
from converter.measure import ArtifactRunner
from protocol.manifest import BaselineStats, GoldenCase, GoldenSet, HistogramBaseline, QuantParams, TensorSpec
from protocol.telemetry import channel_axis

DEFAULT_BINS = 10
MAX_PER_FEATURE = 256  # above this many elements per sample, group by channel instead
GOLDEN_CASES = 8
# Inputs and expected outputs of all golden cases together, as JSON numbers in the manifest: a model with large
# tensors (an audio model: 44k samples in, 75k values out) gets fewer cases (at least one), not a 20 MB manifest.
MAX_GOLDEN_VALUES = 250_000


def json_numbers(values: Any) -> list[float]:
    """Flattened values for the manifest's JSON. A float32 / float16 value is written as its own type's shortest
    decimal ('0.1', not float64's '0.10000000149011612'), which reads back as the same value in that type: the
    agent feeds golden inputs at the tensor's dtype, so nothing changes but the size (about 40 % less)."""
    arr = np.asarray(values)
    if arr.dtype in (np.float32, np.float16):
        return [float(x) for x in arr.ravel().astype(str)]
    return [float(x) for x in arr.ravel()]


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of `values` in the baseline bins (see module docstring)."""
    idx = np.searchsorted(edges[1:-1], values.ravel(), side="right")
    return np.bincount(idx, minlength=len(edges) - 1)


def histogram(name: str, values: np.ndarray, bins: int = DEFAULT_BINS) -> HistogramBaseline:
    v = values.astype(np.float64).ravel()
    edges = np.quantile(v, np.linspace(0.0, 1.0, bins + 1))
    return HistogramBaseline(
        name=name,
        edges=[float(e) for e in edges],
        counts=[int(c) for c in bin_counts(v, edges)],
        mean=float(v.mean()),
        std=float(v.std()),
        min=float(v.min()),
        max=float(v.max()),
    )


def baseline_stats(
    inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], classifier: bool, bins: int = DEFAULT_BINS
) -> BaselineStats:
    """Per-feature (small inputs) or per-channel histograms of inputs; class counts or output histograms.

    Every array has samples first (rows of a batch, or one whole tensor per sample), as the agent records them.
    """
    hists: list[HistogramBaseline] = []
    grouping: str = "feature"
    for name, x in inputs.items():
        by_channel, found = tensor_histograms(name, x, bins)
        hists += found
        grouping = "channel" if by_channel else grouping
    first_name, first = next(iter(reference.items()))
    n = len(first)
    if classifier:
        probs = first.reshape(n, -1)
        counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
        return BaselineStats(n_samples=n, inputs=hists, class_counts=[int(c) for c in counts], grouping=grouping)  # type: ignore[arg-type]
    # The first output only, grouped as an input would be: it is what the agent records (agent/telemetry), and a
    # wide output (a spectrogram, a mask) as one histogram per element made manifests of tens of MB.
    _by_channel, outs = tensor_histograms(first_name, first, bins)
    return BaselineStats(n_samples=n, inputs=hists, outputs=outs, grouping=grouping)  # type: ignore[arg-type]


def tensor_histograms(name: str, x: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[bool, list[HistogramBaseline]]:
    """Histograms of one tensor (samples first): one per element (`name[j]`) when a sample has at most
    MAX_PER_FEATURE of them, else one per channel (`name[c<j>]`, protocol.telemetry.channel_axis); whether
    grouped by channel."""
    per_sample = int(np.prod(x.shape[1:]))
    if per_sample <= MAX_PER_FEATURE:
        flat = x.reshape(len(x), -1)
        return False, [histogram(f"{name}[{j}]", flat[:, j], bins) for j in range(flat.shape[1])]
    axis = channel_axis(x.shape)
    moved = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    return True, [histogram(f"{name}[c{j}]", moved[:, j], bins) for j in range(moved.shape[1])]


def golden_indices(n: int, k: int = GOLDEN_CASES) -> np.ndarray:
    """Evenly spaced, deterministic sample indices."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def _tolerance(outputs: list[TensorSpec], values: dict[str, np.ndarray]) -> float:
    """Room for a different CPU's kernels: two quantisation steps, or 1% of the output range."""
    tol = 1e-5
    for spec in outputs:
        q: QuantParams | None = spec.quantization
        if q is not None:
            tol = max(tol, 2.0 * q.scale)
        else:
            v = values[spec.name]
            tol = max(tol, 0.01 * float(np.max(v) - np.min(v)))
    return tol


def golden_set(runner: ArtifactRunner, data: Dataset, classifier: bool) -> GoldenSet:
    """Golden cases whose expected outputs are what this artifact computed here.

    Inputs are flattened; their shapes go with each case when the tensor spec cannot tell them (a whole
    tensor per sample, a dynamic dim past the first).
    """
    sample = data.take(0, 1)
    values = sum(np.size(v) for v in sample.values()) + sum(np.size(v) for v in runner.run(sample).values())
    idx = golden_indices(len(data), max(1, min(GOLDEN_CASES, MAX_GOLDEN_VALUES // max(values, 1))))
    chosen = data.subset(idx)
    by_name = {s.name: s for s in runner.inputs}
    need_shapes = any(not s.batch_first or None in s.shape[1:] for s in by_name.values())
    cases = []
    all_out: dict[str, list[np.ndarray]] = {s.name: [] for s in runner.outputs}
    for i in range(len(idx)):
        one = chosen.take(i, i + 1)
        out = runner.run(one)
        for k, v in out.items():
            all_out[k].append(np.asarray(v, dtype=np.float64).reshape(1, -1))
        first = next(iter(out.values()))
        cases.append(
            GoldenCase(
                inputs={k: json_numbers(v) for k, v in one.items()},
                expected={k: json_numbers(v) for k, v in out.items()},
                expected_top1=int(np.asarray(first).reshape(-1).argmax()) if classifier else None,
                shapes={k: [int(d) for d in np.shape(v)] for k, v in one.items()} if need_shapes else None,
            )
        )
    stacked = {k: np.concatenate(v) for k, v in all_out.items()}
    return GoldenSet(cases=cases, atol=_tolerance(runner.outputs, stacked), rtol=0.0)
