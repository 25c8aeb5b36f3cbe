"""Drift statistics on binned counts: the baseline's histogram against a window's (or a cohort's).

Everything here works on the mergeable summaries (counts over the baseline's bin edges), so a
device, the hub, or the hub for a whole cohort compute the same numbers. Pure Python on purpose:
the agent must stay small and scipy alone is ~110 MB installed; these are short, textbook formulas
on ten-odd bins, and tests/telemetry checks every one of them against `scipy.stats` / `scipy.spatial`.

Defaults (see `DriftThresholds`), after Evidently's presets: for small windows (< 1000 values) the
KS test at p < 0.05 for numeric features and chi-squared at p < 0.05 for classes; for large windows,
where tests flag trivial differences, Wasserstein distance (in baseline standard deviations) >= 0.1
and Jensen-Shannon distance >= 0.1. PSI >= 0.2 is the credit-risk rule of thumb for a real shift.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.manifest import BaselineStats
from protocol.telemetry import TelemetrySummary

EPS = 1e-4  # floor for empty bins in PSI / JS, as in Evidently


@dataclass(frozen=True)
class DriftThresholds:
    """When a statistic says 'drifted'."""

    large_window: int = 1000
    ks_p: float = 0.05
    chi2_p: float = 0.05
    wasserstein_std: float = 0.1
    js: float = 0.1
    psi: float = 0.2


def _shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    if total <= 0:
        return [0.0] * len(counts)
    return [max(c / total, EPS) for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index: sum (a - e) * ln(a / e) over bins (shares floored at EPS)."""
    e, a = _shares(expected), _shares(actual)
    return sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a, strict=True))


def js_distance(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) = sqrt of the JS divergence; scipy's `jensenshannon`."""
    te, ta = float(sum(expected)), float(sum(actual))
    if te <= 0 or ta <= 0:
        return 0.0
    p = [x / te for x in expected]
    q = [x / ta for x in actual]
    m = [(pi + qi) / 2 for pi, qi in zip(p, q, strict=True)]
    return math.sqrt(max(0.0, (_kl2(p, m) + _kl2(q, m)) / 2))


def _kl2(x: Sequence[float], y: Sequence[float]) -> float:
    """Kullback-Leibler divergence in bits."""
    return sum(xi * math.log2(xi / yi) for xi, yi in zip(x, y, strict=True) if xi > 0)


def _cdf(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts)) or 1.0
    return [run / total for run in itertools.accumulate(counts)]


