"""Histograms drawn as rows (one bin per row: its value range, the baseline's share and the window's share).

Bin edges come from the validation data's quantiles, so a feature with many equal values has equal edges
(`0, 0, 0, 0.06, ...`). With the binning convention shared by converter and agent (converter/stats.py), a
value v falls in bin `searchsorted(edges[1:-1], v, side="right")`: a middle bin of zero width never gets a
value, the first bin also takes the values below the first edge, the last bin those at or above its lower
edge. Zero-width bins are therefore shown merged into the next bin (a zero-width last bin is the point mass
at the maximum, shown as that one value), so every row has its own label. Labels round the edges to as few
decimals as keep them apart (0.12 to 0.25, joined by an en dash); each row's tooltip has the exact edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WIDTH = 360.0
ROW_H = 16.0
CHAR_W = 7.0  # generous width of one character at the labels' 11px: labels are never cut
SHARE_W = 36.0  # the window's share, right-aligned after the bars
MAX_DECIMALS = 6
DASH, MINUS = "\u2013", "\u2212"  # en dash between edges, a real minus sign in numbers


@dataclass(frozen=True)
class Bin:
    """One row: a value range with the baseline's and the window's counts."""

    label: str
    exact: str  # the range with exact edges, for the tooltip
    baseline: int
    window: int


@dataclass(frozen=True)
class Row:
    """A bin placed in the chart: bar lengths in SVG units."""

    bin: Bin
    y: float
    baseline_share: float
    window_share: float
    baseline_w: float
    window_w: float


@dataclass(frozen=True)
class Histogram:
    """Rows plus the geometry the template needs."""

    rows: list[Row]
    label_w: float  # labels end here (right-aligned)
    bar_x: float
    bar_w: float
    width: float
    height: float
    baseline_total: int
    window_total: int
    with_baseline: bool


def _trim(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def number(v: float, decimals: int) -> str:
    """`v` with at most `decimals` decimals, trailing zeros dropped; thousands as k, millions as M."""
    if abs(v) >= 1e6:
        return number(v / 1e6, max(decimals, 2)) + "M"
    if abs(v) >= 1e4:
        return number(v / 1e3, max(decimals, 1)) + "k"
    text = _trim(f"{v:.{decimals}f}")
    return "0" if text in ("-0", "") else text.replace("-", MINUS)


def edge_texts(edges: Sequence[float]) -> list[str]:
    """The edges rounded to the fewest decimals (at least 2 below 10) that keep distinct edges distinct."""
    distinct = sorted(set(edges))
    floor = 2 if max(abs(e) for e in edges) < 10 else 1 if max(abs(e) for e in edges) < 100 else 0
    for d in range(floor, MAX_DECIMALS + 1):
        texts = {e: number(e, d) for e in distinct}
        if len(set(texts.values())) == len(distinct):
            return [texts[e] for e in edges]
    return [f"{e:g}" for e in edges]


def feature_bins(edges: Sequence[float], baseline: Sequence[int], window: Sequence[int]) -> list[Bin]:
    """Display bins of a numeric feature: zero-width bins merged into the next one (see the module docstring)."""
    k = len(baseline)
    window = list(window) + [0] * (k - len(window))
    texts = edge_texts(edges[: k + 1])
    bins: list[Bin] = []
    lo = 0  # first bin of the group being built
    for i in range(k):
        last = i == k - 1
        if edges[i] == edges[i + 1] and not last:
            continue  # empty by construction (or below-min values only): shown with the next bin
        base, win = sum(baseline[lo : i + 1]), sum(window[lo : i + 1])
        a, b = edges[lo], edges[i + 1]
        if a == b:
            label, exact = texts[lo], f"= {a!r}" + (" (and above)" if last else "")
        else:
            dash = f" {DASH} " if MINUS in texts[i + 1] else DASH  # spaced when the upper edge is negative
            label = f"{texts[lo]}{dash}{texts[i + 1]}"
            exact = f"[{a!r}, {b!r}{']' if last else ')'}"
        if lo == 0:
            exact += ", values below the baseline's minimum count here too"
        if last and a != b:
            exact += ", values above the baseline's maximum count here too"
        bins.append(Bin(label=label, exact=exact, baseline=base, window=win))
        lo = i + 1
    return bins


def class_bins(baseline: Sequence[int], window: Sequence[int]) -> list[Bin]:
    """One row per predicted class."""
    window = list(window) + [0] * (len(baseline) - len(window))
    return [Bin(label=f"class {i}", exact=f"predicted class {i}", baseline=b, window=w)
            for i, (b, w) in enumerate(zip(baseline, window, strict=True))]  # fmt: skip


def latency_bins(latency: dict[str, Any] | None) -> list[Bin]:
    """The latency buckets from the first to the last non-empty one (no baseline)."""
    if not latency or not sum(latency["counts"]):
        return []
    counts: list[int] = latency["counts"]
    uppers: list[float] = latency["bucket_upper_ms"]
    used = [i for i, c in enumerate(counts) if c]
    bins = []
    for i in range(used[0], used[-1] + 1):
        lo = uppers[i - 1] if i else 0.0
        if i < len(uppers):
            label, exact = f"{lo:g}{DASH}{uppers[i]:g} ms", f"({lo!r}, {uppers[i]!r}] ms"
        else:
            label, exact = f"> {lo:g} ms", f"> {lo!r} ms"
        bins.append(Bin(label=label, exact=exact, baseline=0, window=counts[i]))
    return bins


def histogram(bins: list[Bin], *, with_baseline: bool = True) -> Histogram:
    """Rows scaled so the largest share fills the bar width; the label column fits the longest label."""
    b_total = sum(b.baseline for b in bins)
    w_total = sum(b.window for b in bins)
    b_share = [b.baseline / b_total if b_total else 0.0 for b in bins]
    w_share = [b.window / w_total if w_total else 0.0 for b in bins]
    top = max([*(b_share if with_baseline else []), *w_share, 1e-9])
    label_w = 6 + CHAR_W * max((len(b.label) for b in bins), default=4)
    bar_x = label_w + 6
    bar_w = max(WIDTH - bar_x - SHARE_W, 60.0)
    rows = [
        Row(bin=b, y=i * ROW_H, baseline_share=b_share[i], window_share=w_share[i],
            baseline_w=round(bar_w * b_share[i] / top, 2) if with_baseline else 0.0,
            window_w=round(bar_w * w_share[i] / top, 2))
        for i, b in enumerate(bins)
    ]  # fmt: skip
    width = max(WIDTH, bar_x + bar_w + SHARE_W)
    return Histogram(rows=rows, label_w=label_w, bar_x=bar_x, bar_w=bar_w, width=width, height=len(bins) * ROW_H + 2,
                     baseline_total=b_total, window_total=w_total, with_baseline=with_baseline)  # fmt: skip


def feature_histogram(feature: dict[str, Any]) -> Histogram:
    """A drift feature of the telemetry API (numeric with edges, or the predicted classes) as a histogram."""
    if feature.get("edges"):
        bins = feature_bins(feature["edges"], feature["baseline_counts"], feature["window_counts"])
    else:
        bins = class_bins(feature["baseline_counts"], feature["window_counts"])
    return histogram(bins)
