"""The recorder's bulk binning in float32: the same counts as float64 for every float32 value, edges included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.telemetry.recorder import CHUNK_ROWS, _Binner
from converter.stats import bin_counts
from protocol.manifest import HistogramBaseline


def _hist(name: str, edges: list[float]) -> HistogramBaseline:
    return HistogramBaseline(
        name=name, edges=edges, counts=[1] * (len(edges) - 1), mean=0.0, std=1.0, min=edges[0], max=edges[-1]
    )


def _reference(values: np.ndarray, h: HistogramBaseline) -> tuple[list[int], int, int, int]:
    """What float64 says: bins of the finite values (the converter's function), NaN/inf, below min, above max."""
    v = values.astype(np.float64)
    finite = v[np.isfinite(v)]
    return (
        [int(c) for c in bin_counts(finite, np.asarray(h.edges))],
        int((~np.isfinite(v)).sum()),
        int((finite < h.min).sum()),
        int((finite > h.max).sum()),
    )


def _counted(binner: _Binner, rows: np.ndarray) -> list[tuple[list[int], int, int, int]]:
    binner.add_rows(rows)
    binner.flush()
    return [
        ([int(c) for c in binner.counts[j]], int(binner.missing[j]), int(binner.below[j]), int(binner.above[j]))
        for j in range(rows.shape[1])
    ]


def _neighbours32(x: float) -> list[float]:
    """x's float32 rounding and the float32 values on either side of it."""
    y = np.float32(x) if abs(x) < 3e38 else np.float32(np.sign(x) * np.finfo(np.float32).max)
    with np.errstate(over="ignore"):  # past the largest float32 is inf, a value worth binning too
        return [float(np.nextafter(y, np.float32(-np.inf))), float(y), float(np.nextafter(y, np.float32(np.inf)))]


# Edges a float32 cannot hold (0.1, 1/3), ones it can (0.5, 2.0), and ones beyond its range.
EDGES = [
    [-1.0, -1 / 3, 0.1, 0.5, 2.0, 7.3],
    [0.1, 0.2, 0.30000000000000004, 0.7],
    [-1e39, -1.0, 0.0, 1.0, 1e39],
    [-3.0, -3.0, 0.0, 0.0, 3.0],  # repeated edges, as quantiles of tied data give
]


@pytest.mark.parametrize("edges", EDGES)
def test_float32_counts_equal_float64_at_every_edge(edges: list[float]) -> None:
    h = _hist("x[0]", edges)
    around = [v for e in edges for v in _neighbours32(e)]
    values = np.array([*around, np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45], np.float32)
    binner = _Binner([h], "float32")
    assert binner.buffer.dtype == np.float32
    assert _counted(binner, values.reshape(-1, 1)) == [_reference(values, h)]


@settings(max_examples=60, deadline=None)
@given(
    edges=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=12).map(sorted),
    raw=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=3 * CHUNK_ROWS),
)
def test_float32_counts_equal_float64_for_any_values(edges: list[float], raw: list[float]) -> None:
    h = _hist("x[0]", edges)
    values = np.array(raw, np.float32)
    # Values near the edges too: that is where rounding would show.
    values = np.concatenate([values, np.array([v for e in edges for v in _neighbours32(e)], np.float32)])
    assert _counted(_Binner([h], "float32"), values.reshape(-1, 1)) == [_reference(values, h)]


def test_many_features_and_chunks_in_float32_and_float64() -> None:
    rng = np.random.default_rng(3)
    hists = [_hist(f"x[{j}]", sorted(rng.normal(size=11).tolist())) for j in range(40)]
    rows = rng.normal(size=(3 * CHUNK_ROWS + 17, 40)).astype(np.float32)
    rows[5, 3], rows[9, 7] = np.nan, np.inf
    expected = [_reference(rows[:, j], h) for j, h in enumerate(hists)]
    assert _counted(_Binner(hists, "float32"), rows) == expected
    assert _counted(_Binner(hists, "float64"), rows) == expected


def test_dtypes_float32_cannot_hold_are_binned_in_float64() -> None:
    # 2**24 + 1 has no float32: an int32 input keeps float64 buffers, and its edge stays exact.
    h = _hist("x[0]", [0.0, 16777217.0, 3e7])
    values = np.array([16777216, 16777217, 16777218], np.int64)
    binner = _Binner([h], "int32")
    assert binner.buffer.dtype == np.float64
    assert _counted(binner, values.reshape(-1, 1)) == [([1, 2], 0, 0, 0)]


def test_float64_rows_past_float32_range_count_as_non_finite_without_a_warning() -> None:
    # JSON's numbers arrive as float64; a bool tensor takes 1e39 (True), its float32 buffer cannot.
    import warnings

    h = _hist("x[0]", [0.0, 0.5, 1.0])
    rows = np.array([[1e39], [-1e39], [1.0], [0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counted = _counted(_Binner([h], "bool"), rows)
    assert counted == [([1, 1], 2, 0, 0)]