def ks_statistic(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Largest CDF gap at the bin edges: the two-sample KS statistic, approximated from the sketch."""
    return _ks_from_cdfs(_cdf(expected), _cdf(actual))


def _ks_from_cdfs(ce: list[float], ca: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(ce, ca, strict=True)), default=0.0)


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sample KS p-value (Kolmogorov distribution with Stephens' small-sample correction)."""
    if n <= 0 or m <= 0 or d <= 0:
        return 1.0
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:
        return 1.0
    # 2 * sum (-1)^(k-1) exp(-2 k^2 lam^2): alternating with falling terms, so stopping once a term is below
    # 1e-17 of the sum errs by less than that term (3-25 terms here, instead of a fixed 100).
    total, a = 0.0, -2.0 * lam * lam
    for k in range(1, 101):
        term = math.exp(a * k * k)
        total += 2.0 * term if k % 2 else -2.0 * term
        if term <= 1e-17 * total:
            break
    return min(1.0, max(0.0, total))


def wasserstein(edges: Sequence[float], expected: Sequence[float], actual: Sequence[float]) -> float:
    """Earth mover's distance between the two binned distributions, mass at bin centres."""
    return _wasserstein_from_cdfs(edges, _cdf(expected), _cdf(actual))


def _wasserstein_from_cdfs(edges: Sequence[float], ce: list[float], ca: list[float]) -> float:
    centres = [(lo + hi) / 2 for lo, hi in itertools.pairwise(edges)]
    return sum(abs(ce[i] - ca[i]) * (centres[i + 1] - centres[i]) for i in range(len(centres) - 1))


def chi2_statistic(expected: Sequence[float], actual: Sequence[float]) -> tuple[float, int]:
    """Goodness of fit of `actual` counts to `expected` proportions: (statistic, degrees of freedom)."""
    te, ta = float(sum(expected)), float(sum(actual))
    stat, dof = 0.0, -1
    for e, a in zip(expected, actual, strict=True):
        if e <= 0:
            continue  # a class the baseline never saw carries no expectation
        exp_a = e / te * ta
        stat += (a - exp_a) ** 2 / exp_a
        dof += 1
    return stat, max(dof, 1)


def chi2_pvalue(stat: float, dof: int) -> float:
    """Survival function of the chi-squared distribution: Q(dof/2, stat/2), regularised upper gamma."""
    if stat <= 0:
        return 1.0
    return _gammaincc(dof / 2.0, stat / 2.0)


def _gammaincc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma (Numerical Recipes: series below a+1, continued fraction above)."""
    lg = math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(500):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - lg))
    b, c, d = x + 1 - a, 1e300, 1.0 / (x + 1 - a)
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - lg) * h)


@dataclass(frozen=True)
class FeatureDrift:
    """Every statistic for one feature (or the class histogram) and the verdict."""

    name: str
    n: int
    psi: float
    js: float
    ks: float | None = None
    ks_p: float | None = None
    wasserstein_std: float | None = None
    chi2: float | None = None
    chi2_p: float | None = None
    drifted: bool = False
    method: str = ""


def numeric_drift(name: str, edges: Sequence[float], baseline: Sequence[float], window: Sequence[float],
                  baseline_std: float, t: DriftThresholds = DriftThresholds()) -> FeatureDrift:
    """KS for small windows, Wasserstein (in baseline stds) for large ones; PSI and JS always reported."""
    n, nb = int(sum(window)), int(sum(baseline))
    ce, ca = _cdf(baseline), _cdf(window)  # shared by KS and Wasserstein
    d = _ks_from_cdfs(ce, ca)
    p = ks_pvalue(d, nb, n)
    scale = baseline_std if baseline_std > 0 else max(abs(edges[-1] - edges[0]), 1.0)
    w = _wasserstein_from_cdfs(edges, ce, ca) / scale
    js = js_distance(baseline, window)
    if n < t.large_window:
        drifted, method = p < t.ks_p, "ks"
    else:
        drifted, method = w >= t.wasserstein_std, "wasserstein"
    return FeatureDrift(name, n, psi(baseline, window), js, d, p, w, drifted=drifted and n > 0, method=method)


def class_drift(
    baseline: Sequence[float], window: Sequence[float], t: DriftThresholds = DriftThresholds()
) -> FeatureDrift:
    """Chi-squared for small windows, JS distance for large ones, on the predicted-class histogram."""
    n = int(sum(window))
    stat, dof = chi2_statistic(baseline, window)
    p = chi2_pvalue(stat, dof)
    js = js_distance(baseline, window)
    drifted, method = (p < t.chi2_p, "chi2") if n < t.large_window else (js >= t.js, "js")
    return FeatureDrift("predicted_class", n, psi(baseline, window), js, chi2=stat, chi2_p=p,
                        drifted=drifted and n > 0, method=method)


@dataclass(frozen=True)
class DriftReport:
    """A window (or a merged cohort) against the baseline: per feature, the classes, and overall."""

    n: int
    features: list[FeatureDrift]
    classes: FeatureDrift | None
    drifted_share: float
    dataset_drift: bool
    missing_share: float
    out_of_range_share: float

    @property
    def drifted_features(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def score(self) -> float:
        """One number for gates and alerts: the largest JS distance over features and classes."""
        values = [f.js for f in self.features] + ([self.classes.js] if self.classes else [])
        return max(values, default=0.0)


def drift_report(baseline: BaselineStats, summary: TelemetrySummary, t: DriftThresholds = DriftThresholds(),
                 dataset_share: float = 0.5) -> DriftReport:
    """Every statistic for every feature; dataset drift when at least `dataset_share` of features drift."""
    by_name = {h.name: h for h in baseline.inputs}
    features = []
    values = missing = out_of_range = 0
    for f in summary.inputs:
        h = by_name.get(f.name)
        if h is None or len(h.counts) != len(f.counts):
            continue
        if h.std > 0:  # a constant baseline feature has no distribution to drift from; range checks cover it
            features.append(numeric_drift(f.name, h.edges, h.counts, f.counts, h.std, t))
        values += sum(f.counts) + f.missing
        missing += f.missing
        out_of_range += f.below_min + f.above_max
    classes = None
    if baseline.class_counts is not None and summary.class_counts is not None:
        classes = class_drift(baseline.class_counts, summary.class_counts, t)
    drifted = sum(f.drifted for f in features)
    share = drifted / len(features) if features else 0.0
    return DriftReport(
        n=summary.n, features=features, classes=classes, drifted_share=share,
        dataset_drift=share >= dataset_share or bool(classes and classes.drifted),
        missing_share=missing / values if values else 0.0,
        out_of_range_share=out_of_range / values if values else 0.0,
    )
