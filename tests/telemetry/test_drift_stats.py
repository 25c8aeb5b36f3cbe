"""protocol.drift (pure Python, for small devices) against scipy.stats / scipy.spatial."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from protocol import drift

counts = st.lists(st.integers(min_value=0, max_value=500), min_size=2, max_size=12)


@settings(max_examples=200, deadline=None)
@given(a=counts, b=counts)
def test_js_matches_scipy(a: list[int], b: list[int]) -> None:
    b = (b * 12)[: len(a)]
    if sum(a) == 0 or sum(b) == 0:
        return
    assert drift.js_distance(a, b) == pytest.approx(jensenshannon(a, b, base=2), abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(stat=st.floats(min_value=0.01, max_value=500), dof=st.integers(min_value=1, max_value=60))
def test_chi2_pvalue_matches_scipy(stat: float, dof: int) -> None:
    assert drift.chi2_pvalue(stat, dof) == pytest.approx(stats.chi2.sf(stat, dof), abs=1e-9, rel=1e-7)


def test_chi2_statistic_matches_scipy() -> None:
    base = [100, 80, 120, 0, 50]
    window = [30, 10, 60, 0, 20]
    stat, dof = drift.chi2_statistic(base, window)
    expected = np.array([100, 80, 120, 50]) / 350 * 120
    ref = stats.chisquare([30, 10, 60, 20], expected)
    assert stat == pytest.approx(ref.statistic) and dof == 3
    assert drift.chi2_pvalue(stat, dof) == pytest.approx(ref.pvalue)


@pytest.mark.parametrize("n", [50, 300, 2000])
def test_ks_on_sketch_tracks_exact_ks(n: int) -> None:
    rng = np.random.default_rng(n)
    base = rng.normal(size=5000)
    window = rng.normal(0.3, 1.0, size=n)
    edges = np.quantile(base, np.linspace(0, 1, 21))
    bc = np.bincount(np.searchsorted(edges[1:-1], base, side="right"), minlength=20)
    wc = np.bincount(np.searchsorted(edges[1:-1], window, side="right"), minlength=20)
    d = drift.ks_statistic(bc, wc)
    exact = stats.ks_2samp(base, window)
    assert d <= exact.statistic + 1e-12  # the sketch sees the CDF only at the edges
    assert d == pytest.approx(exact.statistic, abs=0.05)
    # The p-value formula is the asymptotic Kolmogorov distribution scipy uses for large samples.
    assert drift.ks_pvalue(exact.statistic, 5000, n) == pytest.approx(
        stats.ks_2samp(base, window, method="asymp").pvalue, abs=0.02)


def test_wasserstein_matches_scipy_on_binned_mass() -> None:
    edges = [0.0, 1.0, 2.0, 4.0, 8.0]
    a, b = [10, 20, 30, 40], [40, 30, 20, 10]
    centres = [0.5, 1.5, 3.0, 6.0]
    ref = stats.wasserstein_distance(centres, centres, a, b)
    assert drift.wasserstein(edges, a, b) == pytest.approx(ref)


def test_psi_known_value() -> None:
    assert drift.psi([25, 25, 25, 25], [25, 25, 25, 25]) == 0.0
    # Shares 0.25 each vs 0.4/0.1/0.25/0.25: (0.15 ln 1.6) + (-0.15 ln 0.4)
    assert drift.psi([25, 25, 25, 25], [40, 10, 25, 25]) == pytest.approx(0.15 * np.log(1.6) - 0.15 * np.log(0.4))


def test_verdicts() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=20000)
    edges = list(np.quantile(base, np.linspace(0, 1, 11)))
    bc = np.bincount(np.searchsorted(edges[1:-1], base, side="right"), minlength=10)
    same = np.bincount(np.searchsorted(edges[1:-1], rng.normal(size=500), side="right"), minlength=10)
    shifted = np.bincount(np.searchsorted(edges[1:-1], rng.normal(1.0, 1.0, size=500), side="right"), minlength=10)
    big = np.bincount(np.searchsorted(edges[1:-1], rng.normal(0.5, 1.0, size=5000), side="right"), minlength=10)
    assert not drift.numeric_drift("f", edges, bc, same, 1.0).drifted
    r = drift.numeric_drift("f", edges, bc, shifted, 1.0)
    assert r.drifted and r.method == "ks"
    r = drift.numeric_drift("f", edges, bc, big, 1.0)
    assert r.drifted and r.method == "wasserstein"
    assert drift.class_drift([100] * 10, [10] * 10).drifted is False
    assert drift.class_drift([100] * 10, [40] + [2] * 9).drifted is True


def test_telemetry_wire_form() -> None:
    import zlib
    from datetime import UTC, datetime

    from pydantic import ValidationError

    from protocol.telemetry import TelemetryMessage, TelemetrySummary, decode_message, encode_message

    t = datetime(2026, 1, 1, tzinfo=UTC)
    msg = TelemetryMessage(id=7, device_id="d1", summary=TelemetrySummary(
        device_id="d1", model="digits", version=2, profile="p", window_start=t, window_end=t, n=3))
    assert decode_message(encode_message(msg)) == msg
    assert decode_message(msg.to_bytes()) == msg  # plain JSON is accepted too
    with pytest.raises(ValueError, match="bad zlib"):
        decode_message(b"\x78garbage")
    with pytest.raises(ValidationError):
        decode_message(zlib.compress(b'{"id": -1}'))
