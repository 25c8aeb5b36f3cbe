"""Synthetic but realistic telemetry for the hub tests: a manifest whose baseline comes from validation data
(converter.stats, as the converter computes it), and device summaries binned the way the agent bins them.

Also the checks that make the data trustworthy: unshifted windows are not flagged, shifted ones are, and
merging device summaries equals the summary of the pooled data.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from converter.stats import bin_counts, histogram
from protocol.drift import drift_report
from protocol.layout import MANIFEST_FILE
from protocol.manifest import BaselineStats, Manifest
from protocol.telemetry import FeatureWindow, TelemetrySummary, latency_bucket, merge
from tests.hub.support import make_manifest

FEATURES = 8
CLASSES = 3
WEIGHTS = np.random.default_rng(0).normal(size=(FEATURES, CLASSES))


def sample(rng: np.random.Generator, n: int, shift: str | None = None) -> np.ndarray:
    """Sensor-like inputs: normal, skewed and bounded features; `shift` = mean | variance | stuck."""
    cols = [rng.normal(0, 1, n), rng.normal(5, 2, n), rng.uniform(0, 1, n), rng.exponential(1.0, n)]
    x = np.stack(cols * (FEATURES // 4), axis=1)
    if shift == "mean":
        x = x + x.std(axis=0)
    elif shift == "variance":
        x = x.mean(axis=0) + (x - x.mean(axis=0)) * 2.5
    elif shift == "stuck":
        x[:, : FEATURES // 2 + 1] = np.median(x[:, : FEATURES // 2 + 1], axis=0)
    return x


def predict(x: np.ndarray) -> np.ndarray:
    """The 'model': a fixed linear classifier on standardised inputs."""
    z = (x - np.array([0, 5, 0.5, 1.0] * (FEATURES // 4))) / np.array([1, 2, 0.29, 1.0] * (FEATURES // 4))
    return np.asarray((z @ WEIGHTS).argmax(axis=1))


def baseline(seed: int = 1, n: int = 5000) -> BaselineStats:
    x = sample(np.random.default_rng(seed), n)
    hists = [histogram(f"x[{j}]", x[:, j]) for j in range(FEATURES)]
    counts = np.bincount(predict(x), minlength=CLASSES)
    return BaselineStats(n_samples=n, inputs=hists, class_counts=[int(c) for c in counts])


def write_version(out: Path, name: str, version: int, profiles: list[str]) -> Path:
    """A converter-style output folder whose manifests carry the realistic baseline (same data, every profile)."""
    base = baseline()
    for profile in profiles:
        artifact = f"{name}-{version}-{profile}".encode()
        m = make_manifest(name, version, profile, artifact).model_copy(update={"baseline": base})
        (out / profile).mkdir(parents=True, exist_ok=True)
        (out / profile / "model.tflite").write_bytes(artifact)
        (out / profile / MANIFEST_FILE).write_bytes(Manifest.model_validate(m.model_dump()).to_bytes())
        assert hashlib.sha256(artifact).hexdigest() == m.artifact.sha256
    return out


def summarize(device_id: str, profile: str, name: str, version: int, x: np.ndarray, latency_ms: np.ndarray, *,
              base: BaselineStats, errors: int = 0, fallback: dict[str, int] | None = None,
              labels: np.ndarray | None = None, start: datetime | None = None) -> TelemetrySummary:  # fmt: skip
    """One window the way the agent summarises it: counts over the baseline bins, latency buckets, confusion."""
    start = start or datetime.now(UTC)
    inputs = []
    for j, h in enumerate(base.inputs):
        v = x[:, j]
        finite = v[np.isfinite(v)]
        inputs.append(FeatureWindow(name=h.name, counts=[int(c) for c in bin_counts(finite, np.asarray(h.edges))],
                                    missing=int((~np.isfinite(v)).sum()), below_min=int((finite < h.min).sum()),
                                    above_max=int((finite > h.max).sum())))  # fmt: skip
    pred = predict(x)
    buckets = [0] * 18
    for ms in latency_ms:
        buckets[latency_bucket(float(ms))] += 1
    confusion = None
    if labels is not None:
        confusion = [[0] * CLASSES for _ in range(CLASSES)]
        for t, p in zip(labels, pred, strict=True):
            confusion[int(t)][int(p)] += 1
    return TelemetrySummary(
        device_id=device_id, model=name, version=version, profile=profile, window_start=start,
        window_end=start + timedelta(seconds=60), n=len(x), errors=errors, fallback=fallback or {},
        latency_buckets=buckets, inputs=inputs, class_counts=[int(c) for c in np.bincount(pred, minlength=CLASSES)],
        confusion=confusion,
    )  # fmt: skip


def noisy_labels(rng: np.random.Generator, x: np.ndarray, flip: float = 0.2) -> np.ndarray:
    """True labels: the prediction, wrong for a share `flip` of samples."""
    y = predict(x)
    wrong = rng.random(len(y)) < flip
    return np.where(wrong, (y + rng.integers(1, CLASSES, len(y))) % CLASSES, y)


def test_unshifted_windows_are_not_flagged_and_shifts_are() -> None:
    base, rng = baseline(), np.random.default_rng(11)
    lat = np.full(300, 2.0)
    clean = [drift_report(base, summarize("d", "p", "m", 1, sample(rng, 300), lat, base=base)) for _ in range(40)]
    assert sum(r.dataset_drift for r in clean) <= 2
    for shift in ("mean", "variance", "stuck"):
        r = drift_report(base, summarize("d", "p", "m", 1, sample(rng, 300, shift), lat, base=base))
        assert r.dataset_drift, (shift, r.drifted_features)


def test_merging_device_windows_equals_the_pooled_window() -> None:
    base, rng = baseline(), np.random.default_rng(5)
    xs = [sample(rng, n) for n in (120, 300, 75)]
    lats = [rng.uniform(1, 30, len(x)) for x in xs]
    parts = [summarize(f"d{i}", "p", "m", 1, x, lat, base=base) 
             for i, (x, lat) in enumerate(zip(xs, lats, strict=True))]
    pooled = summarize("d0", "p", "m", 1, np.concatenate(xs), np.concatenate(lats), base=base)
    merged = merge(parts)
    assert merged.inputs == pooled.inputs and merged.class_counts == pooled.class_counts
    assert merged.latency_buckets == pooled.latency_buckets and merged.n == 495 and merged.devices == 3


def test_the_hubs_accumulator_equals_protocol_merge_and_skips_misfits() -> None:
    from hub.telemetry.query import merged_from

    base, rng = baseline(), np.random.default_rng(8)
    parts = [summarize(f"d{i % 3}", "p", "m", 1, sample(rng, 50 + i), rng.uniform(0.5, 80, 50 + i), base=base,
                       errors=i, fallback={"timeout": i % 2}, labels=noisy_labels(rng, sample(rng, 50 + i)) if i % 2
                       else None) for i in range(7)]  # fmt: skip
    odd = parts[0].model_copy(update={"inputs": parts[0].inputs[:3]})  # another binning: left out, counted
    got = merged_from([s.model_dump(mode="json") for s in [*parts, odd]])
    assert got.summary == merge(parts).model_copy(update={"devices": 3})
    assert (got.rows, got.skipped, got.devices) == (8, 1, 3)
